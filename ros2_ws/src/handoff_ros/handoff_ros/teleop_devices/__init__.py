"""Teleop devices behind one interface (:class:`TeleopDevice`), found by name in ``DEVICES``.

One file per device: ``teleop_devices/<name>.py`` defines a :class:`TeleopDevice` subclass
decorated with ``@register_device("<name>")`` (``from_params``, ``_connect``, ``read``,
``_close``). This package imports every module in its folder, so the new file is the whole
change: the teleop node's ``device`` parameter accepts the new name. Devices: ``joy``
(sensor_msgs/Joy), ``keyboard`` (terminal), ``spacemouse`` (pyspacemouse), ``leader`` (a
leader arm's JointState) and ``scripted`` (a fixed sequence: the simulated twin).
"""

from __future__ import annotations

from data.registry import import_all
from handoff_ros.teleop_devices.base import (
    DEVICES,
    EVENTS,
    TeleopDevice,
    TeleopInput,
    register_device,
)

import_all(__name__, __path__)

from handoff_ros.teleop_devices.joy import JoyMapping  # noqa: E402

__all__ = [
    "DEVICES",
    "EVENTS",
    "JoyMapping",
    "TeleopDevice",
    "TeleopInput",
    "register_device",
]
