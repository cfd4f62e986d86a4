"""LeRobotDataset <-> handoff: v3.0 written and read back, v2.1 built with pyarrow + PyAV."""

from __future__ import annotations

import json
from fractions import Fraction

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.convert import convert
from data.dataset import SequenceDataset
from data.errors import UserError
from data.store import DemoStore
from tests.data.test_convert_common import assert_lowdim_equal, frames, make_store, psnr

MIN_PSNR_DB = 35.0  # H.264 at crf 18 (data/convert/lerobot.py) on camera-like frames


def test_handoff_to_lerobot_v3_and_back(tmp_path):
    src = make_store(tmp_path / "a.zarr")
    report = convert(tmp_path / "a.zarr", tmp_path / "lr", "handoff", "lerobot", progress=False)
    assert report["episodes"] == 3 and report["frames"] == 36
    assert any("H.264" in n for n in report["notes"])
    info = json.loads((tmp_path / "lr/meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 20.0
    assert info["total_episodes"] == 3 and info["total_frames"] == 36
    feats = info["features"]
    assert feats["observation.state"]["shape"] == [23]  # joint_pos+vel, gripper, eef pos+quat
    assert feats["observation.environment_state"]["names"][0] == "object_state.0"
    assert feats["observation.images.wrist"]["info"]["video.codec"] == "h264"
    episodes = pq.read_table(tmp_path / "lr/meta/episodes/chunk-000/file-000.parquet")
    assert episodes["length"].to_pylist() == [12, 15, 9]
    assert episodes["videos/observation.images.agentview/from_timestamp"].to_pylist() == [
        0.0,
        0.6,
        1.35,
    ]
    tasks = pq.read_table(tmp_path / "lr/meta/tasks.parquet")
    assert tasks.to_pylist() == [{"task_index": 0, "task": "lift"}]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    stats = json.loads((tmp_path / "lr/meta/stats.json").read_text())
    assert np.array(stats["observation.images.wrist"]["mean"]).shape == (3, 1, 1)
    assert stats["action"]["count"] == [36]
    with av.open(str(tmp_path / "lr/videos/observation.images.wrist/chunk-000/file-000.mp4")) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.video[0].frames == 36

    convert(tmp_path / "lr", tmp_path / "b.zarr", "lerobot", "handoff", progress=False)
    out = DemoStore.open(tmp_path / "b.zarr")
    assert out.keys == src.keys and out.embodiment == src.embodiment
    assert out.attrs == src.attrs
    assert_lowdim_equal(src, out, src.lowdim_keys)  # bit-exact, timestamps included
    assert [out.episode_meta(i) for i in range(3)] == [src.episode_meta(i) for i in range(3)]
    for i in range(3):
        for cam in ("agentview", "wrist"):
            assert psnr(src.episode(i)[cam], out.episode(i)[cam]) > MIN_PSNR_DB


def test_png_images_round_trip_exactly(tmp_path):
    src = make_store(tmp_path / "a.zarr", lengths=(5, 4))
    report = convert(
        tmp_path / "a.zarr", tmp_path / "lr", "handoff", "lerobot", progress=False, images="png"
    )
    assert any("PNG" in n for n in report["notes"])
    info = json.loads((tmp_path / "lr/meta/info.json").read_text())
    assert info["features"]["observation.images.wrist"]["dtype"] == "image"
    assert not (tmp_path / "lr/videos").exists()
    convert(tmp_path / "lr", tmp_path / "b.zarr", "lerobot", "handoff", progress=False)
    out = DemoStore.open(tmp_path / "b.zarr")
    assert_lowdim_equal(src, out, src.keys)  # cameras included: PNG is lossless


def test_files_rotate_and_read_back(tmp_path, monkeypatch):
    """Past the size limits every episode starts new data/video files (file-000, file-001…)."""
    import data.convert.lerobot_write as lw

    monkeypatch.setattr(lw, "DATA_FILE_MB", 0)
    monkeypatch.setattr(lw, "VIDEO_FILE_MB", 0)
    src = make_store(tmp_path / "a.zarr")
    convert(tmp_path / "a.zarr", tmp_path / "lr", "handoff", "lerobot", progress=False)
    assert len(list((tmp_path / "lr/data/chunk-000").glob("file-*.parquet"))) == 3
    videos = tmp_path / "lr/videos/observation.images.agentview/chunk-000"
    assert sorted(p.name for p in videos.iterdir()) == [
        "file-000.mp4",
        "file-001.mp4",
        "file-002.mp4",
    ]
    rows = pq.read_table(tmp_path / "lr/meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [r["data/file_index"] for r in rows] == [0, 1, 2]
    assert [r["videos/observation.images.wrist/from_timestamp"] for r in rows] == [0.0] * 3
    convert(tmp_path / "lr", tmp_path / "b.zarr", "lerobot", "handoff", progress=False)
    out = DemoStore.open(tmp_path / "b.zarr")
    assert_lowdim_equal(src, out, src.lowdim_keys)
    assert psnr(src.episode(2)["wrist"], out.episode(2)["wrist"]) > MIN_PSNR_DB


def write_mp4(path, imgs, fps, crf=None) -> None:
    """An H.264 MP4 of ``imgs`` (T, H, W, 3) uint8 at ``fps``, frame i at pts i."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(fps))
        s.height, s.width = imgs.shape[1:3]
        s.pix_fmt = "yuv420p"
        if crf is not None:
            s.options = {"crf": str(crf)}
        for i, img in enumerate(imgs):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def write_v21(root, lengths=(8, 11), fps=10):
    """A LeRobot v2.1 dataset the way lerobot 0.2/0.3 laid it out (per-episode files)."""
    rng = np.random.default_rng(1)
    info = {
        "codebase_version": "v2.1",
        "robot_type": "so100",
        "fps": fps,
        "chunks_size": 1000,
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": (
            "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
        ),
        "features": {
            "observation.state": {
                "dtype": "float32",
                "shape": [6],
                "names": ["shoulder_pan", "shoulder_lift", "elbow", "wrist_flex", "roll", "grip"],
            },
            "action": {"dtype": "float32", "shape": [6], "names": None},
            "observation.images.top": {"dtype": "video", "shape": [32, 48, 3], "names": None},
            "next.reward": {"dtype": "float32", "shape": [1], "names": None},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "index": {"dtype": "int64", "shape": [1], "names": None},
            "task_index": {"dtype": "int64", "shape": [1], "names": None},
        },
    }
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info))
    (root / "meta/tasks.jsonl").write_text('{"task_index": 0, "task": "pick the cube"}\n')
    lines, truth, index = [], [], 0
    for ep, T in enumerate(lengths):
        state = rng.normal(size=(T, 6)).astype(np.float32)
        action = rng.normal(size=(T, 6)).astype(np.float32)
        table = pa.table(
            {
                "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(state.ravel()), 6),
                "action": pa.FixedSizeListArray.from_arrays(pa.array(action.ravel()), 6),
                "next.reward": pa.array(np.linspace(0, 1, T, dtype=np.float32)),
                "timestamp": pa.array(np.arange(T, dtype=np.float32) / fps),
                "frame_index": pa.array(np.arange(T)),
                "episode_index": pa.array(np.full(T, ep)),
                "index": pa.array(index + np.arange(T)),
                "task_index": pa.array(np.zeros(T, np.int64)),
            }
        )
        path = root / f"data/chunk-000/episode_{ep:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        imgs = frames(rng, T)
        video = root / f"videos/chunk-000/observation.images.top/episode_{ep:06d}.mp4"
        video.parent.mkdir(parents=True, exist_ok=True)
        write_mp4(video, imgs, fps, crf=10)
        lines.append(json.dumps({"episode_index": ep, "tasks": ["pick the cube"], "length": T}))
        truth.append((state, action, imgs))
        index += T
    (root / "meta/episodes.jsonl").write_text("\n".join(lines) + "\n")
    return truth


def test_read_lerobot_v21(tmp_path):
    truth = write_v21(tmp_path / "v21")
    report = convert(
        tmp_path / "v21",
        tmp_path / "s.zarr",
        "lerobot",
        "handoff",
        progress=False,
        embodiment=None,
    )
    assert report["episodes"] == 2 and report["frames"] == 19
    store = DemoStore.open(tmp_path / "s.zarr")
    assert set(store.keys) == {"state", "action", "reward", "top", "timestamp"}
    for i, (state, action, imgs) in enumerate(truth):
        ep = store.episode(i)
        np.testing.assert_array_equal(ep["state"], state)
        np.testing.assert_array_equal(ep["action"], action)
        np.testing.assert_allclose(ep["timestamp"], np.arange(len(state)) / 10, atol=1e-6)
        assert ep["reward"].shape == (len(state),)
        assert psnr(imgs, ep["top"]) > MIN_PSNR_DB
        meta = store.episode_meta(i)
        assert meta["task"] == "pick the cube" and meta["source"] == "converted"
    ds = SequenceDataset(store, ["state", "top"], n_obs_steps=2, horizon=4)
    item = ds[len(ds) - 1]
    assert item["obs"]["top"].shape == (2, 32, 48, 3) and item["action"].shape == (4, 6)
    assert bool(item["action_is_pad"][-1])  # last window runs past the episode end

    # and back out as v3: low-dim bit-exact, frames re-encoded within the stated PSNR
    convert(tmp_path / "s.zarr", tmp_path / "v3", "handoff", "lerobot", progress=False, fps=10)
    convert(tmp_path / "v3", tmp_path / "t.zarr", "lerobot", "handoff", progress=False)
    again = DemoStore.open(tmp_path / "t.zarr")
    assert_lowdim_equal(store, again, ["state", "action", "reward", "timestamp"])
    for i, (_, _, imgs) in enumerate(truth):
        assert psnr(imgs, again.episode(i)["top"]) > MIN_PSNR_DB
    assert again.episode_meta(1) == store.episode_meta(1)


def test_not_lerobot_gets_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"not a LeRobot dataset \(no meta/info.json\)"):
        convert(tmp_path / "empty", tmp_path / "o.zarr", "lerobot", "handoff")
    (tmp_path / "v9/meta").mkdir(parents=True)
    (tmp_path / "v9/meta/info.json").write_text(
        '{"codebase_version": "v9", "features": {}, "fps": 1}'
    )
    with pytest.raises(UserError, match="v9 is not supported"):
        convert(tmp_path / "v9", tmp_path / "o.zarr", "lerobot", "handoff")


def test_store_without_spec_maps_extras_to_their_own_columns(tmp_path):
    store = DemoStore.create(tmp_path / "a.zarr")
    rng = np.random.default_rng(0)
    ep = {
        "joint_pos": rng.normal(size=(5, 3)).astype(np.float32),
        "reward": rng.random(5).astype(np.float32),
        "intervention": rng.random(5) > 0.5,
        "action": rng.normal(size=(5, 4)).astype(np.float32),
    }
    store.append_episode(ep, source="teleop")
    convert(tmp_path / "a.zarr", tmp_path / "lr", "handoff", "lerobot", progress=False, fps=10)
    feats = json.loads((tmp_path / "lr/meta/info.json").read_text())["features"]
    assert feats["observation.state"]["names"] == ["joint_pos.0", "joint_pos.1", "joint_pos.2"]
    assert feats["next.reward"]["dtype"] == "float32"
    assert feats["observation.intervention"]["dtype"] == "bool"
    convert(tmp_path / "lr", tmp_path / "b.zarr", "lerobot", "handoff", progress=False)
    assert_lowdim_equal(store, DemoStore.open(tmp_path / "b.zarr"), store.keys)


def test_writing_lerobot_needs_a_frame_rate(tmp_path):
    store = DemoStore.create(tmp_path / "a.zarr")
    store.append_episode({"action": np.zeros((3, 2), np.float32)})
    with pytest.raises(UserError, match="--fps"):
        convert(tmp_path / "a.zarr", tmp_path / "lr", "handoff", "lerobot", progress=False)
    convert(tmp_path / "a.zarr", tmp_path / "lr", "handoff", "lerobot", progress=False, fps=5)
    assert json.loads((tmp_path / "lr/meta/info.json").read_text())["fps"] == 5.0
    assert not (tmp_path / ".lr.partial").exists()
