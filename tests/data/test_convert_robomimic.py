"""robomimic HDF5 <-> handoff, with inputs written by h5py the way robomimic writes them."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from data.convert import convert
from data.dataset import SequenceDataset
from data.errors import UserError
from data.store import DemoStore
from tests.data.test_convert_common import assert_lowdim_equal, make_store

ENV_ARGS = {"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20}}


def write_robomimic(path, lengths=(10, 14, 7), seed=0):
    """A file laid out like robomimic's dataset_states_to_obs.py output (float64 low-dim)."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for i, T in enumerate(lengths):
            d = data.create_group(f"demo_{i}")
            d.attrs["num_samples"] = T
            d.attrs["model_file"] = "<mujoco/>"
            obs = d.create_group("obs")
            obs["robot0_joint_pos"] = rng.normal(size=(T, 7))
            obs["robot0_eef_quat"] = rng.normal(size=(T, 4))
            obs["object"] = rng.normal(size=(T, 10))
            obs["agentview_image"] = rng.integers(0, 255, (T, 16, 16, 3), dtype=np.uint8)
            obs["robot0_eye_in_hand_image"] = rng.integers(0, 255, (T, 16, 16, 3), np.uint8)
            d["actions"] = rng.uniform(-1, 1, (T, 7))
            rewards = np.zeros(T)
            rewards[-1] = float(i != 1)
            d["rewards"] = rewards
            d["dones"] = (np.arange(T) == T - 1).astype(np.int64)
            d["states"] = rng.normal(size=(T, 32))
        data.attrs["total"] = sum(lengths)
        data.attrs["env_args"] = json.dumps(ENV_ARGS)
        f["mask/train"] = np.array([b"demo_0", b"demo_2"])
        f["mask/valid"] = np.array([b"demo_1"])
        f["mask/20_percent"] = np.array([b"demo_0"])


def test_robomimic_to_handoff_and_back(tmp_path):
    src = tmp_path / "demo.hdf5"
    write_robomimic(src)
    report = convert(src, tmp_path / "s.zarr", "robomimic", "handoff", progress=False)
    assert report["episodes"] == 3 and report["frames"] == 31
    assert any("model_file" in x for x in report["not_carried"])
    store = DemoStore.open(tmp_path / "s.zarr")
    assert store.attrs["robomimic_env_args"] == ENV_ARGS
    assert set(store.keys) >= {"joint_pos", "eef_quat", "object_state", "agentview", "wrist"}
    assert {"action", "reward", "done", "sim_state", "timestamp"} <= set(store.keys)
    metas = [store.episode_meta(i) for i in range(3)]
    assert [m["split"] for m in metas] == ["train", "valid", "train"]
    assert metas[0]["filter_keys"] == ["20_percent", "train"]
    assert [m["success"] for m in metas] == [True, False, True]
    assert all(m["source"] == "converted" and m["task"] == "Lift" for m in metas)
    with h5py.File(src) as f:
        ep = store.episode(1)
        np.testing.assert_array_equal(
            ep["joint_pos"], f["data/demo_1/obs/robot0_joint_pos"][()].astype(np.float32)
        )
        np.testing.assert_array_equal(
            ep["wrist"], f["data/demo_1/obs/robot0_eye_in_hand_image"][()]
        )

    # training windows sample straight from the imported store
    ds = SequenceDataset(store, ["joint_pos", "agentview"], n_obs_steps=2, horizon=8)
    item = ds[0]
    assert item["obs"]["agentview"].shape == (2, 16, 16, 3)
    assert item["action"].shape == (8, 7) and item["action_is_pad"].shape == (8,)

    back = tmp_path / "back.hdf5"
    report = (
        convert(tmp_path / "s.zarr", back, "robomimic", "robomimic", progress=False)
        if False
        else convert(tmp_path / "s.zarr", back, "handoff", "robomimic", progress=False)
    )
    assert any("timestamp" in x for x in report["not_carried"])
    with h5py.File(src) as a, h5py.File(back) as b:
        assert json.loads(b["data"].attrs["env_args"]) == ENV_ARGS
        assert b["data"].attrs["total"] == 31
        for key in ("train", "valid", "20_percent"):
            assert sorted(b["mask"][key][:]) == sorted(a["mask"][key][:])
        for i in range(3):
            da, db = a[f"data/demo_{i}"], b[f"data/demo_{i}"]
            assert db.attrs["num_samples"] == da.attrs["num_samples"]
            for name in ("actions", "rewards", "states", "obs/object", "obs/agentview_image"):
                want = da[name][()]
                want = want.astype(np.float32) if want.dtype == np.float64 else want
                np.testing.assert_array_equal(db[name][()], want, err_msg=name)
            np.testing.assert_array_equal(db["dones"][()], da["dones"][()])


def test_handoff_to_robomimic_round_trip_is_bit_exact(tmp_path):
    src = make_store(tmp_path / "a.zarr")
    report = convert(
        tmp_path / "a.zarr", tmp_path / "r.hdf5", "handoff", "robomimic", progress=False
    )
    assert "rewards written as sparse success reward (source has none)" in report["notes"]
    with h5py.File(tmp_path / "r.hdf5") as f:
        assert set(f["data/demo_0/obs"]) >= {
            "robot0_joint_pos",
            "agentview_image",
            "robot0_eye_in_hand_image",
        }
        assert f["data/demo_0/rewards"][-1] == 1.0 and f["data/demo_1/rewards"][-1] == 0.0
    convert(tmp_path / "r.hdf5", tmp_path / "b.zarr", "robomimic", "handoff", progress=False)
    out = DemoStore.open(tmp_path / "b.zarr")
    assert out.keys == src.keys  # synthesized rewards/dones are not imported back
    assert [out.episode_meta(i) for i in range(3)] == [src.episode_meta(i) for i in range(3)]
    assert out.embodiment == src.embodiment
    keys = [k for k in src.keys if k != "timestamp"]
    assert_lowdim_equal(src, out, keys)
    np.testing.assert_allclose(out.episode(0)["timestamp"], src.episode(0)["timestamp"])


def test_not_robomimic_gets_one_line(tmp_path):
    bad = tmp_path / "x.hdf5"
    bad.write_text("hello")
    with pytest.raises(UserError, match="not an HDF5 file"):
        convert(bad, tmp_path / "o.zarr", "robomimic", "handoff")
    with h5py.File(tmp_path / "y.hdf5", "w") as f:
        f["foo"] = 1
    with pytest.raises(UserError, match=r"not a robomimic file \(no data/"):
        convert(tmp_path / "y.hdf5", tmp_path / "o.zarr", "robomimic", "handoff")
    assert not (tmp_path / "o.zarr").exists()
