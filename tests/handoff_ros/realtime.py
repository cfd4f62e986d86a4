"""Checks of the nodes' real-time tick, shared by the policy and teleop node tests."""

from __future__ import annotations

import os
from pathlib import Path


def fifo_allowed() -> bool:
    """Whether this machine lets a process take SCHED_FIFO (root or CAP_SYS_NICE)."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except OSError:
        return False
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    return True


def thread_policies(pid: int) -> dict[int, int]:
    """{thread id: scheduling policy} of a process's threads."""
    return {
        int(t.name): os.sched_getscheduler(int(t.name)) for t in Path(f"/proc/{pid}/task").iterdir()
    }


def assert_only_the_tick_is_realtime(scheduling: str, pid: int) -> None:
    """The node's ``scheduling`` diagnostic says SCHED_FIFO 50 where the machine allows it
    (else that it was refused), and only the main thread, which spins the executor and so
    runs the tick, has it: not the inference worker, not DDS's threads."""
    allowed = fifo_allowed()
    assert scheduling == ("SCHED_FIFO 50" if allowed else "normal (SCHED_FIFO refused)")
    fifo = [t for t, p in thread_policies(pid).items() if p == os.SCHED_FIFO]
    assert fifo == ([pid] if allowed else []), fifo
