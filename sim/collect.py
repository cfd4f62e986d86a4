"""``handoff-collect``: scripted demonstrations in simulation, written to a demonstration store.

    handoff-collect --task lift --episodes 100 --out demos/lift.zarr
    handoff-collect --task can --episodes 200 --out demos/can.zarr --cameras agentview,wrist \\
        --image-size 84 --workers 2

Corrected rollouts (learning from interventions, sim/corrector.py): a checkpoint runs through
the policy runner while the scripted corrector, a stand-in for a person, takes over when it
goes wrong; every rollout is appended with per-step labels (autonomous, intervention,
pre-intervention) and its source (``policy``, or ``corrected`` when it was taken over)::

    handoff-collect --task can --policy runs/can_dp --corrector hg-dagger --episodes 20 \
        --out demos/can.zarr

Episode i of a run uses seed ``--seed + i`` (a failed seed is replaced by the next unused one
unless ``--keep-failures``). Each finished episode is committed at once, so Ctrl-C keeps every
finished episode. An existing store is appended to when its embodiment, cameras and task match
and the asked seeds are not in it yet; ``--force`` builds a new store beside it and swaps it in
only when the run ends (an interrupted ``--force`` run leaves the old store as it was).
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path
from typing import Any

import numpy as np

from data.errors import UserError, cli_main
from data.outputs import check_output, check_writable, is_url, publish, remove, staging_if_exists
from data.store import DemoStore
from sim._gl import require_gl
from sim.tasks import TASKS
from sim.workers import run_jobs

MAX_ATTEMPT_FACTOR = 3  # give up after 3x the requested episodes (an expert this bad is broken)


def parse_image_size(text: str) -> tuple[int, int]:
    """'84' -> (84, 84); '96x128' -> (H=96, W=128)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise UserError(f"--image-size {text!r}: give one size (84) or HxW (96x128)")
    return parts[0], parts[1]


def parse_cameras(text: str | None) -> tuple[str, ...]:
    return tuple(c.strip() for c in (text or "").split(",") if c.strip())


def _task_setup(task: str, cameras: tuple[str, ...], image_size: tuple[int, int]) -> Any:
    from sim.tasks import make_task

    return make_task(task, cameras=cameras, image_size=image_size)


def _collect_one(task: Any, seed: int) -> tuple[int, dict[str, np.ndarray], bool]:
    from sim.experts import run_episode

    steps, success = run_episode(task, seed)
    return seed, {k: np.stack(v) for k, v in steps.items()}, success


def check_store_task(store: DemoStore, task: str, seed: int | None, episodes: int) -> int:
    """Refuse appending ``task`` to a store of other tasks, or seeds the store already holds
    (they would repeat its episodes exactly); returns the first seed to use."""
    metas = [store.episode_meta(i) for i in range(store.n_episodes)]
    tasks = sorted({m["task"] for m in metas if m.get("task")})
    if tasks and task not in tasks:
        raise UserError(
            f"{store.path}: the store holds task(s) {tasks}, not {task!r}; collect --task {task} "
            "into another --out (handoff-data merge combines stores on purpose)"
        )
    have = {m.get("seed") for m in metas if m.get("task", task) == task}
    if seed is None:  # continue after the seeds already in the store
        return max((s for s in have if isinstance(s, int)), default=-1) + 1
    repeated = sorted(have & set(range(seed, seed + episodes)))
    if repeated:
        raise UserError(
            f"{store.path}: seeds {repeated} of --task {task} are already in the store; "
            "omit --seed to continue after them, or give another --seed"
        )
    return seed


def collect(
    task: str,
    episodes: int,
    out: str | Path,
    *,
    cameras: tuple[str, ...] = (),
    image_size: tuple[int, int] = (84, 84),
    workers: int = 1,
    keep_failures: bool = False,
    seed: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``episodes`` scripted episodes of ``task`` into ``out``; returns a summary."""
    from tqdm import tqdm

    from data.embodiment import load_embodiment

    task_def = TASKS.get(task)
    if episodes <= 0:
        raise UserError("--episodes must be positive")
    if workers <= 0:
        raise UserError("--workers must be positive")
    spec = task_def.embodiment_for(
        load_embodiment("sim_panda").with_cameras(list(cameras), image_size)
    )
    out = str(out)
    check_output(out)  # a writable location, before anything is made
    if cameras:
        require_gl()  # a GL back-end that cannot render: one line, nothing written
    appending = Path(out).exists() and not force
    stage = None
    if appending:
        if Path(out).is_dir():
            check_writable(Path(out) / "data" / "x")  # appends land inside the store
        store = DemoStore.open_or_create(out, spec)
        seed = check_store_task(store, task, seed, episodes)
    else:  # an existing store (--force) is replaced only when this run completes
        stage = staging_if_exists(out)
        store = DemoStore.create(stage or out, spec, force=force)
        seed = 0 if seed is None else seed
    setup = functools.partial(_task_setup, task, tuple(cameras), tuple(image_size))
    written, tried, successes, n_steps = 0, 0, 0, 0
    next_seed = seed
    t0 = time.perf_counter()
    bar = tqdm(total=episodes, desc=f"collect {task}", unit="ep", disable=not progress)
    try:
        while written < episodes and tried < MAX_ATTEMPT_FACTOR * episodes:
            batch = list(range(next_seed, next_seed + episodes - written))
            next_seed += len(batch)
            for ep_seed, steps, success in run_jobs(setup, _collect_one, batch, workers):
                tried += 1
                successes += success
                if success or keep_failures:
                    store.append_episode(
                        steps,
                        task=task,
                        source="scripted",
                        seed=ep_seed,
                        success=success,
                        operator="scripted_expert",
                    )
                    written += 1
                    n_steps += len(steps["action"])
                    bar.update(1)
                bar.set_postfix(success=f"{successes}/{tried}")
    except BaseException:
        if stage:  # the store it was to replace stays as it was
            remove(stage)
        elif not appending and written == 0 and not is_url(out):
            remove(out)  # leave nothing behind that this run made and did not fill
        raise
    finally:
        bar.close()
    if stage:
        publish(stage, Path(out))
    if written < episodes:
        raise UserError(
            f"the {task} expert succeeded in only {successes} of {tried} episodes; "
            f"wrote {written} to {out} (pass --keep-failures to keep failed episodes)"
        )
    seconds = time.perf_counter() - t0
    return {
        "out": out,
        "written": written,
        "tried": tried,
        "successes": successes,
        "steps": n_steps,
        "seconds": seconds,
        "steps_per_s": n_steps / max(seconds, 1e-9),
        "frames_per_s": n_steps * len(cameras) / max(seconds, 1e-9),
    }


class _CorrectedWorker:
    """One task, one policy behind the runner (hooks: sim never imports policies), one
    corrector, inside one process."""

    def __init__(
        self, checkpoint: str, task: str, style: str, cameras: tuple[str, ...], size: tuple
    ) -> None:
        from data.registry import hook
        from sim.corrector import Corrector, CorrectorConfig
        from sim.tasks import make_task

        self.policy = hook("load_policy")(checkpoint)
        self.runner = hook("make_runner")(self.policy)
        self.task = make_task(task, cameras=cameras, image_size=size)
        self.corrector = Corrector(self.task, CorrectorConfig(style=style))


def _corrected_one(w: _CorrectedWorker, seed: int) -> tuple[int, dict[str, np.ndarray], bool, dict]:
    from sim.corrector import run_corrected_episode

    steps, success, meta = run_corrected_episode(w.task, w.runner, w.corrector, seed)
    return seed, steps, success, meta


def policy_cameras(
    checkpoint: str, task: str, cameras: tuple[str, ...], image_size: tuple[int, int]
) -> tuple[tuple[str, ...], tuple[int, int]]:
    """The cameras to record (those asked for plus every one the policy reads) and their size
    (the policy's, when it reads any); refuses a policy that does not fit the task."""
    from data.embodiment import load_embodiment
    from data.registry import hook
    from sim.evaluate import check_compatible

    policy = hook("load_policy")(checkpoint)
    spec = TASKS.get(task).embodiment_for(load_embodiment("sim_panda"))
    reads = check_compatible(policy, spec, task)
    if reads:
        cam = policy.embodiment.camera(reads[0])
        image_size = (cam.height, cam.width)
    return tuple(dict.fromkeys([*cameras, *reads])), image_size


def collect_corrected(
    task: str,
    episodes: int,
    out: str | Path,
    checkpoint: str,
    style: str,
    *,
    cameras: tuple[str, ...] = (),
    image_size: tuple[int, int] = (84, 84),
    workers: int = 1,
    seed: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Append ``episodes`` rollouts of ``checkpoint`` on ``task`` under the scripted corrector
    (``style``: hg-dagger or rac, sim/corrector.py) to ``out``; every rollout is kept, failed
    or not (its takeovers are what training learns from). Returns a summary."""
    from tqdm import tqdm

    from data.embodiment import load_embodiment
    from data.store import label_names
    from sim.corrector import STYLES

    if style not in STYLES:
        raise UserError(f"--corrector {style!r}: choose one of {', '.join(STYLES)}")
    if episodes <= 0 or workers <= 0:
        raise UserError("--episodes and --workers must be positive")
    TASKS.get(task)
    out = str(out)
    check_output(out)
    cameras, image_size = policy_cameras(checkpoint, task, cameras, image_size)
    if cameras:
        require_gl()
    spec = TASKS.get(task).embodiment_for(
        load_embodiment("sim_panda").with_cameras(list(cameras), image_size)
    )
    created = not Path(out).exists()
    store = DemoStore.open_or_create(out, spec)
    if created:
        seed = 0 if seed is None else seed
    else:
        seed = check_store_task(store, task, seed, episodes)
    setup = functools.partial(_CorrectedWorker, checkpoint, task, style, cameras, image_size)
    written = successes = n_steps = corrector_steps = 0
    labels: dict[str, int] = {}
    t0 = time.perf_counter()
    bar = tqdm(total=episodes, desc=f"correct {task}", unit="ep", disable=not progress)
    try:
        jobs = list(range(seed, seed + episodes))
        for ep_seed, steps, success, meta in run_jobs(setup, _corrected_one, jobs, workers):
            store.append_episode(steps, task=task, seed=ep_seed, success=success, **meta)
            written += 1
            successes += success
            n_steps += len(steps["action"])
            corrector_steps += meta["intervention_steps"]
            for name, n in label_names(steps["label"]).items():
                labels[name] = labels.get(name, 0) + n
            bar.update(1)
            bar.set_postfix(success=f"{successes}/{written}", corrector_steps=corrector_steps)
    except BaseException:
        if created and written == 0 and not is_url(out):
            remove(out)  # leave nothing behind that this run made and did not fill
        raise
    finally:
        bar.close()
    return {
        "out": out,
        "written": written,
        "successes": successes,
        "steps": n_steps,
        "corrector_steps": corrector_steps,
        "labels": labels,
        "seconds": time.perf_counter() - t0,
    }


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="handoff-collect",
        description="Scripted demonstrations in simulation, written to a demonstration store.",
    )
    p.add_argument("--task", required=True, help=f"one of: {', '.join(TASKS.names())}")
    p.add_argument("--episodes", type=int, default=100, help="episodes to write (default 100)")
    p.add_argument("--out", required=True, help="store path (.zarr directory or fsspec URL)")
    p.add_argument(
        "--cameras", default="", help="comma-separated cameras (agentview,wrist); default none"
    )
    p.add_argument("--image-size", default="84", help="camera size: 84 or HxW (default 84)")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    p.add_argument("--keep-failures", action="store_true", help="also store failed episodes")
    p.add_argument(
        "--seed", type=int, default=None, help="first seed (default: after the store's last)"
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing store")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--policy",
        metavar="CKPT",
        help="collect rollouts of this checkpoint (or run) under --corrector instead of "
        "scripted demonstrations",
    )
    p.add_argument(
        "--corrector",
        choices=["hg-dagger", "rac"],
        help="with --policy: the scripted stand-in operator's style (sim/corrector.py): "
        "hg-dagger takes over in place and hands back, rac recovers, completes the sub-task "
        "and ends the episode",
    )
    a = p.parse_args(argv)
    if bool(a.policy) != bool(a.corrector):
        raise UserError("--policy and --corrector go together (corrected rollouts)")
    if a.policy:
        if a.force or a.keep_failures:
            raise UserError(
                "corrected rollouts are appended and every one is kept: drop --force and "
                "--keep-failures"
            )
        summary = collect_corrected(
            a.task,
            a.episodes,
            a.out,
            a.policy,
            a.corrector,
            cameras=parse_cameras(a.cameras),
            image_size=parse_image_size(a.image_size),
            workers=a.workers,
            seed=a.seed,
            progress=not a.no_progress,
        )
        print(
            f"wrote {summary['written']} corrected rollouts to {summary['out']} "
            f"({summary['successes']}/{summary['written']} successes; "
            f"{summary['corrector_steps']} of {summary['steps']} steps driven by the corrector; "
            f"labels {summary['labels']})"
        )
        return
    summary = collect(
        a.task,
        a.episodes,
        a.out,
        cameras=parse_cameras(a.cameras),
        image_size=parse_image_size(a.image_size),
        workers=a.workers,
        keep_failures=a.keep_failures,
        seed=a.seed,
        force=a.force,
        progress=not a.no_progress,
    )
    rate = f"{summary['steps']} steps in {summary['seconds']:.0f} s, {summary['steps_per_s']:.0f}/s"
    if summary["frames_per_s"]:
        rate += f", {summary['frames_per_s']:.0f} camera frames/s"
    print(
        f"wrote {summary['written']} episodes to {summary['out']} "
        f"({summary['successes']}/{summary['tried']} expert successes; {rate})"
    )


if __name__ == "__main__":
    main()
