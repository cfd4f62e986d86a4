"""Diffusion Policy config. Defaults are the paper's CNN variant (Chi et al., RSS 2023)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from data.errors import UserError
from policies.common.config import PolicyConfig

DENOISERS = ("unet", "transformer")
INFERENCE_SCHEDULERS = ("ddim", "dpmsolver", "ddpm", "consistency")
CONSISTENCY_LOSSES = ("pseudo_huber", "l2")
PREDICTION_TYPES = ("epsilon", "sample")


@dataclass
class DiffusionConfig(PolicyConfig):
    name: ClassVar[str] = "diffusion"
    # Far above the paper's sizes (down_dims up to 1024, 8 transformer layers of 256), bounded
    # so a hostile config.json cannot make the model too big to build (StrictConfig.LIMITS).
    LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        **PolicyConfig.LIMITS,
        "down_dims": (1, 8192),
        "kernel_size": (1, 63),
        "n_groups": (1, 1024),
        "diffusion_step_embed_dim": (2, 8192),
        "n_layer": (1, 64),
        "n_head": (1, 256),
        "n_emb": (1, 8192),
        "p_drop_attn": (0.0, 1.0),
        "num_train_timesteps": (1, 100_000),  # the schedulers hold a few arrays of this length
        "num_inference_steps": (1, 100_000),
        "consistency_boundaries": (2, 100_000),
        "consistency_target_decay": (0.0, 1.0),
        "streaming_chunk_wise_share": (0.0, 1.0),
    }

    n_obs_steps: int = 2  # To = 2, paper Table 12
    horizon: int = 16  # Tp = 16, paper Table 12
    n_action_steps: int = 8  # Ta = 8, paper Table 12
    crop_ratio: float = 0.9  # 84 -> 76 px random crop, diffusion_policy robomimic configs
    lowdim_norm: str = "min_max"  # [-1, 1] like the actions the sampler clips
    action_norm: str = "min_max"

    denoiser: str = "unet"
    # CNN U-Net: channel widths per level, conv kernel, GroupNorm groups (paper: 256/512/1024, 5, 8)
    down_dims: list[int] = field(default_factory=lambda: [256, 512, 1024])
    kernel_size: int = 5
    n_groups: int = 8
    diffusion_step_embed_dim: int = 128  # diffusion_policy default
    # Transformer denoiser (paper's time-series diffusion transformer: 8 layers, 4 heads, 256)
    n_layer: int = 8
    n_head: int = 4
    n_emb: int = 256
    p_drop_attn: float = 0.3  # diffusion_policy transformer default

    # Schedulers: DDPM with 100 train steps and squared-cosine betas (paper sec. 4, iDDPM)
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"
    inference_scheduler: str = "ddim"
    num_inference_steps: int = 10  # DDIM with 10 steps: paper sec. 4.3 (0.1 s on a 3080)

    # Consistency distillation (policies/diffusion/distill.py; Song et al. 2023, "Consistency
    # Models"). A student distilled with ``handoff-train --distill-from`` samples with
    # inference_scheduler "consistency" in num_inference_steps (1, or 2 for multistep sampling).
    # N: boundaries 0 = t_0 < ... < t_{N-1} = num_train_timesteps - 1 the teacher's ODE is
    # discretised on (evenly spaced). 18: the CM paper's best N for distillation (CIFAR-10 CD,
    # sec. 6.1, Fig. 3); multistep sampling re-noises at these boundaries.
    consistency_boundaries: int = 18
    consistency_target_decay: float = 0.95  # mu of the target network, CM paper (CD, Table 3)
    # Pseudo-Huber with c = 0.00054 * sqrt(d): Song & Dhariwal 2023 ("Improved Techniques for
    # Training Consistency Models", sec. 3.3); "l2": the CM paper's squared distance.
    consistency_loss: str = "pseudo_huber"
    # False: the student keeps the teacher's observation encoder, frozen, and only its denoiser
    # is distilled; one encoder pass per batch then serves student, teacher and target (a camera
    # student's step costs ~1/3 of an encoder-training one). The encoder is not part of the ODE
    # being distilled; tuning it with a consistency loss lost camera features (README).
    consistency_train_encoder: bool = False

    # Streaming Diffusion Policy (policies/diffusion/streaming.py; Høeg, Du, Egeland 2024):
    # an action buffer whose noise rises chunk by chunk along the horizon; every call denoises
    # it num_inference_steps / h times (h = stream_chunks) so its first Ta actions are clean.
    # The reference configuration (github.com/Streaming-Diffusion-Policy/
    # streaming_diffusion_policy, train_tedi_unet_*_workspace.yaml) uses Tp = 20, To = 2,
    # Ta = 8 (h = 2 chunks) and 16 DDIM levels (8 network passes per call).
    streaming: bool = False
    # The share of training batches with chunk-wise increasing noise levels; the rest get one
    # level per sample: the reference's chunk_wise_weight 0.8 / temporally_constant_weight 0.2.
    streaming_chunk_wise_share: float = 0.8

    @property
    def stream_chunks(self) -> int:
        """h: complete chunks of Ta actions from the current step on, floor((Tp - To + 1) / Ta)."""
        return (self.horizon - self.n_obs_steps + 1) // self.n_action_steps

    @property
    def stream_steps_per_call(self) -> int:
        """Network passes per streaming call: num_inference_steps / h."""
        return self.num_inference_steps // self.stream_chunks

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_action_steps > self.horizon - self.n_obs_steps + 1:
            raise UserError(
                f"diffusion config: n_action_steps ({self.n_action_steps}) must be <= horizon - "
                f"n_obs_steps + 1 ({self.horizon - self.n_obs_steps + 1}); executed actions start "
                f"at the last observed step"
            )
        if self.denoiser not in DENOISERS:
            raise UserError(f"diffusion config: denoiser must be one of {DENOISERS}")
        if self.inference_scheduler not in INFERENCE_SCHEDULERS:
            raise UserError(
                f"diffusion config: inference_scheduler must be one of {INFERENCE_SCHEDULERS}"
            )
        if self.prediction_type not in PREDICTION_TYPES:
            raise UserError(f"diffusion config: prediction_type must be one of {PREDICTION_TYPES}")
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise UserError(
                "diffusion config: num_inference_steps must be in [1, num_train_timesteps]"
            )
        if self.consistency_boundaries > self.num_train_timesteps:
            raise UserError(
                f"diffusion config: consistency_boundaries ({self.consistency_boundaries}) must "
                f"be <= num_train_timesteps ({self.num_train_timesteps})"
            )
        if self.consistency_loss not in CONSISTENCY_LOSSES:
            raise UserError(
                f"diffusion config: consistency_loss must be one of {CONSISTENCY_LOSSES}"
            )
        if self.consistency_target_decay >= 1.0:
            raise UserError("diffusion config: consistency_target_decay must be < 1 (1 freezes it)")
        if (
            self.inference_scheduler == "consistency"
            and self.num_inference_steps > self.consistency_boundaries - 1
        ):
            raise UserError(
                f"diffusion config: a consistency sampler takes 1 to consistency_boundaries - 1 "
                f"({self.consistency_boundaries - 1}) steps, got num_inference_steps "
                f"{self.num_inference_steps}; set num_inference_steps to 1 or 2"
            )
        if self.kernel_size % 2 == 0:
            raise UserError("diffusion config: kernel_size must be odd (same-length convs)")
        if not 1 <= len(self.down_dims) <= 8:
            raise UserError("diffusion config: down_dims must list 1 to 8 channel widths")
        if any(d % self.n_groups for d in self.down_dims):
            raise UserError(
                f"diffusion config: every down_dims entry must be a multiple of n_groups "
                f"({self.n_groups})"
            )
        levels = len(self.down_dims) - 1  # the U-Net halves Tp at every level but the last
        if self.denoiser == "unet" and self.horizon % (2**levels):
            raise UserError(
                f"diffusion config: horizon ({self.horizon}) must be divisible by "
                f"{2**levels} for a U-Net with {len(self.down_dims)} levels"
            )
        if self.n_emb % self.n_head:
            raise UserError("diffusion config: n_emb must be divisible by n_head")
        if self.streaming:
            self._check_streaming()

    def _check_streaming(self) -> None:
        if self.denoiser != "unet":
            raise UserError(
                "diffusion config: streaming needs denoiser unet (it takes a noise level per "
                "action position); set denoiser: unet or streaming: false"
            )
        if self.inference_scheduler == "consistency":
            raise UserError(
                "diffusion config: streaming samples its own buffer and cannot use "
                "inference_scheduler consistency; set inference_scheduler: ddim"
            )
        h = self.stream_chunks
        if h < 2:
            raise UserError(
                f"diffusion config: streaming needs at least 2 chunks of n_action_steps in "
                f"horizon - n_obs_steps + 1 ({self.horizon - self.n_obs_steps + 1}), got {h}; "
                f"raise horizon (the reference uses 20 with n_action_steps 8)"
            )
        if self.num_inference_steps % h:
            raise UserError(
                f"diffusion config: streaming denoises num_inference_steps / {h} chunks per "
                f"call; num_inference_steps ({self.num_inference_steps}) must be a multiple "
                f"of {h}"
            )
