"""Conversion throughput per direction and peak memory, for 2 cameras 96x96 + low-dim.

Prints one JSON line. Every direction runs in a fresh process, twice: on half the episodes and
on all of them. ``peak_rss_mb`` is the full run's peak resident memory; ``peak_growth_mb`` =
full peak - half peak is what the second half of the episodes cost, which streaming keeps
near zero: ``max_growth_vs_added_raw`` (worst growth / raw size of the added episodes) would
be >= 1 if a conversion held its input in memory (target <= 0.5: peak RSS of a process is
noisy by several MB, allocator and FFmpeg pools settle over the first episodes; tracemalloc
shows Python-level memory flat across episodes). The baseline measured
in the same run is handoff -> handoff (read a store, append every episode to a new one: the
store's own cost); ``vs_copy`` says how each direction compares with it.

    python tests/benchmarks/bench_convert.py [--quick] [--episodes 20] [--steps 100]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

# run as a script, this folder is on sys.path: the shared camera-like test frames
from bench_store import camera_frames

DIRECTIONS = [
    ("handoff", "handoff", "copy.zarr", "src.zarr"),  # the baseline
    ("handoff", "lerobot", "lerobot", "src.zarr"),
    ("lerobot", "handoff", "from_lerobot.zarr", "lerobot"),
    ("handoff", "robomimic", "demo.hdf5", "src.zarr"),
    ("robomimic", "handoff", "from_robomimic.zarr", "demo.hdf5"),
    ("handoff", "rosbag2", "bag", "src.zarr"),
    ("rosbag2", "handoff", "from_bag.zarr", "bag"),
]


def make_source(path: Path, episodes: int, steps: int) -> float:
    from data.embodiment import load_embodiment
    from data.store import DemoStore

    spec = load_embodiment("sim_panda").with_cameras(None, (96, 96))
    store = DemoStore.create(path, spec)
    rng = np.random.default_rng(0)
    for e in range(episodes):
        f32 = np.float32
        store.append_episode(
            {
                "joint_pos": rng.normal(size=(steps, 7)).astype(f32),
                "joint_vel": rng.normal(size=(steps, 7)).astype(f32),
                "gripper_pos": rng.uniform(0, 0.04, (steps, 2)).astype(f32),
                "eef_pos": rng.normal(size=(steps, 3)).astype(f32),
                "eef_quat": rng.normal(size=(steps, 4)).astype(f32),
                "action": rng.normal(size=(steps, 8)).astype(f32),
                "agentview": camera_frames(steps, 96, 96, seed=2 * e),
                "wrist": camera_frames(steps, 96, 96, seed=2 * e + 1),
            },
            task="lift",
            source="scripted",
            success=True,
            seed=e,
        )
    return episodes * steps * 2 * 96 * 96 * 3 / 2**20


def run_direction(root: str, src: str, dst: str, fmt_in: str, fmt_out: str, q: mp.Queue) -> None:
    from data.convert import convert
    from data.embodiment import load_embodiment

    spec = load_embodiment("sim_panda").with_cameras(None, (96, 96))
    t0 = time.perf_counter()
    report = convert(
        Path(root) / src, Path(root) / dst, fmt_in, fmt_out, embodiment=spec, progress=False
    )
    elapsed = time.perf_counter() - t0
    q.put({"frames": report["frames"], "seconds": elapsed, "peak_rss_mb": peak_rss_mb()})


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not getrusage's ru_maxrss: a spawned
    child inherits its parent's ru_maxrss across exec, while VmHWM starts afresh."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: best effort


def run_all(root: Path, episodes: int, steps: int) -> tuple[float, dict[str, dict]]:
    """Every direction in a fresh process (each reads what an earlier one wrote)."""
    root.mkdir()
    raw_mb = make_source(root / "src.zarr", episodes, steps)
    ctx = mp.get_context("spawn")
    results = {}
    for fmt_in, fmt_out, dst, src in DIRECTIONS:
        q = ctx.Queue()
        p = ctx.Process(target=run_direction, args=(str(root), src, dst, fmt_in, fmt_out, q))
        p.start()
        results[f"{fmt_in}->{fmt_out}"] = q.get(timeout=600)
        p.join()
    return raw_mb, results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="4 episodes of 50 steps")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    episodes, steps = (4, 50) if args.quick else (args.episodes, args.steps)
    out: dict = {"bench": "convert", "cameras": "2x96x96", "episodes": episodes, "steps": steps}
    with tempfile.TemporaryDirectory() as tmp:
        half_mb, half = run_all(Path(tmp) / "half", episodes // 2, steps)
        raw_mb, results = run_all(Path(tmp) / "all", episodes, steps)
    out["source_raw_mb"] = round(raw_mb, 1)
    copy = results["handoff->handoff"]
    copy_fps = copy["frames"] / copy["seconds"]
    fields = ("steps_per_s", "camera_frames_per_s", "vs_copy", "peak_rss_mb", "peak_growth_mb")
    for f in fields:
        out[f] = {}
    for name, r in results.items():
        fps = r["frames"] / r["seconds"]
        out["steps_per_s"][name] = round(fps, 1)
        out["camera_frames_per_s"][name] = round(2 * fps, 1)  # 2 cameras per step
        out["vs_copy"][name] = round(fps / copy_fps, 2)
        out["peak_rss_mb"][name] = round(r["peak_rss_mb"], 1)
        out["peak_growth_mb"][name] = round(r["peak_rss_mb"] - half[name]["peak_rss_mb"], 1)
    worst = max(out["peak_growth_mb"].values())
    out["max_growth_vs_added_raw"] = round(worst / (raw_mb - half_mb), 2)
    # --quick (2 vs 4 short episodes) is a smoke run: allocator warm-up swamps the growth
    out["targets"] = {} if args.quick else {"max_growth_vs_added_raw": "<= 0.5"}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
