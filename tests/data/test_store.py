"""The demonstration store: writing, reading, metadata, recovery, deletion, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from data.embodiment import Embodiment, load_embodiment
from data.errors import UserError
from data.store import DemoStore
from tests.conftest import make_episode


def test_append_and_read_back_bit_exact(tmp_path, spec):
    store = DemoStore.create(tmp_path / "s.zarr", spec)
    episodes = [make_episode(5 + e, seed=e) for e in range(3)]
    for e, ep in enumerate(episodes):
        assert store.append_episode(ep, task="lift", source="teleop", success=True) == e
    again = DemoStore.open(tmp_path / "s.zarr")
    assert again.n_episodes == 3 and again.n_steps == 5 + 6 + 7
    assert again.zarr_format == 3
    assert list(again.episode_ends) == [5, 11, 18]
    for e, ep in enumerate(episodes):
        got = again.episode(e)
        for k, v in ep.items():
            np.testing.assert_array_equal(got[k], v)
        # timestamps are written for every step, at the control rate
        np.testing.assert_allclose(got["timestamp"], np.arange(5 + e) / spec.control_hz)
    assert again.image_keys == ["agentview"]
    assert again.embodiment == spec
    assert again.episode_meta(1)["source"] == "teleop"


def test_new_store_layout_is_format3_with_frame_chunks(small_store):
    root = zarr.open_group(small_store.path, mode="r")
    assert root.metadata.zarr_format == 3
    assert root.attrs["handoff_schema"] == 1
    assert root["data/agentview"].chunks == (1, 16, 16, 3)
    assert root["meta/episode_ends"].dtype == np.int64
    assert root["data/joint_pos"].dtype == np.float32
    assert root["data/timestamp"].dtype == np.float64


def test_float64_is_stored_as_float32(tmp_path, spec):
    store = DemoStore.create(tmp_path / "s.zarr", spec)
    ep = make_episode(4, image_hw=None)
    ep["joint_pos"] = ep["joint_pos"].astype(np.float64)
    store.append_episode(ep)
    assert store.data["joint_pos"].dtype == np.float32


def test_metadata_filters(small_store):
    assert small_store.episodes_where(success=True) == [0, 2, 3]
    assert small_store.episodes_where(task="lift", success=False) == [1]
    assert small_store.episode_meta(2)["seed"] == 2
    assert "start_time" in small_store.episode_meta(0)


def test_streaming_writer_discard_and_commit(tmp_path, spec):
    store = DemoStore.create(tmp_path / "s.zarr", spec)
    ep = make_episode(20, seed=1)
    w = store.episode_writer(flush_steps=4)
    for t in range(20):
        w.add_step({k: v[t] for k, v in ep.items()})
    w.discard()  # flushed steps are rolled back
    assert store.n_steps == 0 and all(a.shape[0] == 0 for a in store.data.values())
    w = store.episode_writer(flush_steps=4)
    for t in range(20):
        w.add_step({k: v[t] for k, v in ep.items()})
    assert w.commit(success=False) == 0
    np.testing.assert_array_equal(
        DemoStore.open(store.path).episode(0)["agentview"], ep["agentview"]
    )


def test_open_recovers_from_unfinished_tail(tmp_path, spec, caplog):
    store = DemoStore.create(tmp_path / "s.zarr", spec)
    store.append_episode(make_episode(6, seed=0))
    w = store.episode_writer(flush_steps=2)
    w.add_steps(make_episode(5, seed=9))  # flushed, never committed: a crash
    assert store.data["joint_pos"].shape[0] == 11
    ro = DemoStore.open(store.path, "r")  # read-only: ignored, left on disk
    assert ro.n_steps == 6 and "ignoring" in caplog.text
    rw = DemoStore.open(store.path, "a")  # append: truncated
    assert all(a.shape[0] == 6 for a in rw.data.values())
    np.testing.assert_array_equal(rw.episode(0)["joint_pos"], make_episode(6)["joint_pos"])


def test_half_written_episode_ends_entry_is_dropped(tmp_path, spec):
    store = DemoStore.create(tmp_path / "s.zarr", spec)
    store.append_episode(make_episode(6, seed=0))
    store.append_episode(make_episode(4, seed=1))
    # a kill between the resize of episode_ends and the write of its value
    ends = zarr.open_group(store.path, mode="r+")["meta/episode_ends"]
    ends.resize((3,))
    again = DemoStore.open(store.path, "a")
    assert again.n_episodes == 2 and list(again.episode_ends) == [6, 10]


def test_delete_episodes(small_store):
    kept = [small_store.episode(i)["joint_pos"] for i in (0, 2)]
    small_store.delete_episodes([1, 3])
    assert small_store.n_episodes == 2
    reopened = DemoStore.open(small_store.path)
    for i, expected in enumerate(kept):
        np.testing.assert_array_equal(reopened.episode(i)["joint_pos"], expected)
    assert [reopened.episode_meta(i)["seed"] for i in range(2)] == [0, 2]


@pytest.mark.parametrize(
    "episode, message",
    [
        ({"joint_pos": np.zeros((3, 7)), "action": np.zeros((4, 8))}, "unequal lengths"),
        ({"joint_pos": np.zeros((3, 7))}, "differ from the store"),
        (
            {
                "joint_pos": np.zeros((3, 6)),
                "joint_vel": np.zeros((3, 7)),
                "action": np.zeros((3, 8)),
            },
            "holds float32",
        ),
    ],
)
def test_bad_episodes_are_refused_and_store_untouched(tmp_path, spec, episode, message):
    store = DemoStore.create(tmp_path / "s.zarr", spec)
    store.append_episode(make_episode(4, image_hw=None))
    with pytest.raises(UserError, match=message):
        store.append_episode(episode)
    again = DemoStore.open(store.path, "a")
    assert again.n_episodes == 1 and again.n_steps == 4


def test_bad_paths_and_overwrite(tmp_path, spec):
    with pytest.raises(UserError, match="no such store"):
        DemoStore.open(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="not a zarr store|not a demonstration store"):
        DemoStore.open(tmp_path / "plain")
    DemoStore.create(tmp_path / "s.zarr", spec)
    with pytest.raises(UserError, match="--force"):
        DemoStore.create(tmp_path / "s.zarr", spec)
    DemoStore.create(tmp_path / "s.zarr", spec, force=True)


def test_unknown_schema_version_is_refused(small_store):
    zarr.open_group(small_store.path, mode="r+").attrs["handoff_schema"] = 99
    with pytest.raises(UserError, match="schema version 99"):
        DemoStore.open(small_store.path)


def test_readonly_store_refuses_writes(small_store):
    ro = DemoStore.open(small_store.path, "r")
    with pytest.raises(UserError, match="read-only"):
        ro.append_episode(make_episode(3))


def test_fsspec_memory_url(spec):
    url = "memory://handoff-test/s.zarr"
    store = DemoStore.create(url, spec)
    store.append_episode(make_episode(5, seed=3), success=True)
    again = DemoStore.open(url)
    assert again.n_episodes == 1
    np.testing.assert_array_equal(
        again.episode(0)["agentview"], make_episode(5, seed=3)["agentview"]
    )


def test_embodiment_round_trip_and_validation(tmp_path):
    spec = load_embodiment("sim_panda")
    assert spec.n_joints == 7 and spec.action_dim == 8 and spec.control_hz == 20
    assert spec.camera_names == ("agentview", "wrist")
    assert Embodiment.from_dict(spec.to_dict()) == spec
    template = load_embodiment(
        __import__("data.embodiment", fromlist=["SPECS_DIR"]).SPECS_DIR / "real_arm_template.yaml"
    )
    assert template.n_joints == 6
    bad = spec.to_dict() | {"position_lower": [0.0] * 6}
    with pytest.raises(UserError, match="position_lower has 6 values but there are 7 joints"):
        Embodiment.from_dict(bad)
    with pytest.raises(UserError, match="unknown key"):
        Embodiment.from_dict(spec.to_dict() | {"joints": 3})
    with pytest.raises(UserError, match="no embodiment spec named"):
        load_embodiment("nope")
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(UserError, match="not valid YAML"):
        load_embodiment(tmp_path / "bad.yaml")
    other = spec.to_dict() | {"control_hz": 10.0}
    assert "control rate differs" in spec.compatible_with(Embodiment.from_dict(other))[0]


def test_frames_across_partial_shards_read_back_by_zarr_and_frameio(tmp_path, spec, monkeypatch):
    import data.frames as frames_mod
    from data.frames import FrameIO

    monkeypatch.setattr(frames_mod, "SHARD_BYTES", 4 * 16 * 16 * 3)  # 4 frames per shard
    rewrite, merges = FrameIO._rewrite_shard, []

    def logged_rewrite(self, k, new, first_new):
        if first_new % self.S:
            merges.append(first_new)  # the shard's earlier frames are read and written again
        return rewrite(self, k, new, first_new)

    monkeypatch.setattr(FrameIO, "_rewrite_shard", logged_rewrite)
    store = DemoStore.create(tmp_path / "s.zarr", spec)
    eps = [make_episode(T, seed=T) for T in (5, 7, 3)]
    for ep in eps[:2]:
        w = store.episode_writer(flush_steps=3)  # flushes end mid-shard: frames are held back
        for t in range(len(ep["action"])):
            w.add_step({k: v[t] for k, v in ep.items()})
        w.commit()
    # only an episode's first write merges into a shard, the one its predecessor ended in
    assert merges == [5]
    w = store.episode_writer(flush_steps=2)
    w.add_steps(make_episode(6, seed=99))
    w.discard()  # leaves stale frames in a partial shard, which the next write must drop
    store.append_episode(eps[2])
    arr = store.data["agentview"]
    assert arr.shards == (4, 16, 16, 3)
    expected = np.concatenate([ep["agentview"] for ep in eps])
    np.testing.assert_array_equal(zarr.open_array(f"{store.path}/data/agentview")[:], expected)
    io = FrameIO(arr, "agentview")
    assert io.mode == "shard"
    order = np.array([14, 0, 3, 4, 13, 7])
    np.testing.assert_array_equal(io.frames(order), expected[order])


def test_compressed_and_raw_blosc_frames_both_read_back(tmp_path, spec):
    """Noisy frames are stored uncompressed by Blosc (copied out directly), smooth ones are
    LZ4-compressed (decoded); a header that lies about the frame size is reported."""
    from data.frames import FrameIO

    rng = np.random.default_rng(0)
    ep = make_episode(8, seed=1)
    ep["agentview"][::2] = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3) // 8
    store = DemoStore.create(tmp_path / "s.zarr", spec)
    store.append_episode(ep)
    io = FrameIO(store.data["agentview"], "agentview")
    shard = io._shard(0)
    assert shard.raw[:8] == [False, True] * 4  # compressible frames were compressed
    order = rng.permutation(8)
    np.testing.assert_array_equal(io.frames(order), ep["agentview"][order])
    out = np.zeros((8, 16, 16, 3), np.uint8)
    assert io.frames(order, out=out) is out
    np.testing.assert_array_equal(out, ep["agentview"][order])
    with pytest.raises(ValueError, match="C-contiguous"):  # decoding into a copy would be lost
        io.frames(order[:4], out=out[::2])

    path = Path(shard.path)
    payload = bytearray(path.read_bytes())
    payload[shard.offset[1] + 4] ^= 0x10  # frame 1's header: wrong uncompressed size
    path.write_bytes(bytes(payload))
    with pytest.raises(UserError, match=r"c\.0\.0\.0\.0: cannot decode frame 1 of agentview"):
        FrameIO(store.data["agentview"], "agentview").frames([0, 1])
