"""``handoff-train``: train a registered policy on a demonstration store.

    handoff-train --policy diffusion --data /tmp/lift.zarr --task lift --out runs/lift_dp
    handoff-train --out runs/lift_dp --resume --steps 20000     # continue exactly
    accelerate launch -m policies.train --policy diffusion --recipe gpu ...   # several GPUs

Settings come, later winning, from: the policy's config defaults, the recipe
(``policies/recipes/<policy>_<recipe>.yaml`` or a YAML path; ``cpu`` on a CPU, ``gpu`` on a
GPU by default), ``--set section.key=value``, then the dedicated flags (``--steps`` ...).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from data.embodiment import load_embodiment
from data.errors import UserError, cli_main
from data.store import DemoStore
from policies.registry import get_policy_class, policy_names
from policies.trainer import TrainConfig, Trainer, TrainingDivergedError

RECIPES_DIR = Path(__file__).parent / "recipes"
log = logging.getLogger("handoff.train")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="handoff-train", description=__doc__.split("\n")[0])
    p.add_argument("--policy", help=f"policy name ({', '.join(policy_names())})")
    p.add_argument("--data", help="demonstration store (path or URL)")
    p.add_argument("--out", required=True, help="run directory, e.g. runs/NAME")
    p.add_argument("--task", help="sim task to evaluate on during training (e.g. lift)")
    p.add_argument("--recipe", help="cpu | gpu | path/to/recipe.yaml (default: by device)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--eval-every", type=int, help="steps between sim evaluations (0: at the end)")
    p.add_argument("--eval-episodes", type=int)
    p.add_argument("--embodiment", help="spec name or YAML for stores that carry none")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a recipe value, e.g. --set policy.horizon=32 --set train.lr=3e-4",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return p.parse_args(argv)


def load_recipe(policy: str, recipe: str) -> dict[str, Any]:
    path = (
        Path(recipe)
        if recipe.endswith((".yaml", ".yml"))
        else RECIPES_DIR / f"{policy}_{recipe}.yaml"
    )
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


def apply_sets(recipe: dict[str, Any], sets: list[str]) -> None:
    for item in sets:
        key, eq, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not eq or not dot or section not in ("policy", "train"):
            raise UserError(f"--set {item!r}: expected policy.KEY=VALUE or train.KEY=VALUE")
        recipe[section][name] = yaml.safe_load(value)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def training_episodes(store: DemoStore, successful_only: bool) -> list[int] | None:
    if not successful_only:
        return None
    good = store.episodes_where(success=True)
    if not good:
        log.warning(
            "%s: no episode is marked successful; training on all %d", store.path, store.n_episodes
        )
        return None
    return good


def prepare_run(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """The resolved run settings (fresh from recipe + flags, or the saved ones on --resume)."""
    out = Path(args.out)
    if args.resume:
        f = out / "config.json"
        if not f.is_file():
            raise UserError(f"{f}: missing; --resume needs a run directory made by handoff-train")
        run = json.loads(f.read_text())
        for flag, key in (
            ("steps", "steps"),
            ("eval_every", "eval_every"),
            ("eval_episodes", "eval_episodes"),
        ):
            if getattr(args, flag) is not None:
                run["train"][key] = getattr(args, flag)
        return run, out
    if not args.policy or not args.data:
        raise UserError("--policy and --data are required (or --resume an existing --out)")
    if out.exists() and any(out.iterdir()):
        if not args.force:
            raise UserError(
                f"{out} already exists; pass --force to overwrite or --resume to continue"
            )
        shutil.rmtree(out)
    get_policy_class(args.policy)  # unknown names fail here with the list
    device = resolve_device(args.device)
    recipe = load_recipe(args.policy, args.recipe or ("gpu" if device == "cuda" else "cpu"))
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
    return run, out


@cli_main
def main(argv: list[str] | None = None) -> int:
    # handoff's own progress at INFO; other libraries (accelerate, diffusers, ...) only warn
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("handoff").setLevel(logging.INFO)
    from accelerate.utils import set_seed

    from data.dataset import SequenceDataset
    from policies.common.normalizer import Normalizer
    from policies.inputs import build_normalizer, resolve_inputs, store_embodiment

    args = parse_args(argv)
    run, out = prepare_run(args)
    cls = get_policy_class(run["policy"])
    train_cfg = TrainConfig.from_dict(run["train"], source="train settings")
    config = cls.config_class.from_dict(run["policy_config"], source="policy settings")
    store = DemoStore.open(run["data"])
    spec = store_embodiment(
        store, load_embodiment(run["embodiment"]) if run["embodiment"] else None
    )
    config = resolve_inputs(store, config, spec)
    episodes = training_episodes(store, train_cfg.successful_only)
    if args.resume:
        from safetensors.torch import load_file

        normalizer = Normalizer.from_state_dict(
            load_file(str(out / "last" / "normalizer.safetensors"))
        )
    else:
        normalizer = build_normalizer(store, config, spec, episodes)
    dataset = SequenceDataset(
        store.path,
        config.obs_keys,
        n_obs_steps=config.n_obs_steps,
        horizon=config.horizon,
        episodes=episodes,
    )
    set_seed(train_cfg.seed)
    policy = cls(config, spec, normalizer)
    run.update(policy_config=config.to_dict(), train=train_cfg.to_dict())
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(run, indent=2) + "\n")
    meta = {
        "policy": cls.name,
        "data": run["data"],
        "episodes": len(episodes or range(store.n_episodes)),
        "samples": len(dataset),
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
    )
    if args.resume:
        trainer.resume()
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
    print(json.dumps({"run": str(out), **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
