"""``handoff-train``: train a registered policy on a demonstration store.

    handoff-train --policy diffusion --data /tmp/lift.zarr --task lift --out runs/lift_dp
    handoff-train --out runs/lift_dp --resume --steps 20000     # continue exactly
    handoff-train --distill-from runs/lift_dp --data /tmp/lift.zarr --out runs/lift_cp
    handoff-train --init runs/lift_dp --data /tmp/lift_corrected.zarr --out runs/lift_ft \
        --steps 5000                               # fine-tune on corrected rollouts
    accelerate launch -m policies.train --policy diffusion --recipe gpu ...   # several GPUs

Settings come, later winning, from: the policy's config defaults, the recipe
(``policies/recipes/<policy>_<recipe>.yaml`` or a YAML path; ``cpu`` on a CPU, ``gpu`` on a
GPU by default), ``--set section.key=value``, then the dedicated flags (``--steps`` ...).

``--init CKPT`` fine-tunes: the policy, its network settings, inputs, robot, weights and
normaliser come from the checkpoint (``--refit-normalizer`` computes the normaliser from
``--data`` instead); ``--weighting`` draws samples by step label (data/dataset.py).

``--resume`` continues the run as saved in ``runs/NAME/config.json``: only ``--steps``,
``--eval-every`` and ``--eval-episodes`` may change; any other flag or ``--set`` that differs
is refused by name, and so is a store that changed since the run began (its fingerprint is
saved in config.json; ``--allow-data-change`` accepts it). ``--force`` moves an existing run
aside and deletes it only when the new run has finished.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from data.errors import UserError, cli_main
from data.outputs import check_output, check_writable, is_url, remove

# torch, zarr and the policies are imported once the arguments are parsed: --help stays fast
if TYPE_CHECKING:
    from data.store import DemoStore

RECIPES_DIR = Path(__file__).parent / "recipes"
POLICY_FOLDERS = sorted(p.parent.name for p in Path(__file__).parent.glob("*/model.py"))
log = logging.getLogger("handoff.train")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="handoff-train",
        description="Train a policy on a demonstration store or a LeRobot dataset folder, "
        "evaluating it in simulation as it goes (--task). Settings: the recipe, then --set, "
        "then the flags.",
    )
    p.add_argument("--policy", help=f"policy name: {', '.join(POLICY_FOLDERS)}")
    p.add_argument(
        "--data",
        help="training data: a handoff store (path or s3:// URL) or a local LeRobot v2.1/v3.0 "
        "dataset folder (converted once into ~/.cache/handoff, see README)",
    )
    p.add_argument("--out", required=True, help="run directory, e.g. runs/NAME")
    p.add_argument(
        "--task", help="sim task to evaluate on during training, e.g. lift (default: none)"
    )
    p.add_argument(
        "--recipe",
        help="settings file: cpu, gpu or path/to/recipe.yaml (default: gpu on a GPU, else cpu)",
    )
    p.add_argument("--steps", type=int, help="optimizer steps in all (default: the recipe's)")
    p.add_argument(
        "--batch-size", type=int, help="samples per step and device (default: the recipe's)"
    )
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where to train (default auto: cuda when a GPU is visible)",
    )
    p.add_argument(
        "--eval-every",
        type=int,
        help="optimizer steps between sim evaluations, 0: only at the end (default: recipe's)",
    )
    p.add_argument(
        "--eval-episodes", type=int, help="episodes per sim evaluation (default: recipe's)"
    )
    p.add_argument(
        "--embodiment",
        help="robot spec name or YAML path; overrides the data's own (or, for a LeRobot "
        "dataset without one, the spec inferred from its meta/info.json)",
    )
    p.add_argument(
        "--privileged",
        action="store_true",
        help="also train on simulator-only keys (the spec's 'privileged', e.g. object_state): "
        "the policy then runs in simulation only; without it a policy reads what a real arm "
        "observes (cameras, joint state, gripper, end-effector pose)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a recipe value, e.g. --set policy.horizon=32 --set train.lr=3e-4",
    )
    p.add_argument(
        "--distill-from",
        metavar="TEACHER",
        help="consistency distillation (policies/diffusion/distill.py): train a 1-2 step "
        "student of this diffusion checkpoint or run, starting from its weights and keeping "
        "its normaliser, robot and inputs; the student samples with inference_scheduler "
        "consistency (default recipe: distill_cpu, or distill_cpu_camera for a teacher that "
        "reads the store's cameras; --policy may be omitted)",
    )
    p.add_argument(
        "--init",
        metavar="CKPT",
        help="fine-tune: start from this checkpoint's (or run's best) weights and normaliser, "
        "with its policy, network settings, inputs and robot (--policy may be omitted)",
    )
    p.add_argument(
        "--refit-normalizer",
        action="store_true",
        help="with --init: compute the normaliser from --data instead of keeping the "
        "checkpoint's (the network then sees inputs scaled differently than it learnt)",
    )
    p.add_argument(
        "--weighting",
        choices=["uniform", "sirius", "interventions-only"],
        help="how samples are drawn by step label (data/store.py): interventions-only "
        "(demonstrations and the operator's steps, the policy's own dropped: HG-DAgger's "
        "aggregate), sirius (interventions half the mass, pre-intervention steps "
        "down-weighted), uniform (every step alike). Default: the recipe's, else "
        "interventions-only (measured best on can; uniform on demonstrations-only data)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument(
        "--allow-data-change",
        action="store_true",
        help="--resume even though the store changed since the run began",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def recipe_path(policy: str, recipe: str) -> Path:
    """A recipe name (``cpu``) or YAML path -> the file it means."""
    if recipe.endswith((".yaml", ".yml")):
        return Path(recipe)
    return RECIPES_DIR / f"{policy}_{recipe}.yaml"


def default_recipe(policy: str, family: str, cameras: bool) -> str:
    """The bundled recipe for a device family (``cpu``/``gpu``) and store: a store with
    cameras gets ``<policy>_<family>_camera.yaml`` where one is bundled (the CPU camera recipes;
    the GPU recipes are image recipes already)."""
    if cameras and recipe_path(policy, f"{family}_camera").is_file():
        return f"{family}_camera"
    return family


def load_recipe(policy: str, recipe: str) -> dict[str, Any]:
    path = recipe_path(policy, recipe)
    if not path.is_file():
        names = sorted(
            p.stem.removeprefix(f"{policy}_") for p in RECIPES_DIR.glob(f"{policy}_*.yaml")
        )
        raise UserError(f"recipe {recipe!r} not found ({path}); bundled for {policy}: {names}")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({e})") from None
    unknown = set(doc) - {"policy", "train"}
    if not isinstance(doc, dict) or unknown:
        raise UserError(
            f"{path}: a recipe has only 'policy:' and 'train:' sections (got {sorted(unknown)})"
        )
    return {
        "policy": dict(doc.get("policy") or {}),
        "train": dict(doc.get("train") or {}),
        "path": str(path),
    }


def tiny_overrides(policy: str, exclude: tuple[str, ...] = ()) -> list[str]:
    """The policy section of ``recipes/<policy>_tiny.yaml`` (test-size networks, for the tests
    and ``make demo --quick``) as ``--set`` items, e.g. ``["policy.dim_model=32", ...]``,
    without the keys in ``exclude``. ``UserError`` when the policy bundles no tiny recipe."""
    settings = load_recipe(policy, "tiny")["policy"]
    return [f"policy.{k}={json.dumps(v)}" for k, v in settings.items() if k not in exclude]


def parse_sets(sets: list[str]) -> list[tuple[str, str, Any]]:
    """``--set section.key=value`` items -> (section, key, value) in order."""
    out = []
    for item in sets:
        key, eq, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not eq or not dot or section not in ("policy", "train"):
            raise UserError(f"--set {item!r}: expected policy.KEY=VALUE or train.KEY=VALUE")
        out.append((section, name, yaml.safe_load(value)))
    return out


def apply_sets(recipe: dict[str, Any], sets: list[str]) -> None:
    for section, name, value in parse_sets(sets):
        recipe[section][name] = value


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def training_episodes(store: DemoStore, successful_only: bool) -> list[int] | None:
    """Episodes marked successful, and corrected rollouts whatever their outcome (their
    takeovers are expert actions; a RaC-style episode ends after its correction)."""
    if not successful_only:
        return None
    corrected = set(store.episodes_where(source="corrected"))
    good = sorted(set(store.episodes_where(success=True)) | corrected)
    if not good:
        log.warning(
            "%s: no episode is marked successful; training on all %d", store.path, store.n_episodes
        )
        return None
    return good


RESUME_CHANGES = ("steps", "eval_every", "eval_episodes")  # safe to change when resuming


def _same(given: Any, saved: Any) -> bool:
    """Equal as saved in config.json (YAML's '3e-4' is a string, JSON's a number)."""
    try:
        return json.loads(json.dumps(given)) == saved or float(given) == float(saved)
    except (TypeError, ValueError):
        return False


def apply_resume_changes(args: argparse.Namespace, run: dict[str, Any], saved: Path) -> None:
    """Apply --steps/--eval-every/--eval-episodes (also as --set train.KEY) to a resumed run;
    refuse, naming each, every other flag or --set that differs from the run's config.json:
    resuming continues that run exactly, it cannot also change it."""
    changes = [
        ("train", k, getattr(args, k)) for k in RESUME_CHANGES if getattr(args, k) is not None
    ]
    differ = []
    for section, key, value in parse_sets(args.set):
        if section == "train" and key in RESUME_CHANGES:
            changes.append((section, key, value))
            continue
        have = run["policy_config" if section == "policy" else "train"].get(key, "unset")
        if not _same(value, have):
            differ.append(f"{section}.{key}={value} (run: {have})")
    if args.batch_size is not None and not _same(args.batch_size, run["train"]["batch_size"]):
        differ.append(f"--batch-size {args.batch_size} (run: {run['train']['batch_size']})")
    if args.weighting is not None and args.weighting != run["train"].get("weighting"):
        differ.append(f"--weighting {args.weighting} (run: {run['train'].get('weighting')})")
    if args.refit_normalizer and not run.get("refit_normalizer"):
        differ.append("--refit-normalizer (run: without)")
    for flag in ("policy", "data", "task", "embodiment", "distill_from", "init"):
        given = getattr(args, flag)
        if given is not None and not _same_path_or_value(given, run.get(flag)):
            differ.append(f"--{flag.replace('_', '-')} {given} (run: {run.get(flag)})")
    if args.privileged and not run["policy_config"].get("privileged"):
        differ.append("--privileged (run: without)")
    if args.recipe and _resolved(recipe_path(run["policy"], args.recipe)) != _resolved(
        run["recipe"]
    ):
        differ.append(f"--recipe {args.recipe} (run: {run['recipe']})")
    if differ:
        raise UserError(
            f"--resume continues the run as saved in {saved}; these differ from it: "
            f"{'; '.join(differ)}. Drop them, or start a new run with another --out "
            f"(only {', '.join('--' + k.replace('_', '-') for k in RESUME_CHANGES)} change "
            "on resume)"
        )
    for _, key, value in changes:
        run["train"][key] = value


def _resolved(path: str | Path) -> str:
    return os.path.realpath(path)


def _same_path_or_value(given: str, saved: Any) -> bool:
    return _same(given, saved) or (
        isinstance(saved, str) and not is_url(given) and _resolved(given) == _resolved(saved)
    )


def store_fingerprint(store: DemoStore) -> dict[str, Any]:
    """What identifies the training data: sizes, episode boundaries, per-episode metadata
    (success flags choose episodes) and array shapes. Recorded when a run begins and compared
    on --resume (the arrays' values are not hashed: that would read the whole store)."""
    metas = [store.episode_meta(i) for i in range(store.n_episodes)]
    return {
        "episodes": store.n_episodes,
        "steps": store.n_steps,
        "episode_ends_sha256": hashlib.sha256(store.episode_ends.tobytes()).hexdigest(),
        "episode_meta_sha256": hashlib.sha256(
            json.dumps(metas, sort_keys=True, default=str).encode()
        ).hexdigest(),
        "keys": {k: [list(a.shape[1:]), str(a.dtype)] for k, a in sorted(store.data.items())},
    }


FINGERPRINT_PARTS = {  # key -> how a change is named (None: "key old -> new")
    "episodes": None,
    "steps": None,
    "episode_ends_sha256": "episode boundaries",
    "episode_meta_sha256": "episode metadata (task, success, ...)",
    "keys": "keys, shapes or dtypes",
}


def check_same_store(run: dict[str, Any], now: dict[str, Any], allow: bool) -> None:
    """Refuse to resume on a store that changed since the run began (unless ``allow``)."""
    before = run.get("data_fingerprint")
    if before is None or before == now:  # runs from before fingerprints: nothing to compare
        return
    changed = [
        f"{key} {before.get(key)} -> {now[key]}" if what is None else what
        for key, what in FINGERPRINT_PARTS.items()
        if before.get(key) != now[key]
    ]
    msg = f"{run['data']}: the store changed since this run began ({', '.join(changed)})"
    if not allow:
        raise UserError(
            f"{msg}; resuming would train on other data than the run so far - pass "
            "--allow-data-change to resume on it anyway, or start a new run"
        )
    log.warning("%s; resuming on it (--allow-data-change)", msg)


def prepare_run(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """The resolved run settings (fresh from recipe + flags, or the saved ones on --resume)."""
    from policies.checkpoint import read_json

    out = Path(args.out)
    if args.resume:
        f = out / "config.json"
        if not f.is_file():
            raise UserError(f"{f}: missing; --resume needs a run directory made by handoff-train")
        run = read_json(f)
        if not isinstance(run, dict) or not {"policy", "data", "policy_config", "train"} <= set(
            run
        ):
            raise UserError(
                f"{f}: not a run's config.json (expected policy, data, policy_config, train)"
            )
        apply_resume_changes(args, run, f)
        check_writable(f)  # checkpoints are written into the run directory
        return run, out
    from policies.registry import get_policy_class

    teacher = init = None
    if args.distill_from and args.init:
        raise UserError("--distill-from and --init both start from a checkpoint; give one")
    if args.refit_normalizer and not args.init:
        raise UserError("--refit-normalizer applies to --init (a fresh run always fits one)")
    if args.distill_from:
        from policies.diffusion.distill import teacher_settings

        teacher = teacher_settings(args.distill_from, args.policy)
        args.policy = "diffusion"
    if args.init:
        args.policy, init = init_settings(args.init, args.policy)
    if not args.policy or not args.data:
        raise UserError("--policy and --data are required (or --resume an existing --out)")
    check_output(out, [args.data], what="run directory")  # never the store's folder; writable
    if out.exists() and any(out.iterdir()) and not args.force:
        raise UserError(f"{out} already exists; pass --force to overwrite or --resume to continue")
    get_policy_class(args.policy)  # unknown names fail here with the list
    device = resolve_device(args.device)
    family = args.recipe or ("gpu" if device == "cuda" else "cpu")
    if teacher is not None and not args.recipe:
        family = "distill_cpu"  # the bundled distillation recipe (its settings are the run's)
    if family in ("cpu", "gpu", "distill_cpu"):  # cameras in use: the camera variant
        cameras = store_cameras(args)
        if teacher is not None:  # a student sees what its teacher saw
            cameras = [k for k in cameras if k in (teacher.get("obs_keys") or cameras)]
        family = default_recipe(args.policy, family, bool(cameras))
    recipe = load_recipe(args.policy, family)
    if teacher is not None:  # the teacher's network and inputs; the recipe's consistency keys
        recipe["policy"] = {**teacher, **recipe["policy"]}
    if init is not None:  # the checkpoint's network and inputs: its weights must fit them
        recipe["policy"] = {**recipe["policy"], **init}
    if args.weighting:
        recipe["train"]["weighting"] = args.weighting
    if args.privileged:
        recipe["policy"]["privileged"] = True
    apply_sets(recipe, args.set)
    for flag, key in (
        ("steps", "steps"),
        ("batch_size", "batch_size"),
        ("eval_every", "eval_every"),
        ("eval_episodes", "eval_episodes"),
    ):
        if getattr(args, flag) is not None:
            recipe["train"][key] = getattr(args, flag)
    run = {
        "policy": args.policy,
        "data": str(args.data),
        "task": args.task,
        "recipe": recipe["path"],
        "embodiment": args.embodiment,
        "policy_config": recipe["policy"],
        "train": recipe["train"],
    }
    if teacher is not None:
        run["distill_from"] = str(args.distill_from)
    if init is not None:
        run["init"] = str(args.init)
        run["refit_normalizer"] = bool(args.refit_normalizer)
    return run, out


def init_settings(path: str, policy: str | None) -> tuple[str, dict[str, Any]]:
    """(policy name, policy config dict) of the checkpoint ``--init`` starts from; a
    ``--policy`` other than the checkpoint's is refused."""
    from policies.checkpoint import read_config, resolve_checkpoint

    try:
        cls, config = read_config(resolve_checkpoint(path) / "config.json")
    except UserError as e:
        raise UserError(f"--init: {e}") from None
    if policy not in (None, cls.name):
        raise UserError(f"--init {path} is a {cls.name} checkpoint; drop --policy {policy}")
    return cls.name, config.to_dict()


def store_cameras(args: argparse.Namespace) -> list[str]:
    """The cameras of ``--data`` (with ``--embodiment``'s spec, if given), to pick a recipe."""
    from data.convert.lerobot_store import open_store

    store = open_store(args.data, verify=False, progress=not args.no_progress)
    return store.image_keys


def write_run_config(out: Path, run: dict[str, Any]) -> None:
    """Write ``out/config.json`` through a temporary file and a rename (never half-written)."""
    tmp = out / ".config.json.partial"
    tmp.write_text(json.dumps(run, indent=2) + "\n")
    os.replace(tmp, out / "config.json")


def set_aside(out: Path) -> Path | None:
    """Move an existing run (``--force``) to a sibling, to be deleted once the new run has
    finished: a new run that fails or is interrupted never cost the old one."""
    if not out.exists() or not any(out.iterdir()):
        return None
    aside = out.with_name(f"{out.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.replace(out, aside)
    log.info("--force: moved the previous run to %s; deleted when this run finishes", aside)
    return aside


@cli_main
def main(argv: list[str] | None = None) -> int:
    # handoff's own progress at INFO; other libraries (accelerate, diffusers, ...) only warn
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("handoff").setLevel(logging.INFO)
    args = parse_args(argv)
    from accelerate.utils import set_seed

    from data.convert.lerobot_store import open_store
    from data.dataset import SequenceDataset
    from data.embodiment import load_embodiment
    from data.store import label_names
    from policies.checkpoint import load_normalizer
    from policies.inputs import build_normalizer, resolve_inputs, store_embodiment
    from policies.registry import get_policy_class
    from policies.trainer import TrainConfig, Trainer, TrainingDivergedError, summary_line

    run, out = prepare_run(args)
    cls = get_policy_class(run["policy"])
    try:
        train_cfg = TrainConfig.from_dict(run["train"], source="train settings")
        config = cls.config_class.from_dict(run["policy_config"], source="policy settings")
    except UserError as e:  # on --resume a bad value comes from the run's file: name it
        raise UserError(f"{out / 'config.json'}: {e}" if args.resume else str(e)) from None
    store = open_store(run["data"], progress=not args.no_progress)
    fingerprint = store_fingerprint(store)
    if args.resume:
        check_same_store(run, fingerprint, args.allow_data_change)
    run["data_fingerprint"] = fingerprint
    teacher = None
    if run.get("distill_from"):  # the student keeps the teacher's robot and normaliser
        from policies.diffusion.distill import ConsistencyDistillation, init_student, load_teacher

        teacher = load_teacher(run["distill_from"], store)
    base = None
    if run.get("init"):  # fine-tuning: the checkpoint's robot, normaliser and weights
        from policies.checkpoint import load_policy

        base = load_policy(run["init"])
    spec = store_embodiment(
        store,
        teacher.embodiment
        if teacher
        else base.embodiment
        if base
        else (load_embodiment(run["embodiment"]) if run["embodiment"] else None),
    )
    config = resolve_inputs(store, config, spec)
    episodes = training_episodes(store, train_cfg.successful_only)
    eval_seed = store.first_seed_after(train_cfg.eval_seed, train_cfg.eval_episodes)
    if eval_seed != train_cfg.eval_seed:
        log.info("evaluation seeds start at %d, past the store's scene seeds", eval_seed)
        train_cfg = train_cfg.replace(eval_seed=eval_seed)
    if args.resume:
        normalizer = load_normalizer(out / "last", config, spec)
    elif teacher:
        normalizer = teacher.normalizer
    elif base and not run.get("refit_normalizer"):
        normalizer = base.normalizer
    else:
        normalizer = build_normalizer(store, config, spec, episodes)
    dataset = SequenceDataset(
        store.path,
        config.obs_keys,
        n_obs_steps=config.n_obs_steps,
        horizon=config.horizon,
        episodes=episodes,
        weighting=train_cfg.weighting,
    )
    set_seed(train_cfg.seed)
    policy = cls(config, spec, normalizer)
    if teacher:
        init_student(policy, teacher)
    if base is not None and not args.resume:  # a resumed run loads its own last weights
        from policies.checkpoint import copy_weights

        copy_weights(base, policy, f"--init {run['init']}")
    run.update(policy_config=config.to_dict(), train=train_cfg.to_dict())
    # built before anything is written: a refusal (too few samples for a batch) leaves nothing
    meta = {
        "policy": cls.name,
        "data": run["data"],
        "episodes": len(episodes or range(store.n_episodes)),
        "samples": len(dataset),
        "labels": label_names(dataset.labels),
        "parameters": sum(p.numel() for p in policy.parameters()),
    }
    trainer = Trainer(
        policy,
        dataset,
        train_cfg,
        out,
        device=resolve_device(args.device),
        task=run["task"],
        run_meta=meta,
        objective=ConsistencyDistillation(teacher) if teacher else None,
    )
    replaced = None if args.resume else set_aside(out)  # --force: kept until this run is done
    out.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        write_run_config(out, run)
    if args.resume:
        trainer.resume()
        write_run_config(out, run)  # only once the saved state loaded: a refusal changes nothing
    log.info(
        "%s: %d parameters, %d samples from %d episodes, inputs %s",
        cls.name,
        meta["parameters"],
        meta["samples"],
        meta["episodes"],
        config.obs_keys,
    )
    try:
        summary = trainer.train(progress=not args.no_progress)
    except TrainingDivergedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if replaced:
        remove(replaced)
    print(summary_line(out, summary))
    print(json.dumps({"run": str(out), **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
