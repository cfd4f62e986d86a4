"""The teleop device interface and the ``DEVICES`` registry (plain Python; ROS only through
the node a device is connected to).

Every device turns its raw input into a :class:`TeleopInput`: a Cartesian twist in the robot
base frame *or* joint targets, a gripper command, whether the operator is engaged (the
deadman), and recorder events. Twist frame, as MoveIt Servo and the sim's Jacobians use it::

         z (up)
         |
         |____ y (left)        twist = (vx, vy, vz, wx, wy, wz): m/s and rad/s,
        /                      expressed in the robot base frame
       x (forward, away from the robot base)

No engaged input -> no motion: the node publishes nothing to the arm while ``engaged`` is
False, and the safety filter's deadman layer holds if the flag goes stale.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from data.registry import Registry, one_file_each

if TYPE_CHECKING:
    from rclpy.node import Node

    from data.embodiment import Embodiment
    from handoff_ros.teleop import TeleopParams

EVENTS = ("start", "stop", "discard", "success")


@dataclass
class TeleopInput:
    engaged: bool = False
    twist: np.ndarray | None = None  # (6,) base frame, m/s and rad/s
    joints: np.ndarray | None = None  # (J,) absolute joint targets (leader arm)
    gripper: float | None = None  # spec gripper command, None = unchanged
    events: list[str] = field(default_factory=list)  # recorder keys pressed since last read


class TeleopDevice(ABC):
    """A teleop input device: ``connect`` once, ``read`` every control tick, ``close``.

    Also a context manager (``with Keyboard() as dev: dev.read()``; ``__enter__`` connects
    without a node, ``__exit__`` closes). Devices that subscribe to a ROS topic (joy, leader)
    need ``connect(node)``; the others ignore the node.

    Class attributes: ``name`` (set by :func:`register_device`) and ``gives_joints`` (the
    device gives absolute joint targets, ``TeleopInput.joints``, instead of twists: no IK).
    """

    name: ClassVar[str] = ""
    gives_joints: ClassVar[bool] = False
    connected: bool = False

    @classmethod
    @abstractmethod
    def from_params(cls, p: TeleopParams, spec: Embodiment) -> TeleopDevice:
        """Build the device from the teleop node's parameters (``teleop.TeleopParams``) and
        the embodiment spec (gripper range, joint names, control rate). ValueError: a bad
        parameter value."""

    def connect(
        self, node: Node | None = None, on_problem: Callable[[str], None] | None = None
    ) -> TeleopDevice:
        """Open the device (a terminal, a USB device, or a subscription on ``node``); returns
        itself. ``on_problem`` hears bad input that is dropped (shown on /diagnostics by the
        node). RuntimeError: the device is not there (the message says what to check)."""
        if not self.connected:
            if on_problem is not None:
                self.on_problem = on_problem  # type: ignore[method-assign]
            self._connect(node)
            self.connected = True
        return self

    def on_problem(self, message: str) -> None:  # noqa: B027
        """Bad input that was dropped (``connect(on_problem=...)`` routes it elsewhere)."""

    @abstractmethod
    def read(self) -> TeleopInput:
        """The operator's input now, with the recorder events since the previous read. Input
        that went stale (a pad that stopped publishing) reads as not engaged."""

    def show(self, engaged: bool, recording: bool | None) -> None:  # noqa: B027
        """Show the operator the node's state (only devices with a display do)."""

    def close(self) -> None:
        """Release the device (restore the terminal, drop the subscription); idempotent."""
        if self.connected:
            self.connected = False
            self._close()

    def _connect(self, node: Node | None) -> None:  # noqa: B027 (optional hook)
        pass

    def _close(self) -> None:  # noqa: B027 (optional hook)
        pass

    def __enter__(self) -> TeleopDevice:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()


DEVICES: Registry[type[TeleopDevice]] = Registry("teleop device")


# ``@register_device("<name>")`` registers a device class; it must live in
# ``teleop_devices/<name>.py`` (the package imports every module in its folder, so a new
# device is one new file)
register_device = one_file_each(DEVICES, __package__)


def need_node(node: Node | None, device: str, what: str) -> Node:
    if node is None:
        raise RuntimeError(f"the {device} device subscribes to {what}: connect it to a ROS node")
    return node
