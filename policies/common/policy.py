"""The policy interface every handoff policy implements (see DESIGN.md, "Policy interface").

A policy is an ``nn.Module`` holding only the network; its :class:`Normalizer` and
:class:`Embodiment` sit beside it and are saved with it. Inputs are raw robot units.
"""

from __future__ import annotations

import math
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

    Execution (observation history, chunk scheduling, ensembling, delays, safety) is the
    policy runner's (policies/runner.py); ``select_action`` runs it in lock-step.
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
        self._runner: Any = None

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

    # How the policy runner (policies/runner.py) executes this policy's chunks by default, and
    # whether predict_chunk can follow a guide during sampling (real-time chunking).
    default_scheme: ClassVar[str] = "sync"
    guided_sampling: ClassVar[bool] = False

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """batch: {"obs": {k: (B, To, ...)}, "action": (B, Tp, Da), "action_is_pad": (B, Tp)}."""
        raise NotImplementedError

    def chunk(
        self, obs: dict[str, torch.Tensor], guide: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """obs {k: (B, To, ...)} raw -> (B, H, Da) raw actions from the current (last observed)
        step on, H = :attr:`chunk_length`. ``guide`` (targets (n, Da) raw, weights (n,)):
        pull the first n actions towards the targets (only with :attr:`guided_sampling`)."""
        raise NotImplementedError

    @property
    def chunk_length(self) -> int:
        """H: actions a chunk holds from the current step on."""
        return self.config.horizon

    @property
    def history_steps(self) -> int:
        """To: observation steps a prediction reads."""
        return self.config.n_obs_steps

    @property
    def default_execute_steps(self) -> int:
        """s: actions the runner executes per chunk (sync/async/rtc): Ta."""
        return self.config.n_action_steps

    def predict_action_chunk(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """obs {k: (B, To, ...)} raw -> (B, Ta, Da) raw actions to execute."""
        return self.chunk(obs)[:, : self.config.n_action_steps]

    @torch.no_grad()
    def predict_chunk(
        self,
        history: list[dict[str, torch.Tensor]],
        guide: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """The runner's call: To steps from :meth:`prepare_step` (oldest first) -> (H, Da)
        float32 actions in robot units, from the newest step on."""
        steps = history
        obs = {k: torch.stack([s[k] for s in steps], 1) for k in steps[0]}
        g = None
        if guide is not None:
            g = tuple(torch.as_tensor(np.asarray(x), device=self.device) for x in guide)
        return self.chunk(obs, g)[0].float().cpu().numpy()

    def reset(self) -> None:
        """Forget the episode: :meth:`select_action` starts a fresh history and chunk."""
        if getattr(self, "_runner", None) is not None:
            self._runner.reset()

    def prepare_step(self, obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """One unbatched observation step -> {k: (1, ...)} on the policy's device, checked
        against the inputs (KeyError names a missing key, ValueError a wrong shape); the
        runner keeps these in its history."""
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

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """One unbatched observation step -> (Da,) float32 action in robot units: the policy
        runner in lock-step (delay 0, no safety filter) with the policy's default scheme."""
        if getattr(self, "_runner", None) is None:
            from policies.runner import PolicyRunner

            self._runner = PolicyRunner(self)
        return np.asarray(self._runner.tick(obs).command, dtype=np.float32)
