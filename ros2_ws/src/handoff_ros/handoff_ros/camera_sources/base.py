"""The camera source interface, the ``CAMERA_SOURCES`` registry, and the grab thread the
sources share (plain Python, no ROS).

A grab thread reads as fast as the source delivers and keeps only the newest frame, so the
publisher never serves a frame that waited in a driver queue (bounded latency). A failed
open or read (camera unplugged, file unreadable) releases the source and retries every
``reconnect_s``; the state is reported (``streaming``, ``error``), never raised.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import cv2
import numpy as np

from data.registry import Registry, one_file_each

if TYPE_CHECKING:
    from handoff_ros.camera import CameraParams

Frame = tuple[float, np.ndarray]  # (acquisition stamp s on the caller's clock, (H, W, 3) uint8 RGB)


class CameraSource(ABC):
    """A camera: ``connect``, then ``read`` the newest frame whenever wanted, ``close``.

    Also a context manager (``__enter__`` connects, ``__exit__`` closes). Status for
    /diagnostics: ``streaming`` (frames are arriving), ``error`` (why not, "" while
    streaming), ``frames_read`` and ``reconnects``.
    """

    name: ClassVar[str] = ""  # set by register_camera_source
    connected: bool = False
    streaming: bool = False
    error: str = ""
    frames_read: int = 0
    reconnects: int = 0

    @classmethod
    @abstractmethod
    def from_params(cls, p: CameraParams, clock: Callable[[], float]) -> CameraSource:
        """Build the source from the camera node's parameters; ``clock`` stamps frames (the
        node's clock, seconds). ValueError: a ``source`` this kind cannot open."""

    def connect(self) -> CameraSource:
        """Start acquiring (a missing device is reported, then retried); returns itself."""
        if not self.connected:
            self._connect()
            self.connected = True
        return self

    @abstractmethod
    def read(self) -> Frame | None:
        """The newest frame as (stamp, (H, W, 3) uint8 RGB), or None when no frame arrived
        since the previous read: an old frame is never returned twice."""

    def close(self) -> None:
        """Stop acquiring and release the device; idempotent."""
        if self.connected:
            self.connected = False
            self._close()

    @abstractmethod
    def _connect(self) -> None: ...

    @abstractmethod
    def _close(self) -> None: ...

    def __enter__(self) -> CameraSource:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()


CAMERA_SOURCES: Registry[type[CameraSource]] = Registry("camera source")


# ``@register_camera_source("<name>")`` registers a source class; it must live in
# ``camera_sources/<name>.py`` (the package imports every module in its folder, so a new
# source is one new file)
register_camera_source = one_file_each(CAMERA_SOURCES, __package__)


class GrabThread(CameraSource):
    """Newest-frame-only acquisition on a thread, resized to (height, width). Subclasses open,
    grab and release the device (all on the grab thread: a GL context or a capture handle
    belongs to the thread that made it). ``paced``: the source delivers instantly (a file, a
    renderer), so the thread waits 1 / ``fps`` between frames like the live camera would."""

    def __init__(
        self,
        label: str,
        width: int,
        height: int,
        fps: float,
        clock: Callable[[], float] = time.time,
        reconnect_s: float = 1.0,
        paced: bool = False,
    ) -> None:
        self.label = label
        self.width, self.height, self.fps = width, height, fps
        self.clock = clock
        self.reconnect_s = reconnect_s
        self.paced = paced
        self._frame: tuple[float, np.ndarray, int] | None = None  # (stamp, rgb, seq)
        self._last_seq = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"camera:{label}", daemon=True)

    @abstractmethod
    def _open(self) -> bool:
        """Open the device; False (with ``self.error`` set) when it is not there."""

    @abstractmethod
    def _grab(self) -> np.ndarray | None:
        """One (h, w, 3) uint8 RGB frame of any size, or None: the device stopped."""

    @abstractmethod
    def _release(self) -> None: ...

    def read(self) -> Frame | None:
        with self._lock:
            frame = self._frame
        if frame is None or frame[2] == self._last_seq:
            return None
        self._last_seq = frame[2]
        return frame[0], frame[1]

    def _connect(self) -> None:
        self._thread.start()

    def _close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        is_open = False
        period = 1.0 / self.fps
        next_t = time.monotonic()
        while not self._stop.is_set():
            if not is_open:
                if not self._open():
                    self.streaming = False
                    self._stop.wait(self.reconnect_s)
                    continue
                is_open = True
                if self.frames_read:
                    self.reconnects += 1
                self.streaming, self.error = True, ""
            rgb = self._grab()
            stamp = self.clock()
            if rgb is None:
                self.error = f"camera {self.label!r} stopped delivering frames (unplugged?)"
                self.streaming = False
                self._release()
                is_open = False
                self._stop.wait(self.reconnect_s)
                continue
            if rgb.shape[:2] != (self.height, self.width):
                rgb = cv2.resize(rgb, (self.width, self.height), interpolation=cv2.INTER_AREA)
            self.frames_read += 1
            with self._lock:
                self._frame = (stamp, rgb, self.frames_read)
            if self.paced:
                next_t += period
                self._stop.wait(max(0.0, next_t - time.monotonic()))
                if time.monotonic() - next_t > 1.0:
                    next_t = time.monotonic()  # fell far behind (machine stalled): resync
        if is_open:
            self._release()
