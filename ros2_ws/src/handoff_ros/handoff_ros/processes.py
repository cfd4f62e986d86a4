"""Node processes and probes over real DDS on loopback: for closed_loop, the demo, the
benchmarks and the tests.

Every process started here gets ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and the caller's
``ROS_DOMAIN_ID``, so no traffic leaves the machine and parallel runs do not see each other.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile

from handoff_ros.rosutil import use_dds_profile

_counter = 0


def fresh_domain_id() -> int:
    """A ROS_DOMAIN_ID in 1..101 derived from the pid (plus a counter per call in a process)."""
    global _counter
    _counter += 1
    return 1 + (os.getpid() * 7 + _counter) % 101


def ros_env(domain_id: int) -> dict[str, str]:
    env = dict(os.environ)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env.setdefault("MUJOCO_GL", "osmesa")
    env["PYTHONUNBUFFERED"] = "1"
    return use_dds_profile(env)


def param_args(params: dict[str, Any]) -> list[str]:
    out = []
    for k, v in params.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif v == "":
            v = '""'  # rcl's parser needs a YAML empty string, not nothing
        out += ["-p", f"{k}:={v}"]
    return out


class NodeProcess:
    """``python -m handoff_ros.<node> --ros-args ...`` as a child process; logs go to a file.
    ``extra_args`` (e.g. ``--params-file F``) come before ``params``: rcl lets the later of two
    settings of a parameter win, so ``params`` override a parameter file's values."""

    def __init__(
        self,
        node: str,
        domain_id: int,
        params: dict[str, Any] | None = None,
        log_dir: Path | None = None,
        extra_args: list[str] | None = None,
        remap: dict[str, str] | None = None,
    ) -> None:
        args = [sys.executable, "-m", f"handoff_ros.{node}", "--ros-args"]
        args += extra_args or []
        args += param_args(params or {})
        for a, b in (remap or {}).items():
            args += ["-r", f"{a}:={b}"]
        self.log_path = (log_dir or Path("/tmp")) / f"{node}-{os.getpid()}-{time.time_ns()}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            args, env=ros_env(domain_id), stdout=self._log, stderr=subprocess.STDOUT
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            self.proc.send_signal(sig)
        self.proc.wait(timeout=10)

    def stop(self) -> int | None:
        """SIGINT (clean shutdown), then SIGKILL after 5 s; returns the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()
        return self.proc.returncode


@contextmanager
def nodes(*procs: NodeProcess) -> Iterator[tuple[NodeProcess, ...]]:
    """Stop every process on exit, whatever happened. On an error, each process's state and
    the end of its log go to stderr (a failing test shows what the nodes were doing)."""
    try:
        yield procs
    except BaseException:
        for p in procs:
            tail = "\n".join(p.log().splitlines()[-30:])
            state = "running" if p.alive() else f"exited {p.proc.returncode}"
            print(f"--- {p.log_path.name} ({state}):\n{tail}", file=sys.stderr)
        raise
    finally:
        for p in procs:
            p.stop()


class Probe:
    """An in-process rclpy node on its own context: subscribe, publish, call, wait."""

    SETTLE_S = 1.0  # after a service appears, for the server to match this client's replies

    def __init__(self, domain_id: int, name: str = "probe") -> None:
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        use_dds_profile()  # the transports the nodes use
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.msgs: dict[str, list[tuple[float, Any]]] = defaultdict(list)
        self._clients: dict[tuple[type, str], Any] = {}

    def subscribe(self, msg_type: type, topic: str, qos: QoSProfile | int = 10) -> None:
        def cb(msg: Any, info: dict[str, int]) -> None:
            # the middleware's reception time (wall clock): unlike the time this callback
            # runs, it does not include this probe's own executor delays
            received = info.get("received_timestamp", 0)
            self.msgs[topic].append((received * 1e-9 if received else time.time(), msg))

        self.node.create_subscription(msg_type, topic, cb, qos)

    def spin_until(self, cond: Callable[[], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return True
            self.executor.spin_once(timeout_sec=0.05)
        return cond()

    def spin_for(self, seconds: float) -> None:
        self.spin_until(lambda: False, seconds)

    def call(
        self, srv_type: type, name: str, request: Any, timeout: float = 20.0, resend_s: float = 3.0
    ) -> Any:
        """Call a service; re-sends every ``resend_s`` (a server that was just killed can look
        alive to discovery for a while and swallow the first request). The first answer wins.

        One client per service is kept for the probe's life. Discovery is not symmetric: the
        client can see the server before the server has matched the client's reply reader, and
        rmw_fastrtps drops a reply whose reader it has not matched after a short wait (about
        0.1 s), so on a loaded machine the first call's answer could be lost for good (CI:
        ``/recorder/start did not answer within 60 s``). A new client therefore waits
        ``SETTLE_S`` after the server appears before its first request; later calls reuse the
        matched client."""
        key = (srv_type, name)
        client = self._clients.get(key)
        fresh = client is None
        if fresh:
            client = self.node.create_client(srv_type, name)
        if not self.spin_until(client.service_is_ready, timeout):
            if fresh:
                self.node.destroy_client(client)
            raise TimeoutError(f"service {name} did not appear within {timeout} s")
        if fresh:
            self.spin_for(self.SETTLE_S)
            self._clients[key] = client
        end = time.monotonic() + timeout
        futures = []
        while time.monotonic() < end:
            futures.append(client.call_async(request))
            if self.spin_until(lambda: any(f.done() for f in futures), resend_s):
                return next(f for f in futures if f.done()).result()
        raise TimeoutError(f"service {name} did not answer within {timeout} s")

    def diagnostic_values(self, node_name: str) -> dict[str, str]:
        """Key/values of the newest /diagnostics status of ``node_name`` (subscribe first)."""
        for _, array in reversed(self.msgs["/diagnostics"]):
            for status in array.status:
                if status.name == node_name:
                    return {kv.key: kv.value for kv in status.values}
        return {}

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
