"""Diffusion Policy: denoise a Tp-step action sequence conditioned on To observation steps."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from data.embodiment import Embodiment
from policies.common.encoder import ObsEncoder
from policies.common.normalizer import Normalizer
from policies.common.policy import ACTION_KEY, Policy
from policies.diffusion.config import DiffusionConfig
from policies.diffusion.streaming import ActionStream, add_noise, training_timesteps
from policies.diffusion.transformer import TransformerDenoiser
from policies.diffusion.unet import ConditionalUnet1D
from policies.registry import register_policy


def make_scheduler(config: DiffusionConfig, kind: str) -> Any:
    """A diffusers scheduler sharing the training noise schedule."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    common = dict(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
    )
    if kind in ("ddpm", "consistency"):  # consistency: re-noises with the training process
        return DDPMScheduler(**common, clip_sample=True, variance_type="fixed_small")
    if kind == "ddim":
        # set_alpha_to_one / steps_offset as diffusion_policy's DDIM configs
        return DDIMScheduler(**common, clip_sample=True, set_alpha_to_one=True, steps_offset=0)
    # thresholding with sample_max_value 1 clips the predicted clean sample to the normalised
    # action range, as clip_sample does for DDPM/DDIM; without it the first solver step, where
    # alpha is ~0 under the squared-cosine schedule, amplifies the model's error unboundedly
    return DPMSolverMultistepScheduler(
        **common,
        algorithm_type="dpmsolver++",
        solver_order=2,
        thresholding=True,
        sample_max_value=1.0,
    )


# The consistency function's boundary parameterisation (Song et al. 2023, sec. 3) as Latent
# Consistency Models (Luo et al. 2023) apply it to a discrete-time DDPM teacher whose network
# predicts the clean sample: f(x_t, t) = c_skip(t) x_t + c_out(t) x0(x_t, t), with
# c_skip = sd^2 / ((s t)^2 + sd^2), c_out = s t / sqrt((s t)^2 + sd^2) for the timestep index t,
# so f(x, 0) = x exactly and f keeps the teacher's clean-sample prediction everywhere else.
SIGMA_DATA = 0.5  # sd: CM paper / EDM (Karras et al. 2022), LCM's default
# s: LCM's timestep_scaling (diffusers LCMScheduler). c_skip(1) = 0.0025: the boundary
# condition acts at t = 0 and the student starts as the teacher's one-step estimate.
TIMESTEP_SCALING = 10.0


def consistency_timesteps(config: DiffusionConfig) -> torch.Tensor:
    """(N,) int64 boundaries 0 = t_0 < ... < t_{N-1} = T - 1 (N = consistency_boundaries,
    evenly spaced over the training timesteps) the consistency function is distilled on."""
    T, N = config.num_train_timesteps, config.consistency_boundaries
    return torch.linspace(0, T - 1, N, dtype=torch.float64).round().long()


def consistency_sampling_timesteps(config: DiffusionConfig) -> list[int]:
    """The k = num_inference_steps boundaries multistep sampling evaluates f at, from T - 1
    down, evenly strided over the N boundaries (k = 2 with N = 18: [99, 52] of 100); as the
    diffusers LCMScheduler picks its timesteps from the distillation schedule."""
    bounds = consistency_timesteps(config).tolist()
    N, k = len(bounds), config.num_inference_steps
    return [bounds[N - 1 - (i * (N - 1)) // k] for i in range(k)]


def boundary_scalings(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) timesteps -> c_skip, c_out (B, 1, 1): 1 and 0 at t = 0."""
    st = TIMESTEP_SCALING * t.float()
    c_skip = SIGMA_DATA**2 / (st**2 + SIGMA_DATA**2)
    c_out = st / (st**2 + SIGMA_DATA**2).sqrt()
    return c_skip.view(-1, 1, 1), c_out.view(-1, 1, 1)


@register_policy("diffusion")
class DiffusionPolicy(Policy):
    config_class = DiffusionConfig
    config: DiffusionConfig
    # Set by the trainer while distilling (policies/diffusion/distill.py): forward() then
    # returns the consistency-distillation loss. A plain attribute, never saved.
    objective: Any = None

    def __init__(self, config: DiffusionConfig, embodiment: Embodiment, normalizer: Normalizer):
        super().__init__(config, embodiment, normalizer)
        self.obs_encoder = ObsEncoder(
            self.lowdim_dims, self.camera_shapes, config.crop_ratio, config.vision_width
        )
        F_obs = self.obs_encoder.out_dim
        if config.denoiser == "unet":
            self.denoiser = ConditionalUnet1D(
                self.action_dim,
                F_obs * config.n_obs_steps,
                config.down_dims,
                config.kernel_size,
                config.n_groups,
                config.diffusion_step_embed_dim,
            )
        else:
            self.denoiser = TransformerDenoiser(
                self.action_dim,
                F_obs,
                config.n_obs_steps,
                config.horizon,
                config.n_layer,
                config.n_head,
                config.n_emb,
                config.p_drop_attn,
            )
        self.train_scheduler = make_scheduler(config, "ddpm")
        # Streaming Diffusion Policy (policies/diffusion/streaming.py): the action buffer kept
        # between calls; not a module, never saved. Only its first Ta actions are clean, so
        # the runner's default scheme is sync.
        self.stream = ActionStream() if config.streaming else None
        if config.streaming:
            self.default_scheme = "sync"
        self.set_inference(config.inference_scheduler, config.num_inference_steps)

    def set_inference(self, scheduler: str, num_steps: int) -> None:
        """Switch the sampler (ddim | dpmsolver | ddpm | consistency) and its step count."""
        self.config = self.config.replace(
            inference_scheduler=scheduler, num_inference_steps=num_steps
        )
        self.sampler = make_scheduler(self.config, scheduler)
        self.reset_stream()  # a streaming buffer's levels belong to the old step count

    def reset_stream(self) -> None:
        """Forget a streaming policy's action buffer: the next chunk starts a fresh one."""
        if getattr(self, "stream", None) is not None:
            self.stream.reset()

    def reset(self) -> None:
        """Forget the episode, a streaming policy's action buffer included."""
        self.reset_stream()
        super().reset()

    @torch.no_grad()
    def predict_chunk(
        self,
        history: list[dict[str, torch.Tensor]],
        guide: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """As :meth:`Policy.predict_chunk`; a streaming policy also starts a fresh buffer on
        the runner's first prediction of an episode, whose To history steps are all the same
        first observation (the runner repeats it; with To = 1 call :meth:`reset`)."""
        fresh = len(history) > 1 and all(h is history[0] for h in history)
        if self.stream is not None and fresh:
            self.reset_stream()
        return super().predict_chunk(history, guide)

    def _condition(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """raw obs {k: (B, To, ...)} -> (B, To, F) features (the U-Net flattens them)."""
        norm = self.normalize_obs(obs)
        B, To = next(iter(norm.values())).shape[:2]
        flat = {k: v.flatten(0, 1) for k, v in norm.items()}  # (B*To, ...)
        return self.obs_encoder(flat).reshape(B, To, -1)

    def _denoise(self, noisy: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if self.config.denoiser == "unet":
            return self.denoiser(noisy, t, cond.flatten(1))
        return self.denoiser(noisy, t, cond)

    def clean_estimate(
        self, sample: torch.Tensor, t: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        """x0 (B, Tp, Da) normalised from the network at (sample (B, Tp, Da), t (B,) int64).
        From an epsilon prediction it is clipped to [-1, 1] as the samplers' clip_sample does:
        under the squared-cosine schedule 1 / sqrt(alpha) reaches ~2000 at t = T - 1."""
        pred = self._denoise(sample, t, cond)
        if self.config.prediction_type == "sample":
            return pred
        a = self.train_scheduler.alphas_cumprod.to(sample.device)[t].view(-1, 1, 1)
        return ((sample - (1 - a).sqrt() * pred) / a.sqrt()).clamp(-1, 1)

    def consistency_fn(
        self, sample: torch.Tensor, t: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        """f(x_t, t) = c_skip(t) x_t + c_out(t) x0(x_t, t): (B, Tp, Da) normalised, t (B,)
        int64; f(x, 0) = x (see :func:`boundary_scalings`)."""
        c_skip, c_out = boundary_scalings(t)
        return c_skip * sample + c_out * self.clean_estimate(sample, t, cond)

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        if self.objective is not None:  # inside forward: DDP hooks see the student's pass
            return self.objective.loss(self, batch)
        cond = self._condition(batch["obs"])
        actions = self.normalizer.normalize(ACTION_KEY, batch["action"].float())  # (B, Tp, Da)
        noise = torch.randn_like(actions)
        if self.config.streaming:  # (B, Tp): the mixed chunk-wise / constant schedule
            t = training_timesteps(self.config, actions.shape[0], actions.device)
            noisy = add_noise(self.train_scheduler.alphas_cumprod, actions, noise, t)
        else:
            t = torch.randint(
                0, self.config.num_train_timesteps, (actions.shape[0],), device=actions.device
            )
            noisy = self.train_scheduler.add_noise(actions, noise, t)
        pred = self._denoise(noisy, t, cond)
        target = noise if self.config.prediction_type == "epsilon" else actions
        loss = F.mse_loss(pred, target)
        return loss, {"mse": float(loss.detach())}

    guided_sampling = True  # real-time chunking guides the denoising (policies/runner.py)
    # sync, by measurement over ROS: in handoff-eval rtc matches sync's success in 30 % fewer
    # steps, but on the simulated arm over ROS it reached 62/100 where sync reached 19/20
    # (README, "Chunk execution while inference takes time"; the gap is not understood yet)
    default_scheme = "sync"

    @property
    def chunk_length(self) -> int:
        """H = Tp - To + 1: the predicted actions from the current step on."""
        return self.config.horizon - self.config.n_obs_steps + 1

    @torch.no_grad()
    def chunk(
        self, obs: dict[str, torch.Tensor], guide: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Sample (B, H, Da) raw actions from the current step on.

        ``guide`` = (targets (n, Da) raw, weights (n,) in [0, 1]): inpainting for real-time
        chunking (Black et al. 2025), adapted to DDIM: after every denoising step's clean-chunk
        estimate x0, the first n actions become w * target + (1 - w) * x0 before the step
        moves on, so the rest of the chunk is denoised consistent with them. (The paper guides
        with a vector-Jacobian product, pseudo-inverse guidance; replacing x0 costs no extra
        network pass, which matters at 10-20 ms per pass on a CPU.) A consistency student
        (``inference_scheduler: consistency``) blends its 1-2 clean estimates the same way.

        With ``streaming`` (policies/diffusion/streaming.py) the chunk continues the policy's
        action buffer: num_inference_steps / h network passes, of which the first Ta actions
        come out clean (the rest still carry noise); the guide blends as here."""
        cond = self._condition(obs)
        B = cond.shape[0]
        c = self.config
        start = c.n_obs_steps - 1  # the action at the current (last observed) step
        if guide is not None:
            target = self.normalizer.normalize(ACTION_KEY, guide[0].float())
            n = min(len(target), c.horizon - start)
            target, w = target[:n], guide[1][:n].float()[:, None]
        if self.stream is not None:
            g = (target, w, start, n) if guide is not None else None
            buffer = self.stream.advance(self, cond, g)  # (B, Tp, Da) normalised
            return self.normalizer.unnormalize(ACTION_KEY, buffer)[:, start:]  # (B, H, Da)
        sample = torch.randn(B, c.horizon, self.action_dim, device=cond.device)  # (B, Tp, Da)
        if c.inference_scheduler == "consistency":
            g = (target, w, start, n) if guide is not None else None
            sample = self._consistency_sample(sample, cond, g)
            return self.normalizer.unnormalize(ACTION_KEY, sample)[:, start:]  # (B, H, Da)
        self.sampler.set_timesteps(c.num_inference_steps)
        alphas = self.sampler.alphas_cumprod.to(cond.device)
        for t in self.sampler.timesteps:
            step = torch.full((B,), int(t), device=cond.device, dtype=torch.long)
            pred = self._denoise(sample, step, cond)
            if guide is not None:
                a = alphas[int(t)]
                x0 = (
                    pred
                    if c.prediction_type == "sample"
                    else ((sample - (1 - a).sqrt() * pred) / a.sqrt())
                )
                x0 = x0.clone()
                x0[:, start : start + n] = w * target + (1 - w) * x0[:, start : start + n]
                pred = (
                    x0
                    if c.prediction_type == "sample"
                    else ((sample - a.sqrt() * x0) / (1 - a).sqrt())
                )
            sample = self.sampler.step(pred, t, sample).prev_sample
        return self.normalizer.unnormalize(ACTION_KEY, sample)[:, start:]  # (B, H, Da)

    def _consistency_sample(
        self, noise: torch.Tensor, cond: torch.Tensor, guide: tuple | None
    ) -> torch.Tensor:
        """Multistep consistency sampling (Song et al. 2023, Algorithm 1, in the DDPM's
        variance-preserving form): x0 = f(x_T, T); before each further step, re-noise x0 to
        the next timestep tau, x_tau = sqrt(a_tau) x0 + sqrt(1 - a_tau) z, and apply f again.
        ``noise`` (B, Tp, Da) is x_T; returns the normalised clean chunk (B, Tp, Da).
        ``guide`` = (targets (n, Da) normalised, weights (n, 1), start, n): after every clean
        estimate the n actions from ``start`` are blended as on the DDIM path."""
        B = noise.shape[0]
        alphas = self.sampler.alphas_cumprod.to(noise.device)
        x, x0 = noise, noise
        for i, t in enumerate(consistency_sampling_timesteps(self.config)):
            if i:
                a = alphas[t]
                x = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn_like(x0)
            step = torch.full((B,), t, device=noise.device, dtype=torch.long)
            x0 = self.consistency_fn(x, step, cond).clamp(-1, 1)  # as DDIM's clip_sample
            if guide is not None:
                target, w, start, n = guide
                x0[:, start : start + n] = w * target + (1 - w) * x0[:, start : start + n]
        return x0
