"""``spacemouse``: a 3Dconnexion SpaceMouse through ``pyspacemouse`` (optional; not installed
by default)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from handoff_ros.teleop_devices.base import TeleopDevice, TeleopInput, register_device

if TYPE_CHECKING:
    from rclpy.node import Node

    from data.embodiment import Embodiment
    from handoff_ros.teleop import TeleopParams


@register_device("spacemouse")
class SpaceMouse(TeleopDevice):
    """Axes follow the device's own frame, mapped so that pushing the cap away from you is +x::

        device:  x right, y forward, z up   ->  base: vx = y, vy = -x, vz = z

    Either button held = engaged (deadman); both = close the gripper while held.
    """

    def __init__(
        self,
        linear: float = 0.1,
        angular: float = 0.5,
        gripper_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        self.scale = np.array([linear] * 3 + [angular] * 3)
        self.gripper_range = gripper_range

    @classmethod
    def from_params(cls, p: TeleopParams, spec: Embodiment) -> SpaceMouse:
        g = spec.gripper
        return cls(p.linear_scale, p.angular_scale, (g.command_min, g.command_max))

    def _connect(self, node: Node | None) -> None:
        try:
            import pyspacemouse
        except ImportError:
            raise RuntimeError(
                "the spacemouse device needs the pyspacemouse package and the device"
            ) from None
        if not pyspacemouse.open():
            raise RuntimeError("no SpaceMouse found (check the USB connection and udev rules)")
        self._sm = pyspacemouse

    def read(self) -> TeleopInput:
        s = self._sm.read()
        twist = np.array([s.y, -s.x, s.z, s.roll, s.pitch, -s.yaw]) * self.scale
        buttons = list(getattr(s, "buttons", [0, 0]))
        engaged = any(buttons)
        gripper = self.gripper_range[1] if all(buttons) else None
        return TeleopInput(engaged=engaged, twist=twist, gripper=gripper)

    def _close(self) -> None:
        self._sm.close()
