"""Worker processes that each own one simulated task, shared by collection and evaluation.

Workers start with the "spawn" context (fork would copy MuJoCo/OpenGL state and torch
threads), pin math libraries to one thread each (N workers on N cores must not oversubscribe)
and ignore SIGINT, so Ctrl-C reaches only the parent, which keeps what is finished.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_STATE: dict[str, Any] = {}
BARRIER_TIMEOUT_S = 600  # a worker whose set-up fails never arrives; the others go on then


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def limit_threads() -> None:
    for var in THREAD_VARS:
        os.environ[var] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _init(setup: Callable[[], Any], ready: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    limit_threads()
    try:
        _STATE["ctx"] = setup()
    except Exception as e:  # re-raised by every job, so the parent sees it
        # (an initializer that raises makes multiprocessing respawn the worker forever)
        _STATE["error"] = e
    limit_threads()  # the setup may have imported torch
    # start the jobs together: the first worker up would otherwise take the first jobs alone
    # while the others still build their scenes, which skews throughput figures
    with contextlib.suppress(threading.BrokenBarrierError):
        ready.wait(timeout=BARRIER_TIMEOUT_S)


def _call(job: tuple[Callable[[Any, Any], Any], Any]) -> Any:
    if "error" in _STATE:
        raise _STATE["error"]
    fn, arg = job
    return fn(_STATE["ctx"], arg)


def run_jobs(
    setup: Callable[[], Any],
    fn: Callable[[Any, Any], Any],
    args: Iterable[Any],
    workers: int,
) -> Iterator[Any]:
    """Yield ``fn(ctx, arg)`` for each arg in order, ``ctx = setup()`` once per worker.

    ``setup`` and ``fn`` must be picklable (module-level functions or ``functools.partial``)
    when ``workers > 1``; with one worker everything runs in this process.
    """
    if workers <= 1:
        ctx = setup()
        for arg in args:
            yield fn(ctx, arg)
        return
    ctx = mp.get_context("spawn")
    # Children read the thread limits from the environment when numpy/OpenBLAS load, which is
    # before _init runs: measured, 2 workers with default BLAS threads ran 0.6x the speed of
    # one, with one thread each 1.7x.
    saved = {v: os.environ.get(v) for v in THREAD_VARS}
    os.environ.update({v: "1" for v in THREAD_VARS})
    try:
        pool = ctx.Pool(workers, initializer=_init, initargs=(setup, ctx.Barrier(workers)))
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
    try:
        yield from pool.imap(_call, ((fn, a) for a in args), chunksize=1)
        pool.close()
    finally:
        pool.terminate()
        pool.join()
