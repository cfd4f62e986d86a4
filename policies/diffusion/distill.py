"""Consistency distillation of a trained diffusion policy into a 1- or 2-step student.

``handoff-train --distill-from TEACHER --data STORE --out RUN`` trains, through the one trainer,
a student that is an ordinary diffusion checkpoint: the teacher's network, weights (as the
start), normaliser, embodiment and inputs, with ``inference_scheduler: consistency``. The
teacher and the target network live in :class:`ConsistencyDistillation`, which the trainer
hands to the student (``DiffusionPolicy.objective``); they are never in the student's
``state_dict``, so its checkpoint has the usual format and tensors.

Consistency distillation (Song et al. 2023, "Consistency Models", Algorithm 2), per sample:
draw n in [0, N - 2] and noise, x_{t_{n+1}} = sqrt(a) x0 + sqrt(1 - a) z from the demonstrated
chunk x0, one deterministic DDIM step of the teacher to x_{t_n} (the ODE solver Phi; Latent
Consistency Models use DDIM as well), and the loss

    d(f_student(x_{t_{n+1}}, t_{n+1}), f_target(x_{t_n}, t_n))

with f the boundary-parameterised consistency function (``DiffusionPolicy.consistency_fn``),
the target an EMA of the student (decay mu, no gradient) and d pseudo-Huber or squared L2.
The trainer's own EMA (``train.ema``) still gives the saved inference weights, as the CM paper
evaluates an EMA of the online network.

Only the denoiser is distilled by default (``consistency_train_encoder: false``): the student's
observation encoder stays the teacher's, frozen, so one encoder pass per batch conditions the
student, the teacher and the target alike.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from data.errors import UserError
from policies.common.policy import ACTION_KEY
from policies.diffusion.model import DiffusionPolicy, consistency_timesteps
from policies.train_state import EMA


def teacher_settings(path: str | Path, policy: str | None) -> dict[str, Any]:
    """The teacher's policy config (a dict, for the run's settings) from its ``config.json``;
    a missing path, a non-diffusion or an already distilled checkpoint is a UserError."""
    from policies.checkpoint import read_config, resolve_checkpoint

    if policy not in (None, "diffusion"):
        raise UserError(
            f"--distill-from distils a diffusion policy into a diffusion student; drop "
            f"--policy {policy}"
        )
    try:
        ckpt = resolve_checkpoint(path)
        cls, config = read_config(ckpt / "config.json")
    except UserError as e:
        raise UserError(f"--distill-from: {e}") from None
    if cls is not DiffusionPolicy:
        raise UserError(
            f"--distill-from {path}: a {cls.name} checkpoint; consistency distillation needs a "
            f"diffusion policy checkpoint (handoff-train --policy diffusion)"
        )
    if config.inference_scheduler == "consistency":
        raise UserError(
            f"--distill-from {path}: already a consistency student; distil from its diffusion "
            f"teacher instead"
        )
    return config.to_dict()


def load_teacher(path: str | Path, store: Any) -> DiffusionPolicy:
    """The teacher, frozen, in eval mode; its action dimension must match the training
    store's (a DemoStore) actions."""
    from policies.checkpoint import load_policy

    teacher_settings(path, None)  # the clear errors, before any weights are read
    teacher = load_policy(path)
    actions = store.data.get(ACTION_KEY)
    action_dim = math.prod(actions.shape[1:]) if actions is not None else 0
    if teacher.action_dim != action_dim:
        raise UserError(
            f"--distill-from {path}: the teacher acts in {teacher.action_dim} dimensions, the "
            f"training data's actions have {action_dim}; distil on the teacher's kind of data"
        )
    return teacher.requires_grad_(False)


def init_student(student: DiffusionPolicy, teacher: DiffusionPolicy) -> None:
    """Copy the teacher's weights into the student (same network, checked tensor by tensor)."""
    if student.config.inference_scheduler != "consistency":
        raise UserError(
            f"a distilled student samples with inference_scheduler consistency, not "
            f"{student.config.inference_scheduler!r}; use the distill_cpu recipe or "
            f"--set policy.inference_scheduler=consistency"
        )
    from policies.checkpoint import copy_weights

    copy_weights(teacher, student, "--distill-from (a student keeps its teacher's network)")


def ddim_step(
    teacher: DiffusionPolicy, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, cond: torch.Tensor
) -> torch.Tensor:
    """One deterministic DDIM step (Song et al. 2021, eta = 0) of the teacher's ODE from
    x_t to x_s, s < t: (B, Tp, Da) normalised, t and s (B,) int64. x0 is clipped to [-1, 1]
    after epsilon is formed, as the teacher's DDIM sampler (diffusers, clip_sample) does."""
    alphas = teacher.train_scheduler.alphas_cumprod.to(x.device)
    a_t, a_s = alphas[t].view(-1, 1, 1), alphas[s].view(-1, 1, 1)
    pred = teacher._denoise(x, t, cond)
    if teacher.config.prediction_type == "sample":
        x0 = pred
        eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    else:
        eps = pred
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    return a_s.sqrt() * x0.clamp(-1, 1) + (1 - a_s).sqrt() * eps


def consistency_distance(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean over the batch of d(a_i, b_i) for (B, ...) tensors. ``pseudo_huber``:
    sqrt(||a - b||^2 + c^2) - c with c = 0.00054 sqrt(d), d the elements per sample (Song &
    Dhariwal 2023, sec. 3.3); ``l2``: ||a - b||^2 / d (the CM paper's squared L2, per element)."""
    diff = (a - b).flatten(1).float()  # (B, d)
    d = diff.shape[1]
    if kind == "l2":
        return diff.pow(2).mean()
    c = 0.00054 * math.sqrt(d)
    return ((diff.pow(2).sum(1) + c * c).sqrt() - c).mean()


class TargetNetwork(EMA):
    """theta^- <- mu theta^- + (1 - mu) theta after every optimizer step, mu constant
    (CM paper, Algorithm 2); a frozen copy of the student, in eval mode."""

    def __init__(self, model: torch.nn.Module, mu: float) -> None:
        super().__init__(model, max_decay=mu)

    def decay(self, step: int) -> float:
        return float(self.max_decay)


class ConsistencyDistillation:
    """The training objective of a consistency student (see the module docstring).

    The trainer calls :meth:`attach` once the student is on its device, runs the student's
    ``forward`` (which returns :meth:`loss`), then :meth:`after_step` after each optimizer
    step; :attr:`state_module` (the target network) is saved with the training state.
    """

    def __init__(self, teacher: DiffusionPolicy) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.target: TargetNetwork | None = None

    def attach(self, student: DiffusionPolicy) -> None:
        self.teacher.to(student.device)
        if not student.config.consistency_train_encoder:  # the teacher's, frozen (config.py)
            student.obs_encoder.requires_grad_(False)
        self.target = TargetNetwork(student, student.config.consistency_target_decay)
        student.objective = self  # a plain attribute: not in the student's state_dict

    @property
    def state_module(self) -> torch.nn.Module:
        return self._target().model

    def after_step(self, student: DiffusionPolicy, step: int) -> None:
        self._target().update(student, step)

    def _target(self) -> TargetNetwork:
        if self.target is None:
            raise RuntimeError("ConsistencyDistillation.attach(student) was not called")
        return self.target

    def loss(
        self, student: DiffusionPolicy, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """batch as ``Policy.forward`` -> (consistency loss, info)."""
        c = student.config
        obs = batch["obs"]
        x0 = student.normalizer.normalize(ACTION_KEY, batch["action"].float())  # (B, Tp, Da)
        B = x0.shape[0]
        bounds = consistency_timesteps(c).to(x0.device)  # (N,)
        n = torch.randint(0, len(bounds) - 1, (B,), device=x0.device)
        t_cur, t_next = bounds[n], bounds[n + 1]  # (B,) each
        x_next = student.train_scheduler.add_noise(x0, torch.randn_like(x0), t_next)
        target_net = self._target().model
        if c.consistency_train_encoder:
            cond = student._condition(obs)
            with torch.no_grad():
                teacher_cond, target_cond = self.teacher._condition(obs), target_net._condition(obs)
        else:  # one encoder, the teacher's: one pass (the student's crop) serves all three
            with torch.no_grad():
                cond = teacher_cond = target_cond = student._condition(obs)
        pred = student.consistency_fn(x_next, t_next, cond)
        with torch.no_grad():
            x_cur = ddim_step(self.teacher, x_next, t_next, t_cur, teacher_cond)
            target = target_net.consistency_fn(x_cur, t_cur, target_cond)
        loss = consistency_distance(pred, target, c.consistency_loss)
        return loss, {"consistency": float(loss.detach())}
