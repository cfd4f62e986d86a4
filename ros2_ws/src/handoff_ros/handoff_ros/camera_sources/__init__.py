"""Camera sources behind one interface (:class:`CameraSource`), found by name in
``CAMERA_SOURCES``.

One file per source: ``camera_sources/<name>.py`` defines a :class:`CameraSource` subclass
(most subclass :class:`GrabThread`: ``_open``, ``_grab``, ``_release``) decorated with
``@register_camera_source("<name>")``. This package imports every module in its folder, so
the new file is the whole change: the camera node's ``driver`` parameter accepts the new
name. Sources: ``opencv`` (device, stream or video file) and ``sim`` (a MuJoCo render of a
sim task's camera: the simulated twin).
"""

from __future__ import annotations

from data.registry import import_all
from handoff_ros.camera_sources.base import (
    CAMERA_SOURCES,
    CameraSource,
    Frame,
    GrabThread,
    register_camera_source,
)

import_all(__name__, __path__)

__all__ = ["CAMERA_SOURCES", "CameraSource", "Frame", "GrabThread", "register_camera_source"]
