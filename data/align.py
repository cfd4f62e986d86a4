"""The one rule that turns asynchronous message streams into fixed-rate steps.

The ROS recorder (live) and the rosbag2 importer (offline) both use it, so a demonstration
recorded on the robot and the same session replayed from a bag give the same steps.

The rule, for every control tick ``t`` and every stream::

    sample(t) = the newest message with stamp <= t + offset
    gap(t)    = there is no such message, or it is older than ``max_age``
                ((t + offset) - stamp > max_age)

``offset`` is 0 for observations (a policy acting at ``t`` can only have seen messages stamped
at or before ``t``). A gap step still gets a value (the newest message, or the stream's first
message before the stream starts — i.e. hold / edge-pad), so arrays stay rectangular, but it is
reported so that an episode with gaps can be flagged or dropped.

Stamps, ticks, ``offset`` and ``max_age`` only need to share one unit: float seconds or int64
nanoseconds (rosbag2 stamps). Integer nanoseconds make the rule exact (no rounding at the
``stamp == tick`` boundary); :func:`control_grid` builds grids in either unit.

Shapes: T ticks, N messages of one stream.

What goes into the rule is checked first. A message's time is the earlier of its header stamp
and its arrival (:class:`StampCheck`; a stamp after the arrival beyond a tolerance is refused),
so no publisher clock can make old data look fresh. Joint states are merged by joint name
across messages (:class:`JointStateMerge`: an arm and its gripper often publish apart), and
velocities a driver does not measure are estimated from positions, never stored as NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

NS_PER_S = 1_000_000_000


def control_grid(start: float | int, stop: float | int, rate_hz: float) -> np.ndarray:
    """Ticks ``start + k / rate_hz`` for k = 0, 1, ... while the tick is <= ``stop``.

    With int (nanosecond) ``start``/``stop`` the grid is int64 ns, each tick rounded on its own
    (``start + round(k * 1e9 / rate)``) so rounding never accumulates over a long recording.
    Returns (T,); empty when ``stop < start``.
    """
    if rate_hz <= 0:
        raise ValueError(f"rate_hz must be positive, got {rate_hz}")
    if isinstance(start, int | np.integer) and isinstance(stop, int | np.integer):
        period = NS_PER_S / rate_hz
        # one spare tick: rounding may put the last one exactly on ``stop``; filtered below
        n = int((int(stop) - int(start)) // period) + 2 if stop >= start else 0
        k = np.arange(n, dtype=np.float64)
        ticks = int(start) + np.round(k * period).astype(np.int64)
        return ticks[ticks <= stop]
    n = int(np.floor((float(stop) - float(start)) * rate_hz + 1e-9)) + 1 if stop >= start else 0
    return float(start) + np.arange(max(n, 0), dtype=np.float64) / rate_hz


def latest_index(
    stamps: np.ndarray, ticks: np.ndarray | float | int, max_age: float | int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the rule to one stream.

    stamps: (N,) message stamps in arrival order (need not be sorted; among equal stamps the
    later arrival counts as newer). ticks: (T,) or a scalar (the live recorder's one tick).
    Returns ``(index, gap)``: index (T,) int64 into ``stamps`` of the newest message with
    stamp <= tick, or -1 where none exists yet; gap (T,) bool = no message or too old.
    """
    stamps = np.asarray(stamps)
    ticks_arr = np.atleast_1d(np.asarray(ticks))
    if stamps.ndim != 1:
        raise ValueError(f"stamps must be 1-D, got shape {stamps.shape}")
    if len(stamps) == 0:
        return np.full(ticks_arr.shape, -1, np.int64), np.ones(ticks_arr.shape, bool)
    order = None
    if np.any(stamps[1:] < stamps[:-1]):
        order = np.argsort(stamps, kind="stable")  # stable: ties keep arrival order
        stamps = stamps[order]
    # side="right": the last of several messages sharing the tick's stamp is the newest
    pos = np.searchsorted(stamps, ticks_arr, side="right") - 1  # (T,) into sorted stamps
    gap = pos < 0
    if max_age is not None:
        age = ticks_arr - stamps[np.maximum(pos, 0)]
        gap |= age > max_age
    index = pos.astype(np.int64) if order is None else np.where(pos >= 0, order[pos], -1)
    return index, gap


@dataclass(frozen=True)
class Alignment:
    """Result of :func:`align`: which message of each stream every tick uses.

    ``index[name]`` (T,) int64 is the message each tick takes (-1 before the stream's first
    message; :meth:`take` edge-pads those); ``gaps[name]`` (T,) bool marks ticks where the rule
    found no fresh message.
    """

    ticks: np.ndarray
    index: dict[str, np.ndarray]
    gaps: dict[str, np.ndarray]
    max_age: dict[str, float | int | None] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ticks)

    @property
    def gap_steps(self) -> np.ndarray:
        """(T,) bool: ticks where any stream had a gap."""
        out = np.zeros(len(self.ticks), bool)
        for g in self.gaps.values():
            out |= g
        return out

    @property
    def has_gaps(self) -> bool:
        return bool(self.gap_steps.any())

    def take(self, name: str, values: np.ndarray) -> np.ndarray:
        """Per-tick values of stream ``name``: values (N, ...) -> (T, ...).

        Ticks before the first message take the first message (edge padding, as the sequence
        dataset does); stale ticks keep the newest message (hold last value).
        """
        values = np.asarray(values)
        idx = self.index[name]
        if len(values) == 0:
            raise ValueError(f"stream {name!r} has no messages to take values from")
        return values[np.maximum(idx, 0)]

    def report(self) -> dict[str, int]:
        """Gap step count per stream (JSON-able), plus ``"any"`` for steps with any gap."""
        out = {name: int(g.sum()) for name, g in self.gaps.items()}
        out["any"] = int(self.gap_steps.sum())
        return out


def common_span(streams: Mapping[str, np.ndarray]) -> tuple[float | int, float | int]:
    """(start, stop) where every stream has begun and none has ended: the default grid span.

    start = the latest first stamp, stop = the earliest last stamp, so the grid has no gap
    steps caused only by one sensor starting late or stopping early.
    """
    nonempty = {k: np.asarray(v) for k, v in streams.items() if len(v)}
    if len(nonempty) != len(streams):
        empty = sorted(set(streams) - set(nonempty))
        raise ValueError(f"stream(s) {empty} have no messages")
    start = max(v.min() for v in nonempty.values())
    stop = min(v.max() for v in nonempty.values())
    return start.item(), stop.item()


def align(
    streams: Mapping[str, np.ndarray],
    rate_hz: float | None = None,
    *,
    ticks: np.ndarray | None = None,
    max_age: float | int | None | Mapping[str, float | int | None] = None,
    offset: float | int | Mapping[str, float | int] = 0,
) -> Alignment:
    """Align several streams to one control grid with the rule above.

    streams: {name: (N_name,) stamps}. Either ``ticks`` (T,) is given (the recorder's timer
    ticks) or a grid at ``rate_hz`` over :func:`common_span` is built. ``max_age`` and
    ``offset`` are one value for all streams or a per-stream mapping (missing names: no age
    limit / offset 0). A positive ``offset`` lets a stream published *after* the tick it
    belongs to count for it (e.g. a command computed from the tick's observation).
    """
    if ticks is None:
        if rate_hz is None:
            raise ValueError("give either ticks or rate_hz")
        start, stop = common_span(streams)
        ticks = control_grid(start, stop, rate_hz)
    ticks = np.asarray(ticks)
    index: dict[str, np.ndarray] = {}
    gaps: dict[str, np.ndarray] = {}
    ages: dict[str, float | int | None] = {}
    for name, stamps in streams.items():
        age = max_age.get(name) if isinstance(max_age, Mapping) else max_age
        off = offset.get(name, 0) if isinstance(offset, Mapping) else offset
        index[name], gaps[name] = latest_index(stamps, ticks + off if off else ticks, age)
        ages[name] = age
    return Alignment(ticks=ticks, index=index, gaps=gaps, max_age=ages)


def split_at_gaps(stamps: np.ndarray, max_gap: float | int) -> list[tuple[int, int]]:
    """Split sorted stamps (N,) into runs where consecutive stamps are <= ``max_gap`` apart.

    Returns [(first, last)] stamp *values* of each run, e.g. to cut a bag into episodes where
    the robot stopped publishing for longer than ``max_gap``.
    """
    stamps = np.sort(np.asarray(stamps))
    if len(stamps) == 0:
        return []
    cuts = np.flatnonzero(np.diff(stamps) > max_gap)  # index of the last stamp of each run
    firsts = np.concatenate([[0], cuts + 1])
    lasts = np.concatenate([cuts, [len(stamps) - 1]])
    return [(stamps[a].item(), stamps[b].item()) for a, b in zip(firsts, lasts)]


@dataclass
class StampCheck:
    """When a message counts as taken: its header stamp, checked against its arrival.

    A stamp is the publisher's claim; the arrival time is the receiver's own clock, which no
    publisher can defeat. A message cannot describe a moment after it arrived, so its time is
    the earlier of the two (its age the larger of the two ages): a stamp far in the future never
    makes an old message look fresh to a staleness watchdog or to the alignment rule, and a stamp
    far in the past makes it look old. A stamp more than ``future_tolerance`` after its arrival
    (more than plausible clock skew between machines) is a broken publisher clock: the message
    is rejected, and counted per topic in ``rejected``.

    ``stamp``, ``received`` and ``future_tolerance`` share one unit (float s or int ns).
    """

    future_tolerance: float | int = 0.5
    rejected: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.future_tolerance >= 0:
            raise ValueError(f"future_tolerance must be >= 0, got {self.future_tolerance}")

    def time_of(self, stamp: float | int, received: float | int, topic: str = "") -> float | int:
        """The message's time, min(stamp, received); ValueError (counted) for a future stamp."""
        if stamp - received > self.future_tolerance:
            self.rejected[topic] = self.rejected.get(topic, 0) + 1
            raise ValueError(
                f"stamp {stamp - received:.3f} s after the message arrived (tolerance "
                f"{self.future_tolerance} s): a publisher clock ahead of this one; rejected"
            )
        return min(stamp, received)


@dataclass(frozen=True)
class JointSample:
    """Joints in the order asked for: positions and velocities (J,) float64, and the times of
    the oldest and newest message they came from."""

    positions: np.ndarray
    velocities: np.ndarray
    oldest: float | int
    newest: float | int


class JointStateMerge:
    """The newest state of each joint by name, from JointState messages that may each carry only
    some joints (an arm driver and a separate gripper driver publishing on one topic).

    :meth:`take` assembles the joints asked for from the messages that last carried them, as
    long as those messages lie within ``window`` of each other; the sample's ``oldest`` time is
    what a staleness check must judge (an arm whose driver died must look stale, however
    fresh the gripper's messages are).

    Velocities: a driver without a velocity interface leaves the array empty or fills it with
    NaN (ros2_control does). Those are never passed on: the joint's velocity is estimated from
    its previous position, (q - q_prev) / (t - t_prev) when the two messages are at most
    ``window`` apart, else it is unknown (NaN in the sample; the caller refuses it). Joints
    whose velocity was ever estimated are listed in ``estimated``. Times and ``window`` share
    one unit, ``unit_s`` seconds: float seconds live (1.0), int nanoseconds for bag stamps
    (1e-9), which keeps the samples' times exact. Plain Python, no ROS: the live nodes and the
    rosbag2 converter share it.
    """

    def __init__(self, window: float | int, unit_s: float = 1.0) -> None:
        if not window > 0:
            raise ValueError(f"window must be > 0, got {window}")
        self.window, self.unit_s = window, unit_s
        # name -> (time, position, velocity); velocity NaN when unknown
        self._state: dict[str, tuple[float | int, float, float]] = {}
        self.estimated: set[str] = set()

    @property
    def names(self) -> list[str]:
        """Every joint heard so far (in the order first heard)."""
        return list(self._state)

    def update(
        self, t: float | int, names: Sequence[str], positions: Any, velocities: Any = ()
    ) -> None:
        """Merge one message at time ``t``; ValueError when its arrays do not fit its names."""
        names = list(names)
        pos = np.asarray(positions, dtype=np.float64).reshape(-1)
        vel = np.asarray(velocities, dtype=np.float64).reshape(-1)
        if len(pos) != len(names):
            raise ValueError(f"{len(names)} joint names but {len(pos)} positions")
        if len(vel) not in (0, len(names)):
            raise ValueError(f"{len(names)} joint names but {len(vel)} velocities")
        if len(set(names)) != len(names):
            raise ValueError(f"joint names repeat: {names}")
        for i, name in enumerate(names):
            v = vel[i] if len(vel) else np.nan
            if not np.isfinite(v):
                v = self._estimate(name, t, pos[i])
            self._state[name] = (t, float(pos[i]), float(v))

    def _estimate(self, name: str, t: float | int, q: float) -> float:
        prev = self._state.get(name)
        if prev is None or not np.isfinite(q) or not np.isfinite(prev[1]):
            return np.nan
        dt = t - prev[0]
        if dt == 0:
            return prev[2]  # the same instant again: keep the estimate it had
        if not 0 < dt <= self.window:
            return np.nan
        self.estimated.add(name)
        return (q - prev[1]) / (dt * self.unit_s)

    def take(self, want: Sequence[str]) -> JointSample:
        """The joints ``want`` in that order; ValueError names joints never heard, or heard too
        long before the others. Positions are as sent (NaN/inf included: the caller refuses
        them by key); velocities are NaN where unknown."""
        missing = [n for n in want if n not in self._state]
        if missing:
            raise ValueError(f"joint(s) {missing} not heard yet (heard: {self.names})")
        parts = [self._state[n] for n in want]
        times = np.array([p[0] for p in parts])
        newest = times.max()
        old = [n for n, t in zip(want, times) if newest - t > self.window]
        if old:
            raise ValueError(
                f"joint(s) {old} last heard over {self.window * self.unit_s:g} s before the others "
                f"(a driver stopped publishing?)"
            )
        pos = np.array([p[1] for p in parts])
        vel = np.array([p[2] for p in parts])
        return JointSample(pos, vel, times.min().item(), newest.item())  # int ns stay int
