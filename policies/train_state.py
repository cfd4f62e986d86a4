"""Everything exact resume needs besides the weights: EMA, RNG streams, optimiser, schedule.

Written next to a checkpoint as ``train_state/`` with plain formats: safetensors for tensors,
JSON for numbers. The optimiser state goes through ``torch.save`` and is read back with
``weights_only=True`` (tensors and numbers only, no code is unpickled).
"""

from __future__ import annotations

import contextlib
import copy
import json
import pickle
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from data.errors import UserError


class EMA:
    """Exponential moving average of a model's weights, used for inference.

    decay = 1 - (1 + step)^-power, capped at max_decay: diffusion_policy's EMAModel schedule
    (power 0.75 reaches 0.999 at ~10k steps, so short CPU runs still average meaningfully).
    """

    def __init__(self, model: nn.Module, power: float = 0.75, max_decay: float = 0.9999):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.power = power
        self.max_decay = max_decay

    def decay(self, step: int) -> float:
        return float(min(self.max_decay, max(0.0, 1 - (1 + step) ** -self.power)))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay(step)
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            if p.requires_grad:
                ema_p.mul_(d).add_(p.detach().to(ema_p.dtype), alpha=1 - d)
            else:  # frozen (e.g. a distilled student's encoder): copied, no rounding drift
                ema_p.copy_(p)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, json) capturing torch (CPU + CUDA), numpy and python RNG streams."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    meta = {"numpy": [name, int(pos), int(has_gauss), float(cached)], "python": random.getstate()}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    name, pos, has_gauss, cached = meta["numpy"]
    keys = tensors["numpy"].numpy().astype(np.uint32)
    np.random.set_state((name, keys, pos, has_gauss, cached))
    v, internal, gauss = meta["python"]
    random.setstate((v, tuple(internal), gauss))


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (e.g. an evaluation) without disturbing the training RNG streams."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(*state)


def save_train_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step: int,
    extra: dict[str, Any],
) -> None:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        str(path / "model.safetensors"),
    )
    torch.save(optimizer.state_dict(), path / "optimizer.pt")
    tensors, meta = rng_state()
    save_file(tensors, str(path / "rng.safetensors"))
    doc = {"step": step, "scheduler": scheduler.state_dict(), "rng": meta, **extra}
    (path / "state.json").write_text(json.dumps(doc) + "\n")


def load_train_state(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore everything ``save_train_state`` wrote; returns the state.json document.

    ``path`` is ``CKPT/train_state``. Each file is checked and a fault ends as one error naming
    it: a link out of the checkpoint, weights of other shapes, an optimiser file holding
    pickled objects (``weights_only`` refuses them; no code runs) or state of other shapes.
    """
    from policies.checkpoint import checked_file, load_weights, read_json

    names = ("model.safetensors", "optimizer.pt", "rng.safetensors", "state.json")
    f = {name: checked_file(path.parent, f"{path.name}/{name}") for name in names}
    doc = read_json(f["state.json"])
    if not _well_typed(doc):
        raise UserError(
            f"{f['state.json']}: 'step', 'scheduler', 'history' or 'best_success' is missing or "
            f"of the wrong type; the training state is damaged"
        )
    load_weights(model, f["model.safetensors"], "the run's config.json")
    load_optimizer(optimizer, f["optimizer.pt"])
    with damaged(f["state.json"]):
        scheduler.load_state_dict(doc["scheduler"])
    with damaged(f["rng.safetensors"]):
        from safetensors.torch import load_file

        set_rng_state(load_file(str(f["rng.safetensors"])), doc["rng"])
    return doc


def _well_typed(doc: Any) -> bool:
    """state.json holds what the trainer reads, with the types it reads them as."""
    return (
        isinstance(doc, dict)
        and isinstance(doc.get("step"), int)
        and doc["step"] >= 0
        and isinstance(doc.get("scheduler"), dict)
        and isinstance(doc.get("history", []), list)
        and isinstance(doc.get("best_success", 0), int | float)
    )


def load_optimizer(optimizer: torch.optim.Optimizer, f: Path) -> None:
    """Optimiser state from ``f`` (plain tensors and numbers only), checked against the params."""
    with damaged(f):
        try:
            state = torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise UserError(
                f"{f}: not a file of plain tensors and numbers (handoff never unpickles "
                f"anything else); the training state is damaged or was tampered with"
            ) from None
        optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, v in optimizer.state.get(p, {}).items():
                if torch.is_tensor(v) and v.dim() and v.shape != p.shape:
                    raise UserError(
                        f"{f}: optimiser state {name!r} has shape {list(v.shape)} but its "
                        f"parameter has {list(p.shape)}; the training state does not fit this run"
                    )


@contextlib.contextmanager
def damaged(f: Path) -> Iterator[None]:
    """Turn whatever a malformed file raises while being applied into one error naming it."""
    from safetensors import SafetensorError

    try:
        yield
    except (
        OSError,
        EOFError,
        ValueError,
        RuntimeError,
        KeyError,
        TypeError,
        AttributeError,
        SafetensorError,
    ) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"{f}: cannot resume, the training state is damaged ({first})") from None
