"""The policy runner: one object between a policy and an arm, the same in simulation
(``handoff-eval``) and on the robot (the ROS policy node wraps it).

    runner = make_runner(policy, scheme="rtc", delay=4, safety=SafetyFilter(spec))
    runner.reset()
    every control tick:  result = runner.tick(obs, now)   # result.command: (Da,) or None

What it owns:

- **observation history**: the last To steps (the first one repeated at the start, as the
  training windows edge-pad episode starts);
- **inference**: a chunk predicted from the history at tick k holds the actions for ticks k,
  k+1, ... (H of them: ``policy.chunk_length``). It becomes usable ``d`` ticks later. Simulation
  computes it at once and releases it exactly d ticks later (``delay=d``), or after its
  measured wall-clock time (``delay=-1``: ceil(ms / period), at least 1); the node computes it
  on a worker thread and uses it from the first tick it is done (``delay=-1``) or at k + d
  (``delay=d``, later only if still running). With d >= 1 the next chunk is started right
  after the tick's command went out, so inference overlaps the arm's motion; with d = 0 it is
  computed before the tick acts (simulation's lock-step; on the node the tick waits at most
  ``inference_budget`` of a period for it);
- **chunk execution**, one scheme per run (``SCHEMES``):
  ``sync``: execute s actions of a chunk, then hold until the next one (started once those s
  went out) arrives, and execute it from its first action;
  ``async`` (naive asynchronous): start the next chunk d ticks before the current one has
  executed s actions, switch to it on arrival, skipping the d actions whose time has passed;
  ``ensemble`` (ACT's temporal ensembling, Zhao et al. 2023 sec. 3.3): a chunk is started
  whenever none is in flight; the action for tick t is the mean of every stored chunk's
  prediction for t, weighted exp(-m i) with i = 0 the oldest (m = ``ensemble_coeff``);
  ``rtc`` (real-time chunking, Black et al. 2025): scheduled as ``async``, but re-planning as
  often as inference allows (by default the next chunk starts as soon as one action of the
  current one went out, so each executes about d actions; ``execute_steps`` s > 1 waits for
  s - d), and the next chunk is inferred knowing the actions the current one will still
  execute: its first d actions are frozen to them, and the following ones, up to where the
  current chunk ends, are pulled towards it with RTC's soft mask (weights decaying from 1 to
  0). A policy with ``guided_sampling`` (diffusion) applies it during denoising; others (ACT)
  blend their chunk with it afterwards. On arrival the frozen prefix is overwritten with the
  committed actions, so it equals them exactly;
- **the safety filter** (:mod:`policies.safety`), which every action passes (holds when no
  action is ready);
- **observers**: ``on_chunk(chunk, tick, ms)`` callbacks for every chunk (the node publishes
  them), and :class:`SeamStats` (largest joint jump at chunk switches against inside chunks,
  held ticks).

Where it lives: here in ``policies/``, because it drives ``policy.predict_chunk`` (guidance is
part of the policy); it imports no ROS. ``sim`` must not import ``policies``, so the evaluator
gets a runner through the ``make_runner`` hook (pyproject.toml), as it gets checkpoints
through ``load_policy``.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import numpy as np

from data.errors import UserError
from policies.safety import FilterResult, SafetyConfig, SafetyFilter

SCHEMES = ("sync", "async", "ensemble", "rtc")
MEASURED = -1  # delay: use the measured inference time


def normal_priority() -> None:
    """Run the calling thread under normal (SCHED_OTHER) scheduling. The inference worker
    starts on the first tick, so on the node it would inherit the control thread's real-time
    policy (handoff_ros.rosutil.realtime_thread); a 150 ms chunk at that priority would hold
    off the control loop and DDS instead of the other way round. Lowering needs no privilege."""
    if hasattr(os, "sched_setscheduler") and os.sched_getscheduler(0) != os.SCHED_OTHER:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


@dataclass
class RunnerConfig:
    """How chunks are scheduled and executed; see the module docstring."""

    # one of SCHEMES; auto: the policy's default_scheme, or sync when delay > H / 3
    scheme: str = "auto"
    # Control ticks from the observation to the first usable action; -1: measured (sim: the
    # wall-clock inference time; node: whenever the worker thread is done).
    delay: int = 0
    # s, actions executed per chunk by sync/async/rtc; 0: the policy's Ta (rtc with a delay: 1).
    execute_steps: int = 0
    # m, ACT paper sec. 3.3 (0.01); None: the policy config's temporal_ensemble_coeff or 0.01
    ensemble_coeff: float | None = None
    # node, delay 0: the fraction of a period a tick waits for its chunk before it holds
    inference_budget: float = 0.6
    # rtc: how many actions after the frozen d the soft mask pulls towards the current chunk;
    # -1: all the current chunk still covers (Black et al. 2025)
    soft_steps: int = -1
    # diffusion: denoising steps per chunk; 0: the checkpoint's own (e.g. 10 DDIM). Fewer
    # steps shorten the chunk time and with it the delay d a chunk needs (README, deployment)
    sampling_steps: int = 0

    def __post_init__(self) -> None:
        if self.scheme not in ("auto", *SCHEMES):
            raise ValueError(f"scheme {self.scheme!r}: use one of {('auto', *SCHEMES)}")
        if self.delay < MEASURED:
            raise ValueError("delay is control ticks >= 0, or -1 for the measured time")
        if self.execute_steps < 0:
            raise ValueError("execute_steps must be >= 0 (0: the policy's Ta)")
        if not 0 < self.inference_budget < 1:
            raise ValueError("inference_budget must be in (0, 1): a fraction of the period")
        if self.soft_steps < -1:
            raise ValueError("soft_steps must be >= 0, or -1 for the whole overlap")
        if self.sampling_steps < 0:
            raise ValueError("sampling_steps must be >= 0 (0: the checkpoint's own)")


@dataclass
class SeamStats:
    """Per-episode execution figures: the largest joint-target jump (rad, max over joints;
    the gripper excluded) where execution switched chunks and inside chunks, held ticks."""

    ticks: int = 0
    held: int = 0
    chunks: int = 0
    seams: int = 0
    boundary_jump: float = 0.0
    inchunk_jump: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 5) if isinstance(v, float) else v for k, v in vars(self).items()}


@dataclass
class _Inference:
    tick: int  # the tick whose observation it was computed from
    release: int  # the earliest tick it may be used at
    guide: tuple[np.ndarray, np.ndarray] | None
    future: Future | None = None  # threaded
    chunk: np.ndarray | None = None  # (H, Da), simulated
    ms: float = 0.0


@dataclass
class _Chunk:
    actions: np.ndarray  # (H, Da)
    tick: int  # tick of actions[0]
    ident: int
    obs_tick: int  # tick of the observation it was computed from
    executed: int = 0


class PolicyRunner:
    """Turns a stream of observations into commands; see the module docstring.

    ``threaded``: infer on a worker thread (the node); else inline (simulation, tests).
    ``period_s`` is the control period (default: the policy's embodiment)."""

    def __init__(
        self,
        policy: Any,
        config: RunnerConfig | None = None,
        safety: SafetyFilter | None = None,
        *,
        threaded: bool = False,
        period_s: float | None = None,
        on_chunk: list[Callable[[np.ndarray, int, float], None]] | None = None,
    ) -> None:
        self.policy = policy
        self.config = config = config or RunnerConfig()
        set_sampling_steps(policy, config.sampling_steps)
        self.H = int(policy.chunk_length)
        self.scheme = config.scheme
        if self.scheme == "auto":
            self.scheme = policy.default_scheme
            if self.scheme in ("async", "ensemble", "rtc") and 3 * config.delay > self.H:
                # measured on lift: executing on while a chunk is inferred kept its success at
                # delays up to a quarter of the chunk (4 of 15 and 20 steps) and lost 13-56
                # points at 8 (of 15 and 20), where waiting (sync) kept it (README table)
                self.scheme = "sync"
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme {self.scheme!r}: use one of {SCHEMES}")
        self.safety = safety
        self.period = period_s or policy.embodiment.dt
        s = int(policy.default_execute_steps)
        if self.scheme == "rtc" and config.delay != 0:
            # rtc re-plans as often as inference allows: the next chunk starts as soon as one
            # action of the current one went out, so each executes about d actions. Measured
            # on can (state, d = 4, 100 episodes; README): Ta actions per chunk (ACT 10,
            # diffusion 8) ran each chunk 4-13 steps after its observation and lost the grasp
            # (ACT 23/100, diffusion 33/100); re-planning kept rtc's lock-step success (ACT 82
            # against 76 at d = 0, diffusion 68 against 76; on other seeds re-planning 88 and
            # 72, Ta per chunk 20 and 30). Lift lost nothing measurable (diffusion 97 against
            # 99). Naive async may not do the same: without RTC's consistency the frequent
            # switches made both policies oscillate (0-1/100).
            s = 1
        self.s = min(config.execute_steps or s, self.H)
        self.J = policy.embodiment.n_joints
        m = config.ensemble_coeff
        if m is None:
            m = getattr(policy.config, "temporal_ensemble_coeff", None)
        self.ensemble_coeff = 0.01 if m is None else float(m)
        self.on_chunk = list(on_chunk or [])
        self.pool = (
            ThreadPoolExecutor(1, thread_name_prefix="inference", initializer=normal_priority)
            if threaded
            else None
        )
        self.inference_ms: deque[float] = deque(maxlen=1000)
        self.inflight: _Inference | None = None
        self.reset()

    # ---- lifecycle -------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> None:
        """A new episode: no history, no chunks, tick 0 (an inference in flight is awaited
        and dropped). ``seed`` seeds torch's generator, so a sampling policy (diffusion) draws
        the same noise for the same episode whatever ran before (evaluation)."""
        self._drop_inflight()
        reset_stream = getattr(self.policy, "reset_stream", None)
        if reset_stream is not None:  # a streaming diffusion policy's buffer: a new episode
            reset_stream()
        if seed is not None:
            import torch

            torch.manual_seed(seed)
        if self.safety is not None:
            self.safety.reanchor()  # the first command is bounded from the measured joints
        self.source_tick = -1  # observation tick behind the last action sent
        self.last_action_sent = False
        self.history: deque[dict[str, np.ndarray]] = deque(maxlen=self.policy.history_steps)
        self.k = 0
        self.chunk: _Chunk | None = None
        self.ensemble: deque[tuple[int, np.ndarray]] = deque()
        self.committed: dict[int, np.ndarray] = {}  # tick -> action sent (before safety)
        self.delays: deque[int] = deque([max(self.config.delay, 1)], maxlen=5)
        self.stats = SeamStats()
        self._prev: tuple[np.ndarray, Any] | None = None  # (action, source) of the last tick
        self._ids = 0
        self._adopted: list[tuple[np.ndarray, int, float]] = []  # for the observers

    def close(self) -> None:
        self._drop_inflight()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _drop_inflight(self) -> None:
        if self.inflight is not None and self.inflight.future is not None:
            self.inflight.future.result()  # let it finish: the policy is not re-entrant
        self.inflight = None

    # ---- the tick --------------------------------------------------------------------------

    def tick(
        self,
        obs: dict[str, np.ndarray] | None,
        now: float = 0.0,
        send: Callable[[np.ndarray], None] | None = None,
        joints: tuple[np.ndarray, float] | None = None,
    ) -> FilterResult:
        """One control tick. ``obs``: the newest complete observation (None: none yet);
        ``now``: seconds on the safety filter's clock; ``send`` is called with the command
        before the next chunk starts (the node publishes there); ``joints``: (measured joint
        positions (J,), their time) for the safety filter. Returns what was sent."""
        if joints is not None and self.safety is not None:
            self.safety.observe(*joints)
        k = self.k
        self.k += 1
        # Only what the command needs runs before ``send``: on the node the period error is
        # how much this part varies. Preparing the observation (tensors; images) and the
        # chunk observers (the node builds a trajectory message of H points) wait until after.
        early = self.config.delay == 0
        if early:
            self._observe(obs)
        self._collect(k)
        if early and self._due(k, acted=False):
            self._launch(k)
        action, source = self._action(k)
        result = self._filter(action, now)
        if send is not None and result.command is not None:
            send(result.command)
        if not early:
            self._observe(obs)
        self._record(k, action, source)
        if not early and self._due(k, acted=True):
            self._launch(k)
        self._notify()
        return result

    def _observe(self, obs: dict[str, np.ndarray] | None) -> None:
        if obs is None:
            return
        prepare = getattr(self.policy, "prepare_step", None)
        obs = prepare(obs) if prepare is not None else obs
        if not self.history:
            self.history.extend([obs] * self.history.maxlen)
        self.history.append(obs)

    def _notify(self) -> None:
        """Call the ``on_chunk`` observers for the chunks adopted this tick."""
        adopted, self._adopted = self._adopted, []
        for chunk, tick, ms in adopted:
            for fn in self.on_chunk:
                fn(chunk, tick, ms)

    def _filter(self, action: np.ndarray | None, now: float) -> FilterResult:
        if self.safety is None:
            return FilterResult(action, [] if action is not None else ["waiting"])
        if action is None:
            hold = self.safety.hold_target()
            if hold is None:
                return FilterResult(None, ["no_observation"])
            return self.safety.filter(hold, now)
        return self.safety.filter(action, now)

    # ---- inference -------------------------------------------------------------------------

    @property
    def expected_delay(self) -> int:
        """d the scheduler plans with: the configured delay, or the recent measured ones."""
        if self.config.delay != MEASURED:
            return self.config.delay
        return int(max(self.delays))

    def _due(self, k: int, acted: bool) -> bool:
        if self.inflight is not None or not self.history:
            return False
        if self.scheme == "ensemble" or self.chunk is None:
            return True
        done = self.chunk.executed  # actions of the current chunk sent so far (incl. tick k)
        if self.scheme == "sync":
            return done >= self.s
        # async / rtc: start so the next chunk arrives once s actions went out
        return done >= max(1 if acted else 0, self.s - self.expected_delay)

    def _launch(self, k: int) -> None:
        history = list(self.history)  # of the policy's prepare_step, oldest first
        guide = self._guide(k) if self.scheme == "rtc" else None
        d = self.config.delay
        if self.pool is None:  # simulated: compute now, release d ticks later
            t0 = time.perf_counter()
            chunk = self._predict(history, guide)
            ms = (time.perf_counter() - t0) * 1e3
            if d == MEASURED:
                d = max(1, math.ceil(ms / (self.period * 1e3)))
            self.inflight = _Inference(k, k + d, guide, chunk=chunk, ms=ms)
        else:
            future = self.pool.submit(self._timed_predict, history, guide)
            self.inflight = _Inference(k, k + max(d, 0), guide, future=future)
            if d == 0:  # lock-step on the node: wait a bounded time for this tick's chunk
                with contextlib.suppress(FutureTimeout):
                    future.result(timeout=self.config.inference_budget * self.period)
        self._collect(k)

    def _timed_predict(self, history: list, guide: Any) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        chunk = self._predict(history, guide)
        return chunk, (time.perf_counter() - t0) * 1e3

    def _predict(self, history: list, guide: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
        if guide is not None and getattr(self.policy, "guided_sampling", False):
            chunk = self.policy.predict_chunk(history, guide=guide)
        else:
            chunk = self.policy.predict_chunk(history)
            if guide is not None:  # blend towards the committed actions, as guidance would
                target, w = guide
                n = len(w)
                chunk[:n] = w[:, None] * target + (1 - w[:, None]) * chunk[:n]
        return np.asarray(chunk, dtype=np.float32)

    def _collect(self, k: int) -> None:
        """Adopt the chunk in flight if it may be used at tick ``k``."""
        inf = self.inflight
        if inf is None or k < inf.release:
            return
        if inf.future is not None:
            if not inf.future.done():
                return
            inf.chunk, inf.ms = inf.future.result()
        self.inflight = None
        chunk = inf.chunk
        assert chunk is not None
        self.delays.append(k - inf.tick)
        self.inference_ms.append(inf.ms)
        if self.scheme == "rtc":  # the frozen prefix: exactly what was sent meanwhile
            for t in range(inf.tick, min(k, inf.tick + len(chunk))):
                if t in self.committed:
                    chunk[t - inf.tick] = self.committed[t]
        self._adopted.append((chunk, inf.tick, inf.ms))  # observers run after the send
        self._ids += 1
        self.stats.chunks += 1
        if self.scheme == "ensemble":
            self.ensemble.append((inf.tick, chunk))
            while self.ensemble and self.ensemble[0][0] + self.H <= k:
                self.ensemble.popleft()
        elif self.scheme == "sync":  # the arm waited for it: execute from its first action
            self.chunk = _Chunk(chunk, k, self._ids, inf.tick)
        else:
            self.chunk = _Chunk(chunk, inf.tick, self._ids, inf.tick)

    def _guide(self, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """RTC's target and soft mask for a chunk started at tick ``k`` (its index i is tick
        k + i): the current chunk's actions, weights 1 for the d frozen ones, then
        c_i (e^c_i - 1) / (e - 1) with c_i = (n - i) / (n - d + 1) (Black et al. 2025, eq. 5),
        down to 0 at n: where the current chunk ends, or ``soft_steps`` after d if sooner."""
        cur = self.chunk
        if cur is None:
            return None
        end = cur.tick + len(cur.actions) - k  # new-chunk indices the current one covers
        if end <= 0:
            return None
        d = min(self.expected_delay, end)
        soft = self.config.soft_steps
        n = end if soft < 0 else min(end, d + soft)
        if n == 0:
            return None
        target = np.stack(
            [self.committed.get(k + i, cur.actions[k + i - cur.tick]) for i in range(n)]
        )
        i = np.arange(n, dtype=np.float64)
        c = (n - i) / (n - d + 1)
        w = np.where(i < d, 1.0, c * np.expm1(c) / (math.e - 1))
        return target.astype(np.float32), w.astype(np.float32)

    # ---- execution -------------------------------------------------------------------------

    def _action(self, k: int) -> tuple[np.ndarray | None, Any]:
        """The action for tick ``k`` (before safety) and its source (chunk id), or None."""
        if self.scheme == "ensemble":
            preds = [c[k - t] for t, c in self.ensemble if 0 <= k - t < len(c)]
            if not preds:
                return None, None
            w = np.exp(-self.ensemble_coeff * np.arange(len(preds)))  # oldest first
            self.source_tick = self.ensemble[-1][0]
            return (w[:, None] * np.stack(preds)).sum(0) / w.sum(), "ensemble"
        cur = self.chunk
        if cur is None:
            return None, None
        i = k - cur.tick
        if self.scheme == "sync" and cur.executed >= self.s:
            return None, None  # waiting for the next chunk
        if not 0 <= i < len(cur.actions):
            return None, None  # the chunk ran out before the next one arrived
        cur.executed += 1
        self.source_tick = cur.obs_tick
        return cur.actions[i].copy(), cur.ident

    def _record(self, k: int, action: np.ndarray | None, source: Any) -> None:
        st = self.stats
        st.ticks += 1
        self.last_action_sent = action is not None
        self.committed.pop(k - 2 * self.H, None)
        if action is None:
            st.held += 1
            if self._prev is not None:  # the arm holds its last target
                self.committed[k] = self._prev[0]
            return
        self.committed[k] = action
        if self._prev is not None:
            jump = float(np.max(np.abs(action[: self.J] - self._prev[0][: self.J])))
            if source != self._prev[1] and self.scheme != "ensemble":
                st.seams += 1
                st.boundary_jump = max(st.boundary_jump, jump)
            else:
                st.inchunk_jump = max(st.inchunk_jump, jump)
        self._prev = (action, source)


def set_sampling_steps(policy: Any, steps: int) -> None:
    """Set a diffusion policy's denoising steps per chunk (its scheduler kept); 0 keeps the
    checkpoint's own. Raises UserError for a negative count or a policy that does not sample
    (ACT)."""
    if steps < 0:
        raise UserError(f"sampling_steps {steps}: use >= 0 (0: the checkpoint's own)")
    if not steps:
        return
    if not hasattr(policy, "set_inference"):
        raise UserError(
            f"sampling_steps {steps}: {type(policy).__name__} has no denoising steps to set "
            f"(only diffusion checkpoints sample); use 0"
        )
    policy.set_inference(policy.config.inference_scheduler, steps)


def make_runner(
    policy: Any,
    scheme: str = "auto",
    delay: int = 0,
    execute_steps: int = 0,
    safety: bool | dict[str, Any] = True,
    sampling_steps: int = 0,
    soft_steps: int = -1,
    **kwargs: Any,
) -> PolicyRunner:
    """The ``make_runner`` hook: a simulation runner for ``policy``. ``safety``: True for the
    filter the node uses on the simulated arm (enabled, the default limits), a dict of
    :class:`SafetyConfig` values, or False for none. ``sampling_steps`` > 0 sets a sampling
    policy's number of denoising steps (diffusion: ``set_inference``), e.g. to compare a
    teacher at 1, 2 and 10 DDIM steps, as the node's ``sampling_steps`` does."""
    config = RunnerConfig(
        scheme=scheme,
        delay=delay,
        execute_steps=execute_steps,
        soft_steps=soft_steps,
        sampling_steps=sampling_steps,
    )
    filt = None
    if safety:
        values = {"require_enable": False, **(safety if isinstance(safety, dict) else {})}
        filt = SafetyFilter(policy.embodiment, SafetyConfig(**values))
    return PolicyRunner(policy, config, filt, **kwargs)


__all__ = [
    "MEASURED",
    "SCHEMES",
    "PolicyRunner",
    "RunnerConfig",
    "SeamStats",
    "make_runner",
    "set_sampling_steps",
]
