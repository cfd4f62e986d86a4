"""The recorder's plain-Python core: live streams -> fixed-rate steps -> the store (no ROS).

Each topic is a :class:`Stream` of (stamp, {store key: value}) messages. On every control tick
``t`` (a fixed grid at the spec's rate) every stream contributes its newest message with
stamp <= t that is at most ``max_age`` old -- data/align.py's rule, the same one the rosbag
importer uses. A stream with no fresh message holds its newest value and marks the step a gap;
an episode with gap steps is committed with ``has_gaps: true`` and per-stream gap counts.
A step holding NaN/inf is never stored: it is dropped and counted as a ``non_finite`` gap, and
an episode that ends without a step says why (``stop``'s answer), never that it was committed.

Writing happens on a background thread through ``DemoStore.episode_writer()``: callbacks only
append to bounded deques and a queue, so they never wait on compression or disk. The writer
streams steps to the arrays as they come, so a killed recorder loses only the unfinished
episode (the store truncates it on the next open). Once written, each committed episode is
logged with its index, steps and success, and each discarded one with its steps and reason.

Policy rollouts (a correction session, ``label_rollouts``) get per-step labels
(data/store.py LABELS) from the teleop engaged flag: ``intervention`` while the operator holds
the arm, ``autonomous`` otherwise, and ``pre_intervention`` for the PRE_INTERVENTION_STEPS
steps before each takeover (:class:`RolloutLabeler`, which holds that many steps back in the
writer thread so it can still relabel them); an episode with a takeover is committed with
source ``corrected``, the same form simulated corrections take (sim/corrector.py).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data.align import latest_index
from data.rosmsg import decode_compressed
from data.store import (
    AUTONOMOUS,
    INTERVENTION,
    LABEL_KEY,
    PRE_INTERVENTION,
    PRE_INTERVENTION_STEPS,
    DemoStore,
)
from handoff_ros.images import fit


@dataclass(frozen=True)
class EncodedFrame:
    """A JPEG/PNG frame as received: only frames that land in a step are ever decoded."""

    data: bytes | bytearray | memoryview
    format: str = ""


@dataclass
class StreamStats:
    received: int = 0
    dropped: int = 0  # estimated from stamp gaps larger than 1.5 median periods
    latency: deque = field(default_factory=lambda: deque(maxlen=200))  # receive - stamp, s
    stamps: deque = field(default_factory=lambda: deque(maxlen=200))

    def rate_hz(self) -> float:
        if len(self.stamps) < 2:
            return 0.0
        span = self.stamps[-1] - self.stamps[0]
        return (len(self.stamps) - 1) / span if span > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latency) * 1e3 if self.latency else np.zeros(1)
        return {
            "rate_hz": round(self.rate_hz(), 2),
            "received": self.received,
            "dropped": self.dropped,
            "latency_ms_p50": round(float(np.percentile(lat, 50)), 2),
            "latency_ms_max": round(float(lat.max()), 2),
        }


class Stream:
    """Recent messages of one topic; ``max_age`` None = the value never goes stale (a command
    a position controller keeps holding); ``offset`` s: a message stamped up to this long
    after a tick belongs to it (commands, data.align's rule, as the bag importer applies it)."""

    def __init__(
        self, name: str, max_age: float | None, keep: int = 64, offset: float = 0.0
    ) -> None:
        self.name = name
        self.max_age = max_age
        self.offset = offset
        self._stamps: deque[float] = deque(maxlen=keep)
        self._values: deque[dict[str, np.ndarray]] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self.stats = StreamStats()

    def push(self, stamp: float, values: dict[str, np.ndarray], received: float) -> None:
        with self._lock:
            self._stamps.append(stamp)
            self._values.append(values)
        s = self.stats
        if len(s.stamps) >= 4 and stamp > s.stamps[-1]:
            period = float(np.median(np.diff(np.asarray(s.stamps)[-16:])))
            gap = stamp - s.stamps[-1]
            if period > 0 and gap > 1.5 * period:
                s.dropped += round(gap / period) - 1
        s.received += 1
        s.latency.append(received - stamp)
        s.stamps.append(stamp)

    def at(self, tick: float) -> tuple[dict[str, np.ndarray] | None, bool]:
        """(values, gap) at ``tick`` by the alignment rule; values None when no message is
        stamped at or before ``tick``."""
        with self._lock:
            if not self._stamps:
                return None, True
            stamps = np.fromiter(self._stamps, dtype=np.float64, count=len(self._stamps))
            idx, gap = latest_index(stamps, tick + self.offset, self.max_age)
            i = int(idx[0])
            # live there is no "first message" to edge-pad with: before it there is nothing
            return (None, True) if i < 0 else (self._values[i], bool(gap[0]))


def non_finite_keys(values: dict[str, Any]) -> list[str]:
    """Keys whose float values hold NaN/inf (never stored, never given to a policy)."""
    bad = []
    for key, v in values.items():
        a = np.asarray(v) if not isinstance(v, EncodedFrame) else None
        if a is not None and a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
            bad.append(key)
    return bad


Default = dict[str, np.ndarray] | Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class RolloutLabeler:
    """Labels a policy rollout's steps from their ``intervention`` flag as they stream by.

    :meth:`push` takes one step and returns the steps now final: each is released
    ``pre_steps`` steps late, so a takeover can still mark the steps before it
    ``pre_intervention`` (stopping at an earlier intervention step, as Sirius does; the same
    labels as :func:`data.store.label_rollout` on the whole episode). :meth:`flush` returns
    the rest at the episode's end.
    """

    def __init__(self, pre_steps: int = PRE_INTERVENTION_STEPS) -> None:
        self.pre_steps = pre_steps
        self.held: deque[dict[str, Any]] = deque()
        self.previous = False
        self.any_intervention = False

    def push(self, step: dict[str, Any]) -> list[dict[str, Any]]:
        flag = bool(step.get("intervention", False))
        if flag and not self.previous:
            for earlier in reversed(self.held):
                if earlier[LABEL_KEY] == INTERVENTION:
                    break
                earlier[LABEL_KEY] = np.uint8(PRE_INTERVENTION)
        step[LABEL_KEY] = np.uint8(INTERVENTION if flag else AUTONOMOUS)
        self.previous = flag
        self.any_intervention |= flag
        self.held.append(step)
        out = []
        while len(self.held) > self.pre_steps:
            out.append(self.held.popleft())
        return out

    def flush(self) -> list[dict[str, Any]]:
        out = list(self.held)
        self.held.clear()
        return out


class EpisodeRecorder:
    """Steps from streams at fixed ticks; episodes written by a background thread.

    ``image_shapes`` maps camera keys to the stored (H, W); frames are resized in the writer
    thread. ``optional`` gives values for streams that are silent (never spoke, or stale)
    without counting a gap: a dict, or a function of the step assembled so far (streams are
    visited in order), e.g. the operator's engaged flag when no teleop node runs, or "hold the
    measured position" before the first command. ``logger`` (``info``/``warning``/``error``,
    e.g. a ROS node's logger; default: the ``logging`` module's) hears every outcome.
    ``label_rollouts``: the episodes are policy rollouts; label their steps from the
    ``intervention`` flag (:class:`RolloutLabeler`).
    """

    def __init__(
        self,
        store: DemoStore,
        streams: dict[str, Stream],
        image_shapes: dict[str, tuple[int, int]],
        meta: dict[str, Any],
        optional: dict[str, Default] | None = None,
        max_queue: int = 200,
        logger: Any = None,
        label_rollouts: bool = False,
    ) -> None:
        self.store = store
        self.label_rollouts = label_rollouts
        self.log = logger or logging.getLogger("handoff.recording")
        self.streams = streams
        self.image_shapes = image_shapes
        self.meta = meta
        self.optional = optional or {}
        self.recording = False
        self.success: bool | None = None
        self.episodes_written = 0
        self.steps = 0
        self.queue_max = 0
        self.write_errors: list[str] = []
        self._gaps: dict[str, int] = {}
        self._start_tick = 0.0
        self._start_at: float | None = None  # a requested start, waiting for its tick
        self._stop_at: float | None = None  # a requested stop, waiting for its last tick
        self._start_meta: dict[str, Any] = {}
        # steps waiting for the writer: 200 = 10 s at 20 Hz (~550 MB with three VGA cameras);
        # control items (start/commit/discard) are never refused
        self.max_queue = max_queue
        self.dropped_steps = 0
        self._q: queue.Queue = queue.Queue()
        # control calls and ticks may come from different threads (the node uses one)
        self._lock = threading.RLock()
        self._silent: set[str] = set()  # required streams that had not spoken at a tick
        self._non_finite: dict[str, int] = {}  # key -> steps dropped for NaN/inf in it
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._writer, name="recorder-writer", daemon=True)
        self._thread.start()

    # ---- control (the node's service threads) ----------------------------------------------

    def start(self, at: float | None = None, **meta: Any) -> str:
        """Begin an episode with the first tick >= ``at`` (None: the next tick).

        The node's ticks run ``lag_s`` behind the clock, so ``at`` = the request time keeps
        steps from before the request out of the episode.
        """
        with self._lock:
            if self._start_at is not None or (self.recording and self._stop_at is None):
                return "already recording"
            self._start_at = -math.inf if at is None else at
            self._start_meta = {**self.meta, **meta, "start_time": time.time()}
            return "episode starts at the next tick"

    def _begin(self) -> None:
        self.recording, self.success, self.steps = True, None, 0
        self._gaps = {name: 0 for name in self.streams}
        self._silent = set()
        self._non_finite = {}
        self._start_tick = math.nan
        self._episode_meta = self._start_meta
        self._start_at = None
        self._put(("start", None))

    def stop(self, at: float | None = None) -> tuple[bool, str]:
        """End the episode after the last tick <= ``at`` (None: now) and commit it.

        The answer is the outcome, given at once (the ticks of the last ``lag_s`` are assembled
        later, by :meth:`tick`): an episode with no step so far is discarded now and answers
        False with the reason; any other is committed, so it answers True.
        """
        with self._lock:
            if self._start_at is not None and not self.recording:
                self._start_at = None
                return False, "episode had not begun; nothing recorded"
            if not self.recording or self._stop_at is not None:
                return False, "not recording"
            if at is None or self.steps == 0:
                return self._finish()
            self._stop_at = at
            return True, (
                f"stopping after {self.steps} steps; the episode is committed once its last "
                f"ticks are assembled"
            )

    def _finish(self) -> tuple[bool, str]:
        self.recording = False
        self._stop_at = None
        dropped = (
            f"; dropped {sum(self._non_finite.values())} step(s) holding NaN/inf in "
            f"{sorted(self._non_finite)}"
            if self._non_finite
            else ""
        )
        if self.steps == 0:
            why = self._why_empty()
            self._put(("discard", (0, f"no step recorded: {why}")))
            return False, f"no step recorded, nothing stored: {why}"
        gaps = {k: v for k, v in self._gaps.items() if v}
        meta = {
            **self._episode_meta,
            "success": self.success,
            "has_gaps": bool(gaps),
            "gap_steps": gaps,
            "n_steps": self.steps,
        }
        self._put(("commit", meta))
        message = f"episode of {self.steps} steps committed"
        return True, message + (f", gaps {gaps}" if gaps else "") + dropped

    def _why_empty(self) -> str:
        """Why an episode has no step, in words a user can act on."""
        if self._non_finite:
            return f"every step held NaN/inf in {sorted(self._non_finite)}"
        if self._silent:
            return f"no usable message from {sorted(self._silent)} (see /diagnostics)"
        return "no tick fell between the start and the stop"

    def discard(self, reason: str = "~/discard called") -> tuple[bool, str]:
        with self._lock:
            self._start_at = None
            if not self.recording:
                return False, "not recording"
            self.recording = False
            self._stop_at = None
            self._put(("discard", (self.steps, reason)))
            return True, f"discarded {self.steps} steps"

    def mark_success(self, success: bool) -> tuple[bool, str]:
        with self._lock:
            if not self.recording:
                return False, "not recording: mark success before ~/stop"
            self.success = bool(success)
            return True, f"episode marked success={self.success}"

    # ---- the tick ---------------------------------------------------------------------------

    def tick(self, t: float) -> dict[str, np.ndarray] | None:
        """Assemble the step at tick ``t`` (seconds) and queue it when recording. A step
        holding NaN/inf is never stored: it is dropped and counted (a gap, named by key)."""
        with self._lock:
            if self.recording and self._stop_at is not None and t > self._stop_at:
                self._finish()
            if not self.recording and self._start_at is not None and t >= self._start_at:
                self._begin()
            step: dict[str, np.ndarray] = {}
            for name, stream in self.streams.items():
                values, gap = stream.at(t)
                default = self.optional.get(name)
                if default is not None and (values is None or (gap and stream.max_age is not None)):
                    values, gap = (default(step) if callable(default) else default), False
                if values is None:
                    if self.recording:
                        self._silent.add(name)
                    return None  # a required stream never spoke: nothing to record yet
                if gap and self.recording:
                    self._gaps[name] += 1
                step.update(values)
            bad = non_finite_keys(step)
            if bad:
                if self.recording:
                    for key in bad:
                        self._non_finite[key] = self._non_finite.get(key, 0) + 1
                    self._gaps["non_finite"] = self._gaps.get("non_finite", 0) + 1
                return None
            if self.recording:
                self._record(t, step)
            return step

    def _record(self, t: float, step: dict[str, np.ndarray]) -> None:
        if math.isnan(self._start_tick):
            self._start_tick = t
        step["timestamp"] = np.float64(t - self._start_tick)
        if self._q.qsize() >= self.max_queue:
            # the disk cannot keep up: drop the step rather than block the ROS callbacks,
            # and flag the episode (a step missing from the regular grid is a gap)
            self.dropped_steps += 1
            self._gaps["writer_backlog"] = self._gaps.get("writer_backlog", 0) + 1
        else:
            self.steps += 1
            self._put(("step", step))

    # ---- the writer thread ------------------------------------------------------------------

    def _put(self, item: tuple[str, Any]) -> None:
        self._idle.clear()
        self._q.put(item)
        self.queue_max = max(self.queue_max, self._q.qsize())

    def _writer(self) -> None:
        writer = labeler = None
        while True:
            kind, payload = self._q.get()
            try:
                if kind == "stop":
                    if writer is not None:
                        writer.discard()
                    return
                if kind == "start":
                    writer = self.store.episode_writer()
                    labeler = RolloutLabeler() if self.label_rollouts else None
                elif kind == "step" and writer is not None:
                    for key, (h, w) in self.image_shapes.items():
                        frame = payload[key]
                        if isinstance(frame, EncodedFrame):  # decoded here, off the callbacks
                            frame = decode_compressed(frame.data, frame.format)
                        payload[key] = fit(frame, h, w)
                    for step in labeler.push(payload) if labeler else [payload]:
                        writer.add_step(step)
                elif kind == "commit" and writer is not None:
                    if labeler is not None:
                        for step in labeler.flush():
                            writer.add_step(step)
                        if labeler.any_intervention:
                            payload = {**payload, "source": "corrected"}
                    index = writer.commit(**payload)
                    writer = None
                    self.episodes_written += 1
                    gaps = payload["gap_steps"]
                    self.log.info(
                        f"episode {index} committed: {payload['n_steps']} steps, "
                        f"success={payload['success']}" + (f", gaps {gaps}" if gaps else "")
                    )
                elif kind == "discard":
                    if writer is not None:
                        writer.discard()
                        writer = None
                    steps, reason = payload
                    self.log.warning(f"episode discarded after {steps} steps: {reason}")
            except Exception as e:  # noqa: BLE001 - reported on /diagnostics, never lost
                self.write_errors.append(f"{kind}: {e}")
                self.log.error(f"store write failed ({kind}): {e}")
                if writer is not None and kind != "step":
                    writer = None
            finally:
                if self._q.empty():
                    self._idle.set()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued is written."""
        return self._idle.wait(timeout)

    def close(self) -> None:
        """Shut the writer down: a stopped episode still waiting for its last ticks is
        committed with what it has; an episode never stopped is discarded."""
        with self._lock:
            if self.recording and self._stop_at is not None:
                self._finish()
            elif self.recording:
                self.discard("the recorder shut down before ~/stop")
        self._q.put(("stop", None))
        self._thread.join(timeout=30)
