"""handoff-train end to end on small real stores: checkpoints, resume, failures, evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file

from data.store import DemoStore
from policies import load
from policies.train import main, tiny_overrides

# Tiny networks (policies/recipes/<policy>_tiny.yaml) through the same --set overrides a user has.
TINY = {policy: tiny_overrides(policy) for policy in ("diffusion", "act")}


def train(store, out, policy="diffusion", steps=12, extra=(), **kw):
    argv = [
        "--policy",
        policy,
        "--data",
        str(store),
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--no-progress",
        "--set",
        "train.save_every=6",
        "--set",
        "train.warmup_steps=2",
    ]
    for s in [*TINY[policy], *extra]:
        argv += ["--set", s]
    return main(argv)


@pytest.fixture
def state_store(tmp_path, spec, small_store):
    """The small store without its camera: a state-only store."""
    store = DemoStore.create(tmp_path / "state.zarr", spec.with_cameras([], None))
    for i in range(small_store.n_episodes):
        ep = small_store.episode(i)
        ep.pop("agentview")
        store.append_episode(ep, **small_store.episode_meta(i))
    return store


@pytest.mark.parametrize("policy", ["diffusion", "act"])
def test_train_follows_store_inputs(policy, state_store, small_store, tmp_path, capsys):
    assert train(state_store.path, tmp_path / "s", policy) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 12 and np.isfinite(summary["final_loss"])
    state = load(tmp_path / "s")
    assert state.input_keys == ["joint_pos", "joint_vel"] and not state.camera_keys
    assert train(small_store.path, tmp_path / "i", policy) == 0
    image = load(tmp_path / "i")
    assert image.camera_keys == ["agentview"]
    obs = {k: v[0] for k, v in small_store.episode(0).items()}
    a = image.select_action(obs)
    assert a.shape == (8,) and np.isfinite(a).all()
    run = json.loads((tmp_path / "i" / "config.json").read_text())
    assert run["policy_config"]["obs_keys"] == ["joint_pos", "joint_vel", "agentview"]
    assert run["train"]["steps"] == 12  # the resolved config is saved with the run
    meta = json.loads((tmp_path / "i" / "last" / "train_meta.json").read_text())
    assert meta["step"] == 12 and meta["episodes"] == 3  # failed episode 1 left out


def test_resume_is_exact(state_store, tmp_path, monkeypatch):
    """A run killed after its step-6 checkpoint and resumed ends bit-identical to one that
    was never interrupted (weights, EMA, optimiser, schedule and RNG all restored)."""
    from policies.diffusion.model import DiffusionPolicy

    assert train(state_store.path, tmp_path / "full", steps=12) == 0
    forward = DiffusionPolicy.forward
    calls = []

    def killed(self, batch):
        calls.append(1)
        if len(calls) > 8:
            raise KeyboardInterrupt
        return forward(self, batch)

    monkeypatch.setattr(DiffusionPolicy, "forward", killed)
    with pytest.raises(SystemExit):
        train(state_store.path, tmp_path / "half", steps=12)
    assert json.loads((tmp_path / "half/last/train_meta.json").read_text())["step"] == 6
    monkeypatch.setattr(DiffusionPolicy, "forward", forward)
    argv = ["--out", str(tmp_path / "half"), "--resume", "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    for part in ("model.safetensors", "train_state/model.safetensors"):
        a = load_file(str(tmp_path / "full" / "last" / part))
        b = load_file(str(tmp_path / "half" / "last" / part))
        assert a.keys() == b.keys()
        for k in a:
            assert (a[k] == b[k]).all(), f"{part}:{k} differs after resume"


def test_nan_loss_stops_and_keeps_last_good(state_store, tmp_path, monkeypatch, capsys):
    from policies.diffusion.model import DiffusionPolicy

    forward = DiffusionPolicy.forward
    calls = []

    def poisoned(self, batch):
        loss, info = forward(self, batch)
        calls.append(1)
        return (loss * float("nan") if len(calls) > 8 else loss), info

    monkeypatch.setattr(DiffusionPolicy, "forward", poisoned)
    assert train(state_store.path, tmp_path / "run", steps=12) == 1
    err = capsys.readouterr().err
    assert "loss became nan at step 8" in err and "last" in err
    assert json.loads((tmp_path / "run/last/train_meta.json").read_text())["step"] == 6
    assert load(tmp_path / "run").select_action(
        {"joint_pos": np.zeros(7), "joint_vel": np.zeros(7)}
    ).shape == (8,)


def test_missing_key_and_existing_run_fail_cleanly(state_store, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train(state_store.path, tmp_path / "r", extra=["policy.obs_keys=[joint_pos,object_state]"])
    assert e.value.code == 2
    assert (
        "'object_state' needed by the diffusion config is not in the store"
        in capsys.readouterr().err
    )
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "x").write_text("keep me")
    with pytest.raises(SystemExit) as e:
        train(state_store.path, tmp_path / "exists")
    assert e.value.code == 2 and "--force" in capsys.readouterr().err
    assert (tmp_path / "exists" / "x").read_text() == "keep me"
    with pytest.raises(SystemExit):
        train(state_store.path, tmp_path / "r2", extra=["train.lr=-1"])
    assert "lr must be positive" in capsys.readouterr().err


def test_best_checkpoint_follows_evaluation(state_store, tmp_path, monkeypatch):
    """The trainer keeps the checkpoint with the best evaluated success (evaluator scripted)."""
    rates = iter([0.5, 0.9, 0.7])
    seen = []

    def evaluate_policy(policy, task, n_episodes, **kw):
        seen.append((task, n_episodes, kw["seed"]))
        assert policy.select_action({"joint_pos": np.zeros(7), "joint_vel": np.zeros(7)}).shape == (
            8,
        )
        r = next(rates)
        return {"success_rate": r, "success_ci95": [r - 0.1, r + 0.1], "mean_length": 10.0}

    monkeypatch.setattr("data.registry.hook", lambda name: evaluate_policy)
    argv_extra = ["train.eval_every=4", "train.eval_episodes=3"]
    assert (
        main(
            [
                "--policy",
                "diffusion",
                "--data",
                state_store.path,
                "--out",
                str(tmp_path / "r"),
                "--task",
                "lift",
                "--steps",
                "12",
                "--batch-size",
                "4",
                "--device",
                "cpu",
                "--no-progress",
                *sum((["--set", s] for s in TINY["diffusion"] + argv_extra), []),
            ]
        )
        == 0
    )
    assert [s[:2] for s in seen] == [("lift", 3)] * 3
    best = json.loads((tmp_path / "r/best/train_meta.json").read_text())
    assert best["step"] == 8 and best["best_success"] == 0.9
    assert not (tmp_path / "r/best/train_state").exists()
    assert [e["step"] for e in best["evaluations"]] == [4, 8]
