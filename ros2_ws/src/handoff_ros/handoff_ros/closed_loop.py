"""Run a checkpoint closed-loop on the simulated arm over ROS 2, as it would run on hardware.

Starts the ``sim_arm`` and ``policy`` nodes as separate processes with the package's parameter
file (what ``ros2 launch handoff_ros policy.launch.py robot:=sim`` starts), then for each
episode calls ``/sim_arm/reset`` and ``/policy/reset`` and watches ``/sim_arm/success`` until
the task succeeds or the time limit passes. Every message crosses real DDS on loopback.

Seeds: episode k (0..N-1) runs scene ``seed + k``, as ``handoff-eval --seed`` does (the sim arm
warms up on ``seed - 1``, not scored, and each reset takes the next); the default is
``handoff-eval``'s, past the checkpoint's demonstration seeds, so the two evaluate the same
scenes. ``--scheme`` / ``--inference-delay`` / ``--sampling-steps`` set the policy node's chunk
execution (the policy runner's, as in ``handoff-eval``); the report lists the seeds. The nodes join
the caller's ``ROS_DOMAIN_ID`` (so ``ros2 topic echo`` in another terminal sees them); unset,
one in 1-101 derived from the process id. The sim arm renders with EGL on a GPU machine and
OSMesa otherwise (sim/_gl.py; ``MUJOCO_GL`` overrides).

    python -m handoff_ros.closed_loop --checkpoint runs/demo --episodes 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from data.errors import UserError, cli_main
from data.outputs import check_output, publish, staging_dir

if TYPE_CHECKING:
    from handoff_ros.processes import Probe

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
EPISODE_SECONDS = 20.0  # wall-clock safety net per episode (lift: 200 steps at 20 Hz = 10 s)


def sim_params_file() -> Path:
    """The package's sim parameter file (source tree or colcon install share directory)."""
    path = CONFIG_DIR / "sim_panda.yaml"
    if path.is_file():
        return path
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("handoff_ros")) / "config" / "sim_panda.yaml"


def domain_id() -> int:
    """The caller's ``ROS_DOMAIN_ID``; unset or empty, one in 1-101, derived from the process id
    (the range ROS calls safe on every OS). UserError for anything but an integer 0-232 (Fast
    DDS derives its UDP ports from it and has none beyond 232)."""
    from handoff_ros.processes import fresh_domain_id

    value = os.environ.get("ROS_DOMAIN_ID", "").strip()
    if not value:
        return fresh_domain_id()
    if not value.isdigit() or not 0 <= int(value) <= 232:
        raise UserError(f"ROS_DOMAIN_ID={value!r} is not a domain id (an integer 0-232)")
    return int(value)


def next_episode(probe: Probe) -> float:
    """An episode boundary the policy cannot straddle: it stops commanding, the sim arm resets
    to its next scene, the policy's history and observations are cleared, then it starts
    afresh from the new scene (as handoff-eval starts each episode). Returns the wall time the
    episode started at."""
    from std_srvs.srv import SetBool, Trigger

    probe.call(SetBool, "/policy/enable", SetBool.Request(data=False))
    probe.call(Trigger, "/sim_arm/reset", Trigger.Request())
    probe.call(Trigger, "/policy/reset", Trigger.Request())
    probe.call(SetBool, "/policy/enable", SetBool.Request(data=True))
    return time.time()


def furthest_stage(probe: Probe, start: float) -> str:
    """The furthest stage (sim.mujoco_arm.STAGES) the sim arm's ``~/stage`` reported since
    ``start``, which the probe must subscribe to: how far an episode got with the object."""
    from sim.mujoco_arm import STAGES

    got = [STAGES.index(m.data) for t, m in probe.msgs["/sim_arm/stage"] if t > start]
    return STAGES[max(got, default=0)]


def watch(probe: Probe, alive: Callable[[], bool] = lambda: True, timeout: float = 120) -> bool:
    """Subscribes ``probe`` to what :func:`run_episodes` reads (the sim arm's ``~/success``,
    ``~/stage`` and ``/joint_states``, the policy's ``~/inference_ms``) and waits until the
    policy node has sent a few commands. False when it has not within ``timeout`` seconds or
    ``alive()`` turned false."""
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Bool, Float64, String

    probe.subscribe(Bool, "/sim_arm/success")
    probe.subscribe(String, "/sim_arm/stage")
    probe.subscribe(Float64, "/policy/inference_ms")
    probe.subscribe(JointState, "/joint_states")
    up = lambda: len(probe.msgs["/policy/inference_ms"]) > 3 or not alive()  # noqa: E731
    return probe.spin_until(up, timeout) and alive()


def run_episodes(
    probe: Probe,
    episodes: int,
    first_seed: int,
    max_steps: int,
    episode_seconds: float = EPISODE_SECONDS,
    progress: bool = True,
    after_episode: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Runs ``episodes`` episodes on the sim arm and policy nodes ``probe`` :func:`watch`-es.
    Episode k runs scene ``first_seed + k`` (the sim arm takes its next scene at each reset)
    and ends at success, after ``max_steps`` simulated steps (one ``/joint_states`` message
    each, as handoff-eval counts them) or, should the arm stall, ``episode_seconds`` of wall
    time. ``after_episode`` runs after each (it raises to stop). Returns the report fields
    ``closed_loop`` and the demo share: episodes, successes, success_rate, success_ci95,
    mean_steps_to_success, per_episode (seed, success, steps, stage, seconds), failure_stages
    and the node's inference_ms p50/p99."""
    from sim.evaluate import failure_stages, wilson_interval

    def won(start: float) -> bool:  # the sim arm reported success since ``start``
        return any(m.data for t, m in probe.msgs["/sim_arm/success"] if t > start)

    def steps(start: float) -> int:  # simulated steps since ``start``
        return sum(t > start for t, _ in probe.msgs["/joint_states"])

    results = []
    for ep in range(episodes):
        start = next_episode(probe)
        for topic in ("/sim_arm/success", "/sim_arm/stage", "/joint_states"):
            probe.msgs[topic].clear()
        probe.spin_until(lambda s=start: won(s) or steps(s) >= max_steps, episode_seconds)
        results.append(
            {
                "seed": first_seed + ep,
                "success": won(start),
                "steps": steps(start),
                "stage": furthest_stage(probe, start),
                "seconds": round(time.time() - start, 2),
            }
        )
        if progress:
            print(
                f"  ROS episode {ep + 1}/{episodes}: "
                f"{'success' if won(start) else 'no success'} in {results[-1]['steps']} steps",
                flush=True,
            )
        after_episode()
    latency = np.array([m.data for _, m in probe.msgs["/policy/inference_ms"]])
    successes = sum(r["success"] for r in results)
    return {
        "episodes": episodes,
        "successes": successes,
        "success_rate": successes / max(1, episodes),
        "success_ci95": [round(v, 4) for v in wilson_interval(successes, episodes)],
        "mean_steps_to_success": float(np.mean([r["steps"] for r in results if r["success"]]))
        if successes
        else None,
        "per_episode": results,
        "failure_stages": failure_stages(results),
        "inference_ms": {
            "p50": round(float(np.percentile(latency, 50)), 2),
            "p99": round(float(np.percentile(latency, 99)), 2),
        },
    }


def run_closed_loop(
    checkpoint: str | Path,
    task: str = "lift",
    episodes: int = 5,
    seed: int | None = None,
    episode_seconds: float = EPISODE_SECONDS,
    log_dir: Path | None = None,
    progress: bool = True,
    scheme: str = "auto",
    inference_delay: int = -1,
    max_steps: int | None = None,
    sampling_steps: int = 0,
) -> dict[str, Any]:
    """Returns {episodes, successes, success_rate, per_episode, inference_ms p50/p99, ...}.
    Episode k (0..``episodes``-1) runs scene ``seed + k`` (default: handoff-eval's unseen
    seeds); the policy node runs ``scheme`` at ``inference_delay`` (a diffusion checkpoint
    with ``sampling_steps`` denoising steps, 0: its own); nodes join
    :func:`domain_id`. An episode ends at success or after ``max_steps`` simulated steps (the
    task's limit, as in handoff-eval; counted as the sim arm's /joint_states messages) or,
    should the arm stall, ``episode_seconds`` of wall-clock time."""
    import policies
    from handoff_ros.processes import NodeProcess, Probe, nodes
    from policies.runner import set_sampling_steps
    from sim._gl import configure_gl
    from sim.evaluate import unseen_seed
    from sim.tasks import get_task

    policy = policies.load(checkpoint)  # fail here, in one line, before any node starts
    set_sampling_steps(policy, sampling_steps)  # refused here too, not after the nodes start
    if seed is None:
        seed = unseen_seed(str(checkpoint), episodes)
    max_steps = max_steps or get_task(task).max_steps
    cameras = [k for k in policy.input_keys if k in policy.embodiment.camera_names]
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="handoff-ros-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    dom = domain_id()
    configure_gl()  # the node processes inherit it: EGL on a GPU machine, else OSMesa
    params = ["--params-file", str(sim_params_file())]
    arm_overrides: dict[str, Any] = {"task": task, "seed": seed - 1, "cameras": ",".join(cameras)}
    if cameras:
        cam = policy.embodiment.camera(cameras[0])
        arm_overrides |= {"image_height": cam.height, "image_width": cam.width}
    arm = NodeProcess("sim_arm", dom, arm_overrides, log_dir, extra_args=params)
    pol_params = {
        "checkpoint": str(checkpoint),
        "robot": "sim",
        "scheme": scheme,
        "inference_delay": inference_delay,
        "sampling_steps": sampling_steps,
    }
    pol = NodeProcess("policy", dom, pol_params, log_dir, extra_args=params)
    with nodes(arm, pol), Probe(dom, "closed_loop") as probe:
        if not watch(probe):
            raise RuntimeError(
                f"the policy node sent no commands within 120 s; logs: "
                f"{arm.log_path}, {pol.log_path}\n{pol.log()[-2000:]}"
            )
        report = run_episodes(probe, episodes, seed, max_steps, episode_seconds, progress)
    return {
        "task": task,
        "ros_domain_id": dom,
        **report,
        "scheme": scheme,
        "inference_delay": inference_delay,
        "sampling_steps": sampling_steps,
        "logs": [str(arm.log_path), str(pol.log_path)],
    }


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint or run directory")
    p.add_argument("--task", default="lift", help="sim task (lift)")
    p.add_argument("--episodes", type=int, default=5, help="episodes (5)")
    p.add_argument(
        "--seed",
        type=int,
        help="scene seed of episode 0; episode k runs SEED+k, as in handoff-eval (default: "
        "handoff-eval's, past the checkpoint's demonstration seeds); the nodes join "
        "$ROS_DOMAIN_ID (unset: one in 1-101)",
    )
    p.add_argument(
        "--scheme",
        default="auto",
        choices=["auto", "sync", "async", "ensemble", "rtc"],
        help="the policy node's chunk execution (default auto: the checkpoint's)",
    )
    p.add_argument(
        "--inference-delay",
        type=int,
        default=-1,
        help="the policy node's inference_delay in ticks (default -1: as soon as inferred)",
    )
    p.add_argument(
        "--sampling-steps",
        type=int,
        default=0,
        help="the policy node's sampling_steps: denoising steps of a diffusion checkpoint "
        "(default 0: its own, e.g. 10 DDIM)",
    )
    p.add_argument(
        "--episode-seconds",
        type=float,
        default=EPISODE_SECONDS,
        help=f"wall-clock safety net per episode ({EPISODE_SECONDS:g} s); an episode ends "
        "after the task's step limit, as in handoff-eval",
    )
    p.add_argument("--out", help="write the report as JSON here")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    args = p.parse_args(argv)
    if args.episodes < 1:
        raise UserError("--episodes must be at least 1")
    if args.out:  # refused now, not after minutes of running
        from sim.evaluate import checkpoint_inputs

        inputs = checkpoint_inputs(args.checkpoint)
        check_output(args.out, inputs, force=args.force, what="--out")
    report = run_closed_loop(
        args.checkpoint,
        args.task,
        args.episodes,
        args.seed,
        args.episode_seconds,
        scheme=args.scheme,
        inference_delay=args.inference_delay,
        sampling_steps=args.sampling_steps,
    )
    print(json.dumps(report))
    if args.out:  # written beside it, then swapped in: never a half-written file
        tmp = staging_dir(Path(args.out))
        tmp.write_text(json.dumps(report, indent=2))
        publish(tmp, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
