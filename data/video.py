"""MP4 video in and out (PyAV), the one video layer, and episode export built on it.

Writers: the LeRobot converter (per-camera video files, :class:`VideoEncoder`),
``handoff-data export-video`` (:func:`export_episode_video`) and ``handoff-eval``'s
rollouts.mp4 (sim/report.py), both through :func:`write_mp4`. Reader: the LeRobot converter
(:class:`VideoDecoder`). Every file is yuv420p, H.264 (``libx264``) unless asked otherwise:
every browser plays it. Each user keeps its own quality settings: LeRobot crf 18, keyframe
every 2nd frame (data/convert/lerobot_write.py), export crf 20 preset veryfast, rollouts x264's
defaults.

Episode export, the layout of a frame: the cameras side by side on top (each scaled to
CAMERA_HEIGHT px, named in its corner), below them one plot per low-dim key against time in
seconds, with a legend of its dimensions (joint names where the embodiment gives them) and a
red cursor at the current step.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from data.embodiment import Embodiment
from data.errors import UserError
from data.outputs import check_output, publish, staging_dir
from data.store import DemoStore

# H.264 first (browser-playable); the rest in order of preference if the av build lacks it.
CODECS = ("libx264", "h264", "libsvtav1", "libaom-av1", "libvpx-vp9", "mpeg4")
CRF_CODECS = ("libx264", "libsvtav1", "libaom-av1", "libvpx-vp9")  # encoders that take crf
EXPORT_CRF, EXPORT_PRESET = 20, "veryfast"  # export-video: a preview, quick to encode
CAMERA_HEIGHT = 320  # px: every camera is scaled to this height, side by side on top
PLOT_WIDTH = 1000  # px: at least this wide; the signal plots fill the width under the cameras
ROW_HEIGHT = 170  # px per row of signal plots (two columns past three signals)
MAX_LEGEND = 8  # dimensions named in a legend; wider signals are drawn with the first named


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
    """Appends frames (T, H, W, 3) uint8 RGB to one MP4 file (yuv420p); :meth:`close` ends it.

    ``size`` (H, W) must be even (yuv420p). Frame i has presentation time i / fps. ``crf``,
    ``gop`` (keyframe interval) and ``preset``: None leaves the encoder's own default (x264:
    crf 23, keyframe every 250 frames, preset medium).
    """

    def __init__(
        self,
        path: Path,
        fps: float,
        size: tuple[int, int],
        codec: str = "libx264",
        crf: int | None = None,
        gop: int | None = None,
        preset: str | None = None,
    ) -> None:
        import av

        H, W = size
        if H % 2 or W % 2:
            raise UserError(
                f"{path.parent.name}: yuv420p video needs even frame sizes, got {W}x{H}"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.size = path, (H, W)
        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream(codec, rate=fps_fraction(fps))
        self.stream.width, self.stream.height = W, H
        self.stream.pix_fmt = "yuv420p"
        options = {} if gop is None else {"g": str(gop)}
        if crf is not None and codec in CRF_CODECS:
            options["crf"] = str(crf)
        if preset is not None and codec == "libx264":
            options["preset"] = preset
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


def write_mp4(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float,
    *,
    codec: str = "libx264",
    crf: int | None = None,
    preset: str | None = None,
) -> Path:
    """Encode HxWx3 uint8 RGB ``frames`` to one mp4 (:class:`VideoEncoder`), sized by the
    first frame; an odd height or width loses its last row or column (yuv420p needs even).

    Encoded beside ``path`` (the suffix kept: it names the container) and moved into place when
    complete, so an existing file is replaced only by a whole new one. Refused without frames.
    """
    path = Path(path)
    tmp = staging_dir(path).with_name(f".{path.stem}.partial{path.suffix}")
    enc: VideoEncoder | None = None
    try:
        for frame in frames:
            if enc is None:
                h, w = frame.shape[:2]
                size = (h - h % 2, w - w % 2)
                enc = VideoEncoder(tmp, fps, size, codec, crf=crf, preset=preset)
            enc.add(frame[None, : enc.size[0], : enc.size[1]])
        if enc is None:
            raise UserError(f"{path}: no frames to write")
        enc.close()
    except BaseException:
        if enc is not None:
            enc.container.close()
        tmp.unlink(missing_ok=True)
        raise
    publish(tmp, path)
    return path


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


# ---- an episode as a video: cameras over plots of its low-dim signals ----------------------


def dimension_names(key: str, dim: int, spec: Embodiment | None) -> list[str]:
    """Legend labels of a signal's dimensions: joint names for joint and action signals of an
    embodiment with that many joints (the action's last dimension is the gripper), else
    ``key[i]``."""
    if spec is not None:
        joints = list(spec.joint_names)
        if key == "action" and dim == len(joints) + 1:
            return [*joints, "gripper"]
        if dim == len(joints) and key.startswith("joint"):
            return joints
    return [f"{key}[{i}]" for i in range(dim)]


def _plot_panel(
    signals: dict[str, np.ndarray], t: np.ndarray, width: int, spec: Embodiment | None
) -> tuple[np.ndarray, list[tuple[float, float, int, int]]]:
    """A static RGB plot of every low-dim signal against time ``t`` (T,) seconds: one subplot
    per key, in two columns past three keys, each with a legend naming its dimensions.

    Returns the image and, per subplot, (x pixel at t[0], x pixel per second, top, bottom) so
    the caller can draw the time cursor.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 1 if len(signals) <= 3 else 2
    rows = -(-len(signals) // cols)
    height = ROW_HEIGHT * rows + 30
    fig, axes = plt.subplots(
        rows, cols, figsize=(width / 100, height / 100), dpi=100, sharex=True, squeeze=False
    )
    for ax, (key, values) in zip(axes.T.ravel(), signals.items()):  # down the columns
        values = values.reshape(len(values), -1)
        names = dimension_names(key, values.shape[1], spec)
        for i in range(values.shape[1]):
            ax.plot(t, values[:, i], linewidth=1.0, label=names[i] if i < MAX_LEGEND else None)
        ax.set_title(key, fontsize=9, loc="left", pad=2)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.margins(x=0)
        more = f"+{values.shape[1] - MAX_LEGEND} more" if values.shape[1] > MAX_LEGEND else None
        ax.legend(
            fontsize=6,
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),
            frameon=False,
            title=more,
            title_fontsize=6,
            handlelength=1.2,
            borderaxespad=0.2,
        )
    used = axes.T.ravel()[: len(signals)]
    for ax in axes.T.ravel()[len(signals) :]:
        ax.axis("off")
    for c in range(cols):  # the lowest plot of each column carries the time axis
        ax = [a for a in used if a in axes[:, c]][-1]
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.set_xlabel("time (s)", fontsize=8)
    fig.tight_layout(pad=0.4, w_pad=1.0, h_pad=0.6)
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    cursors = []
    span = float(t[-1] - t[0]) or 1.0
    for ax in used:
        (x0, _), (x1, _) = ax.transData.transform([[t[0], 0.0], [t[0] + span, 0.0]])
        box = ax.get_window_extent()
        top, bottom = img.shape[0] - int(box.y1), img.shape[0] - int(box.y0)
        cursors.append((float(x0), float(x1 - x0) / span, top, bottom))
    plt.close(fig)
    return img, cursors


def export_episode_video(
    store: DemoStore, episode: int, out: str | Path, *, force: bool = False, progress: bool = True
) -> Path:
    import cv2

    out = Path(out)
    check_output(out, [store.path], force=force)
    cams = store.image_keys
    lowdim = [k for k in store.lowdim_keys if k != "timestamp"]
    if not cams and not lowdim:
        raise UserError(f"{store.path}: nothing to draw in episode {episode}")
    sl = store.episode_slice(episode)
    T = sl.stop - sl.start
    spec = store.embodiment
    fps = spec.control_hz if spec else float(store.attrs.get("control_hz") or 10.0)
    if "timestamp" in store.data:
        t = np.asarray(store.data["timestamp"][sl], np.float64)
    else:
        t = np.arange(T) / fps
    signals = {k: np.asarray(store.data[k][sl], dtype=np.float32) for k in lowdim}
    cam_w = sum(
        int(round(store.data[k].shape[2] * CAMERA_HEIGHT / store.data[k].shape[1])) for k in cams
    )
    width = max(PLOT_WIDTH, cam_w)
    width -= width % 2
    panel, cursors = _plot_panel(signals, t, width, spec) if signals else (None, [])

    def frames():
        for i in tqdm(range(T), desc=f"episode {episode}", disable=not progress, leave=False):
            parts = []
            if cams:
                tiles = []
                for k in cams:
                    img = np.asarray(store.data[k][sl.start + i])
                    w = int(round(img.shape[1] * CAMERA_HEIGHT / img.shape[0]))
                    tiles.append(
                        cv2.resize(img, (w, CAMERA_HEIGHT), interpolation=cv2.INTER_NEAREST)
                    )
                    for color, thick in (((0, 0, 0), 3), ((255, 255, 0), 1)):  # outlined
                        cv2.putText(
                            tiles[-1], k, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, color, thick
                        )
                row = np.concatenate(tiles, axis=1)
                pad = np.full((CAMERA_HEIGHT, width - row.shape[1], 3), 255, np.uint8)
                parts.append(np.concatenate([row, pad], axis=1))
            if panel is not None:
                p = panel.copy()
                for x0, per_s, top, bottom in cursors:  # the current step in every plot
                    x = int(round(x0 + per_s * (t[i] - t[0])))
                    cv2.line(p, (x, top), (x, bottom), (220, 30, 30), 1)
                parts.append(p[:, :width])
            yield np.concatenate(parts, axis=0)

    return write_mp4(out, frames(), fps, crf=EXPORT_CRF, preset=EXPORT_PRESET)
