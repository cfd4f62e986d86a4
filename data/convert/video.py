"""MP4 video in and out with PyAV, for LeRobot's per-camera video files.

Encoding defaults to H.264 (``libx264``, yuv420p): every browser plays it, so a dataset
viewer shows the episodes as they are. With ``crf`` 18 (x264's "visually lossless" point)
frames decode at >= 35 dB PSNR on camera-like content (tests/test_convert_lerobot.py checks
it); that loss is what a video round trip costs. ``gop`` 2 follows LeRobot's encoder default:
a keyframe every second frame keeps random access (training-time seeking) cheap.

Frames of one file are numbered 0, 1, 2, ... across the episodes written into it; frame i
has presentation time i / fps, which is what LeRobot's ``from_timestamp`` indexes.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from data.errors import UserError

# H.264 first (browser-playable); the rest in order of preference if the av build lacks it.
CODECS = ("libx264", "h264", "libsvtav1", "libaom-av1", "libvpx-vp9", "mpeg4")
DEFAULT_CRF = 18
DEFAULT_GOP = 2


def pick_codec(requested: str | None = None) -> tuple[str, str | None]:
    """(codec, note): the requested codec, or the best available with a note saying so."""
    import av

    available = set(av.codecs_available)
    if requested:
        if requested not in available:
            raise UserError(
                f"video codec {requested!r} is not in this PyAV build; available: "
                f"{[c for c in CODECS if c in available]}"
            )
        return requested, None
    for codec in CODECS:
        if codec in available:
            note = None if codec == CODECS[0] else f"libx264 unavailable: videos use {codec}"
            return codec, note
    raise UserError("this PyAV build has no usable video encoder (tried " + ", ".join(CODECS))


def fps_fraction(fps: float) -> Fraction:
    # NTSC-style rates (29.97 = 30000/1001) stay exact; integer rates stay integers
    return Fraction(fps).limit_denominator(1001)


class VideoEncoder:
    """Appends frames (T, H, W, 3) uint8 RGB to one MP4 file; :meth:`close` finishes it."""

    def __init__(
        self,
        path: Path,
        fps: float,
        size: tuple[int, int],
        codec: str,
        crf: int = DEFAULT_CRF,
        gop: int = DEFAULT_GOP,
    ) -> None:
        import av

        H, W = size
        if H % 2 or W % 2:
            raise UserError(
                f"{path.parent.name}: yuv420p video needs even frame sizes, got {W}x{H}"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream(codec, rate=fps_fraction(fps))
        self.stream.width, self.stream.height = W, H
        self.stream.pix_fmt = "yuv420p"
        options = {"g": str(gop)}
        if codec in ("libx264", "libsvtav1", "libaom-av1", "libvpx-vp9"):
            options["crf"] = str(crf)
        self.stream.options = options
        self.n_frames = 0

    def add(self, frames: np.ndarray) -> None:
        import av

        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[..., :3]), format="rgb24")
            frame.pts = self.n_frames
            self.n_frames += 1
            for packet in self.stream.encode(frame):
                self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


class VideoDecoder:
    """Reads frames of one MP4 file in order; episodes stored back to back decode in one pass.

    :meth:`read` returns the ``n`` frames starting at time ``start_s``; asking for an earlier
    time than the last read reopens the file.
    """

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise UserError(f"{path}: video file missing")
        self.path = path
        self._open()

    def _open(self) -> None:
        import av

        try:
            self.container = av.open(str(self.path))
        except av.error.FFmpegError as e:
            raise UserError(f"{self.path}: not a readable video ({e})") from None
        stream = self.container.streams.video[0]
        stream.thread_type = "AUTO"
        self.rate = float(stream.average_rate or stream.guessed_rate or 0) or None
        self._frames = self.container.decode(stream)
        self._pending = None
        self._last_time = -1.0

    def read(self, start_s: float, n: int, fps: float) -> np.ndarray:
        """(n, H, W, 3) uint8: frames with time in [start_s, start_s + n / fps)."""
        half = 0.5 / fps
        if start_s < self._last_time - half:
            self.container.close()
            self._open()
        out = []
        while len(out) < n:
            frame = self._pending if self._pending is not None else next(self._frames, None)
            self._pending = None
            if frame is None:
                raise UserError(
                    f"{self.path}: video ends after {len(out)} of {n} frames from {start_s:.3f} s"
                )
            t = float(frame.time) if frame.time is not None else 0.0
            if t < start_s - half:
                continue
            out.append(frame.to_ndarray(format="rgb24"))
            self._last_time = t
        return np.stack(out)

    def close(self) -> None:
        self.container.close()
