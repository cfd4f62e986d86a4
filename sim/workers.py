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
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
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
    when ``workers > 1``; with one worker (or one job) everything runs in this process. An
    error in a job is raised here; on any exit (error, Ctrl-C, the caller stopping early)
    queued jobs are cancelled and the running ones finish before this returns.

    concurrent.futures rather than multiprocessing.Pool: Pool.terminate() kills workers that
    may hold the result queue's lock, and its task thread then waits on that lock forever
    (seen here once in a test whose workers fail their set-up).
    """
    args = list(args)
    workers = min(workers, len(args))
    if workers <= 1:
        ctx = setup()
        for arg in args:
            yield fn(ctx, arg)
        return
    ctx = mp.get_context("spawn")
    # Children read the thread limits from the environment when numpy/OpenBLAS load, which is
    # before _init runs: measured, 2 workers with default BLAS threads ran 0.6x the speed of
    # one, with one thread each 1.7x. Workers start as jobs are submitted, so the limits stay
    # set while this runs.
    saved = {v: os.environ.get(v) for v in THREAD_VARS}
    os.environ.update({v: "1" for v in THREAD_VARS})
    pool = ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init, initargs=(setup, ctx.Barrier(workers))
    )
    pending: deque[Future] = deque()
    try:
        jobs = iter(args)
        for arg in jobs:  # two jobs per worker in flight: one running, one queued
            pending.append(pool.submit(_call, (fn, arg)))
            if len(pending) < 2 * workers:
                continue
            yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
