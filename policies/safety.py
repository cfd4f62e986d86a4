"""The layered safety filter every command passes before it reaches an arm (plain Python, no ROS).

Layers, in the order they are applied to each action (Da,) = joint targets (J,) + gripper (1,):

1. latched e-stop        -> hold until :meth:`SafetyFilter.clear_estop` (and re-enable)
2. enable gate           -> no command at all until enabled (off by default, except in sim)
3. stale observation     -> hold when the newest joint state is older than ``stale_after_s``
                            (or claims a time after ``now``: a clock that cannot be trusted)
4. teleop deadman        -> hold when the operator is not engaged (teleop only)
5. NaN/inf rejection     -> hold when any element of the action is not finite
6. joint position clamp  -> into [lower + margin, upper - margin] of the embodiment spec
7. step clamp            -> |target - previous target| <= min(max_step_delta,
                                                             velocity_limit * scale * elapsed)

"Hold" means: command the previous target again (or the measured position before any command
was sent), so the controller keeps the arm where it is. Every command that leaves the filter is
inside the position limits and the gripper range; this is asserted at the end of
:meth:`SafetyFilter.filter`, not hoped for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from data.embodiment import Embodiment


@dataclass
class SafetyConfig:
    """Parameters of the filter; limits themselves come from the embodiment spec."""

    # Real arms start disabled: a fresh policy node must be enabled by a person (~/enable).
    require_enable: bool = True
    # 0.05 rad per step at 20 Hz is 1 rad/s: fast enough for teleop, slow enough that one bad
    # prediction cannot swing the arm (Franka's joint velocity limits are 2.1-2.6 rad/s).
    max_step_delta: float = 0.05
    # Fraction of the spec's velocity limits the filter allows (headroom for tracking error).
    velocity_scale: float = 0.5
    # Shrinks the spec's position limits on each side, rad (clamp before the hardware trips).
    limit_margin: float = 0.0
    # Joint states older than this mean the driver or the network stalled: hold. 0.25 s is five
    # periods at 20 Hz, above DDS jitter on a loaded machine and far below a human reaction.
    stale_after_s: float = 0.25
    # A joint state whose time lies after "now" by more than this is not believed (stale hold).
    # The nodes also judge each message by its arrival (data.align.StampCheck), so a future
    # stamp never reaches the filter; this is the filter's own line.
    future_stamp_tolerance_s: float = 0.5
    # Teleop only: motion only while the operator holds the deadman input.
    require_deadman: bool = False
    # A deadman signal older than this counts as released (a teleop node that died).
    deadman_timeout_s: float = 0.5

    def __post_init__(self) -> None:
        if not self.max_step_delta > 0:
            raise ValueError("max_step_delta must be > 0 rad (it bounds every step)")
        if not 0 < self.velocity_scale <= 1:
            raise ValueError("velocity_scale must be in (0, 1]: a fraction of the spec's limits")
        if self.limit_margin < 0:
            raise ValueError("limit_margin must be >= 0 rad")
        if not self.stale_after_s > 0:
            raise ValueError("stale_after_s must be > 0 s")
        if not self.future_stamp_tolerance_s >= 0:
            raise ValueError("future_stamp_tolerance_s must be >= 0 s")
        if not self.deadman_timeout_s > 0:
            raise ValueError("deadman_timeout_s must be > 0 s")


@dataclass
class FilterResult:
    """What to send: ``command`` (Da,) float64, or None (enable gate closed: send nothing)."""

    command: np.ndarray | None
    reasons: list[str] = field(default_factory=list)  # layers that changed or blocked the action

    @property
    def held(self) -> bool:
        return any(r in HOLD_REASONS for r in self.reasons)


HOLD_REASONS = ("estop", "stale_observation", "deadman", "non_finite", "no_observation")


class SafetyFilter:
    """Stateful filter for one arm. Call :meth:`observe` on every joint state and
    :meth:`filter` once per control step; times are seconds on one monotonic clock."""

    def __init__(self, embodiment: Embodiment, config: SafetyConfig | None = None) -> None:
        self.spec = embodiment
        self.config = config or SafetyConfig()
        c = self.config
        lower = np.asarray(embodiment.position_lower, dtype=np.float64) + c.limit_margin
        upper = np.asarray(embodiment.position_upper, dtype=np.float64) - c.limit_margin
        if np.any(lower >= upper):
            raise ValueError(f"limit_margin {c.limit_margin} rad leaves no range for some joint")
        g = embodiment.gripper
        self.low = np.append(lower, g.command_min)  # (Da,)
        self.high = np.append(upper, g.command_max)  # (Da,)
        self.velocity = np.asarray(embodiment.velocity_limit, dtype=np.float64) * c.velocity_scale
        self.dt = embodiment.dt
        self.enabled = not c.require_enable
        self.estopped = False
        self.estop_reason = ""
        self._obs: np.ndarray | None = None  # (J,) measured joint positions
        self._obs_time = -math.inf
        self._last: np.ndarray | None = None  # (Da,) last command sent
        self._last_time: float | None = None
        self._engaged = False
        self._engaged_time = -math.inf
        self.counts: dict[str, int] = {}

    @property
    def last_command(self) -> np.ndarray | None:
        """(Da,) the last command sent, None before the first (or after a disable)."""
        return None if self._last is None else self._last.copy()

    @property
    def measured(self) -> np.ndarray | None:
        """(J,) the newest valid joint positions."""
        return None if self._obs is None else self._obs.copy()

    def observation_age(self, now: float) -> float:
        return now - self._obs_time

    # ---- run-time tuning -------------------------------------------------------------------

    # What an operator may change while the arm runs: both only scale the step bound within
    # the spec's limits. The rest (enable requirement, limit margin, watchdog and stamp
    # tolerances) decides what counts as safe at all and is fixed at start.
    TUNABLE = ("velocity_scale", "max_step_delta")

    def tunable_bounds(self) -> dict[str, tuple[float, float]]:
        """{name: (low, high)}: a value must lie in (low, high]. velocity_scale is a fraction
        of the spec's velocity limits; a max_step_delta above the largest step those limits
        allow in one spec period (max velocity_limit * dt, rad) would never bind, so it is the
        ceiling (a typo such as 5 rad is refused, not silently harmless)."""
        top = float(np.max(self.spec.velocity_limit)) * self.dt
        return {"velocity_scale": (0.0, 1.0), "max_step_delta": (0.0, top)}

    def retune(self, changes: Mapping[str, float]) -> None:
        """Change :attr:`TUNABLE` values ({name: value}) from the next :meth:`filter` call on,
        all or none: ValueError, with the bound, for another name or a value outside
        :meth:`tunable_bounds`, and nothing changes."""
        bounds = self.tunable_bounds()
        new = {}
        for name, value in changes.items():
            if name not in bounds:
                raise ValueError(f"{name} cannot change while running (only {self.TUNABLE} can)")
            low, high = bounds[name]
            new[name] = float(value)
            if not low < new[name] <= high:  # also refuses NaN
                raise ValueError(f"{name}={value} is outside ({low:g}, {high:.4g}]")
        config = replace(self.config, **new)
        # filter() on the control thread reads each of these once per call
        self.velocity = np.asarray(self.spec.velocity_limit, np.float64) * config.velocity_scale
        self.config = config

    # ---- inputs ----------------------------------------------------------------------------

    def observe(self, joint_pos: np.ndarray, stamp: float) -> None:
        """A measured joint state; ``stamp`` is when it was measured, on the clock of
        :meth:`filter`'s ``now`` (nodes pass :meth:`data.align.StampCheck.time_of`, never a
        raw header stamp)."""
        q = np.asarray(joint_pos, dtype=np.float64).reshape(-1)
        if q.shape != (self.spec.n_joints,) or not np.all(np.isfinite(q)):
            return  # a broken joint state is no observation: the watchdog goes stale
        self._obs = q
        self._obs_time = stamp

    def set_enabled(self, enabled: bool) -> tuple[bool, str]:
        """The enable gate (~/enable). Refused while the e-stop is latched."""
        if enabled and self.estopped:
            return False, f"e-stop is latched ({self.estop_reason}); clear it first"
        self.enabled = bool(enabled)
        if not enabled:
            self._last = None  # the next enable starts again from the measured position
        return True, "enabled" if enabled else "disabled"

    def reanchor(self) -> None:
        """Forget the last command: the next step is bounded from the measured joints (after
        someone else, e.g. a teleop operator, moved the arm)."""
        self._last = None

    def estop(self, reason: str = "e-stop") -> None:
        """Latch a hold; only :meth:`clear_estop` releases it."""
        if not self.estopped:
            self.estopped = True
            self.estop_reason = reason

    def clear_estop(self) -> None:
        """Release the latch. The gate closes again when enabling is required."""
        self.estopped = False
        self.estop_reason = ""
        if self.config.require_enable:
            self.enabled = False
            self._last = None

    def set_engaged(self, engaged: bool, stamp: float) -> None:
        self._engaged = bool(engaged)
        self._engaged_time = stamp

    # ---- the filter ------------------------------------------------------------------------

    def hold_target(self) -> np.ndarray | None:
        """(Da,) the position to hold: last command, else measured joints + open gripper."""
        if self._last is not None:
            return self._last.copy()
        if self._obs is None:
            return None
        hold = np.append(self._obs, self.spec.gripper.open_command)
        return np.clip(hold, self.low, self.high)

    def filter(self, action: np.ndarray, now: float) -> FilterResult:
        """Filter one action (Da,) at time ``now``; returns what to send."""
        c = self.config
        if self.estopped:
            return self._hold("estop", now)
        if not self.enabled:
            return self._count(FilterResult(None, ["disabled"]))
        if self._obs is None:
            return self._count(FilterResult(None, ["no_observation"]))
        if not -c.future_stamp_tolerance_s <= now - self._obs_time <= c.stale_after_s:
            return self._hold("stale_observation", now)
        if c.require_deadman and (
            not self._engaged or now - self._engaged_time > c.deadman_timeout_s
        ):
            return self._hold("deadman", now)
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != self.low.shape:
            raise ValueError(f"action has shape {a.shape}, the spec needs {self.low.shape}")
        if not np.all(np.isfinite(a)):
            return self._hold("non_finite", now)
        reasons = []
        clipped = np.clip(a, self.low, self.high)
        if np.any(clipped != a):
            reasons.append("position_limit")
        J = self.spec.n_joints
        ref = self._last[:J] if self._last is not None else self._obs
        if self._last is None or self._last_time is None:
            elapsed = self.dt
        else:  # at most one period's budget, however long the pause was
            elapsed = min(max(now - self._last_time, 0.0), self.dt)
        # 1 ms floor: back-to-back calls on one timestamp may still make progress
        vel_step = self.velocity * max(elapsed, 1e-3)
        max_step = np.minimum(vel_step, c.max_step_delta)  # (J,)
        delta = clipped[:J] - ref
        limited = np.clip(delta, -max_step, max_step)
        if np.any(limited != delta):
            reasons.append("step_limit")
        clipped[:J] = ref + limited
        return self._send(clipped, now, reasons)

    # ---- helpers ---------------------------------------------------------------------------

    def _hold(self, reason: str, now: float) -> FilterResult:
        hold = self.hold_target()
        if hold is None:
            return self._count(FilterResult(None, [reason, "no_observation"]))
        return self._send(hold, now, [reason])

    def _send(self, command: np.ndarray, now: float, reasons: list[str]) -> FilterResult:
        # The invariant, enforced last: whatever the layers above did, nothing leaves the limits.
        command = np.clip(command, self.low, self.high)
        assert np.all(np.isfinite(command))
        self._last = command.copy()
        self._last_time = now
        return self._count(FilterResult(command, reasons))

    def _count(self, result: FilterResult) -> FilterResult:
        for r in result.reasons:
            self.counts[r] = self.counts.get(r, 0) + 1
        return result

    def status(self) -> dict[str, str]:
        """Key/values for /diagnostics."""
        age = "none" if self._obs is None else "seen"
        return {
            "enabled": str(self.enabled),
            "estop": self.estop_reason or "clear",
            "observation": age,
            **{f"count_{k}": str(v) for k, v in sorted(self.counts.items())},
        }
