"""``opencv``: a camera through OpenCV: a device index (``0``), a device path
(``/dev/video2``), a stream URL or a video file. Video files are paced at ``fps`` and loop, so
a recorded clip stands in for a live camera in tests and demos."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import cv2
import numpy as np

from handoff_ros.camera_sources.base import GrabThread, register_camera_source

if TYPE_CHECKING:
    from handoff_ros.camera import CameraParams


@register_camera_source("opencv")
class OpenCV(GrabThread):
    """cv2.VideoCapture on the grab thread; a device is asked for the configured mode (it may
    pick the nearest; frames are resized to it) with a one-frame driver buffer."""

    def __init__(
        self,
        source: str,
        width: int,
        height: int,
        fps: float,
        clock: Callable[[], float] = time.time,
        reconnect_s: float = 1.0,
        loop: bool = True,
    ) -> None:
        # a path outside /dev is a video file even before it exists (it may appear later)
        self.is_file = not source.isdigit() and not source.startswith("/dev/")
        super().__init__(source, width, height, fps, clock, reconnect_s, paced=self.is_file)
        self.source = source
        self.loop = loop
        self._cap: cv2.VideoCapture | None = None

    @classmethod
    def from_params(cls, p: CameraParams, clock: Callable[[], float]) -> OpenCV:
        return cls(p.source, p.width, p.height, p.fps, clock, p.reconnect_s, p.loop)

    def _open(self) -> bool:
        src: int | str = int(self.source) if self.source.isdigit() else self.source
        cap = cv2.VideoCapture(src)
        if not cap.isOpened():
            self.error = f"cannot open camera source {self.source!r}"
            cap.release()
            return False
        if not self.is_file:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            cap.set(cv2.CAP_PROP_FPS, self.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # newest frame, not a driver queue
        self._cap = cap
        return True

    def _grab(self) -> np.ndarray | None:
        ok, bgr = self._cap.read()
        if not ok and self.is_file and self.loop and self.frames_read:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)  # end of the clip: start over
            ok, bgr = self._cap.read()
        if not ok or bgr is None:
            return None
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
