"""``ros2 launch`` for the tests and ``make demo``: found or built once, then run and watched.

Where the launch tooling comes from, in order:

1. a sourced ROS 2: ``ros2`` on PATH and ``launch_ros`` importable by this Python;
2. ``../shared/ros2-launch`` (unmodified upstream ``launch``, ``launch_ros``, ``ros2launch``,
   ``ros2cli``, ... with its ``build.sh``), built with colcon on top of this virtual
   environment into ``<venv>/ros2-launch`` -- about a minute, once; rebuilt only when those
   sources' build script or pinned versions change;
3. a system ROS 2 in ``/opt/ros/<distro>`` built for this Python version.

The handoff_ros package is then built with ``colcon build --symlink-install`` into
``<venv>/ros2-launch/handoff`` (seconds; rebuilt only when setup.py, package.xml or the set of
launch/parameter files changes -- with symlinks, edits to nodes and launch files show at once),
unless the environment already has it (a sourced workspace, as in the Docker image).
:func:`launch_env` returns the environment in which ``ros2 launch handoff_ros FILE`` works;
:class:`LaunchProcess` runs one and reads what launch says about its processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]
PKG = REPO / "ros2_ws" / "src" / "handoff_ros"
SHARED = Path(os.environ.get("HANDOFF_ROS2_LAUNCH_SRC", REPO.parent / "shared" / "ros2-launch"))


class LaunchUnavailableError(RuntimeError):
    """No ``ros2 launch`` here; the message says why (tests skip with it)."""


def _digest(paths: list[Path], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for p in paths:
        h.update(p.name.encode())
        h.update(p.read_bytes() if p.is_file() else b"")
    return h.hexdigest()[:16]


def _sourced(scripts: list[Path], base: dict[str, str], venv: Path | None) -> dict[str, str]:
    """The environment after sourcing ``scripts`` in bash (after activating ``venv``)."""
    lines = [f'source "{venv}/bin/activate"'] if venv else []
    if venv:  # the Kilted wheels are an ament prefix of their own
        lines.append(
            f'export AMENT_PREFIX_PATH="{venv}${{AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}}"'
        )
    lines += [f'source "{s}"' for s in scripts] + ["env -0"]
    out = subprocess.run(
        ["bash", "-c", "\n".join(lines)], env=base, capture_output=True, check=True
    ).stdout
    return dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)


def _venv() -> Path | None:
    return Path(sys.prefix) if sys.prefix != sys.base_prefix else None


def _has_launch(env: dict[str, str]) -> bool:
    if shutil.which("ros2", path=env.get("PATH")) is None:
        return False
    probe = [sys.executable, "-c", "import launch_ros, ros2launch"]
    return subprocess.run(probe, env=env, capture_output=True).returncode == 0


def _run_locked(lock: Path, stamp: Path, key: str, build: list[str], env: dict[str, str]) -> None:
    """Run ``build`` unless ``stamp`` holds ``key``; one builder at a time (file lock)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        if stamp.is_file() and stamp.read_text() == key:
            return
        stamp.unlink(missing_ok=True)
        run = subprocess.run(build, env=env, capture_output=True, text=True)
        if run.returncode != 0:
            raise LaunchUnavailableError(f"`{' '.join(build)}` failed:\n{run.stdout[-3000:]}")
        stamp.write_text(key)


def _tooling(base: dict[str, str]) -> tuple[list[Path], Path | None, str]:
    """(setup scripts to source, venv, cache key) of the first launch tooling found."""
    venv = _venv()
    if _has_launch(base):
        return [], venv, "sourced"
    if (SHARED / "build.sh").is_file():
        if venv is None:
            raise LaunchUnavailableError(f"{SHARED} builds into a virtual environment; use one")
        ws = venv / "ros2-launch"
        files = [SHARED / n for n in ("build.sh", "fix_pywheel_paths.cmake", "README.md")]
        key = _digest(files, f"{sys.version}|{venv}")
        _run_locked(
            venv / "ros2-launch.lock",
            ws / ".handoff-stamp",
            key,
            ["bash", str(SHARED / "build.sh"), str(venv), str(ws)],
            base,
        )
        return [ws / "install" / "setup.bash"], venv, key
    pyver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for setup in sorted(glob.glob("/opt/ros/*/setup.bash")):
        prefix = Path(setup).parent
        if (prefix / "lib" / pyver / "site-packages" / "launch_ros").is_dir():
            return [Path(setup)], venv, str(prefix)
    raise LaunchUnavailableError(
        f"no ROS 2 launch tooling: no sourced ROS 2, no {SHARED}, no /opt/ros/<distro> for {pyver}"
    )


def launch_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment in which ``ros2 launch handoff_ros FILE`` runs, building what is
    missing (see the module docstring). LaunchUnavailableError says why there is none."""
    base = dict(os.environ if base is None else base)
    scripts, venv, key = _tooling(base)
    env = _sourced(scripts, base, venv)
    probe = [sys.executable, "-c", "from ament_index_python import get_package_prefix as g; "]
    probe[-1] += "g('handoff_ros')"
    if subprocess.run(probe, env=env, capture_output=True).returncode == 0 and not venv:
        return env  # a sourced workspace has the package (the Docker image)
    if shutil.which("colcon", path=env.get("PATH")) is None:
        raise LaunchUnavailableError(
            "colcon is not installed: pip install colcon-common-extensions"
        )
    # colcon links launch/ files through <cache>/../launch: keep both out of the repository
    cache = (venv or Path.home() / ".cache" / "handoff") / "ros2-launch" / "handoff"
    names = sorted(p.name for p in (REPO / "launch").glob("*.launch.py"))
    names += sorted(p.name for p in (PKG / "config").glob("*.yaml"))
    files = [PKG / n for n in ("setup.py", "setup.cfg", "package.xml")]
    build = ["colcon", "--log-base", str(cache / "log"), "build", "--symlink-install"]
    build += ["--base-paths", str(PKG), "--build-base", str(cache / "build")]
    build += ["--install-base", str(cache / "install"), "--event-handlers", "console_direct-"]
    stamp_key = _digest(files, f"{key}|{'|'.join(names)}")
    _run_locked(cache.parent / "handoff.lock", cache / ".handoff-stamp", stamp_key, build, env)
    return _sourced([cache / "install" / "local_setup.bash"], env, None)


# launch's own lines about its processes, e.g. "[INFO] [policy-2]: process started with pid [7]"
_STARTED = re.compile(r"\[(\w+)-\d+\]: process started with pid \[(\d+)\]")
_CLEAN = re.compile(r"\[(\w+)-\d+\]: process has finished cleanly")
_DIED = re.compile(r"\[(\w+)-\d+\]: process has died \[.*")


# A process inherits an ignored SIGINT across exec (its parent is a script's background job,
# or nohup), and launch, which catches signals through a wakeup fd, then never hears SIGINT:
# stop() would wait out its timeout and kill everything. The child resets SIGINT to the
# default, then execs the command with the same pid (a preexec_fn could deadlock in a caller
# with threads). rclpy nodes need none of this: rclpy installs its SIGINT handler regardless.
_DEFAULT_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


class LaunchProcess:
    """``ros2 launch handoff_ros FILE ARG:=VALUE ...`` as a child process, its output in a file.

    ``ros2 launch`` exits 0 even when a node it started dies, so what launch printed about each
    process is what tells: :meth:`died` and :meth:`finished_cleanly`. Only SIGINT shuts launch
    down cleanly (SIGTERM leaves its nodes running): :meth:`stop` sends it.
    """

    def __init__(self, file: str, args: dict[str, str], env: dict[str, str], log_dir: Path) -> None:
        cmd = ["ros2", "launch", "handoff_ros", file] + [f"{k}:={v}" for k, v in args.items()]
        self.command = " ".join(cmd)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{Path(file).stem}-{os.getpid()}-{time.time_ns()}.log"
        env = {**env, "PYTHONUNBUFFERED": "1", "ROS_LOG_DIR": str(log_dir / "ros")}
        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop())
        # its own session: a Ctrl-C meant for the caller's terminal does not reach it twice;
        # started through _DEFAULT_SIGINT so that it hears the SIGINT stop() sends
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _DEFAULT_SIGINT, *cmd],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def started(self) -> dict[str, int]:
        """{process name: pid} of every process launch started."""
        return {name: int(pid) for name, pid in _STARTED.findall(self.log())}

    def died(self) -> list[str]:
        """launch's line for each process that exited with a non-zero status."""
        return [m.group(0) for m in _DIED.finditer(self.log())]

    def finished_cleanly(self) -> set[str]:
        return set(_CLEAN.findall(self.log()))

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGINT, as Ctrl-C would; SIGKILL to launch and its processes after ``timeout`` s.
        Returns launch's exit status."""
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                for pid in self.started().values():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait(timeout=5)
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode

    def __enter__(self) -> LaunchProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
