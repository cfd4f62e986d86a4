"""Hostile checkpoints, resume states and training data are refused by name, before heavy work.

Issue 12, items 5 (training part) and 9: huge sizes in config.json, wrong JSON/YAML types,
normaliser and weight shapes that do not fit, pickles in the resume state, links out of the
checkpoint, non-finite training data, and messages that name only files that exist.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from data.errors import UserError
from data.store import DemoStore
from policies import load
from policies.checkpoint import save_policy
from policies.train import main as train_main
from tests.conftest import TINY_ACT, make_episode
from tests.policies.test_policies import build


@pytest.fixture
def ckpt(tmp_path):
    return save_policy(build("act").eval(), tmp_path / "ckpt")


def edit_json(f: Path, **changes) -> None:
    f.write_text(json.dumps({**json.loads(f.read_text()), **changes}))


def edit_config(ckpt: Path, **changes) -> None:
    doc = json.loads((ckpt / "config.json").read_text())
    doc["config"].update(changes)
    (ckpt / "config.json").write_text(json.dumps(doc))


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ---- config.json: sizes and types ------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "key", "value"),
    [
        ("act", "n_encoder_layers", 10**9),  # the example
        ("act", "dim_model", 10**9),
        ("act", "horizon", 10**9),
        ("act", "dim_feedforward", 10**12),
        ("diffusion", "down_dims", [16, 10**9]),
        ("diffusion", "num_train_timesteps", 10**9),
        ("diffusion", "n_layer", 10**9),
    ],
)
def test_huge_sizes_are_refused_before_building(policy, key, value, tmp_path):
    ckpt = save_policy(build(policy).eval(), tmp_path / "ckpt")
    edit_config(ckpt, **{key: value})
    with pytest.raises(UserError, match=rf"config.json.*{key} = .* must be in \["):
        load(ckpt)


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"policy": ["act"]}, "policy name must be a string"),
        ({"policy": {"name": "act"}}, "policy name must be a string"),
        ({"config": []}, "expected a mapping of act config keys, got list"),
        ({"config": "act"}, "expected a mapping of act config keys, got str"),
    ],
)
def test_wrong_json_types_in_config_are_refused(ckpt, doc, match):
    edit_json(ckpt / "config.json", **doc)
    with pytest.raises(UserError, match=rf"config.json: .*{match}"):
        load(ckpt)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"dim_model": "32"}, "dim_model = '32' must be of type int"),  # a string for a number
        ({"dropout": float("nan")}, "dropout = nan must be a finite number"),
        ({"kl_weight": float("inf")}, "kl_weight = inf must be a finite number"),
        ({"use_vae": 1}, "use_vae = 1 must be of type bool"),
        ({"obs_keys": "joint_pos"}, "obs_keys = 'joint_pos' does not fit type"),
        ({"obs_keys": ["joint_pos", "no_such_key"]}, "does not fit embodiment"),
    ],
)
def test_wrong_value_types_in_config_are_refused(ckpt, changes, match):
    edit_config(ckpt, **changes)
    with pytest.raises(UserError, match=match):
        load(ckpt)


@pytest.mark.parametrize(
    ("key", "value"),
    [("gripper", [-1.0, 1.0, -1.0]), ("observation", ["joint_pos", "eef_pos"])],
)
def test_a_list_where_the_spec_expects_a_mapping_is_refused(ckpt, key, value):
    import yaml

    f = ckpt / "embodiment.yaml"
    f.write_text(yaml.safe_dump({**yaml.safe_load(f.read_text()), key: value}))
    with pytest.raises(UserError, match=rf"embodiment.yaml: {key} must be a mapping"):
        load(ckpt)


# ---- normaliser and weights against the model the config builds -----------------------------


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("short", "tensor 'joint_pos.scale' is F32\\[3\\], expected F32\\[7\\]"),  # the issue's
        ("missing", "tensor 'action.offset' is missing"),
        ("extra", "unexpected tensor 'object_state.offset'"),
        ("nan", "entry 'eef_pos' holds NaN/inf"),
        ("zero", "action.scale has zeros"),
        ("float64", "tensor 'action.scale' is F64\\[8\\], expected F32\\[8\\]"),
    ],
)
def test_normalizer_that_does_not_fit_is_refused_at_load(ckpt, damage, match):
    f = ckpt / "normalizer.safetensors"
    sd = load_file(str(f))
    if damage == "short":
        sd["joint_pos.scale"] = sd["joint_pos.scale"][:3].clone()
    elif damage == "missing":
        del sd["action.offset"]
    elif damage == "extra":
        sd["object_state.offset"] = torch.zeros(10)
    elif damage == "nan":
        sd["eef_pos.offset"][0] = float("nan")
    elif damage == "zero":
        sd["action.scale"][2] = 0.0
    else:
        sd["action.scale"] = sd["action.scale"].double()
    save_file(sd, str(f))
    with pytest.raises(UserError, match=rf"normalizer.safetensors: .*{match}"):
        load(ckpt)


def test_weights_of_another_config_are_refused_naming_the_tensor(tmp_path):
    small = save_policy(build("act").eval(), tmp_path / "small")
    wide = save_policy(build("act", dim_model=64, n_heads=2).eval(), tmp_path / "wide")
    shutil.copy(wide / "model.safetensors", small / "model.safetensors")
    with pytest.raises(UserError, match=r"model.safetensors: tensor '[\w.]+' is F32\[.*expected"):
        load(small)
    # variant: one tensor renamed, the rest intact
    sd = load_file(str(tmp_path / "wide" / "model.safetensors"))
    sd["head.weights"] = sd.pop("head.weight")
    save_file(sd, str(wide / "model.safetensors"))
    with pytest.raises(UserError, match="tensor 'head.weight' is missing"):
        load(wide)


# ---- links out of the checkpoint ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["embodiment.yaml", "model.safetensors", "config.json"])
def test_links_out_of_the_checkpoint_are_refused(ckpt, tmp_path, name):
    outside = tmp_path / f"outside-{name}"
    shutil.move(ckpt / name, outside)
    (ckpt / name).symlink_to(outside)
    with pytest.raises(UserError, match=rf"{name}: links outside the checkpoint"):
        load(ckpt)
    assert outside.exists()  # nothing of the user's is touched


def test_link_to_a_device_is_refused_and_links_inside_are_fine(ckpt, tmp_path):
    shutil.move(ckpt / "embodiment.yaml", ckpt / "spec-copy.yaml")
    (ckpt / "embodiment.yaml").symlink_to("spec-copy.yaml")  # inside: allowed
    assert load(ckpt).action_dim == 8
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors").symlink_to(os.devnull)
    with pytest.raises(UserError, match="model.safetensors: links outside the checkpoint"):
        load(ckpt)


def test_eval_cli_refuses_a_hostile_checkpoint(ckpt, capsys):
    from sim.evaluate import main as eval_main

    edit_config(ckpt, n_encoder_layers=10**9)
    argv = ["--checkpoint", str(ckpt), "--task", "lift", "--episodes", "1", "--no-progress"]
    with pytest.raises(SystemExit) as e:
        eval_main(argv)
    assert e.value.code == 2
    assert "n_encoder_layers" in one_error_line(capsys.readouterr().err)


# ---- training: resume state, non-finite data, messages -----------------------------------------


def make_store(path: Path, spec, poison=None, failed=()) -> Path:
    """A state-only store of 3 episodes; ``poison`` = (key, episode, step, value)."""
    store = DemoStore.create(path, spec.with_cameras([], None))
    for e in range(3):
        ep = make_episode(12, seed=e, image_hw=None)
        if poison and poison[1] == e:
            key, _, step, value = poison
            ep[key][step, 2] = value
        store.append_episode(ep, task="lift", source="scripted", success=e not in failed, seed=e)
    return path


def train(store: Path, out: Path, *extra: str) -> int:
    argv = ["--policy", "act", "--data", str(store), "--out", str(out), "--steps", "4"]
    argv += ["--batch-size", "4", "--device", "cpu", "--no-progress"]
    for s in [*TINY_ACT, "train.save_every=2", "train.warmup_steps=1", *extra]:
        argv += ["--set", s]
    return train_main(argv)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from data.embodiment import load_embodiment

    root = tmp_path_factory.mktemp("run")
    store = make_store(root / "s.zarr", load_embodiment("sim_panda"))
    assert train(store, root / "run", "train.ema=true") == 0
    return root / "run"


class Planted:
    """Would create ``marker`` when unpickled; torch's weights_only loader must never run it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def resume(run: Path, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        train_main(["--out", str(run), "--resume", "--no-progress", "--device", "cpu"])
    assert e.value.code == 2
    return one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("pickle", "optimizer.pt: not a file of plain tensors"),  # the example
        ("garbage", "optimizer.pt: not a file of plain tensors"),
        ("truncated", "optimizer.pt: cannot resume, the training state is damaged"),
        ("optimizer_shapes", "optimizer.pt: optimiser state 'exp_avg' has shape"),
        ("state_types", "state.json: 'step', 'scheduler', 'history' or 'best_success' is"),
        ("weights", "train_state/model.safetensors: tensor"),
        ("ema", "ema.safetensors: tensor 'head.bias' is missing"),
        ("normalizer", "last/normalizer.safetensors: tensor 'joint_pos.scale' is F32"),
        ("link", "optimizer.pt: links outside the checkpoint"),
    ],
)
def test_damaged_resume_state_is_refused_naming_the_file(
    trained_run, tmp_path, capsys, damage, match
):
    run = shutil.copytree(trained_run, tmp_path / "run", symlinks=True)
    state = run / "last" / "train_state"
    marker = tmp_path / "payload-ran"
    if damage == "pickle":
        with open(state / "optimizer.pt", "wb") as f:
            pickle.dump({"state": Planted(str(marker)), "param_groups": []}, f, protocol=2)
    elif damage == "garbage":
        (state / "optimizer.pt").write_bytes(b"\x00not a torch file")
    elif damage == "truncated":
        (state / "optimizer.pt").write_bytes((state / "optimizer.pt").read_bytes()[:300])
    elif damage == "optimizer_shapes":
        sd = torch.load(state / "optimizer.pt", weights_only=True)
        sd["state"][0]["exp_avg"] = torch.zeros(3, 3)
        torch.save(sd, state / "optimizer.pt")
    elif damage == "state_types":
        edit_json(state / "state.json", step="6")
    elif damage in ("weights", "ema"):
        f = state / ("model.safetensors" if damage == "weights" else "ema.safetensors")
        sd = load_file(str(f))
        sd["head.weight"] = torch.zeros(2, 2)
        if damage == "ema":
            del sd["head.bias"]
        save_file(sd, str(f))
    elif damage == "normalizer":
        f = run / "last" / "normalizer.safetensors"
        sd = load_file(str(f))
        sd["joint_pos.scale"] = torch.ones(5)
        save_file(sd, str(f))
    else:
        shutil.move(state / "optimizer.pt", tmp_path / "optimizer.pt")
        (state / "optimizer.pt").symlink_to(tmp_path / "optimizer.pt")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and not p.is_symlink()}
    assert match in resume(run, capsys)
    assert not marker.exists()  # the payload never ran
    after = {p: p.read_bytes() for p in before}
    assert after == before  # a refused resume changes nothing


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [("joint_vel", float("nan"), "nan"), ("action", float("inf"), "inf")],
)
def test_non_finite_training_data_is_refused_before_the_first_step(
    spec, tmp_path, capsys, key, value, shown
):
    store = make_store(tmp_path / "s.zarr", spec, poison=(key, 1, 7, value))
    with pytest.raises(SystemExit) as e:
        train(store, tmp_path / "run")
    assert e.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"data/{key} holds {shown} at episode 1, step 7 (dimension 2)" in line
    assert "handoff-data delete" in line
    assert not (tmp_path / "run" / "last").exists()  # refused before training started


def test_non_finite_data_outside_the_training_episodes_is_not_an_error(spec, tmp_path):
    """A failed episode is not trained on (successful_only), so its NaN does not matter."""
    poison = ("joint_vel", 2, 0, float("nan"))
    store = make_store(tmp_path / "s.zarr", spec, poison=poison, failed=(2,))
    assert train(store, tmp_path / "run") == 0


def test_divergence_before_the_first_checkpoint_names_no_checkpoint(
    spec, tmp_path, capsys, monkeypatch
):
    from policies.act.model import ACTPolicy

    forward = ACTPolicy.forward

    def poisoned(self, batch):
        loss, info = forward(self, batch)
        return loss * float("nan"), info

    monkeypatch.setattr(ACTPolicy, "forward", poisoned)
    store = make_store(tmp_path / "s.zarr", spec)
    assert train(store, tmp_path / "run") == 1
    err = capsys.readouterr().err
    assert "loss became nan at step 0, before the first checkpoint" in err
    assert "nothing was saved" in err and "last" not in err
    assert not (tmp_path / "run" / "last").exists()


@pytest.mark.parametrize("sizes", [{"n_encoder_layers": 10**9}, {"horizon": 10**9}])
def test_resume_refuses_huge_sizes_in_the_run_config(trained_run, tmp_path, capsys, sizes):
    run = shutil.copytree(trained_run, tmp_path / "run")
    doc = json.loads((run / "config.json").read_text())
    doc["policy_config"].update(sizes)
    (run / "config.json").write_text(json.dumps(doc))
    assert next(iter(sizes)) in resume(run, capsys)


def test_intact_run_still_resumes(trained_run, tmp_path, capsys):
    run = shutil.copytree(trained_run, tmp_path / "run")
    argv = ["--out", str(run), "--resume", "--no-progress", "--device", "cpu", "--steps", "6"]
    assert train_main(argv) == 0
    assert np.isfinite(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["final_loss"])
