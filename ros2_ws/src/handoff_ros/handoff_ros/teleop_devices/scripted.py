"""``scripted``: the simulated twin of a teleop device, a fixed sequence of inputs played
back one per control tick (tests, demos, a scripted operator taking over a policy)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from handoff_ros.teleop_devices.base import TeleopDevice, TeleopInput, register_device

if TYPE_CHECKING:
    from data.embodiment import Embodiment
    from handoff_ros.teleop import TeleopParams


@register_device("scripted")
class Scripted(TeleopDevice):
    """``steps[i]`` at the i-th read; after the last one, released input (or from the first
    again with ``loop``). From the node's parameters: :meth:`square`, engaged throughout."""

    def __init__(self, steps: Sequence[TeleopInput], loop: bool = False) -> None:
        if not steps:
            raise ValueError("a scripted device needs at least one step")
        self.steps = list(steps)
        self.loop = loop
        self.reads = 0

    @classmethod
    def square(cls, side_m: float, speed: float, control_hz: float, loop: bool = True) -> Scripted:
        """A horizontal square in the base frame (+x, +y, -x, -y), ``side_m`` per side at
        ``speed`` m/s, ``control_hz`` reads a second: the arm comes back where it started."""
        ticks = max(1, round(side_m / speed * control_hz))
        steps = []
        for axis, sign in ((0, 1), (1, 1), (0, -1), (1, -1)):
            twist = np.zeros(6)
            twist[axis] = sign * speed
            steps += [TeleopInput(engaged=True, twist=twist)] * ticks
        return cls(steps, loop)

    @classmethod
    def from_params(cls, p: TeleopParams, spec: Embodiment) -> Scripted:
        # a 5 cm square at linear_scale: small enough to stay inside every task's workspace
        return cls.square(0.05, p.linear_scale, p.control_hz or spec.control_hz)

    def read(self) -> TeleopInput:
        i = self.reads % len(self.steps) if self.loop else self.reads
        self.reads += 1
        if i >= len(self.steps):
            return TeleopInput()
        step = self.steps[i]
        return replace(step, events=list(step.events))  # the caller may consume the events
