"""``joy``: a gamepad through ROS's ``joy`` driver (sensor_msgs/Joy on ``joy_topic``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from handoff_ros.teleop_devices.base import TeleopDevice, TeleopInput, need_node, register_device

if TYPE_CHECKING:
    from rclpy.node import Node

    from data.embodiment import Embodiment
    from handoff_ros.teleop import TeleopParams


class JoyMapping:
    """sensor_msgs/Joy (axes, buttons) -> TeleopInput. Defaults fit the Xbox layout of ROS's
    ``joy`` driver: left stick = x/y, right stick vertical = z, right stick horizontal = yaw,
    LB = deadman, A close / B open the gripper, START/BACK start/stop, Y success, X discard."""

    def __init__(
        self,
        axes: Sequence[int] = (1, 0, 4, -1, -1, 3),
        deadman_button: int = 4,
        linear_scale: float = 0.1,  # m/s at full stick: slow enough to place objects
        angular_scale: float = 0.5,  # rad/s at full stick
        gripper_buttons: tuple[int, int] = (0, 1),  # (close, open)
        event_buttons: dict[str, int] | None = None,
        deadzone: float = 0.1,  # sticks rarely rest at exactly zero
    ) -> None:
        if len(axes) != 6:
            raise ValueError("joy axes must list 6 indices (vx vy vz wx wy wz; -1 = unused)")
        self.axes = list(axes)
        self.deadman = deadman_button
        self.scale = np.array([linear_scale] * 3 + [angular_scale] * 3)
        self.gripper_buttons = gripper_buttons
        self.event_buttons = event_buttons or {"start": 7, "stop": 6, "success": 3, "discard": 2}
        self.deadzone = deadzone
        self._prev: list[int] = []

    def __call__(
        self, axes: Sequence[float], buttons: Sequence[int], gripper_range: tuple[float, float]
    ) -> TeleopInput:
        def button(i: int) -> bool:
            return 0 <= i < len(buttons) and bool(buttons[i])

        raw = np.array([axes[i] if 0 <= i < len(axes) else 0.0 for i in self.axes])
        raw[np.abs(raw) < self.deadzone] = 0.0
        out = TeleopInput(engaged=button(self.deadman), twist=raw * self.scale)
        close, open_ = self.gripper_buttons
        if button(close):
            out.gripper = gripper_range[1]
        elif button(open_):
            out.gripper = gripper_range[0]
        for event, i in self.event_buttons.items():
            pressed = button(i)
            was = 0 <= i < len(self._prev) and bool(self._prev[i])
            if pressed and not was:  # rising edge: one event per press
                out.events.append(event)
        self._prev = list(buttons)
        return out


@register_device("joy")
class Joy(TeleopDevice):
    """The newest Joy message, mapped by :class:`JoyMapping`; events of every message count.

    A pad that stopped publishing (unplugged) reads as released after ``stale_s``: it must
    not keep the arm moving.
    """

    def __init__(
        self,
        mapping: JoyMapping | None = None,
        topic: str = "/joy",
        gripper_range: tuple[float, float] = (-1.0, 1.0),
        stale_s: float = 0.5,  # the joy driver repeats at 20 Hz by default (autorepeat_rate)
    ) -> None:
        self.mapping = mapping or JoyMapping()
        self.topic = topic
        self.gripper_range = gripper_range
        self.stale_s = stale_s
        self.clock: Callable[[], float] = time.monotonic
        self._latest = TeleopInput()
        self._latest_t = -np.inf
        self._events: list[str] = []
        self._node: Node | None = None
        self._sub = None

    @classmethod
    def from_params(cls, p: TeleopParams, spec: Embodiment) -> Joy:
        try:
            axes = [int(a) for a in p.joy_axes.split(",")]
        except ValueError:
            raise ValueError(f"joy_axes {p.joy_axes!r}: 6 comma-separated integers") from None
        mapping = JoyMapping(axes, p.deadman_button, p.linear_scale, p.angular_scale)
        g = spec.gripper
        return cls(mapping, p.joy_topic, (g.command_min, g.command_max))

    def _connect(self, node: Node | None) -> None:
        from sensor_msgs.msg import Joy as JoyMsg

        from handoff_ros.rosutil import now_sec

        self._node = need_node(node, "joy", f"sensor_msgs/Joy on {self.topic}")
        self.clock = lambda: now_sec(self._node)
        self._sub = self._node.create_subscription(
            JoyMsg, self.topic, lambda m: self.feed(m.axes, m.buttons), 10
        )

    def feed(self, axes: Sequence[float], buttons: Sequence[int]) -> None:
        """One Joy message (the subscription's callback)."""
        self._latest = self.mapping(axes, buttons, self.gripper_range)
        self._latest_t = self.clock()
        self._events += self._latest.events

    def read(self) -> TeleopInput:
        events, self._events = self._events, []
        fresh = self.clock() - self._latest_t < self.stale_s
        return replace(self._latest if fresh else TeleopInput(), events=events)

    def _close(self) -> None:
        if self._sub is not None:
            self._node.destroy_subscription(self._sub)
            self._sub = None
