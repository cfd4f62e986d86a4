"""Files ``handoff-eval --out DIR`` writes: report.json, rollouts.mp4 and summary.png."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from data.outputs import remove, staging_dir

VIDEO_FPS = 20  # the control rate of sim_panda: one frame per control step, real time
VIDEO_SCALE = 2  # rendered frames are small (160 px): enlarged so the overlay text is legible
REPORT_FILES = ("report.json", "rollouts.mp4", "summary.png")
GREEN, RED = (40, 170, 60), (210, 40, 40)


def summary_line(report: dict[str, Any]) -> str:
    """The human line ``handoff-eval`` prints before its JSON line, figures rounded:
    ``lift: success 0.86 [0.78, 0.91] (43/50 episodes, seeds 0-49), mean length 98.3 steps,
    step p50 1.20 ms p99 3.40 ms``, then for a learned policy its execution: ``; rtc at
    inference delay 4, chunk p50 95 ms, 4.0 held steps/episode``, and how far the failed
    episodes got: ``; of 7 failures 4 never grasped the object, 2 grasped it, 1 lifted it``."""
    lo, hi = report["success_ci95"]
    seeds = report.get("seeds") or []
    span = f", seeds {min(seeds)}-{max(seeds)}" if len(seeds) > 1 else ""
    span = f", seed {seeds[0]}" if len(seeds) == 1 else span
    lat = report["latency_ms"]
    return (
        (
            f"{report['task']}: success {report['success_rate']:.2f} [{lo:.2f}, {hi:.2f}] "
            f"({report['successes']}/{report['n_episodes']} episodes{span}), mean length "
            f"{report['mean_length']:.1f} steps, step p50 {lat['p50']:.2f} ms "
            f"p99 {lat['p99']:.2f} ms"
        )
        + (
            f"; {report['scheme']} at inference delay {report['inference_delay']}, chunk p50 "
            f"{report['chunk_ms']['p50']:.0f} ms, {report['held_ticks_per_episode']:.1f} held "
            f"steps/episode"
            if "scheme" in report
            else ""
        )
        + _failures(report)
    )


# how the printed line names each of sim.mujoco_arm.STAGES (report.json keeps the keys); a stage
# added there without a phrase here still prints, as "reached <stage>"
_STAGE_PHRASES = {
    "not_grasped": "never grasped the object",
    "grasped": "grasped it",
    "lifted": "lifted it",
}


def _failures(report: dict[str, Any]) -> str:
    stages = report.get("failure_stages") or {}
    n = sum(stages.values())
    if not n:
        return ""
    got = ", ".join(f"{k} {_STAGE_PHRASES.get(s, f'reached {s}')}" for s, k in stages.items())
    return f"; of {n} failures {got}"


def overlay(frame: np.ndarray, label: dict[str, Any], step: int) -> np.ndarray:
    """``frame`` enlarged VIDEO_SCALE times with a strip on top: seed, step / length and the
    episode's outcome (green success, red failure)."""
    import cv2

    img = cv2.resize(
        frame, None, fx=VIDEO_SCALE, fy=VIDEO_SCALE, interpolation=cv2.INTER_NEAREST
    ).copy()
    ok = bool(label["success"])
    cv2.rectangle(img, (0, 0), (img.shape[1], 22), (0, 0, 0), -1)
    text = f"seed {label['seed']}  step {step + 1}/{label['length']}"
    cv2.putText(img, text, (5, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    outcome = "success" if ok else "failure"
    (w, _), _ = cv2.getTextSize(outcome, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
    x = img.shape[1] - w - 6
    cv2.putText(img, outcome, (x, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, GREEN if ok else RED, 1)
    return img


def write_video(
    path: Path,
    episodes: list[np.ndarray],
    fps: int = VIDEO_FPS,
    labels: list[dict[str, Any]] | None = None,
) -> None:
    """H.264 mp4 of the episodes one after another; each (T, H, W, 3) uint8. With ``labels``
    (one {seed, success, length} per episode) every frame carries :func:`overlay`. Written by
    data/video.py at x264's default quality (crf 23): a record to watch, not data."""
    from data.video import write_mp4

    frames = (
        overlay(frame, labels[i], t) if labels else frame
        for i, episode in enumerate(episodes)
        for t, frame in enumerate(episode)
    )
    write_mp4(path, frames, fps)


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
        f"{report['task']}: success {report['success_rate']:.2f} [{lo:.2f}, {hi:.2f}] "
        f"({report['successes']}/{report['n_episodes']})"
    )
    ax1.set_xlabel("episode seed (green: success)")
    ax1.set_ylabel("length (control steps)")
    few = len(eps) <= 12
    upright = few and max(len(str(e["seed"])) for e in eps) <= 4
    ax1.tick_params(axis="x", labelsize=8 if few else 6, rotation=0 if upright else 90)
    p50, p99 = report["latency_ms"]["p50"], report["latency_ms"]["p99"]
    top = max(2 * p99, 1e-3)  # a few slow first calls would squash the histogram: clipped
    ax2.hist(np.clip(latency_ms, 0, top), bins=40, range=(0, top), color="tab:blue")
    ax2.axvline(p50, color="black", linestyle="--", linewidth=1, label=f"p50 {p50:.2f} ms")
    ax2.axvline(p99, color="tab:red", linestyle="--", linewidth=1, label=f"p99 {p99:.2f} ms")
    ax2.legend(fontsize=8)
    ax2.set_title(f"control step latency (max {np.max(latency_ms):.1f} ms)")
    ax2.set_xlabel(f"ms (clipped at 2 x p99 = {top:.1f} ms)")
    ax2.set_ylabel("control steps")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(
    out: Path,
    report: dict[str, Any],
    videos: list[np.ndarray],
    latency_ms: np.ndarray,
    labels: list[dict[str, Any]] | None = None,
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
            write_video(tmp / "rollouts.mp4", videos, labels=labels)
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
