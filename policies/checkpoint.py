"""Policy checkpoints: a directory of plain files, never pickles.

Layout (``FORMAT_VERSION`` 1)::

    CKPT/
      config.json            {"format_version": 1, "policy": "diffusion", "config": {...}}
      model.safetensors      network weights (the EMA weights when training used EMA)
      normalizer.safetensors <key>.scale / <key>.offset per normalised key
      embodiment.yaml        the robot the policy was trained for
      train_meta.json        step, store, task, evaluation results, versions

A run directory (``runs/NAME``) holds ``best/`` and ``last/`` checkpoints; loading a run picks
``best`` when it exists. Saving writes a temporary directory and swaps it in, so a crash never
leaves a half-written checkpoint where a good one was.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from data.embodiment import load_embodiment
from data.errors import UserError
from policies.common.normalizer import Normalizer
from policies.common.policy import Policy
from policies.registry import get_policy_class

FORMAT_VERSION = 1
FILES = ("config.json", "model.safetensors", "normalizer.safetensors", "embodiment.yaml")


def save_policy(policy: Policy, path: str | Path, train_meta: dict[str, Any] | None = None) -> Path:
    """Write ``policy`` to the checkpoint directory ``path`` (replacing it atomically)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    doc = {
        "format_version": FORMAT_VERSION,
        "policy": policy.name,
        "config": policy.config.to_dict(),
    }
    (tmp / "config.json").write_text(json.dumps(doc, indent=2) + "\n")
    weights = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
    save_file(weights, str(tmp / "model.safetensors"))
    policy.normalizer.save(tmp / "normalizer.safetensors")
    (tmp / "embodiment.yaml").write_text(policy.embodiment.to_yaml())
    (tmp / "train_meta.json").write_text(json.dumps(train_meta or {}, indent=2, default=str) + "\n")
    replace_dir(tmp, path)
    return path


def replace_dir(src: Path, dst: Path) -> None:
    """Move directory ``src`` to ``dst``, replacing ``dst``; ``dst`` is never half-written."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old)
    else:
        os.replace(src, dst)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (-> its best/, else last/)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such checkpoint or run directory")
    if (p / "config.json").is_file() and (p / "model.safetensors").exists():
        return p
    for sub in ("best", "last"):
        if (p / sub / "config.json").is_file():
            return p / sub
    raise UserError(
        f"{p}: not a checkpoint (needs {', '.join(FILES)}) nor a run directory with best/ or last/"
    )


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path}: missing; the checkpoint is incomplete")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: corrupt JSON ({e})") from None


def load_policy(path: str | Path, device: str = "cpu") -> Policy:
    """Load a checkpoint (or a run's best) ready for ``select_action`` (eval mode)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    ckpt = resolve_checkpoint(path)
    doc = read_json(ckpt / "config.json")
    if not isinstance(doc, dict) or "policy" not in doc or "config" not in doc:
        raise UserError(
            f"{ckpt / 'config.json'}: expected keys 'format_version', 'policy', 'config'"
        )
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(
            f"{ckpt / 'config.json'}: checkpoint format {version!r} is not supported (this handoff "
            f"reads format {FORMAT_VERSION}); retrain or load it with the handoff that wrote it"
        )
    cls = get_policy_class(doc["policy"])
    config = cls.config_class.from_dict(doc["config"], source=str(ckpt / "config.json"))
    spec_file = ckpt / "embodiment.yaml"
    if not spec_file.is_file():
        raise UserError(f"{spec_file}: missing; the checkpoint is incomplete")
    embodiment = load_embodiment(spec_file)
    tensors = {}
    for name in ("normalizer.safetensors", "model.safetensors"):
        f = ckpt / name
        if not f.is_file():
            raise UserError(f"{f}: missing; the checkpoint is incomplete")
        try:
            tensors[name] = load_file(str(f))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{f}: corrupt safetensors file ({e})") from None
    normalizer = Normalizer.from_state_dict(tensors["normalizer.safetensors"], source=str(ckpt))
    policy = cls(config, embodiment, normalizer)
    try:
        policy.load_state_dict(tensors["model.safetensors"], strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0:2]
        raise UserError(
            f"{ckpt / 'model.safetensors'}: weights do not match config.json ({' '.join(first)})"
        ) from None
    return policy.to(device).eval()
