"""The transformer denoiser variant (Diffusion Policy's time-series diffusion transformer).

Noisy action steps are the decoder's tokens (causal self-attention, as the paper's); the
diffusion step and the To observation features are encoder tokens it cross-attends to.
"""

from __future__ import annotations

import torch
from torch import nn

from policies.diffusion.unet import SinusoidalEmbedding


class TransformerDenoiser(nn.Module):
    """(B, Tp, Da) noisy actions, (B,) step, (B, To, F) observation features -> (B, Tp, Da)."""

    def __init__(
        self,
        action_dim: int,
        obs_feature_dim: int,
        n_obs_steps: int,
        horizon: int,
        n_layer: int,
        n_head: int,
        n_emb: int,
        p_drop_attn: float,
    ) -> None:
        super().__init__()
        self.action_in = nn.Linear(action_dim, n_emb)
        self.obs_in = nn.Linear(obs_feature_dim, n_emb)
        self.step_emb = SinusoidalEmbedding(n_emb)
        self.action_pos = nn.Parameter(torch.zeros(1, horizon, n_emb))
        self.cond_pos = nn.Parameter(torch.zeros(1, 1 + n_obs_steps, n_emb))
        nn.init.normal_(self.action_pos, std=0.02)
        nn.init.normal_(self.cond_pos, std=0.02)
        layer_args = dict(
            d_model=n_emb,
            nhead=n_head,
            dim_feedforward=4 * n_emb,
            dropout=p_drop_attn,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.cond_encoder = nn.Sequential(
            nn.Linear(n_emb, 4 * n_emb), nn.Mish(), nn.Linear(4 * n_emb, n_emb)
        )
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer_args), n_layer)
        self.norm = nn.LayerNorm(n_emb)
        self.head = nn.Linear(n_emb, action_dim)
        mask = torch.triu(torch.full((horizon, horizon), float("-inf")), diagonal=1)
        self.register_buffer("causal_mask", mask, persistent=False)

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, obs_features: torch.Tensor
    ) -> torch.Tensor:
        B, Tp, _ = sample.shape
        tokens = self.action_in(sample) + self.action_pos[:, :Tp]  # (B, Tp, n_emb)
        cond = torch.cat([self.step_emb(timestep)[:, None], self.obs_in(obs_features)], 1)
        memory = self.cond_encoder(cond + self.cond_pos)  # (B, 1 + To, n_emb)
        h = self.decoder(tokens, memory, tgt_mask=self.causal_mask[:Tp, :Tp])
        return self.head(self.norm(h))  # (B, Tp, Da)
