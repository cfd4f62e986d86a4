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

Loading treats every file as untrusted and refuses, by file and name, before any heavy work:
links leading out of the checkpoint, wrong JSON/YAML types, sizes out of the config's bounds,
normaliser entries or weights whose names, shapes or dtypes differ from the model the config
builds (checked against the safetensors header, before a tensor is read or a model allocated).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data.embodiment import Embodiment, load_embodiment
from data.errors import UserError
from policies.common.config import PolicyConfig
from policies.common.normalizer import Normalizer
from policies.common.policy import ACTION_KEY, Policy
from policies.registry import get_policy_class

FORMAT_VERSION = 1
FILES = ("config.json", "model.safetensors", "normalizer.safetensors", "embodiment.yaml")
# safetensors' names of the dtypes a handoff state dict holds
DTYPE_NAMES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
Shapes = dict[str, tuple[tuple[int, ...], torch.dtype]]  # tensor name -> (shape, dtype)


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


def copy_weights(source: nn.Module, target: nn.Module, where: str) -> None:
    """Load ``source``'s weights into ``target`` (the same network), checked tensor by tensor:
    a ``--set policy.*`` that changed the network is named (UserError, prefixed ``where``)
    instead of half-loaded."""
    theirs = source.state_dict()
    for k, v in target.state_dict().items():
        if k not in theirs or theirs[k].shape != v.shape:
            raise UserError(
                f"{where}: the network differs from the checkpoint's at {k!r}; drop the "
                f"--set policy.* that changes it"
            )
    target.load_state_dict(theirs, strict=True)


def replace_dir(src: Path, dst: Path) -> None:
    """Move directory ``src`` to ``dst``, replacing ``dst`` in one atomic swap where the file
    system allows (:func:`data.outputs.publish`): a crash leaves the old or the new checkpoint."""
    from data.outputs import publish

    publish(src, dst)


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


def checked_file(root: Path, name: str) -> Path:
    """``root/name``, refused unless it is a regular file inside ``root``.

    Checkpoints are copied and shared; one whose file links elsewhere (``/dev/zero``, a file
    of the user's) must not make handoff read it.
    """
    f = root / name
    try:
        target = f.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        raise UserError(f"{f}: a link that never resolves; the checkpoint is damaged") from None
    if not target.is_relative_to(root.resolve()):
        raise UserError(f"{f}: links outside the checkpoint (to {target}); refusing to read it")
    if not f.is_file():
        raise UserError(f"{f}: missing; the checkpoint is incomplete")
    return f


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path}: missing; the checkpoint is incomplete")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: corrupt JSON ({e})") from None


def read_config(path: Path) -> tuple[type[Policy], PolicyConfig]:
    """The policy class and its checked config from a checkpoint's ``config.json``."""
    doc = read_json(path)
    if not isinstance(doc, dict) or "policy" not in doc or "config" not in doc:
        raise UserError(f"{path}: expected keys 'format_version', 'policy', 'config'")
    version = doc.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise UserError(
            f"{path}: checkpoint format {version!r} is not supported (this handoff "
            f"reads format {FORMAT_VERSION}); retrain or load it with the handoff that wrote it"
        )
    try:
        cls = get_policy_class(doc["policy"])
        return cls, cls.config_class.from_dict(doc["config"], source="config")
    except UserError as e:  # name the file, also for the config's own range checks
        raise UserError(f"{path}: {e}") from None


def policy_skeleton(
    cls: type[Policy], config: PolicyConfig, spec: Embodiment, source: Any
) -> Policy:
    """``cls`` built on the meta device: every tensor's shape and dtype, no memory used."""
    try:
        with torch.device("meta"):
            return cls(config, spec, Normalizer())
    except (ValueError, KeyError) as e:
        raise UserError(
            f"{source}: the config does not fit embodiment {spec.name!r} ({e})"
        ) from None


def state_shapes(module: nn.Module) -> Shapes:
    return {k: (tuple(v.shape), v.dtype) for k, v in module.state_dict().items()}


def read_tensors(f: Path, expected: Shapes, what: str) -> dict[str, torch.Tensor]:
    """The tensors of safetensors file ``f``, whose header must list exactly ``expected``.

    The header is compared first, so a file made for another model is refused by tensor name
    before any data is read (its sizes cannot make us allocate more than the model needs).
    ``what`` says what the file must match, for the message.
    """
    from safetensors import SafetensorError, safe_open

    want = {k: (list(shape), DTYPE_NAMES.get(dt, str(dt))) for k, (shape, dt) in expected.items()}
    try:
        with safe_open(str(f), framework="pt") as sf:
            found = {}
            for k in sf.keys():  # noqa: SIM118 (safe_open is not iterable)
                part = sf.get_slice(k)
                found[k] = (list(part.get_shape()), part.get_dtype())
            problem = _header_mismatch(found, want)
            if problem:
                raise UserError(f"{f}: {problem}; the file does not match {what}")
            return {k: sf.get_tensor(k) for k in want}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{f}: corrupt safetensors file ({e})") from None


def _header_mismatch(found: dict[str, Any], want: dict[str, Any]) -> str | None:
    for names, problem in (
        (sorted(set(want) - set(found)), "tensor {!r} is missing"),
        (sorted(set(found) - set(want)), "unexpected tensor {!r}"),
    ):
        if names:
            more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
            return problem.format(names[0]) + more
    for k in sorted(want):
        if found[k] != want[k]:
            (shape, dtype), (need_shape, need_dtype) = found[k], want[k]
            return f"tensor {k!r} is {dtype}{shape}, expected {need_dtype}{need_shape}"
    return None


def load_weights(module: nn.Module, f: Path, what: str) -> None:
    """Load ``f`` into ``module`` after checking every tensor's name, shape and dtype."""
    module.load_state_dict(read_tensors(f, state_shapes(module), what), strict=True)


def load_normalizer(ckpt: Path, config: PolicyConfig, spec: Embodiment) -> Normalizer:
    """The checkpoint's normaliser, one (D,) scale and offset per low-dim input and the action.

    Checked at load, not at the first inference (where a wrong shape would stop a robot).
    """
    dims = {ACTION_KEY: spec.action_dim}
    for k in config.obs_keys or []:
        if k not in spec.camera_names:
            if k not in spec.observation:
                raise UserError(f"{ckpt}: input {k!r} is not in embodiment {spec.name!r}")
            dims[k] = math.prod(spec.observation[k])
    expected = {
        f"{k}.{part}": ((d,), torch.float32)
        for k, d in dims.items()
        for part in ("scale", "offset")
    }
    f = checked_file(ckpt, "normalizer.safetensors")
    tensors = read_tensors(f, expected, "the inputs of config.json and embodiment.yaml")
    return Normalizer.from_state_dict(tensors, source=str(f))


def load_policy(path: str | Path, device: str = "cpu") -> Policy:
    """Load a checkpoint (or a run's best) ready for ``select_action`` (eval mode)."""
    ckpt = resolve_checkpoint(path)
    files = {name: checked_file(ckpt, name) for name in FILES}
    cls, config = read_config(files["config.json"])
    embodiment = load_embodiment(files["embodiment.yaml"])
    skeleton = policy_skeleton(cls, config, embodiment, files["config.json"])
    normalizer = load_normalizer(ckpt, config, embodiment)
    weights = read_tensors(files["model.safetensors"], state_shapes(skeleton), "config.json")
    policy = cls(config, embodiment, normalizer)
    policy.load_state_dict(weights, strict=True)
    return policy.to(device).eval()
