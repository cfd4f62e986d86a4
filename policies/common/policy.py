"""The policy interface every handoff policy implements (see DESIGN.md, "Policy interface").

A policy is an ``nn.Module`` holding only the network; its :class:`Normalizer` and
:class:`Embodiment` sit beside it and are saved with it. Inputs are raw robot units.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from data.embodiment import Embodiment
from policies.common.config import PolicyConfig
from policies.common.normalizer import Normalizer

ACTION_KEY = "action"


class Policy(nn.Module):
    """Base class. Subclasses implement ``forward`` and ``predict_action_chunk``.

    ``select_action`` keeps the last To observations (the first one repeated until there are
    To, as the training windows edge-pad episode starts) and a queue of Ta actions.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[PolicyConfig]] = PolicyConfig

    def __init__(self, config: PolicyConfig, embodiment: Embodiment, normalizer: Normalizer):
        super().__init__()
        if config.obs_keys is None:
            raise ValueError(
                "config.obs_keys must be resolved (the trainer fills it from the store)"
            )
        self.config = config
        self.embodiment = embodiment
        self.normalizer = normalizer
        self.input_keys: list[str] = list(config.obs_keys)
        cams = set(embodiment.camera_names)
        self.camera_keys = [k for k in self.input_keys if k in cams]
        self.lowdim_keys = [k for k in self.input_keys if k not in cams]
        for k in self.lowdim_keys:
            if k not in embodiment.observation:
                raise ValueError(f"observation key {k!r} is not in embodiment {embodiment.name!r}")
        self.lowdim_dims = {k: math.prod(embodiment.observation[k]) for k in self.lowdim_keys}
        self.camera_shapes = {k: embodiment.camera(k).shape for k in self.camera_keys}
        self.action_dim = embodiment.action_dim  # Da
        self.reset()

    # ---- helpers for subclasses ---------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def normalize_obs(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Low-dim keys (..., D) normalised to float; images (..., H, W, 3) passed through."""
        out = {}
        for k in self.lowdim_keys:
            out[k] = self.normalizer.normalize(k, obs[k].float())
        for k in self.camera_keys:
            out[k] = obs[k]
        return out

    # ---- the interface ------------------------------------------------------------------------

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """batch: {"obs": {k: (B, To, ...)}, "action": (B, Tp, Da), "action_is_pad": (B, Tp)}."""
        raise NotImplementedError

    def predict_action_chunk(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """obs {k: (B, To, ...)} raw -> (B, Ta, Da) raw actions to execute."""
        raise NotImplementedError

    def reset(self) -> None:
        self._obs_history: deque[dict[str, torch.Tensor]] = deque(maxlen=self.config.n_obs_steps)
        self._action_queue: deque[torch.Tensor] = deque()

    def _step_tensors(self, obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """One unbatched step -> {k: (1, ...)} on the policy's device, checked against inputs."""
        missing = [k for k in self.input_keys if k not in obs]
        if missing:
            raise KeyError(
                f"observation lacks key(s) {missing}; this policy consumes {self.input_keys}"
            )
        dev = self.device
        out = {}
        for k in self.lowdim_keys:
            x = np.asarray(obs[k], dtype=np.float32).reshape(-1)
            if x.shape[0] != self.lowdim_dims[k]:
                raise ValueError(
                    f"observation {k!r} has {x.shape[0]} values, expected {self.lowdim_dims[k]}"
                )
            out[k] = torch.from_numpy(x).to(dev)[None]
        for k in self.camera_keys:
            img = np.asarray(obs[k])
            if img.shape != self.camera_shapes[k] or img.dtype != np.uint8:
                raise ValueError(
                    f"camera {k!r} frame is {img.dtype}{img.shape}, expected uint8"
                    f"{self.camera_shapes[k]}"
                )
            out[k] = torch.from_numpy(np.ascontiguousarray(img)).to(dev)[None]
        return out

    def _push_obs(self, obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Append one step to the history; return it stacked as {k: (1, To, ...)}."""
        step = self._step_tensors(obs)
        if not self._obs_history:
            self._obs_history.extend([step] * self.config.n_obs_steps)
        else:
            self._obs_history.append(step)
        return {k: torch.stack([h[k] for h in self._obs_history], 1) for k in step}

    @torch.no_grad()
    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """One unbatched observation step -> (Da,) float32 action in robot units."""
        history = self._push_obs(obs)
        if not self._action_queue:
            chunk = self.predict_action_chunk(history)[0]  # (Ta, Da)
            self._action_queue.extend(chunk)
        return self._action_queue.popleft().float().cpu().numpy()
