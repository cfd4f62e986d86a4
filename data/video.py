"""Export one episode's cameras to an mp4, with its low-dim signals plotted under them.

Layout of a frame: the cameras side by side on top (each scaled to CAMERA_HEIGHT px, named in
its corner), below them one plot per low-dim key against time in seconds, with a legend of its
dimensions (joint names where the embodiment gives them) and a red cursor at the current step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.embodiment import Embodiment
from data.errors import UserError
from data.outputs import check_output, publish, staging_dir
from data.store import DemoStore

CAMERA_HEIGHT = 320  # px: every camera is scaled to this height, side by side on top
PLOT_WIDTH = 1000  # px: at least this wide; the signal plots fill the width under the cameras
ROW_HEIGHT = 170  # px per row of signal plots (two columns past three signals)
MAX_LEGEND = 8  # dimensions named in a legend; wider signals are drawn with the first named


def write_mp4(path: str | Path, frames, fps: float) -> None:
    """Encode an iterable of HxWx3 uint8 RGB frames to H.264 mp4 (yuv420p, browser-playable).

    Encoded beside ``path`` (the suffix kept: it names the container) and moved into place when
    complete, so an existing file is replaced only by a whole new one.
    """
    import av

    path = Path(path)
    tmp = staging_dir(path).with_name(f".{path.stem}.partial{path.suffix}")
    container = av.open(str(tmp), mode="w")
    stream = None
    try:
        for frame in frames:
            if stream is None:
                h, w = frame.shape[:2]
                stream = container.add_stream("libx264", rate=int(round(fps)))
                stream.width, stream.height = w - w % 2, h - h % 2  # yuv420p needs even sizes
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": "20", "preset": "veryfast"}
            rgb = np.ascontiguousarray(frame[: stream.height, : stream.width])
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    except BaseException:
        container.close()
        tmp.unlink(missing_ok=True)
        raise
    container.close()
    publish(tmp, path)


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

    write_mp4(out, frames(), fps)
    return out
