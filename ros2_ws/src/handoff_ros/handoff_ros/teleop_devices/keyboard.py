"""``keyboard``: terminal keys (stdin in cbreak mode); the node must run in a terminal."""

from __future__ import annotations

import os
import select
import sys
import time
from typing import TYPE_CHECKING

import numpy as np

from handoff_ros.teleop_devices.base import TeleopDevice, TeleopInput, register_device

if TYPE_CHECKING:
    from rclpy.node import Node

    from data.embodiment import Embodiment
    from handoff_ros.teleop import TeleopParams


@register_device("keyboard")
class Keyboard(TeleopDevice):
    """A terminal reports presses, not releases, so a key counts as held for ``hold_s`` after
    its last auto-repeat (~30 Hz on most systems)::

        w/s  +x/-x     a/d  +y/-y     q/e  +z/-z     j/l  yaw +/-
        g    toggle gripper   1 start   2 stop   3 mark success   4 discard

    The keys are printed on the terminal when the device connects, and :meth:`show` keeps one
    status line under them (engaged or not, recording or not, gripper).
    """

    HELP = (
        "keyboard teleop -- hold to move (base frame): w/s +x/-x  a/d +y/-y  q/e +z/-z  "
        "j/l yaw +/-\n"
        "g toggle gripper   recorder: 1 start  2 stop  3 mark success  4 discard   Ctrl-C quit"
    )

    KEYS = {
        "w": (0, 1),
        "s": (0, -1),
        "a": (1, 1),
        "d": (1, -1),
        "q": (2, 1),
        "e": (2, -1),
        "j": (5, 1),
        "l": (5, -1),
    }
    EVENT_KEYS = {"1": "start", "2": "stop", "3": "success", "4": "discard"}

    def __init__(
        self,
        linear: float = 0.1,
        angular: float = 0.5,
        hold_s: float = 0.15,
        gripper_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        self.scale = np.array([linear] * 3 + [angular] * 3)
        self.hold_s = hold_s
        self.gripper_range = gripper_range
        self._last: dict[str, float] = {}
        self._closed_gripper = False
        self._shown = ""

    @classmethod
    def from_params(cls, p: TeleopParams, spec: Embodiment) -> Keyboard:
        g = spec.gripper
        return cls(p.linear_scale, p.angular_scale, gripper_range=(g.command_min, g.command_max))

    def _connect(self, node: Node | None) -> None:
        if not sys.stdin.isatty():
            raise RuntimeError("the keyboard device needs a terminal (run the node in one)")
        import termios
        import tty

        self._fd = sys.stdin.fileno()
        self._saved = termios.tcgetattr(self._fd)
        tty.setcbreak(self._fd)
        self._write(self.HELP + "\n")

    def _write(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def show(self, engaged: bool, recording: bool | None) -> None:
        """Redraw the status line when it changed; ``recording`` None: not known yet (the
        recorder has not answered a key)."""
        rec = {True: "RECORDING", False: "not recording", None: "recorder: no answer yet"}
        line = (
            f"[{'ENGAGED' if engaged else 'released'}] [{rec[recording]}] "
            f"[gripper {'closed' if self._closed_gripper else 'open'}]"
        )
        if line != self._shown:
            self._shown = line
            self._write(f"\r\x1b[K{line}")  # carriage return + clear line: one line, redrawn

    def read(self) -> TeleopInput:
        out = TeleopInput()
        now = time.monotonic()
        while select.select([self._fd], [], [], 0)[0]:
            key = os.read(self._fd, 1).decode(errors="ignore").lower()
            if key in self.KEYS:
                self._last[key] = now
            elif key == "g":
                self._closed_gripper = not self._closed_gripper
                out.gripper = self.gripper_range[1 if self._closed_gripper else 0]
            elif key in self.EVENT_KEYS:
                out.events.append(self.EVENT_KEYS[key])
        twist = np.zeros(6)
        for key, (axis, sign) in self.KEYS.items():
            if now - self._last.get(key, -np.inf) < self.hold_s:
                twist[axis] += sign
        out.engaged = bool(np.any(twist))
        out.twist = twist * self.scale
        return out

    def _close(self) -> None:
        import termios

        termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
