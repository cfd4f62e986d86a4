"""`make demo`: the whole handoff loop on the simulated arm, on a CPU, in about 15 minutes.

1. collect scripted `lift` demonstrations into a zarr store        (handoff-collect)
2. train a policy on them                                          (handoff-train)
3. evaluate it in simulation with parallel workers                 (handoff-eval)
4. run the checkpoint closed-loop over ROS 2: ``ros2 launch handoff_ros policy.launch.py
   robot:=sim`` where launch is available (a sourced ROS 2, or ../shared/ros2-launch built
   once into the venv: see handoff_ros.ros2_launch); elsewhere the same two nodes, sim_arm and
   policy, started one by one with the package's parameter file
5. print a summary table and where the report, plots and video are

Each stage reuses what an earlier run built (a store with enough episodes, a finished
checkpoint, an evaluation report) unless --fresh is given. --fresh redoes every stage, each
replacing its earlier output only when the new one is complete (the commands' --force): nothing
in --out is deleted up front, so an interrupted --fresh run keeps the last complete results and
an --out that holds other things keeps them. --quick shrinks every stage for a smoke test of
the loop: a few demonstrations, episodes and steps, and the tiny network of the tests
(``--recipe tiny``); the policy it trains is not expected to succeed.

    python -m handoff_ros.demo [--policy act|diffusion] [--cameras] [--out demo] [--fresh] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from data.errors import UserError, cli_main

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class DemoSize:
    demos: int
    train_steps: int
    train_minutes: float
    eval_episodes: int
    ros_episodes: int
    video_episodes: int
    recipe: str = "cpu"  # handoff-train --recipe: the network sizes and training settings


# Full size on a 2-core machine: 100 demos (~1 min), the CPU recipe capped at 9 minutes of
# training (ACT reached 50/50 on lift within its recipe's 14.5-minute budget on a loaded box),
# 50 evaluation episodes on 2 workers (~2 min), 5 ROS episodes (~2 min).
FULL = DemoSize(
    demos=100, train_steps=0, train_minutes=9.0, eval_episodes=50, ros_episodes=5, video_episodes=3
)
# --quick: the tiny networks the tests use (policies/recipes/<policy>_tiny.yaml)
QUICK = DemoSize(
    demos=4,
    train_steps=20,
    train_minutes=0.0,
    eval_episodes=2,
    ros_episodes=1,
    video_episodes=1,
    recipe="tiny",
)


def stage(n: int, title: str) -> None:
    print(f"\n== [{n}/5] {title}", flush=True)


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    env = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise UserError(f"`{' '.join(cmd)}` failed with exit status {proc.returncode}")


def store_episodes(path: Path) -> int:
    from data.store import DemoStore

    try:
        return DemoStore.open(path).n_episodes
    except UserError:
        return 0


def launched_closed_loop(run_dir: Path, episodes: int, log_dir: Path, seed: int = 1000) -> dict:
    """Stage 4 over ``ros2 launch handoff_ros policy.launch.py robot:=sim``; the report has
    run_closed_loop's keys. LaunchUnavailableError when this machine has no ros2 launch."""
    import yaml

    import policies
    from handoff_ros.closed_loop import run_episodes, sim_params_file, watch
    from handoff_ros.processes import Probe, fresh_domain_id
    from handoff_ros.ros2_launch import LaunchProcess, launch_env
    from handoff_ros.rosutil import use_dds_profile
    from sim.tasks import get_task

    print("finding ros2 launch (the first time, builds ../shared/ros2-launch: ~1 min)", flush=True)
    env = launch_env()
    loaded = policies.load(run_dir)  # fail here, in one line, before anything starts
    cameras = [k for k in loaded.input_keys if k in loaded.embodiment.camera_names]
    # the package's parameter file; the arm renders only the cameras this policy reads
    params = yaml.safe_load(sim_params_file().read_text())
    arm = {"task": "lift", "seed": seed, "cameras": ",".join(cameras)}
    if cameras:
        cam = loaded.embodiment.camera(cameras[0])
        arm |= {"image_height": cam.height, "image_width": cam.width}
    params["sim_arm"]["ros__parameters"] |= arm
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "params.yaml").write_text(yaml.safe_dump(params))
    dom = int(os.environ.get("ROS_DOMAIN_ID") or fresh_domain_id())  # the caller's, if set
    env = use_dds_profile({**env, "ROS_DOMAIN_ID": str(dom)})
    args = {"robot": "sim", "checkpoint": str(run_dir), "params_file": str(log_dir / "params.yaml")}
    launch = LaunchProcess("policy.launch.py", args, env, log_dir)
    print(f"$ {launch.command}  (log: {launch.log_path})", flush=True)

    def check() -> None:  # after each episode: a node that died ends the run, naming it
        if launch.died():
            raise UserError(f"{launch.died()[0]}; log: {launch.log_path}")

    with launch, Probe(dom, "demo") as probe:
        if not watch(probe, launch.alive):
            raise UserError(f"the policy sent no commands; log: {launch.log_path}")
        report = run_episodes(
            probe, episodes, seed + 1, get_task("lift").max_steps, after_episode=check
        )
    return {
        "task": "lift",
        **report,
        "logs": [str(launch.log_path)],
        "started_by": launch.command,
    }


# --cameras: the deployable loop (agentview + wrist at 84x84, no simulator-only state). 200
# demos render in ~4 minutes on two cores; the CPU camera recipe trains ~30 minutes.
CAMERAS = "agentview,wrist"
CAMERA_FULL = replace(FULL, demos=200, train_minutes=0.0)  # 0: the recipe's own budget


def demo(
    policy: str, out: Path, size: DemoSize, fresh: bool, workers: int, cameras: bool = False
) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_cameras" if cameras else ""
    store, run_dir = out / f"lift{suffix}.zarr", out / f"{policy}{suffix}"
    eval_dir = run_dir / "eval"
    t_start = time.time()
    timings = {}

    stage(1, f"collect {size.demos} scripted lift demonstrations -> {store}")
    t0 = time.time()
    have = 0 if fresh else store_episodes(store)
    if have >= size.demos:
        print(f"reusing {store} ({have} episodes)")
    else:
        cmd = [str(BIN / "handoff-collect"), "--task", "lift", "--episodes", str(size.demos - have)]
        cmd += ["--out", str(store), "--workers", str(workers), "--seed", str(have)]
        if cameras:
            cmd += ["--cameras", CAMERAS, "--image-size", "84"]
        run(cmd + (["--force"] if fresh else []))  # --force: a new store, swapped in when done
    timings["collect_s"] = time.time() - t0

    stage(2, f"train {policy} on this CPU -> {run_dir}")
    t0 = time.time()
    if (run_dir / "last" / "config.json").is_file() and not fresh:
        print(f"reusing the checkpoint in {run_dir} (--fresh retrains)")
    else:
        cmd = [
            str(BIN / "handoff-train"),
            "--policy",
            policy,
            "--data",
            str(store),
            "--task",
            "lift",
            "--out",
            str(run_dir),
            "--recipe",
            size.recipe,
            "--device",
            "cpu",
            "--force",
        ]
        if not cameras:
            cmd.append("--privileged")  # the state policy reads the cube's pose: sim only
        if size.train_minutes:
            cmd += ["--set", f"train.max_minutes={size.train_minutes}"]
        if size.train_steps:
            cmd += ["--steps", str(size.train_steps), "--eval-every", "0", "--eval-episodes", "1"]
        run(cmd)
    timings["train_s"] = time.time() - t0
    meta_path = run_dir / "last" / "train_meta.json"
    train_meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}

    stage(3, f"evaluate {size.eval_episodes} episodes in simulation -> {eval_dir}")
    t0 = time.time()
    report_path = eval_dir / "report.json"
    if report_path.is_file() and timings["train_s"] < 5 and not fresh:
        print(f"reusing {report_path}")
    else:
        run(
            [
                str(BIN / "handoff-eval"),
                "--checkpoint",
                str(run_dir),
                "--task",
                "lift",
                "--episodes",
                str(size.eval_episodes),
                "--workers",
                str(workers),
                "--out",
                str(eval_dir),
                "--video-episodes",
                str(size.video_episodes),
                "--force",
            ]
        )
    report = json.loads(report_path.read_text())
    timings["eval_s"] = time.time() - t0

    stage(4, f"run the checkpoint closed-loop over ROS 2 ({size.ros_episodes} episodes)")
    t0 = time.time()
    from handoff_ros.closed_loop import run_closed_loop
    from handoff_ros.ros2_launch import LaunchUnavailableError

    try:
        ros = launched_closed_loop(run_dir, size.ros_episodes, log_dir=out / "ros_logs")
    except LaunchUnavailableError as e:
        print(f"no ros2 launch here ({e}); starting sim_arm and policy one by one")
        ros = run_closed_loop(run_dir, "lift", size.ros_episodes, log_dir=out / "ros_logs")
    (out / "ros_report.json").write_text(json.dumps(ros, indent=2))
    timings["ros_s"] = time.time() - t0

    stage(5, "summary")
    lo, hi = report["success_ci95"]
    rows = [
        ("demonstrations", f"{store_episodes(store)} scripted lift episodes ({store})"),
        (
            "policy",
            f"{policy}, {train_meta.get('step', '?')} steps, trained in "
            f"{timings['train_s'] / 60:.1f} min" + (" (reused)" if timings["train_s"] < 5 else ""),
        ),
        (
            "sim success",
            f"{report['successes']}/{report['n_episodes']} = "
            f"{report['success_rate']:.0%} (Wilson 95% CI {lo:.0%}-{hi:.0%})",
        ),
        ("ROS closed loop", f"{ros['successes']}/{ros['episodes']} episodes succeeded over DDS"),
        (
            "inference latency",
            f"sim p50 {report['latency_ms']['p50']:.1f} ms, p99 "
            f"{report['latency_ms']['p99']:.1f} ms per step; ROS node p50 "
            f"{ros['inference_ms']['p50']:.1f} ms, p99 "
            f"{ros['inference_ms']['p99']:.1f} ms per chunk",
        ),
        ("total time", f"{(time.time() - t_start) / 60:.1f} min"),
        ("report", str(report_path)),
        ("plots / video", f"{eval_dir / 'summary.png'}, {eval_dir / 'rollouts.mp4'}"),
        ("ROS report", str(out / "ros_report.json")),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    summary = {"sim": report, "ros": ros, "timings_s": timings, "policy": policy}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--policy", default="act", help="policy to train: act (default) or diffusion")
    p.add_argument("--out", default="runs/demo", help="folder for the store, run and reports")
    p.add_argument("--fresh", action="store_true", help="rebuild everything from scratch")
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes (--recipe tiny): a smoke test of the loop"
    )
    p.add_argument("--workers", type=int, default=2, help="parallel sim workers (2)")
    p.add_argument(
        "--cameras",
        action="store_true",
        help="the deployable loop: demos with agentview + wrist cameras, a policy on cameras "
        "and the arm's own state only (the CPU camera recipe, ~30 min of training) instead of "
        "the simulation-only state policy",
    )
    args = p.parse_args(argv)
    size = QUICK if args.quick else CAMERA_FULL if args.cameras else FULL
    demo(args.policy, Path(args.out), size, args.fresh, args.workers, args.cameras)
    return 0


if __name__ == "__main__":
    sys.exit(main())
