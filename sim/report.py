"""Files ``handoff-eval --out DIR`` writes: report.json, rollouts.mp4 and summary.png."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from data.outputs import remove, staging_dir

VIDEO_FPS = 20  # the control rate of sim_panda: one frame per control step, real time
REPORT_FILES = ("report.json", "rollouts.mp4", "summary.png")


def write_video(path: Path, episodes: list[np.ndarray], fps: int = VIDEO_FPS) -> None:
    """H.264 mp4 of the episodes one after another; each (T, H, W, 3) uint8."""
    import av

    H, W = episodes[0].shape[1:3]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = W, H
        stream.pix_fmt = "yuv420p"
        for frames in episodes:
            for frame in frames:
                packet = stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24"))
                container.mux(packet)
        container.mux(stream.encode())


def write_summary_png(path: Path, report: dict[str, Any], latency_ms: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = report["per_episode"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    colors = ["tab:green" if e["success"] else "tab:red" for e in eps]
    ax1.bar([str(e["seed"]) for e in eps], [e["length"] for e in eps], color=colors)
    lo, hi = report["success_ci95"]
    ax1.set_title(
        f"{report['task']}: success {report['successes']}/{report['n_episodes']} "
        f"(95% CI {lo:.2f}-{hi:.2f})"
    )
    ax1.set_xlabel("episode seed (green: success)")
    ax1.set_ylabel("length (control steps)")
    ax1.tick_params(axis="x", labelsize=6, rotation=90)
    ax2.hist(latency_ms, bins=40, color="tab:blue")
    ax2.set_title(
        f"select_action latency p50 {report['latency_ms']['p50']:.2f} ms, "
        f"p99 {report['latency_ms']['p99']:.2f} ms"
    )
    ax2.set_xlabel("ms")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(
    out: Path, report: dict[str, Any], videos: list[np.ndarray], latency_ms: np.ndarray
) -> None:
    """Write the report files into ``out``; an earlier report there is replaced only once every
    new file is complete, so a run that fails midway leaves it as it was.

    A new folder is built beside ``out`` and renamed into place. An existing one (a run's
    ``eval/`` with the trainer's ``step_*`` reports, a folder of the user's, the working
    directory, a link) is kept with everything else in it: the files are built in
    ``out/.report.partial`` and moved in one by one, and an earlier report's file this one lacks
    (``rollouts.mp4``) is removed, so no mix of two reports stays.
    """
    out = Path(os.path.abspath(out))
    new = not os.path.lexists(out)
    tmp = staging_dir(out if new else out / "report")
    try:
        tmp.mkdir()
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        if videos:
            write_video(tmp / "rollouts.mp4", videos)
        write_summary_png(tmp / "summary.png", report, latency_ms)
    except BaseException:
        remove(tmp)
        raise
    if new:
        os.replace(tmp, out)
        return
    for name in REPORT_FILES:
        if (tmp / name).exists():
            os.replace(tmp / name, out / name)
        elif os.path.lexists(out / name):
            remove(out / name)
    tmp.rmdir()
