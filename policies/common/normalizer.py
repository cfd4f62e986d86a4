"""Affine normalisation of low-dim observations and actions, kept outside the network.

Each key maps to ``y = x * scale + offset``: ``min_max`` sends [min, max] to [-1, 1]
(diffusion_policy's choice; the DDPM sample clipping assumes it), ``mean_std`` standardises
(ACT's choice). The parameters are saved next to the weights (``normalizer.safetensors``) so a
checkpoint acts on raw robot units.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from data.errors import UserError

# A dimension whose range / std is below this is constant in the data (e.g. an unused joint);
# scaling it up would turn sensor noise at deployment into huge inputs, so it is only shifted.
MIN_SPREAD = 1e-4


class Normalizer:
    def __init__(self, params: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None):
        self.params: dict[str, tuple[torch.Tensor, torch.Tensor]] = dict(params or {})

    @classmethod
    def from_stats(
        cls, stats: dict[str, dict[str, np.ndarray]], modes: dict[str, str]
    ) -> Normalizer:
        """``stats`` as data.dataset.compute_stats returns; ``modes`` key -> NORM_MODES."""
        params = {}
        for key, mode in modes.items():
            s = {k: np.asarray(v, dtype=np.float64) for k, v in stats[key].items()}
            if mode == "min_max":
                spread = s["max"] - s["min"]
                ok = spread > MIN_SPREAD
                scale = np.where(ok, 2.0 / np.where(ok, spread, 1.0), 1.0)
                offset = np.where(ok, -1.0 - s["min"] * scale, -s["min"])
            elif mode == "mean_std":
                ok = s["std"] > MIN_SPREAD
                scale = np.where(ok, 1.0 / np.where(ok, s["std"], 1.0), 1.0)
                offset = -s["mean"] * scale
            elif mode == "identity":
                scale, offset = np.ones_like(s["min"]), np.zeros_like(s["min"])
            else:
                raise ValueError(f"unknown normalisation mode {mode!r}")
            params[key] = (
                torch.as_tensor(scale, dtype=torch.float32),
                torch.as_tensor(offset, dtype=torch.float32),
            )
        return cls(params)

    def __contains__(self, key: str) -> bool:
        return key in self.params

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """x: (..., D) raw -> (..., D) normalised."""
        scale, offset = self._get(key, x)
        return x * scale + offset

    def unnormalize(self, key: str, y: torch.Tensor) -> torch.Tensor:
        scale, offset = self._get(key, y)
        return (y - offset) / scale

    def _get(self, key: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, offset = self.params[key]
        if scale.device != x.device:
            scale, offset = scale.to(x.device), offset.to(x.device)
            self.params[key] = (scale, offset)
        return scale, offset

    # ---- persistence -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for key, (scale, offset) in self.params.items():
            out[f"{key}.scale"] = scale.detach().cpu().contiguous()
            out[f"{key}.offset"] = offset.detach().cpu().contiguous()
        return out

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], source: str = "normalizer") -> Normalizer:
        """Parameters as ``state_dict`` wrote them; refuses a missing half of a pair and values
        that would turn every input into NaN/inf (non-finite entries, a zero scale)."""
        keys = {k.rsplit(".", 1)[0] for k in sd}
        params = {}
        for key in sorted(keys):
            try:
                scale, offset = sd[f"{key}.scale"].float(), sd[f"{key}.offset"].float()
            except KeyError as e:
                raise UserError(f"{source}: entry {e.args[0]!r} is missing") from None
            if not (torch.isfinite(scale).all() and torch.isfinite(offset).all()):
                raise UserError(f"{source}: entry {key!r} holds NaN/inf; the checkpoint is damaged")
            if (scale == 0).any():
                raise UserError(f"{source}: {key}.scale has zeros; the checkpoint is damaged")
            params[key] = (scale, offset)
        return cls(params)

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        save_file(self.state_dict(), str(path))
