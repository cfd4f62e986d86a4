"""Export one episode's cameras to an mp4, with its low-dim signals plotted beside them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.errors import UserError
from data.outputs import check_output, publish, staging_dir
from data.store import DemoStore

PANEL_HEIGHT = 240  # px: every camera is scaled to this height, the plot panel matches it


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


def _plot_panel(signals: dict[str, np.ndarray], width: int, height: int) -> np.ndarray:
    """A static RGB plot of every low-dim signal over the episode (one subplot per key)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(signals), 1, figsize=(width / 100, height / 100), dpi=100, sharex=True, squeeze=False
    )
    for ax, (key, values) in zip(axes[:, 0], signals.items()):
        ax.plot(values.reshape(len(values), -1), linewidth=0.8)
        ax.set_ylabel(key, fontsize=6)
        ax.tick_params(labelsize=5)
        ax.margins(x=0)
    fig.tight_layout(pad=0.3)
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return img


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
    signals = {k: np.asarray(store.data[k][sl], dtype=np.float32) for k in lowdim}
    panel_w = 480
    panel = _plot_panel(signals, panel_w, PANEL_HEIGHT) if signals else None
    spec = store.embodiment
    fps = spec.control_hz if spec else 10.0

    def frames():
        for t in tqdm(range(T), desc=f"episode {episode}", disable=not progress, leave=False):
            tiles = []
            for k in cams:
                img = np.asarray(store.data[k][sl.start + t])
                scale = PANEL_HEIGHT / img.shape[0]
                tiles.append(
                    cv2.resize(
                        img,
                        (int(img.shape[1] * scale), PANEL_HEIGHT),
                        interpolation=cv2.INTER_NEAREST,
                    )
                )
            if panel is not None:
                p = cv2.resize(panel, (panel_w, PANEL_HEIGHT)).copy()
                x = int(8 + (panel_w - 16) * t / max(1, T - 1))  # cursor at the current step
                cv2.line(p, (x, 0), (x, PANEL_HEIGHT - 1), (220, 30, 30), 1)
                tiles.append(p)
            yield np.concatenate(tiles, axis=1)

    write_mp4(out, frames(), fps)
    return out
