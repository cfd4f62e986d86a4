"""MP4 video in and out with PyAV, for LeRobot's per-camera video files.

Encoding defaults to H.264 (``libx264``, yuv420p): every browser plays it, so a dataset
viewer shows the episodes as they are. With ``crf`` 18 (x264's "visually lossless" point)
frames decode at >= 35 dB PSNR on camera-like content (tests/test_convert_lerobot.py checks
it); that loss is what a video round trip costs. ``gop`` 2 follows LeRobot's encoder default:
a keyframe every second frame keeps random access (training-time seeking) cheap.

Frames of one file are numbered 0, 1, 2, ... across the episodes written into it; frame i
has presentation time i / fps, which is what LeRobot's ``from_timestamp`` indexes. Reading
picks each row's frame by time (``from_timestamp`` + the row's ``timestamp``), not by position.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from data.errors import UserError

# H.264 first (browser-playable); the rest in order of preference if the av build lacks it.
CODECS = ("libx264", "h264", "libsvtav1", "libaom-av1", "libvpx-vp9", "mpeg4")
DEFAULT_CRF = 18
DEFAULT_GOP = 2
# How far a frame's time may be from a row's timestamp: LeRobot's default ``tolerance_s``
# (LeRobotDataset), far below any frame period yet above float32 timestamp rounding (< 1e-5 s
# for episodes under ~100 s).
DEFAULT_TOLERANCE_S = 1e-4


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
        # bytes muxed so far: the file on disk lags the encoder (x264 holds its first frames
        # until later ones or the final flush arrive, and the header is written with them)
        self.n_bytes = 0

    def add(self, frames: np.ndarray) -> None:
        import av

        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[..., :3]), format="rgb24")
            frame.pts = self.n_frames
            self.n_frames += 1
            self._mux(self.stream.encode(frame))

    def _mux(self, packets: list[Any]) -> None:
        for packet in packets:
            self.n_bytes += packet.size
            self.container.mux(packet)

    def close(self) -> None:
        self._mux(self.stream.encode())
        self.container.close()


class VideoDecoder:
    """Reads frames of one MP4 file by time; episodes stored back to back decode in one pass.

    Each requested time gets the frame whose presentation time is nearest to it, as LeRobot's
    own loader does (``decode_video_frames``: frames are matched to the row's ``timestamp``,
    never by position, so a 30 fps video under a 10 fps dataset still gives each row its own
    frame). A frame farther than ``tolerance_s`` from the time asked for is refused: it would
    silently put another moment's image beside the row's state and action. Times asked for in
    increasing order decode in one pass; an earlier time than the last reopens the file.
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
            stream = self.container.streams.video[0]
        except (av.error.FFmpegError, IndexError) as e:
            raise UserError(f"{self.path}: not a readable video ({e})") from None
        stream.thread_type = "AUTO"
        self.rate = float(stream.average_rate or stream.guessed_rate or 0) or None
        self._frames = self.container.decode(stream)
        self._n = 0  # frames decoded so far (times for frames without one)
        self._prev: tuple[float, Any] | None = None  # the frame before the cursor
        self._cur = self._next()  # the first frame at or after the last time asked for

    def _next(self) -> tuple[float, Any] | None:
        import av

        try:
            frame = next(self._frames, None)
        except (av.error.FFmpegError, ValueError) as e:
            raise UserError(f"{self.path}: video damaged after frame {self._n} ({e})") from None
        if frame is None:
            return None
        self._n += 1
        if frame.time is not None:
            return float(frame.time), frame
        return (self._n - 1) / (self.rate or 1.0), frame

    def frames_at(self, times: np.ndarray, tolerance_s: float, where: str) -> np.ndarray:
        """(T, H, W, 3) uint8: for each of ``times`` (T,) seconds, the nearest frame.

        ``where`` names the rows (e.g. the episode) in the refusal when no frame lies within
        ``tolerance_s`` of a time.
        """
        out = []
        for t in np.asarray(times, np.float64).tolist():
            if self._prev is not None and t < self._prev[0]:
                self.container.close()
                self._open()
            while self._cur is not None and self._cur[0] < t:
                self._prev, self._cur = self._cur, self._next()
            near = [c for c in (self._prev, self._cur) if c is not None]
            if not near:
                raise UserError(f"{self.path}: video has no frames ({where})")
            ft, frame = min(near, key=lambda c: abs(c[0] - t))
            if abs(ft - t) > tolerance_s:
                rate = f"{self.rate:g} fps" if self.rate else "unknown rate"
                raise UserError(
                    f"{self.path}: {where}: no frame within {tolerance_s:g} s of t={t:.6f} s "
                    f"(nearest at {ft:.6f} s, video {rate}); the video does not match the "
                    f"rows' timestamps (pass -o tolerance_s=... to accept a farther frame)"
                )
            out.append(frame.to_ndarray(format="rgb24"))
        return np.stack(out)

    def close(self) -> None:
        self.container.close()
