"""Consistency distillation (policies/diffusion/distill.py) end to end on a tiny teacher:
handoff-train --distill-from, the student checkpoint, its 1-/2-step sampling and the runner."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from data.embodiment import load_embodiment
from data.errors import UserError
from data.store import DemoStore
from policies import load
from policies.checkpoint import save_policy
from policies.diffusion.distill import ConsistencyDistillation
from policies.diffusion.model import consistency_sampling_timesteps
from policies.runner import make_runner
from policies.train import main, tiny_overrides
from tests.conftest import make_episode
from tests.policies.test_policies import build, random_obs

# Tiny networks (policies/recipes/diffusion_tiny.yaml) through the --set overrides a user has.
TINY = tiny_overrides("diffusion")
COMMON = ["--batch-size", "8", "--device", "cpu", "--no-progress", "--set", "train.warmup_steps=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A state-only store, a teacher trained 30 steps and its student distilled 80 steps."""
    root = tmp_path_factory.mktemp("distill")
    sim = load_embodiment("sim_panda").with_cameras([], None)
    store = DemoStore.create(root / "state.zarr", sim)
    for e in range(4):
        ep = make_episode(12 + e, seed=e, image_hw=None)
        store.append_episode(ep, task="lift", source="scripted", success=True, seed=e)
    teacher = root / "teacher"
    argv = ["--policy", "diffusion", "--data", str(store.path), "--out", str(teacher)]
    assert main([*argv, "--steps", "30", *COMMON, *sum([["--set", s] for s in TINY], [])]) == 0
    student = root / "student"
    argv = ["--distill-from", str(teacher), "--data", str(store.path), "--out", str(student)]
    # lr 1e-3: a few dozen steps must visibly lower the loss (the recipe's 1e-4 is for 1000)
    assert main([*argv, "--steps", "80", *COMMON, "--set", "train.lr=1e-3"]) == 0
    return {"store": store, "teacher": teacher, "student": student, "root": root}


def fixed_batch(store, policy, B=32):
    """B training samples, the same on every call."""
    from data.dataset import SequenceDataset

    c = policy.config
    ds = SequenceDataset(store.path, c.obs_keys, n_obs_steps=c.n_obs_steps, horizon=c.horizon)
    return ds.collate([ds[i % len(ds)] for i in range(B)])


def self_consistency(policy, teacher, batch, draws=8):
    """The consistency loss of ``policy`` against a copy of itself as target (mu = 0, stop
    gradient), averaged over fixed draws of n and noise."""
    obj = ConsistencyDistillation(teacher)
    obj.attach(policy)
    torch.manual_seed(0)
    with torch.no_grad():
        value = float(np.mean([float(obj.loss(policy, batch)[0]) for _ in range(draws)]))
    policy.objective = None
    return value


def test_distillation_lowers_the_consistency_loss(runs):
    teacher, student = load(runs["teacher"]), load(runs["student"])
    batch = fixed_batch(runs["store"], teacher)
    before = self_consistency(load(runs["teacher"]), teacher, batch)
    after = self_consistency(student, teacher, batch)
    assert np.isfinite(before) and after < 0.8 * before, (before, after)


def test_student_is_an_ordinary_diffusion_checkpoint(runs):
    run = json.loads((runs["student"] / "config.json").read_text())
    assert run["distill_from"] == str(runs["teacher"])
    assert run["recipe"].endswith("diffusion_distill_cpu.yaml")
    ckpt = json.loads((runs["student"] / "last" / "config.json").read_text())
    assert ckpt["policy"] == "diffusion"
    assert ckpt["config"]["inference_scheduler"] == "consistency"
    assert ckpt["config"]["num_inference_steps"] == 1
    assert ckpt["config"]["down_dims"] == [16, 32]  # the teacher's network
    # the same tensors as the teacher: neither the teacher nor the target network is saved
    mine = load_file(str(runs["student"] / "last" / "model.safetensors"))
    theirs = load_file(str(runs["teacher"] / "last" / "model.safetensors"))
    assert mine.keys() == theirs.keys()
    assert any(not torch.equal(mine[k], theirs[k]) for k in mine)  # and it trained
    assert (runs["student"] / "last" / "train_state" / "objective.safetensors").is_file()
    for name in ("normalizer.safetensors", "embodiment.yaml"):
        a = (runs["student"] / "last" / name).read_bytes()
        assert a == (runs["teacher"] / "last" / name).read_bytes(), name


@pytest.mark.parametrize("steps", [1, 2])
def test_student_samples_in_one_and_two_steps(runs, steps):
    policy = load(runs["student"])
    policy.set_inference("consistency", steps)
    c = policy.config
    calls = []
    denoise = policy._denoise
    policy._denoise = lambda *a: calls.append(1) or denoise(*a)
    obs = {k: torch.randn(3, c.n_obs_steps, d) for k, d in policy.lowdim_dims.items()}
    torch.manual_seed(1)
    a = policy.chunk(obs)
    assert a.shape == (3, policy.chunk_length, policy.action_dim) and torch.isfinite(a).all()
    assert len(calls) == steps  # one network pass per step
    torch.manual_seed(1)
    assert torch.equal(policy.chunk(obs), a)  # deterministic for a fixed seed
    torch.manual_seed(2)
    assert not torch.equal(policy.chunk(obs), a)  # and a sample, not a constant


def test_boundary_condition_and_guide():
    policy = build("diffusion", inference_scheduler="consistency", num_inference_steps=2)
    c = policy.config
    x = torch.randn(2, c.horizon, policy.action_dim)
    cond = torch.randn(2, c.n_obs_steps, policy.obs_encoder.out_dim)
    zero = torch.zeros(2, dtype=torch.long)
    assert torch.equal(policy.consistency_fn(x, zero, cond), x)  # f(x, t_min) = x
    obs = {k: torch.randn(1, c.n_obs_steps, d) for k, d in policy.lowdim_dims.items()}
    lo = policy.normalizer.unnormalize("action", -torch.ones(policy.action_dim))
    hi = policy.normalizer.unnormalize("action", torch.ones(policy.action_dim))
    targets = lo + (hi - lo) * torch.rand(3, policy.action_dim)
    a = policy.chunk(obs, (targets, torch.ones(3)))
    assert torch.allclose(a[0, :3], targets, atol=1e-5)  # the guide's actions are kept


def test_config_validation():
    with pytest.raises(UserError, match=r"consistency sampler takes 1 to .*\(17\) steps"):
        build("diffusion", inference_scheduler="consistency", num_inference_steps=18)
    with pytest.raises(UserError, match="consistency_loss must be one of"):
        build("diffusion", consistency_loss="l1")
    with pytest.raises(UserError, match="consistency_boundaries"):
        build("diffusion", consistency_boundaries=1)
    c = build("diffusion", inference_scheduler="consistency", num_inference_steps=2).config
    assert consistency_sampling_timesteps(c) == [99, 52]


def test_student_runs_through_the_policy_runner(runs):
    policy = load(runs["student"])
    r = make_runner(policy, scheme="rtc", delay=2, safety=False)
    rng = np.random.default_rng(0)
    actions = [r.tick(random_obs(policy, rng)).command for _ in range(20)]
    held = [a for a in actions if a is not None]
    assert len(held) >= 15
    assert all(np.asarray(a).shape == (policy.action_dim,) for a in held)
    assert np.isfinite(np.asarray(held)).all()


def test_bad_teachers_fail_cleanly(runs, tmp_path, capsys):
    act = save_policy(build("act"), tmp_path / "act")
    bad = [
        (tmp_path / "nope", "no such checkpoint"),
        (act, "a act checkpoint; consistency distillation needs a diffusion"),
        (runs["student"], "already a consistency student"),
    ]
    for teacher, message in bad:
        argv = ["--distill-from", str(teacher), "--data", str(runs["store"].path)]
        with pytest.raises(SystemExit) as e:
            main([*argv, "--out", str(tmp_path / "out"), "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1, err
        assert err[0].startswith("error: --distill-from") and message in err[0], err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--distill-from" in capsys.readouterr().out


def test_distillation_resumes_exactly(runs, monkeypatch):
    """A distillation killed after its step-6 checkpoint and resumed ends bit-identical to
    one never interrupted: the target network is restored from train_state too."""
    store, teacher = runs["store"], runs["teacher"]

    def distill(out):
        argv = ["--distill-from", str(teacher), "--data", str(store.path), "--out", str(out)]
        return main([*argv, "--steps", "10", *COMMON, "--set", "train.save_every=6"])

    root = runs["root"]
    assert distill(root / "full") == 0
    loss = ConsistencyDistillation.loss
    calls = []

    def killed(self, student, batch):
        calls.append(1)
        if len(calls) > 8:
            raise KeyboardInterrupt
        return loss(self, student, batch)

    monkeypatch.setattr(ConsistencyDistillation, "loss", killed)
    with pytest.raises(SystemExit):
        distill(root / "half")
    monkeypatch.setattr(ConsistencyDistillation, "loss", loss)
    assert json.loads((root / "half/last/train_meta.json").read_text())["step"] == 6
    argv = ["--out", str(root / "half"), "--resume", "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    parts = ("model.safetensors", "train_state/model.safetensors")
    for part in (*parts, "train_state/objective.safetensors"):
        a = load_file(str(root / "full" / "last" / part))
        b = load_file(str(root / "half" / "last" / part))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{part}:{k} differs after resume"


@pytest.mark.parametrize("train_encoder", [False, True])
def test_camera_student_keeps_the_teachers_encoder(tmp_path, train_encoder):
    """By default only the denoiser is distilled: the student's camera encoder is the teacher's,
    bit for bit (frozen, and copied rather than averaged by the EMAs); with
    ``policy.consistency_train_encoder=true`` it is trained as well."""
    spec = load_embodiment("sim_panda").with_cameras(["agentview"], (16, 16))
    store = DemoStore.create(tmp_path / "img.zarr", spec)
    for e in range(3):
        ep = make_episode(12 + e, seed=e)
        store.append_episode(ep, task="lift", source="scripted", success=True, seed=e)
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    tiny = sum([["--set", s] for s in TINY], [])
    argv = ["--policy", "diffusion", "--data", str(store.path), "--out", str(teacher)]
    assert main([*argv, "--steps", "4", *COMMON, *tiny, "--set", "train.eval_every=0"]) == 0
    argv = ["--distill-from", str(teacher), "--data", str(store.path), "--out", str(student)]
    flag = f"policy.consistency_train_encoder={json.dumps(train_encoder)}"
    assert main([*argv, "--steps", "6", *COMMON, "--set", "train.lr=1e-3", "--set", flag]) == 0
    run = json.loads((student / "config.json").read_text())
    assert run["recipe"].endswith("diffusion_distill_cpu_camera.yaml")  # the camera variant
    mine = load_file(str(student / "last" / "model.safetensors"))
    theirs = load_file(str(teacher / "last" / "model.safetensors"))
    encoder = [k for k in mine if k.startswith("obs_encoder.")]
    denoiser = [k for k in mine if k.startswith("denoiser.")]
    assert encoder and denoiser
    assert any(not torch.equal(mine[k], theirs[k]) for k in denoiser)
    same = all(torch.equal(mine[k], theirs[k]) for k in encoder)
    assert same != train_encoder
    target = load_file(str(student / "last" / "train_state" / "objective.safetensors"))
    assert all(torch.equal(target[k], theirs[k]) for k in encoder) != train_encoder
