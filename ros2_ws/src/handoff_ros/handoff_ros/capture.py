"""A camera behind a small interface (plain Python, no ROS): OpenCV capture on its own thread.

The grab thread reads as fast as the device delivers and keeps only the newest frame, so the
publisher never serves a frame that waited in a driver queue (bounded latency). A failed read
(camera unplugged, file unreadable) closes the device and retries every ``reconnect_s``; the
state is reported, never raised. Video files are paced at ``fps`` and loop, so a recorded
clip stands in for a live camera in tests and demos.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class Frame:
    rgb: np.ndarray  # (H, W, 3) uint8
    stamp: float  # acquisition time, seconds on the caller's clock
    seq: int


class CaptureThread:
    """Newest-frame-only capture from a device index, a device path or a video file."""

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
        self.source = source
        self.width, self.height, self.fps = width, height, fps
        self.clock = clock
        self.reconnect_s = reconnect_s
        self.loop = loop
        # a path outside /dev is a video file even before it exists (it may appear later)
        self.is_file = not source.isdigit() and not source.startswith("/dev/")
        self.connected = False
        self.error = ""
        self.reconnects = 0
        self.frames_read = 0
        self._frame: Frame | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"capture:{source}", daemon=True)

    def start(self) -> CaptureThread:
        self._thread.start()
        return self

    def newest(self) -> Frame | None:
        with self._lock:
            return self._frame

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    # ---- the grab thread -------------------------------------------------------------------

    def _open(self) -> cv2.VideoCapture | None:
        src: int | str = int(self.source) if self.source.isdigit() else self.source
        cap = cv2.VideoCapture(src)
        if not cap.isOpened():
            self.error = f"cannot open camera source {self.source!r}"
            cap.release()
            return None
        if not self.is_file:  # a device: ask for the configured mode (it may pick the nearest)
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            cap.set(cv2.CAP_PROP_FPS, self.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # newest frame, not a driver queue
        return cap

    def _run(self) -> None:
        cap = None
        period = 1.0 / self.fps
        next_t = time.monotonic()
        while not self._stop.is_set():
            if cap is None:
                cap = self._open()
                if cap is None:
                    self.connected = False
                    self._stop.wait(self.reconnect_s)
                    continue
                if self.frames_read:
                    self.reconnects += 1
                self.connected, self.error = True, ""
            ok, bgr = cap.read()
            stamp = self.clock()
            if not ok and self.is_file and self.loop and self.frames_read:
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)  # end of the clip: start over
                ok, bgr = cap.read()
                stamp = self.clock()
            if not ok or bgr is None:
                self.error = f"camera {self.source!r} stopped delivering frames (unplugged?)"
                self.connected = False
                cap.release()
                cap = None
                self._stop.wait(self.reconnect_s)
                continue
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            if rgb.shape[:2] != (self.height, self.width):
                rgb = cv2.resize(rgb, (self.width, self.height), interpolation=cv2.INTER_AREA)
            self.frames_read += 1
            with self._lock:
                self._frame = Frame(rgb, stamp, self.frames_read)
            if self.is_file:  # a file reads instantly: pace it like the live camera it stands for
                next_t += period
                self._stop.wait(max(0.0, next_t - time.monotonic()))
                if time.monotonic() - next_t > 1.0:
                    next_t = time.monotonic()  # fell far behind (machine stalled): resync
        if cap is not None:
            cap.release()
