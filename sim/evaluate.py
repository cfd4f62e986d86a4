"""Evaluation in simulation: ``evaluate_policy`` (the trainer's hook) and ``handoff-eval``.

    handoff-eval --checkpoint runs/lift_diffusion --task lift --episodes 50 --workers 2 --out ev/
    handoff-eval --expert --task square --episodes 50 --workers 2
    handoff-eval --replay demos/lift.zarr:3 --out ev_replay/

Anything with the policy interface of DESIGN.md runs here: learned checkpoints (loaded through
the ``load_policy`` hook, never imported from ``policies``), the scripted expert, and an
open-loop replay of a stored episode. Episode i uses seed ``seed + i``, so a report is
reproducible whatever the number of workers.

``--out DIR`` is refused before any work when it is, holds or lies inside an input (the
checkpoint, a run's ``best/`` and ``last/``, the replayed store; a run's ``eval/`` is fine); an
earlier report in DIR is replaced (``--force``) only once the new one is complete.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from data.errors import UserError, cli_main
from data.outputs import check_output, check_writable
from data.registry import hook
from sim._gl import require_gl

VIDEO_CAMERA = "agentview"
VIDEO_SIZE = (160, 160)  # (H, W): legible, yet cheap to render with OSMesa


def wilson_interval(successes: int, n: int, z: float = 1.96) -> list[float]:
    """Wilson score interval (95% for z=1.96) of a success rate; [0, 1] when n == 0."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def failure_stages(episodes: list[dict[str, Any]]) -> dict[str, int]:
    """How many failed episodes got how far with the task's object: {stage: count} over
    sim.mujoco_arm.STAGES, from each episode's ``success`` and furthest ``stage``."""
    from sim.mujoco_arm import STAGES

    return {name: sum(not e["success"] and e["stage"] == name for e in episodes) for name in STAGES}


def check_compatible(policy: Any, task_spec: Any, task: str) -> list[str]:
    """Cameras the policy consumes; fails naming any embodiment or observation mismatch."""
    from sim.mujoco_arm import CAMERAS

    problems = task_spec.compatible_with(policy.embodiment)
    available = set(task_spec.observation) | set(CAMERAS)
    missing = [k for k in policy.input_keys if k not in available]
    if missing:
        problems.append(f"policy reads {missing}, which task {task!r} does not observe")
    if problems:
        raise UserError(
            f"policy embodiment {policy.embodiment.name!r} does not match task {task!r}: "
            + "; ".join(problems)
        )
    return [k for k in policy.input_keys if k in CAMERAS]


class _Worker:
    """One task + one policy inside one process. A learned policy (one with ``predict_chunk``)
    runs through the policy runner the ROS node uses (the ``make_runner`` hook, with
    ``runner`` as its options); the scripted expert and replays step in lock-step."""

    def __init__(
        self,
        make_policy: Callable[[], Any],
        task: str,
        max_steps: int | None,
        runner: dict[str, Any] | None = None,
    ) -> None:
        from data.embodiment import load_embodiment
        from sim.tasks import get_task, make_task

        self.policy = make_policy()
        self.runner = None
        if hasattr(self.policy, "predict_chunk"):
            self.runner = hook("make_runner")(self.policy, **(runner or {}))
        spec = get_task(task).embodiment_for(load_embodiment("sim_panda"))
        cameras = check_compatible(self.policy, spec, task)
        size = (84, 84)
        if cameras:  # render at the size the policy was trained on
            require_gl()  # one line naming the back-ends that work, not a first-frame traceback
            cam = self.policy.embodiment.camera(cameras[0])
            size = (cam.height, cam.width)
        self.task = make_task(task, cameras=cameras, image_size=size, max_steps=max_steps)
        if hasattr(self.policy, "bind"):  # the scripted expert needs the arm's kinematics
            self.policy.bind(self.task)


def _setup(
    make_policy: Callable[[], Any], task: str, max_steps: int | None, runner: dict | None
) -> _Worker:
    return _Worker(make_policy, task, max_steps, runner)


def _episode(w: _Worker, job: tuple[int, int, int, bool]) -> dict[str, Any]:
    """Run one episode; job = (seed, obs_latency, action_latency, record video)."""
    from sim.mujoco_arm import STAGES

    seed, obs_latency, action_latency, video = job
    task, policy, runner = w.task, w.policy, w.runner
    obs, _ = task.reset(seed=seed)
    policy.reset()
    if runner is not None:
        runner.reset(seed=seed)  # the same sampling noise for an episode in every run
    dt = task.embodiment.dt
    # obs_latency: the policy sees the observation from k steps ago (the first one repeated at
    # the start); action_latency: an action reaches the arm k steps after it was computed,
    # the arm holding its reset pose until then
    seen: deque[dict[str, np.ndarray]] = deque([obs] * (obs_latency + 1), maxlen=obs_latency + 1)
    pending: deque[np.ndarray] = deque([task.arm.last_action.copy()] * action_latency)
    latencies, frames = [], []
    success, length, stage = False, 0, 0
    started, cpu0 = time.time(), time.process_time()
    while True:
        if video:
            frames.append(task.arm.render(VIDEO_CAMERA, VIDEO_SIZE))
        t0 = time.perf_counter()
        if runner is None:
            action = np.asarray(policy.select_action(seen[0]), dtype=np.float32)
        else:  # the node's path: runner (history, chunks, delay, scheme) + safety filter
            now = length * dt
            joints = (seen[0]["joint_pos"], now - obs_latency * dt)
            command = runner.tick(seen[0], now, joints=joints).command
            action = task.arm.last_action if command is None else command.astype(np.float32)
        latencies.append((time.perf_counter() - t0) * 1000.0)
        pending.append(action)
        obs, _, terminated, truncated, info = task.step(pending.popleft())
        seen.append(obs)
        length += 1
        stage = max(stage, task.arm.progress()) if stage < len(STAGES) - 1 else stage
        if terminated or truncated:
            success = bool(info["success"])
            break
    return {
        "seed": seed,
        "success": success,
        "length": length,
        "stage": STAGES[stage],
        "latency_ms": latencies,
        "chunk_ms": list(runner.inference_ms)[-runner.stats.chunks :] if runner else [],
        "execution": {"scheme": runner.scheme, **runner.stats.as_dict()} if runner else {},
        "frames": np.stack(frames) if frames else None,
        "span": (started, time.time()),
        "cpu_s": time.process_time() - cpu0,
    }


def evaluate_policy(
    policy_or_factory: Any,
    task: str,
    n_episodes: int,
    *,
    seed: int = 0,
    workers: int = 1,
    max_steps: int | None = None,
    obs_latency: int = 0,
    action_latency: int = 0,
    scheme: str = "auto",
    inference_delay: int = 0,
    execute_steps: int = 0,
    safety: bool = True,
    sampling_steps: int = 0,
    soft_steps: int = -1,
    out_dir: str | Path | None = None,
    video_episodes: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``n_episodes`` of a policy (or a picklable zero-arg policy factory) on ``task``.

    A learned policy runs through the policy runner (policies/runner.py) as on the arm:
    ``scheme`` (sync, async, ensemble, rtc; auto: the policy's default), ``inference_delay``
    d in control steps (-1: each chunk's measured wall-clock time), ``execute_steps`` s (0: the
    policy's Ta), for rtc ``soft_steps`` (actions after d the soft mask covers; -1: the whole
    overlap) and the safety filter of the simulated arm (``safety``).
    ``sampling_steps`` > 0 overrides a diffusion policy's denoising steps. ``obs_latency`` /
    ``action_latency`` add transport delays around it (observation k steps old; command
    applied k steps late).

    Returns the JSON-able report of the contract in DESIGN.md; with ``out_dir`` also writes
    report.json, rollouts.mp4 (the first ``video_episodes`` episodes) and summary.png, replacing
    an earlier report there only once they are complete (:func:`sim.report.write_outputs`).
    """
    from tqdm import tqdm

    from sim.tasks import TASKS
    from sim.workers import run_jobs

    TASKS.get(task)
    if n_episodes <= 0 or workers <= 0:
        raise UserError("the number of episodes and of workers must be positive")
    if obs_latency < 0 or action_latency < 0:
        raise UserError("--obs-latency and --action-latency are control steps, >= 0")
    if inference_delay < -1:
        raise UserError("--inference-delay is control steps >= 0, or 'measured'")
    if sampling_steps < 0:
        raise UserError("--sampling-steps must be >= 0 (0: the checkpoint's own)")
    if soft_steps < -1:
        raise UserError("--soft-steps must be >= 0, or -1 for the whole overlap")
    runner = {
        "scheme": scheme,
        "delay": inference_delay,
        "execute_steps": execute_steps,
        "safety": safety,
        "sampling_steps": sampling_steps,
        "soft_steps": soft_steps,
    }
    is_factory = callable(policy_or_factory) and not hasattr(policy_or_factory, "select_action")
    if not is_factory:
        if workers > 1:
            raise UserError("pass a picklable policy factory (not a policy object) for workers > 1")
        policy_obj = policy_or_factory
        make_policy: Callable[[], Any] = lambda: policy_obj  # noqa: E731
    else:
        make_policy = policy_or_factory
    workers = min(workers, n_episodes)
    video_episodes = video_episodes if out_dir is not None else 0
    if video_episodes > 0:
        require_gl()  # before any episode runs
    setup = functools.partial(_setup, make_policy, task, max_steps, runner)
    jobs = [(seed + i, obs_latency, action_latency, i < video_episodes) for i in range(n_episodes)]
    results, ok = [], 0
    t0 = time.perf_counter()
    bar = tqdm(total=n_episodes, desc=f"eval {task}", unit="ep", disable=not progress)
    try:
        for r in run_jobs(setup, _episode, jobs, workers):
            results.append(r)
            ok += r["success"]
            bar.update(1)
            bar.set_postfix(success=f"{ok}/{len(results)}")
    finally:
        bar.close()
    wall = time.perf_counter() - t0
    # rollout throughput excludes worker start-up (scene build, policy load): from the first
    # episode's start to the last one's end, across all workers
    span = max(r["span"][1] for r in results) - min(r["span"][0] for r in results)
    steps = sum(r["length"] for r in results)
    lat = np.concatenate([r["latency_ms"] for r in results])
    chunk_ms = np.concatenate([r["chunk_ms"] for r in results] + [[]])
    report = {
        "task": task,
        "n_episodes": n_episodes,
        "successes": ok,
        "success_rate": ok / n_episodes,
        "success_ci95": [round(v, 4) for v in wilson_interval(ok, n_episodes)],
        "mean_length": float(np.mean([r["length"] for r in results])),
        "latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))},
        "seeds": [r["seed"] for r in results],
        "per_episode": [{k: r[k] for k in ("seed", "success", "length", "stage")} for r in results],
        "failure_stages": failure_stages(results),
        "workers": workers,
        "obs_latency": obs_latency,
        "action_latency": action_latency,
        **_execution_summary(results, runner, chunk_ms),
        "wall_s": wall,
        "rollout_s": span,
        "steps_per_s": float(steps / span) if span > 0 else 0.0,
        # per CPU-second of the workers: separates our cost from other load on a shared machine
        "steps_per_cpu_s": float(steps / max(sum(r["cpu_s"] for r in results), 1e-9)),
    }
    if out_dir is not None:
        from sim.report import write_outputs

        shown = [r for r in results if r["frames"] is not None]
        labels = [{k: r[k] for k in ("seed", "success", "length")} for r in shown]
        write_outputs(Path(out_dir), report, [r["frames"] for r in shown], lat, labels)
    return report


def _execution_summary(
    results: list[dict[str, Any]], runner: dict[str, Any], chunk_ms: np.ndarray
) -> dict[str, Any]:
    """How chunks were executed, over the episodes: scheme, delay, mean steps to success, held
    ticks, and the seam metric (per episode, the largest joint jump where execution switched
    chunks and inside chunks, rad; averaged over episodes)."""
    stats = [r["execution"] for r in results if r["execution"]]
    if not stats:
        return {}
    won = [r["length"] for r in results if r["success"]]
    seamed = [s for s in stats if s["seams"]]
    return {
        "scheme": stats[0]["scheme"],  # auto resolved to the policy's default
        "inference_delay": "measured" if runner["delay"] == -1 else runner["delay"],
        "safety": runner["safety"],
        "sampling_steps": runner["sampling_steps"] or None,
        "soft_steps": runner["soft_steps"],
        "mean_steps_to_success": float(np.mean(won)) if won else None,
        "held_ticks_per_episode": float(np.mean([s["held"] for s in stats])),
        "chunks_per_episode": float(np.mean([s["chunks"] for s in stats])),
        "boundary_jump": float(np.mean([s["boundary_jump"] for s in seamed])) if seamed else None,
        "inchunk_jump": float(np.mean([s["inchunk_jump"] for s in stats])),
        "chunk_ms": {
            "p50": float(np.percentile(chunk_ms, 50)) if len(chunk_ms) else 0.0,
            "p99": float(np.percentile(chunk_ms, 99)) if len(chunk_ms) else 0.0,
        },
    }


# ---- handoff-eval --------------------------------------------------------------------


def unseen_seed(checkpoint: str | None, n: int) -> int:
    """The first of ``n`` evaluation seeds: :data:`data.store.EVAL_SEED`, moved past the scene
    seeds of the checkpoint's training store when that store can be read (the run's
    ``train_meta.json`` names it), so no evaluation scene repeats a demonstration's."""
    from data.store import EVAL_SEED, DemoStore

    for folder in checkpoint_inputs(checkpoint) if checkpoint else []:
        f = folder / "train_meta.json"
        try:
            data = json.loads(f.read_text()).get("data")
            store = DemoStore.open(data, verify=False) if isinstance(data, str) else None
        except (OSError, ValueError, UserError):
            store = None  # the store moved or is elsewhere: the fixed base is far from demos
        if store is not None:
            return store.first_seed_after(EVAL_SEED, n)
    return EVAL_SEED


def checkpoint_inputs(path: str) -> list[Path]:
    """What ``--checkpoint`` may read: the checkpoint folder, or a run's ``best/`` and
    ``last/``. A run's ``eval/`` is not among them: the trainer writes its reports there."""
    p = Path(path)
    if (p / "model.safetensors").exists():
        return [p]
    return [p / sub for sub in ("best", "last") if (p / sub).exists()] or [p]


def check_report_out(out: str, inputs: list[Path], force: bool) -> None:
    """Refuse ``--out`` before any work: it must not be, hold or lie inside an input, be a file,
    or hold a report already (unless ``force``); the location must be writable."""
    from sim.report import REPORT_FILES

    check_output(out, inputs, what="--out")
    if os.path.lexists(out) and not Path(out).is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the report")
    if Path(out).is_dir():  # a folder that holds other files gets the report written inside
        check_writable(Path(out) / "report.json")
    have = [n for n in REPORT_FILES if os.path.lexists(Path(out) / n)]
    if have and not force:
        raise UserError(f"{out} holds a report ({', '.join(have)}); pass --force to replace it")


def _delay(text: str) -> int:
    """--inference-delay: 'measured' -> -1, else control steps >= 0."""
    if text.strip().lower() == "measured":
        return -1
    if not text.strip().isdigit():
        raise UserError(f"--inference-delay {text!r}: give control steps (0, 1, ...) or measured")
    return int(text)


def _replay_target(text: str) -> tuple[str, int]:
    path, sep, ep = text.rpartition(":")
    if not sep or not path:
        raise UserError(f"--replay {text!r}: expected STORE:EPISODE, e.g. demos/lift.zarr:0")
    try:
        return path, int(ep)
    except ValueError:
        raise UserError(f"--replay {text!r}: EPISODE must be an integer") from None


@cli_main
def main(argv: list[str] | None = None) -> None:
    from sim.replay import ReplayPolicy
    from sim.tasks import TASKS

    p = argparse.ArgumentParser(
        prog="handoff-eval",
        description="Run a checkpoint, the scripted expert or a stored episode in simulation: "
        "success rate with its Wilson 95% interval, episode lengths, inference latency.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--checkpoint", metavar="DIR", help="checkpoint folder, or a run folder (uses its best/)"
    )
    src.add_argument("--expert", action="store_true", help="evaluate the scripted expert")
    src.add_argument(
        "--replay",
        metavar="STORE:EPISODE",
        help="open-loop replay of episode EPISODE of a store or LeRobot dataset folder",
    )
    p.add_argument("--task", help=f"one of: {', '.join(TASKS.names())} (replay: from the store)")
    p.add_argument("--episodes", type=int, help="episodes to run (default 50; replay 1)")
    p.add_argument(
        "--workers", type=int, default=1, help="parallel simulator processes (default 1)"
    )
    p.add_argument(
        "--seed",
        type=int,
        help="scene seed of episode 0; episode i uses seed+i (default 100000, past the seeds "
        "of the checkpoint's training store, so no evaluation repeats a demonstration's "
        "scene; replay: the episode's own seed)",
    )
    p.add_argument(
        "--max-steps", type=int, help="episode time limit in control steps (default: the task's)"
    )
    p.add_argument(
        "--obs-latency",
        type=int,
        default=0,
        help="observation delay in control steps (default 0; 1 step = 50 ms at 20 Hz)",
    )
    p.add_argument(
        "--action-latency",
        type=int,
        default=0,
        help="delay before an action reaches the arm, in control steps (default 0)",
    )
    p.add_argument(
        "--scheme",
        default="auto",
        choices=["auto", "sync", "async", "ensemble", "rtc"],
        help="chunk execution, as on the policy node: sync (hold until the next chunk), async "
        "(switch on arrival, skipping its stale actions), ensemble (ACT's temporal "
        "ensembling), rtc (real-time chunking); auto: the checkpoint's default",
    )
    p.add_argument(
        "--inference-delay",
        default="0",
        metavar="D",
        help="control steps from an observation until its chunk can be used, the arm moving "
        "on meanwhile; 'measured': each chunk's wall-clock inference time (default 0). "
        "To rehearse an arm, take D = ceil(p99 / period) + 1 from the node's "
        "~/inference_ms (README, deployment)",
    )
    p.add_argument(
        "--execute-steps",
        type=int,
        default=0,
        help="actions executed per chunk by sync/async/rtc (default 0: the checkpoint's Ta; "
        "rtc with a delay: 1, the next chunk starts as soon as one action went out)",
    )
    p.add_argument(
        "--soft-steps",
        type=int,
        default=-1,
        metavar="N",
        help="rtc: actions after the frozen D that the next chunk is pulled towards the "
        "current one with RTC's soft mask (default -1: all the current chunk still covers)",
    )
    p.add_argument(
        "--sampling-steps",
        type=int,
        default=0,
        help="denoising steps of a diffusion checkpoint (default 0: its own, e.g. 10 DDIM)",
    )
    p.add_argument(
        "--no-safety",
        action="store_true",
        help="skip the safety filter the node applies (step and velocity clamps)",
    )
    p.add_argument(
        "--out", metavar="DIR", help="write report.json, rollouts.mp4, summary.png (default: none)"
    )
    p.add_argument(
        "--video-episodes",
        type=int,
        default=2,
        help="episodes recorded in rollouts.mp4, with --out (default 2)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing report in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)

    task, seed, episodes = a.task, a.seed, a.episodes
    delay = _delay(a.inference_delay)
    store, episode = _replay_target(a.replay) if a.replay else ("", 0)
    if a.out:  # before anything is read or run
        inputs = checkpoint_inputs(a.checkpoint) if a.checkpoint else [Path(store)] if store else []
        check_report_out(a.out, inputs, a.force)
    if store:
        from data.convert.lerobot_store import cached_store, convert_hint, is_lerobot

        if is_lerobot(store):  # a LeRobot folder: its cached conversion (README)
            store = str(cached_store(Path(store), progress=not a.no_progress))
        elif convert_hint(store):
            raise UserError(convert_hint(store))
        probe = ReplayPolicy(store, episode)
        task = task or probe.task
        seed = probe.seed if seed is None else seed
        episodes = episodes or 1
        factory: Callable[[], Any] = functools.partial(ReplayPolicy, store, episode)
    elif a.expert:
        from sim.experts import ScriptedExpert

        if not task:
            raise UserError("--expert needs --task")
        factory = functools.partial(ScriptedExpert, task)
    else:
        if not task:
            raise UserError("--checkpoint needs --task")
        if not Path(a.checkpoint).is_dir():
            raise UserError(f"--checkpoint {a.checkpoint}: no such checkpoint directory")
        factory = functools.partial(hook("load_policy"), a.checkpoint)
    TASKS.get(task)
    if seed is None:
        seed = unseen_seed(a.checkpoint, episodes or 50)
    report = evaluate_policy(
        factory,
        task,
        episodes or 50,
        seed=seed,
        workers=a.workers,
        max_steps=a.max_steps,
        obs_latency=a.obs_latency,
        action_latency=a.action_latency,
        scheme=a.scheme,
        inference_delay=delay,
        execute_steps=a.execute_steps,
        safety=not a.no_safety,
        sampling_steps=a.sampling_steps,
        soft_steps=a.soft_steps,
        out_dir=a.out,
        video_episodes=a.video_episodes if a.out else 0,
        progress=not a.no_progress,
    )
    from sim.report import summary_line

    brief = {k: v for k, v in report.items() if k not in ("per_episode", "seeds")}
    print(summary_line(report))
    print(json.dumps(brief))


if __name__ == "__main__":
    main()
