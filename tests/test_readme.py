"""Every command in the README, run as a user would (with smaller sizes).

Commands in ```bash blocks run in order in one scratch directory, so later ones use what
earlier ones made (collect -> train -> evaluate -> convert ...). Sizes shrink: fewer episodes
and training steps, one evaluation episode, CPU instead of CUDA. Lines that need what this
machine cannot have are checked instead of run: `ros2 launch` (the launch file exists and
declares every argument), `ros2 service call` / `ros2 topic pub` (a node offers that service or
subscribes to that topic with that type), `docker` (the Dockerfile or compose file exists;
tests/test_docker.py checks their contents). ROS nodes started with `python -m handoff_ros.X`
must come up and stay up, then shut down cleanly on Ctrl-C. `make demo` runs in quick mode in
its own test; `make test` is this suite.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NODES = REPO / "ros2_ws/src/handoff_ros/handoff_ros"
pytestmark = pytest.mark.slow


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def shrink(cmd: list[str]) -> list[str]:
    """Smaller sizes for a test run; the command itself stays what the README says."""
    out = list(cmd)
    tool = Path(out[0]).name

    def set_flag(flag: str, value: str) -> None:
        if flag in out:
            out[out.index(flag) + 1] = value
        else:
            out.extend([flag, value])

    if tool == "handoff-collect":
        set_flag("--episodes", "4")
    elif tool == "handoff-eval" and "--replay" not in out:
        set_flag("--episodes", "1")
    elif tool in ("handoff-train", "accelerate"):
        set_flag("--steps", "6" if "--resume" in out else "4")
        if "--resume" not in out:
            set_flag("--batch-size", "8")
            set_flag("--eval-every", "0")
            set_flag("--eval-episodes", "1")
        if "--device" in out:
            set_flag("--device", "cpu")  # no GPU here; the same code path minus CUDA
        if tool == "accelerate":  # one CPU process instead of 4 GPUs
            i = out.index("--multi_gpu")
            out[i : i + 3] = ["--cpu", "--num_processes", "1"]
    elif "handoff_ros.closed_loop" in out:
        set_flag("--episodes", "1")
    return out


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}:{e['PATH']}"
    e["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    e["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 101)
    e["PYTHONUNBUFFERED"] = "1"
    e.setdefault("MUJOCO_GL", "osmesa")
    e["HANDOFF_CACHE"] = ".handoff-cache"  # LeRobot conversions land in the test's folder
    return e


def check_ros2(cmd: list[str]) -> None:
    verb = cmd[1]
    if verb == "launch":
        assert cmd[2] == "handoff_ros"
        source = (REPO / "launch" / cmd[3]).read_text()
        for arg in cmd[4:]:
            key = arg.partition(":=")[0]
            assert re.search(rf'DeclareLaunchArgument\(\s*"{key}"', source), (cmd[3], key)
    elif verb == "service":
        _, node, service = cmd[3].split("/")
        kind = cmd[4].rsplit("/", 1)[-1]
        source = (NODES / f"{node}.py").read_text()
        assert f'create_service({kind}, "~/{service}"' in source, cmd
    elif verb == "topic":
        topic, kind = cmd[4], cmd[5].rsplit("/", 1)[-1]
        hits = [p for p in NODES.glob("*.py") if f'"{topic}"' in p.read_text()]
        assert hits and any(re.search(rf"\b{kind}\b", p.read_text()) for p in hits), cmd
    else:
        raise AssertionError(f"no check for {cmd}")


def run_node(cmd: list[str], cwd: Path, seconds: float = 12.0) -> None:
    """A node must come up, stay up, and exit cleanly on Ctrl-C."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        time.sleep(seconds)
        assert proc.poll() is None, f"{cmd} exited early:\n{proc.stdout.read()[-3000:]}"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, -signal.SIGINT), f"{cmd}: exit {proc.returncode}\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]


def test_every_readme_command(tmp_path):
    for name in ("ros2_ws", "docker", "data"):
        (tmp_path / name).symlink_to(REPO / name)
    ran, checked = [], []
    for line in readme_commands():
        cmd = shlex.split(line)
        head = cmd[0]
        if head == "make":
            assert cmd[1] in ("demo", "test"), line  # demo: test_make_demo_quick; test: this
            continue
        if head == "source":
            assert (tmp_path / cmd[1]).is_file(), f"{line}: colcon did not make it"
            checked.append(line)
            continue
        if head == "ros2":
            check_ros2(cmd)
            checked.append(line)
            continue
        if head == "docker":
            target = cmd[cmd.index("-f") + 1]
            assert (REPO / target).is_file(), line
            checked.append(line)
            continue
        if head == "python" and cmd[2].startswith("handoff_ros.") and "--ros-args" in cmd:
            run_node([sys.executable, *cmd[1:]], tmp_path)
            ran.append(line)
            continue
        if head == "python":
            cmd[0] = sys.executable
        elif head == "colcon":
            cmd += ["--build-base", "build", "--install-base", "install"]
            cmd[cmd.index("--base-paths") + 1] = str(REPO / "ros2_ws/src")
            cmd[0] = str(BIN / "colcon")
        else:
            cmd[0] = str(BIN / head)
        proc = subprocess.run(
            shrink(cmd), cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=900
        )
        assert proc.returncode == 0, (
            f"`{line}` failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
        if head == "handoff-train":  # handoff's progress, not other libraries' chatter
            infos = [x for x in proc.stderr.splitlines() if x.startswith("INFO ")]
            assert infos and all(x.startswith("INFO handoff.") for x in infos), proc.stderr
        ran.append(line)
    assert len(ran) >= 30 and len(checked) >= 8, (len(ran), len(checked))


def test_make_demo_quick(tmp_path):
    """`make demo` end to end in quick mode: collect, train, evaluate, ROS closed loop, table."""
    out = tmp_path / "demo"

    def run_demo() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "handoff_ros.demo", "--quick", "--out", str(out)],
            cwd=tmp_path,
            env=env(),
            capture_output=True,
            text=True,
            timeout=1200,
        )

    proc = run_demo()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for stage in (
        "[1/5] collect",
        "[2/5] train",
        "[3/5] evaluate",
        "[4/5] run the checkpoint",
        "[5/5] summary",
        "sim success",
        "ROS closed loop",
        "inference latency",
    ):
        assert stage in proc.stdout, stage
    assert (out / "act/eval/report.json").is_file()
    assert (out / "act/eval/rollouts.mp4").is_file()
    assert (out / "ros_report.json").is_file()
    # a second run reuses the store, the checkpoint and the report
    again = run_demo()
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing" in again.stdout and "[2/5] train" in again.stdout
