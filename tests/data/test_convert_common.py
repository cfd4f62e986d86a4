"""Converter plumbing shared by every format: registry, bad input, handoff <-> handoff.

Also holds the small-store builder the per-format tests import.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data.convert import FORMATS, convert
from data.embodiment import load_embodiment
from data.errors import UserError
from data.store import DemoStore

LENGTHS = (12, 15, 9)
CAM = (32, 48)  # (H, W): small, and even so yuv420p video can hold it


def spec():
    return load_embodiment("sim_panda").with_cameras(None, CAM)


def frames(rng: np.random.Generator, T: int) -> np.ndarray:
    """(T, H, W, 3) uint8: a moving gradient with mild noise (video-like, not white noise)."""
    H, W = CAM
    y, x = np.mgrid[0:H, 0:W]
    out = np.empty((T, H, W, 3), np.uint8)
    for t in range(T):
        base = np.stack([x * 4 + t * 3, y * 6 + t, (x + y) * 2 + 40], -1) % 256
        out[t] = np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8)
    return out


def make_episode(rng: np.random.Generator, T: int) -> dict[str, np.ndarray]:
    f32 = np.float32
    return {
        "joint_pos": rng.normal(size=(T, 7)).astype(f32),
        "joint_vel": rng.normal(size=(T, 7)).astype(f32),
        "gripper_pos": rng.uniform(0, 0.04, (T, 2)).astype(f32),
        "eef_pos": rng.normal(size=(T, 3)).astype(f32),
        "eef_quat": rng.normal(size=(T, 4)).astype(f32),
        "object_state": rng.normal(size=(T, 10)).astype(f32),
        "action": rng.normal(size=(T, 8)).astype(f32),
        "agentview": frames(rng, T),
        "wrist": frames(rng, T)[:, ::-1].copy(),
        "timestamp": np.arange(T) / 20.0,
    }


def make_store(path: Path, lengths=LENGTHS, seed: int = 0) -> DemoStore:
    rng = np.random.default_rng(seed)
    store = DemoStore.create(path, spec())
    for i, T in enumerate(lengths):
        store.append_episode(
            make_episode(rng, T),
            task="lift",
            source="scripted",
            success=bool(i % 2 == 0),
            seed=i,
            operator="test",
            start_time=1_700_000_000.0 + 100 * i,
        )
    return store


def assert_lowdim_equal(a: DemoStore, b: DemoStore, keys: list[str]) -> None:
    assert a.n_episodes == b.n_episodes
    for i in range(a.n_episodes):
        ea, eb = a.episode(i, keys), b.episode(i, keys)
        for k in keys:
            assert ea[k].dtype == eb[k].dtype, k
            np.testing.assert_array_equal(ea[k], eb[k], err_msg=f"episode {i} key {k}")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_registry_has_every_format():
    assert FORMATS.names() == ["handoff", "lerobot", "robomimic", "rosbag2"]
    for name in FORMATS:
        assert FORMATS.get(name).open_reader is not None


def test_unknown_format_lists_valid_ones(tmp_path):
    with pytest.raises(UserError, match=r"unknown format 'zarr'.*handoff, lerobot, robomimic"):
        convert(tmp_path, tmp_path / "out", "zarr", "handoff")


def test_unknown_option_and_missing_source(tmp_path):
    make_store(tmp_path / "a.zarr", lengths=(3,))
    with pytest.raises(UserError, match=r"option\(s\) \['bogus'\]"):
        convert(tmp_path / "a.zarr", tmp_path / "b.zarr", "handoff", "handoff", bogus=1)
    with pytest.raises(UserError, match="no such file"):
        convert(tmp_path / "nope", tmp_path / "b.zarr", "handoff", "handoff")


def test_urls_only_for_handoff_stores(tmp_path):
    make_store(tmp_path / "a.zarr", lengths=(3,))
    with pytest.raises(UserError, match="a lerobot destination must be a local path"):
        convert(tmp_path / "a.zarr", "s3://bucket/lr", "handoff", "lerobot")
    report = convert(
        f"file://{tmp_path}/a.zarr",
        f"file://{tmp_path}/b.zarr",
        "handoff",
        "handoff",
        progress=False,
    )
    assert report["frames"] == 3 and DemoStore.open(tmp_path / "b.zarr").n_steps == 3


def test_no_overwrite_without_force(tmp_path):
    make_store(tmp_path / "a.zarr", lengths=(3,))
    (tmp_path / "b.zarr").mkdir()
    with pytest.raises(UserError, match="already exists; pass --force"):
        convert(tmp_path / "a.zarr", tmp_path / "b.zarr", "handoff", "handoff", progress=False)
    report = convert(
        tmp_path / "a.zarr", tmp_path / "b.zarr", "handoff", "handoff", force=True, progress=False
    )
    assert report["episodes"] == 1 and report["frames"] == 3


def test_handoff_copy_keeps_everything(tmp_path):
    src = make_store(tmp_path / "a.zarr")
    report = convert(tmp_path / "a.zarr", tmp_path / "b.zarr", "handoff", "handoff", progress=False)
    assert report["not_carried"] == []
    out = DemoStore.open(tmp_path / "b.zarr")
    assert_lowdim_equal(src, out, src.keys)
    assert [out.episode_meta(i) for i in range(3)] == [src.episode_meta(i) for i in range(3)]
    assert out.embodiment == src.embodiment


def test_interrupted_conversion_keeps_finished_episodes_a_refused_one_leaves_nothing(
    tmp_path, monkeypatch
):
    """A source that breaks at episode 2: a refusal (bad input) leaves no output at all; an
    interruption (Ctrl-C) leaves a handoff output with episodes 0-1 intact; a LeRobot output
    is never left half-written."""
    import h5py

    from data.convert import handoff

    src = make_store(tmp_path / "a.zarr")
    convert(tmp_path / "a.zarr", tmp_path / "r.hdf5", "handoff", "robomimic", progress=False)
    with h5py.File(tmp_path / "r.hdf5", "a") as f:
        del f["data/demo_2/actions"]
    with pytest.raises(UserError, match="demo_2 has no actions"):
        convert(tmp_path / "r.hdf5", tmp_path / "b.zarr", "robomimic", "handoff", progress=False)
    assert not (tmp_path / "b.zarr").exists()

    write = handoff.HandoffWriter.write

    def interrupted(self, episode):
        if self.store.n_episodes == 2:
            raise KeyboardInterrupt
        write(self, episode)

    monkeypatch.setattr(handoff.HandoffWriter, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(tmp_path / "a.zarr", tmp_path / "c.zarr", "handoff", "handoff", progress=False)
    out = DemoStore.open(tmp_path / "c.zarr")
    assert out.n_episodes == 2
    np.testing.assert_array_equal(out.episode(0)["agentview"], src.episode(0)["agentview"])
    np.testing.assert_array_equal(out.episode(1)["action"], src.episode(1)["action"])
    with pytest.raises(UserError):
        convert(tmp_path / "r.hdf5", tmp_path / "lr", "robomimic", "lerobot", progress=False)
    assert not (tmp_path / "lr").exists() and not (tmp_path / ".lr.partial").exists()


def test_cli_convert(tmp_path, capsys):
    import json

    from data.cli import main

    make_store(tmp_path / "a.zarr", lengths=(4, 5))
    a, b = str(tmp_path / "a.zarr"), str(tmp_path / "b.hdf5")
    assert main(["convert", "--from", "handoff", "--to", "robomimic", a, b, "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["episodes"] == 2 and report["frames"] == 9
    with pytest.raises(SystemExit) as e:
        main(["convert", "--from", "handoff", "--to", "robomimic", a, b, "--quiet"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {b} already exists; pass --force to overwrite it"]
    with pytest.raises(SystemExit) as e:
        main(["convert", "--from", "handoff", "--to", "parquet", a, b + "x"])
    assert e.value.code == 2
    assert "handoff, lerobot, robomimic, rosbag2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert", "--from", "handoff", "--to", "lerobot", a, b + "y", "-o", "gop"])
    assert "KEY=VALUE" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("fmt", "dst"), [("lerobot", "lr"), ("robomimic", "r.hdf5"), ("rosbag2", "bag")]
)
def test_extra_keys_keep_dtype_and_shape(tmp_path, fmt, dst):
    """Recorder and robomimic extras (intervention, reward, sim_state) survive every format."""
    no_cams = spec().with_cameras([], None)
    store = DemoStore.create(tmp_path / "a.zarr", no_cams)
    rng = np.random.default_rng(3)
    for T in (6, 4):
        ep = {k: v for k, v in make_episode(rng, T).items() if k not in ("agentview", "wrist")}
        ep |= {
            "intervention": rng.random(T) > 0.5,
            "reward": rng.random(T).astype(np.float32),
            "sim_state": rng.normal(size=(T, 5)).astype(np.float32),
        }
        store.append_episode(ep, task="lift", source="teleop", has_gaps=False)
    convert(tmp_path / "a.zarr", tmp_path / dst, "handoff", fmt, progress=False)
    convert(tmp_path / dst, tmp_path / "b.zarr", fmt, "handoff", progress=False)
    out = DemoStore.open(tmp_path / "b.zarr")
    assert out.keys == store.keys
    assert_lowdim_equal(store, out, store.keys)
    assert out.episode_meta(1) == store.episode_meta(1)
