"""Streaming Diffusion Policy (Høeg, Du, Egeland 2024, "Streaming Diffusion Policy: Fast
Policy Synthesis with Variable Noise Diffusion Models"), a mode of the diffusion policy
(``streaming: true``).

The policy keeps an action buffer (B, Tp, Da) between calls whose noise level rises along the
horizon, chunk by chunk. Position p (p >= s = To - 1 is the action at the current step) lies
in chunk i(p) = clamp(floor((p - s) / Ta), 0, h - 1), with h = floor((Tp - s) / Ta) complete
chunks; positions before s share chunk 0, the incomplete tail shares chunk h - 1. With S =
num_inference_steps DDIM levels (level j at training timestep t_j = floor((j + 1) T / S) - 1,
so j = S - 1 is T - 1; -1 is clean), chunk i starts at level floor(S (i + 1) / h) - 1 (the
reference's ladder, ``initialize_buffer_as_zero``: zeros noised to these levels). Every call
runs S / h network passes, each a DDIM step (eta 0) of every position to its next level, which
brings chunk 0 to clean; it returns the buffer from the current step on. At the next call the
buffer is shifted by Ta (the actions executed meanwhile), the incomplete tail dropped, and
Ta + tail positions of fresh noise at level S - 1 appended: the kept prefix is bit for bit what
the previous call returned there, and its first s positions (the last executed actions) stay
fixed while the rest is denoised, labelled with chunk 0's level as in training.

Training (:func:`training_timesteps`) draws, per batch, either the chunk-wise scheme
(``streaming_chunk_wise_share``, 0.8 in the reference): chunk i at floor(T (i + 1) / h) - 1 - j
with one offset j ~ U{0, ..., floor(T / h) - 1} per sample, or one level per sample for all
positions (the reference's "temporally constant" scheme). Reference implementation:
github.com/Streaming-Diffusion-Policy/streaming_diffusion_policy, policy/
tedi_unet_lowdim_policy.py (``get_diff_steps_training``, ``conditional_sample``).

Shift = Ta assumes the runner executes Ta actions per chunk: its sync, async and rtc schemes
execute exactly ``execute_steps`` (default: the policy's Ta) actions of every chunk, so leave
``execute_steps`` at 0. Actions beyond the first Ta are still noisy; the policy's default
scheme is therefore sync, where only the first Ta are executed (async/rtc with a delay d
execute d of them).
"""

from __future__ import annotations

from typing import Any

import torch

from policies.diffusion.config import DiffusionConfig


def chunk_index(c: DiffusionConfig) -> torch.Tensor:
    """(Tp,) int64: the chunk i(p) of every buffer position (see the module docstring)."""
    s, Ta, h = c.n_obs_steps - 1, c.n_action_steps, c.stream_chunks
    p = torch.arange(c.horizon)
    return ((p - s).clamp(min=0) // Ta).clamp(max=h - 1)


def ladder(c: DiffusionConfig, n_levels: int) -> torch.Tensor:
    """(Tp,) int64: each position's top level floor(n (i + 1) / h) - 1 of n levels."""
    return torch.div(n_levels * (chunk_index(c) + 1), c.stream_chunks, rounding_mode="floor") - 1


def level_timesteps(c: DiffusionConfig) -> torch.Tensor:
    """(S,) int64: the training timestep t_j = floor((j + 1) T / S) - 1 of DDIM level j."""
    T, S = c.num_train_timesteps, c.num_inference_steps
    return torch.div(T * torch.arange(1, S + 1), S, rounding_mode="floor") - 1


def add_noise(
    alphas: torch.Tensor, x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """sqrt(a_t) x + sqrt(1 - a_t) noise for (B, Tp, Da) x, noise and (B, Tp) timesteps t
    (the diffusers schedulers' add_noise takes one timestep per sample)."""
    a = alphas.to(x.device)[t][..., None]  # (B, Tp, 1)
    return a.sqrt() * x + (1 - a).sqrt() * noise


def training_timesteps(c: DiffusionConfig, B: int, device: torch.device) -> torch.Tensor:
    """(B, Tp) int64 training timesteps of the mixed schedule (one scheme per batch)."""
    T = c.num_train_timesteps
    if float(torch.rand(())) < c.streaming_chunk_wise_share:  # chunk-wise increasing
        j = torch.randint(0, T // c.stream_chunks, (B, 1), device=device)
        return ladder(c, T).to(device)[None] - j  # (B, Tp), chunk 0 in [0, T / h - 1]
    return torch.randint(0, T, (B, 1), device=device).expand(B, c.horizon)  # constant


class ActionStream:
    """The buffer of one streaming policy; see the module docstring. ``buffer`` (B, Tp, Da)
    normalised and ``levels`` (Tp,) int64 DDIM levels (-1 clean) are None after a reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.buffer: torch.Tensor | None = None
        self.levels: torch.Tensor | None = None
        self.known = 0  # leading positions holding actions already executed (kept fixed)

    def _start(self, c: DiffusionConfig, B: int, Da: int, alphas: torch.Tensor) -> None:
        """Zeros noised to the ladder's levels (the reference's buffer_init "zero")."""
        dev = alphas.device
        self.levels = ladder(c, c.num_inference_steps).to(dev)
        t = level_timesteps(c).to(dev)[self.levels].expand(B, c.horizon)
        zeros = torch.zeros(B, c.horizon, Da, device=dev)
        self.buffer = add_noise(alphas, zeros, torch.randn_like(zeros), t)
        self.known = 0

    def _shift(self, c: DiffusionConfig) -> None:
        """Drop the Ta executed actions and the incomplete tail; append fresh noise."""
        assert self.buffer is not None and self.levels is not None
        s, Ta = c.n_obs_steps - 1, c.n_action_steps
        tail = (c.horizon - s) % Ta
        keep = c.horizon - Ta - tail
        B, _, Da = self.buffer.shape
        fresh = torch.randn(B, Ta + tail, Da, device=self.buffer.device)
        self.buffer = torch.cat([self.buffer[:, Ta : Ta + keep], fresh], 1)
        top = torch.full((Ta + tail,), c.num_inference_steps - 1, device=self.levels.device)
        self.levels = torch.cat([self.levels[Ta : Ta + keep], top])
        self.levels[:s] = self.levels[s]
        self.known = s

    def advance(self, policy: Any, cond: torch.Tensor, guide: tuple | None) -> torch.Tensor:
        """One call of ``policy`` (a DiffusionPolicy) on ``cond`` (B, To, F): shift (unless
        fresh), S / h DDIM steps; returns the buffer (B, Tp, Da) normalised. ``guide`` =
        (targets (n, Da) normalised, weights (n, 1), start, n): after every clean estimate
        the n actions from ``start`` are blended as on the DDIM path."""
        c = policy.config
        B, dev = cond.shape[0], cond.device
        alphas = policy.train_scheduler.alphas_cumprod.to(dev)
        buf = self.buffer
        if buf is None or buf.shape[0] != B or buf.device != dev:
            self._start(c, B, policy.action_dim, alphas)
        else:
            self._shift(c)
        assert self.buffer is not None and self.levels is not None
        steps = level_timesteps(c).to(dev)
        x, k = self.buffer, self.known
        past = x[:, :k].clone()
        for _ in range(c.stream_steps_per_call):
            t = steps[self.levels]  # (Tp,): every level is >= 0 during a pass
            pred = policy._denoise(x, t.expand(B, c.horizon), cond)
            a = alphas[t].view(1, -1, 1)  # (1, Tp, 1)
            prev = self.levels - 1
            a_prev = torch.where(prev >= 0, alphas[steps[prev.clamp(min=0)]], 1.0)
            a_prev = a_prev.view(1, -1, 1)  # 1 where the position becomes clean
            if c.prediction_type == "sample":
                x0 = pred
                eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            else:
                eps = pred
                x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            x0 = x0.clamp(-1, 1)  # as the samplers' clip_sample
            if guide is not None:
                target, w, start, n = guide
                x0[:, start : start + n] = w * target + (1 - w) * x0[:, start : start + n]
                eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps  # DDIM, eta 0
            x[:, :k] = past  # the executed actions stay what they were
            self.levels = (self.levels - 1).clamp(min=-1)
        self.buffer = x
        return x
