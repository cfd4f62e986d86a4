"""The 1-D temporal U-Net denoiser with FiLM conditioning (Diffusion Policy, sec. 3.4)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SinusoidalEmbedding(nn.Module):
    """(B,) diffusion step -> (B, dim) sinusoidal features (Vaswani et al. 2017)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / (half - 1))
        angles = t.float()[:, None] * freqs[None]
        return torch.cat([angles.sin(), angles.cos()], -1)


def step_embedding(dim: int) -> nn.Module:
    """Diffusion step encoder: sinusoid -> MLP, as diffusion_policy's ConditionalUnet1D."""
    return nn.Sequential(
        SinusoidalEmbedding(dim), nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim)
    )


class ConvBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int) -> None:
        super().__init__(
            nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2),
            nn.GroupNorm(groups, c_out),
            nn.Mish(),
        )


class FiLMResBlock(nn.Module):
    """Two conv blocks; the condition predicts a per-channel scale and bias for the first."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.block1 = ConvBlock(c_in, c_out, kernel, groups)
        self.block2 = ConvBlock(c_out, c_out, kernel, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, T), cond: (B, cond_dim), or (B, cond_dim, Tp) per action position
        (averaged over pairs down to this level's T) -> (B, C_out, T)."""
        h = self.block1(x)
        if cond.ndim == 3:  # per position: the same FiLM layer applied at every position
            if cond.shape[-1] != x.shape[-1]:
                cond = F.adaptive_avg_pool1d(cond, x.shape[-1])  # (B, cond_dim, T)
            film = self.film(cond.transpose(1, 2)).transpose(1, 2)  # (B, 2 C_out, T)
            scale, bias = film.chunk(2, dim=1)  # (B, C_out, T) each
        else:
            scale, bias = self.film(cond)[:, :, None].chunk(2, dim=1)  # (B, C_out, 1) each
        h = self.block2(h * scale + bias)
        return h + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """(B, Tp, Da) noisy actions, step, (B, cond_dim) observation features -> (B, Tp, Da).

    The diffusion step is (B,), one noise level per chunk (Diffusion Policy), or (B, Tp), one
    per action position (Streaming Diffusion Policy's variable-noise buffer, Høeg et al. 2024).
    Per position, each position's step goes through the same step encoder, is concatenated
    with the observation features, and every FiLM layer maps that position's condition to its
    own scale and bias (averaged over pairs where the U-Net has halved Tp). No parameters are
    added: a (B, Tp) step equal at all positions gives the (B,) output up to float rounding.
    (The SDP reference instead flattens the Tp embeddings into one global vector, which
    changes the step encoder's shape; here existing checkpoints load unchanged.)
    """

    def __init__(
        self,
        action_dim: int,
        global_cond_dim: int,
        down_dims: list[int],
        kernel_size: int,
        n_groups: int,
        step_embed_dim: int,
    ) -> None:
        super().__init__()
        self.step_encoder = step_embedding(step_embed_dim)
        cond_dim = step_embed_dim + global_cond_dim
        dims = [action_dim, *down_dims]
        pairs = list(zip(dims[:-1], dims[1:]))
        block_args = dict(cond_dim=cond_dim, kernel=kernel_size, groups=n_groups)
        self.down = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(pairs):
            last = i == len(pairs) - 1
            self.down.append(
                nn.ModuleList(
                    [
                        FiLMResBlock(c_in, c_out, **block_args),
                        FiLMResBlock(c_out, c_out, **block_args),
                        nn.Identity() if last else nn.Conv1d(c_out, c_out, 3, 2, 1),
                    ]
                )
            )
        mid = down_dims[-1]
        self.mid = nn.ModuleList(
            [FiLMResBlock(mid, mid, **block_args), FiLMResBlock(mid, mid, **block_args)]
        )
        self.up = nn.ModuleList()
        for c_in, c_out in reversed(pairs[1:]):
            # every up level doubles T back (the down path halved it at all but the last level)
            self.up.append(
                nn.ModuleList(
                    [
                        FiLMResBlock(2 * c_out, c_in, **block_args),
                        FiLMResBlock(c_in, c_in, **block_args),
                        nn.ConvTranspose1d(c_in, c_in, 4, 2, 1),
                    ]
                )
            )
        self.final = nn.Sequential(
            ConvBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
            nn.Conv1d(down_dims[0], action_dim, 1),
        )

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, global_cond: torch.Tensor
    ) -> torch.Tensor:
        x = sample.transpose(1, 2)  # (B, Da, Tp)
        if timestep.ndim == 2:  # (B, Tp): a noise level per action position
            B, Tp = timestep.shape
            steps = self.step_encoder(timestep.reshape(-1)).view(B, Tp, -1)  # (B, Tp, E)
            obs = global_cond[:, None].expand(B, Tp, global_cond.shape[-1])
            cond = torch.cat([steps, obs], -1).transpose(1, 2)  # (B, cond_dim, Tp)
        else:
            cond = torch.cat([self.step_encoder(timestep), global_cond], -1)  # (B, cond_dim)
        skips = []
        for res1, res2, downsample in self.down:
            x = res2(res1(x, cond), cond)
            skips.append(x)
            x = downsample(x)
        for res in self.mid:
            x = res(x, cond)
        for res1, res2, upsample in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = upsample(res2(res1(x, cond), cond))
        return self.final(x).transpose(1, 2)  # (B, Tp, Da)
