"""Teleop input devices behind one small interface (plain Python; the node feeds them).

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

import os
import select
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

EVENTS = ("start", "stop", "discard", "success")


@dataclass
class TeleopInput:
    engaged: bool = False
    twist: np.ndarray | None = None  # (6,) base frame, m/s and rad/s
    joints: np.ndarray | None = None  # (J,) absolute joint targets (leader arm)
    gripper: float | None = None  # spec gripper command, None = unchanged
    events: list[str] = field(default_factory=list)  # recorder keys pressed this tick


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


class Keyboard:
    """Terminal keys (stdin in cbreak mode). A terminal reports presses, not releases, so a key
    counts as held for ``hold_s`` after its last auto-repeat (~30 Hz on most systems)::

        w/s  +x/-x     a/d  +y/-y     q/e  +z/-z     j/l  yaw +/-
        g    toggle gripper   1 start   2 stop   3 mark success   4 discard

    The keys are printed on the terminal when the device opens, and :meth:`show` keeps one
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

    def __init__(self, linear: float = 0.1, angular: float = 0.5, hold_s: float = 0.15) -> None:
        if not sys.stdin.isatty():
            raise RuntimeError("the keyboard device needs a terminal (run the node in one)")
        import termios
        import tty

        self._fd = sys.stdin.fileno()
        self._saved = termios.tcgetattr(self._fd)
        tty.setcbreak(self._fd)
        self.scale = np.array([linear] * 3 + [angular] * 3)
        self.hold_s = hold_s
        self._last: dict[str, float] = {}
        self._closed_gripper = False
        self._shown = ""
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

    def read(self, gripper_range: tuple[float, float]) -> TeleopInput:
        out = TeleopInput()
        now = time.monotonic()
        while select.select([self._fd], [], [], 0)[0]:
            key = os.read(self._fd, 1).decode(errors="ignore").lower()
            if key in self.KEYS:
                self._last[key] = now
            elif key == "g":
                self._closed_gripper = not self._closed_gripper
                out.gripper = gripper_range[1] if self._closed_gripper else gripper_range[0]
            elif key in self.EVENT_KEYS:
                out.events.append(self.EVENT_KEYS[key])
        twist = np.zeros(6)
        for key, (axis, sign) in self.KEYS.items():
            if now - self._last.get(key, -np.inf) < self.hold_s:
                twist[axis] += sign
        out.engaged = bool(np.any(twist))
        out.twist = twist * self.scale
        return out

    def close(self) -> None:
        import termios

        termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)


class SpaceMouse:
    """3Dconnexion SpaceMouse through ``pyspacemouse`` (optional; not installed by default).

    Axes follow the device's own frame, mapped so that pushing the cap away from you is +x::

        device:  x right, y forward, z up   ->  base: vx = y, vy = -x, vz = z
    Either button held = engaged (deadman); both = close the gripper while held.
    """

    def __init__(self, linear: float = 0.1, angular: float = 0.5) -> None:
        try:
            import pyspacemouse
        except ImportError:
            raise RuntimeError(
                "the spacemouse device needs the pyspacemouse package and the device"
            ) from None
        if not pyspacemouse.open():
            raise RuntimeError("no SpaceMouse found (check the USB connection and udev rules)")
        self._sm = pyspacemouse
        self.scale = np.array([linear] * 3 + [angular] * 3)

    def read(self, gripper_range: tuple[float, float]) -> TeleopInput:
        s = self._sm.read()
        twist = np.array([s.y, -s.x, s.z, s.roll, s.pitch, -s.yaw]) * self.scale
        buttons = list(getattr(s, "buttons", [0, 0]))
        engaged = any(buttons)
        gripper = gripper_range[1] if all(buttons) else None
        return TeleopInput(engaged=engaged, twist=twist, gripper=gripper)

    def close(self) -> None:
        self._sm.close()


def leader_targets(
    positions: dict[str, float], follower_names: Sequence[str], mapping: dict[str, str]
) -> np.ndarray:
    """Leader arm joint positions (by name) -> follower targets (J,) in follower order.

    ``mapping`` maps follower joint -> leader joint (identity when empty); ValueError names
    the joints the leader does not publish.
    """
    names = [mapping.get(n, n) for n in follower_names]
    missing = [n for n in names if n not in positions]
    if missing:
        raise ValueError(f"leader joint_states lacks {missing}")
    return np.array([positions[n] for n in names], dtype=np.float64)
