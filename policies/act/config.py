"""ACT config. Defaults follow the paper (Zhao et al. 2023, Table 6) unless noted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from data.errors import UserError
from policies.common.config import PolicyConfig


@dataclass
class ACTConfig(PolicyConfig):
    name: ClassVar[str] = "act"
    # Far above the paper's sizes (512 wide, 4 + 1 + 4 layers), bounded so a hostile
    # config.json cannot make the model too big to build (StrictConfig.LIMITS).
    LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        **PolicyConfig.LIMITS,
        "dim_model": (1, 8192),
        "n_heads": (1, 256),
        "dim_feedforward": (1, 65536),
        "n_encoder_layers": (1, 64),
        "n_decoder_layers": (1, 64),
        "n_vae_encoder_layers": (1, 64),
        "latent_dim": (1, 4096),
        "dropout": (0.0, 1.0),
        "kl_weight": (0.0, 1e6),
        "temporal_ensemble_coeff": (0.0, 1e3),
    }

    n_obs_steps: int = 1  # ACT conditions on the current observation only
    horizon: int = 100  # chunk size k = 100 at 50 Hz (paper)
    n_action_steps: int = 100  # plain chunk execution; 1 with temporal ensembling
    lowdim_norm: str = "mean_std"  # ACT standardises qpos and actions
    action_norm: str = "mean_std"

    dim_model: int = 512
    n_heads: int = 8
    dim_feedforward: int = 3200
    n_encoder_layers: int = 4
    # The original code builds 7 decoder layers but, by a bug, only the first is used; lerobot
    # keeps 1 to match the published results (lerobot configuration_act.py).
    n_decoder_layers: int = 1
    dropout: float = 0.1
    use_vae: bool = True
    latent_dim: int = 32
    n_vae_encoder_layers: int = 4
    kl_weight: float = 10.0  # beta = 10 (paper)
    # exp(-m * i) weights over overlapping chunks, oldest first; m = 0.01 in the paper.
    # None executes plain chunks of n_action_steps.
    temporal_ensemble_coeff: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_obs_steps != 1:
            raise UserError("act config: n_obs_steps must be 1 (ACT sees the current step only)")
        if self.n_action_steps > self.horizon:
            raise UserError(
                f"act config: n_action_steps ({self.n_action_steps}) must be <= horizon "
                f"(chunk size, {self.horizon})"
            )
        if self.temporal_ensemble_coeff is not None and self.n_action_steps != 1:
            raise UserError(
                "act config: n_action_steps must be 1 when using temporal ensembling "
                "(temporal_ensemble_coeff is set); set n_action_steps: 1 or "
                "temporal_ensemble_coeff: null"
            )
        if self.dim_model % self.n_heads:
            raise UserError("act config: dim_model must be divisible by n_heads")
