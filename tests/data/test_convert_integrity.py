"""Converters land every input exactly or refuse it by name (issue 12 items 4-8 and 11).

Video frames matched by time, non-finite values, a source's rate carried on, joint states
split over several messages, very short first episodes, and hostile inputs of every format.
"""

from __future__ import annotations

import dataclasses
import json

import av
import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer

from data.align import JointStateMerge, latest_index
from data.convert import convert
from data.errors import UserError
from data.store import DemoStore
from tests.data.test_convert_common import make_store, spec
from tests.data.test_convert_lerobot import write_mp4, write_v21
from tests.data.test_convert_robomimic import ENV_ARGS, write_robomimic
from tests.data.test_convert_rosbag import FINGERS, NS, T_, TS, floats, header

MSG = "sensor_msgs/msg/JointState"
GREY_STEP = 4  # grey level per frame index: H.264 keeps flat grey within +-1


def write_grey_mp4(path, n, fps, size=(32, 48)):
    """An MP4 of ``n`` flat grey frames at ``fps``; frame i has level i * GREY_STEP."""
    levels = (np.arange(n) * GREY_STEP).astype(np.uint8)
    write_mp4(path, np.broadcast_to(levels[:, None, None, None], (n, *size, 3)).copy(), fps)


def frame_numbers(frames):
    """(T,) the frame index each (T, H, W, 3) grey frame encodes."""
    return np.round(frames.reshape(len(frames), -1).mean(1) / GREY_STEP).astype(int)


def to_store(src, tmp_path, fmt, name="s.zarr", **kw):
    return convert(src, tmp_path / name, fmt, "handoff", progress=False, **kw)


# ---- item 4: video frames by timestamp ---------------------------------------------------


def v21_with_30fps_video(root, lengths=(6, 4)):
    """A v2.1 dataset at fps 10 whose MP4s are 30 fps (3 frames per row)."""
    write_v21(root, lengths, fps=10)
    for ep, T in enumerate(lengths):
        video = root / f"videos/chunk-000/observation.images.top/episode_{ep:06d}.mp4"
        write_grey_mp4(video, 3 * T, 30)


def test_v21_rows_get_the_frame_at_their_timestamp(tmp_path):
    v21_with_30fps_video(tmp_path / "v21")
    to_store(tmp_path / "v21", tmp_path, "lerobot")
    store = DemoStore.open(tmp_path / "s.zarr")
    for ep, T in enumerate((6, 4)):
        np.testing.assert_array_equal(frame_numbers(store.episode(ep)["top"]), 3 * np.arange(T))


def test_v3_frames_at_from_timestamp_plus_timestamp(tmp_path):
    """v3 keeps episodes back to back in one video: episode 1 starts at from_timestamp."""
    make_store(tmp_path / "a.zarr", lengths=(4, 5))
    convert(tmp_path / "a.zarr", tmp_path / "lr", "handoff", "lerobot", progress=False)
    for cam in ("agentview", "wrist"):  # 60 fps videos under the 20 fps dataset
        video = tmp_path / f"lr/videos/observation.images.{cam}/chunk-000/file-000.mp4"
        write_grey_mp4(video, 27, 60)
    to_store(tmp_path / "lr", tmp_path, "lerobot", name="b.zarr")
    out = DemoStore.open(tmp_path / "b.zarr")
    np.testing.assert_array_equal(frame_numbers(out.episode(0)["wrist"]), 3 * np.arange(4))
    np.testing.assert_array_equal(frame_numbers(out.episode(1)["wrist"]), 12 + 3 * np.arange(5))


def test_a_row_with_no_frame_near_its_timestamp_is_refused(tmp_path):
    v21_with_30fps_video(tmp_path / "v21")
    path = tmp_path / "v21/data/chunk-000/episode_000001.parquet"
    table = pq.read_table(path)
    ts = np.arange(4, dtype=np.float32) / 10
    ts[2] += 0.5 / 30  # half-way between two frames
    pq.write_table(
        table.set_column(table.schema.get_field_index("timestamp"), "timestamp", [ts]), path
    )
    with pytest.raises(UserError, match=r"episode 1 .*no frame within 0.0001 s of t=0.21666"):
        to_store(tmp_path / "v21", tmp_path, "lerobot")
    report = to_store(tmp_path / "v21", tmp_path, "lerobot", name="t.zarr", tolerance_s=0.02)
    assert report["episodes"] == 2  # a looser tolerance takes the nearest frame


def test_a_video_shorter_than_its_rows_is_refused(tmp_path):
    v21_with_30fps_video(tmp_path / "v21")
    write_grey_mp4(
        tmp_path / "v21/videos/chunk-000/observation.images.top/episode_000000.mp4", 12, 30
    )  # rows run to 0.5 s, the video to 0.367 s
    with pytest.raises(UserError, match=r"episode 0 .*t=0.4000"):
        to_store(tmp_path / "v21", tmp_path, "lerobot")


# ---- item 8: very short first episodes ---------------------------------------------------


@pytest.mark.parametrize("images", ["video", "png"])
@pytest.mark.parametrize("first", [1, 2, 3])
def test_lerobot_export_of_a_short_first_episode(tmp_path, first, images):
    src = make_store(tmp_path / "a.zarr", lengths=(first, 4))
    convert(
        tmp_path / "a.zarr", tmp_path / "lr", "handoff", "lerobot", progress=False, images=images
    )
    to_store(tmp_path / "lr", tmp_path, "lerobot", name="b.zarr")
    out = DemoStore.open(tmp_path / "b.zarr")
    assert list(out.episode_lengths) == [first, 4]
    np.testing.assert_array_equal(out.episode(0)["action"], src.episode(0)["action"])


def test_a_single_one_frame_episode_exports(tmp_path):
    make_store(tmp_path / "a.zarr", lengths=(1,))
    report = convert(tmp_path / "a.zarr", tmp_path / "lr", "handoff", "lerobot", progress=False)
    assert report["frames"] == 1
    with av.open(str(tmp_path / "lr/videos/observation.images.wrist/chunk-000/file-000.mp4")) as c:
        assert c.streams.video[0].frames == 1


# ---- rosbag2 builders ----------------------------------------------------------------------


def arm_spec():
    """sim_panda without cameras, observing joints, velocities and fingers."""
    return dataclasses.replace(
        spec().with_cameras([], None),
        observation={"joint_pos": (7,), "joint_vel": (7,), "gripper_pos": (2,)},
    )


def joint_state(ns, names, q, v):
    return T_["sensor_msgs/msg/JointState"](
        header=header(ns),
        name=list(names),
        position=np.asarray(q, float),
        velocity=np.asarray(v, float),
        effort=np.zeros(0),
    )


def write_bag(path, groups, seconds=1.0, velocity=lambda q: -q, raw=None, edit=None, shift=0):
    """A bag with /joint_states published in ``groups`` (lists of joint names), group g at
    100 Hz offset by g * 3 ms, and 20 Hz forward commands. ``raw`` {topic: (type, bytes)}
    adds a connection with one undecoded message at 100.5 s; ``edit(k, q)`` changes the
    positions of message k of each group after the truth is taken; ``shift`` ns is added to
    the joint states' header stamps (not to their log times). Returns {joint: (stamps,
    positions)}."""
    rng = np.random.default_rng(0)
    truth = {n: ([], []) for g in groups for n in g}
    msgs = []
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        js = w.add_connection("/joint_states", "sensor_msgs/msg/JointState", typestore=TS)
        fwd = w.add_connection(
            "/forward_position_controller/commands",
            "std_msgs/msg/Float64MultiArray",
            typestore=TS,
        )
        for k in range(int(seconds * 100)):
            for g, names in enumerate(groups):
                ns = int((100 + k / 100) * NS) + g * 3_000_000
                q = rng.normal(size=len(names))
                for n, x in zip(names, q):
                    truth[n][0].append(ns)
                    truth[n][1].append(x)
                q = edit(k, q.copy()) if edit else q
                msgs.append((ns, js, joint_state(ns + shift, names, q, velocity(q))))
        for k in range(int(seconds * 20)):
            ns = int((100 + k / 20) * NS) + 1_000_000
            msgs.append((ns, fwd, floats(rng.normal(size=7))))
        for ns, conn, msg in sorted(msgs, key=lambda m: m[0]):
            w.write(conn, ns, TS.serialize_cdr(msg, msg.__msgtype__))
        for topic, (msgtype, data) in (raw or {}).items():
            conn = js if topic == js.topic else w.add_connection(topic, msgtype, typestore=TS)
            w.write(conn, int(100.5 * NS), data)
    return {n: (np.array(s), np.array(v)) for n, (s, v) in truth.items()}


ARM = list(spec().joint_names)


# ---- item 7: joints and fingers in separate messages ---------------------------------------


def ticks_of(ep, meta):
    """(T,) int ns: the control ticks an imported episode was sampled at."""
    T = len(ep["action"])
    return int(round(meta["start_time"] * NS)) + np.round(np.arange(T) * NS / 20).astype(int)


@pytest.mark.parametrize("groups", [[ARM, FINGERS], [ARM[:4], ARM[4:] + FINGERS[:1], FINGERS[1:]]])
def test_joint_states_split_over_messages_merge_by_name(tmp_path, groups):
    """Each tick takes every joint's newest value (data.align.JointStateMerge, as live)."""
    truth = write_bag(tmp_path / "bag", groups)
    report = to_store(tmp_path / "bag", tmp_path, "rosbag2", embodiment=arm_spec())
    assert report["episodes"] == 1
    assert not any("estimated" in n or "left out" in n for n in report["notes"])
    store = DemoStore.open(tmp_path / "s.zarr")
    ep, meta = store.episode(0), store.episode_meta(0)
    ticks = ticks_of(ep, meta)
    assert len(ticks) >= 18
    for key, names in (("joint_pos", ARM), ("gripper_pos", FINGERS)):
        for j, name in enumerate(names):
            stamps, values = truth[name]
            newest = np.searchsorted(stamps, ticks, side="right") - 1  # the alignment rule
            np.testing.assert_array_equal(ep[key][:, j], values[newest].astype(np.float32))
    np.testing.assert_array_equal(ep["joint_vel"], -ep["joint_pos"])  # measured: kept as sent
    assert "has_gaps" not in meta


def test_fingers_on_no_message_are_named(tmp_path):
    write_bag(tmp_path / "bag", [ARM])
    with pytest.raises(
        UserError, match=r"joint\(s\) \['gripper0_right_finger_joint1'.*gripper_joints"
    ):
        to_store(tmp_path / "bag", tmp_path, "rosbag2", embodiment=arm_spec())


# ---- item 5: non-finite values -------------------------------------------------------------

NO_VELOCITY = {  # ros2_control without a velocity interface: NaN; other drivers: empty
    "nan": lambda q: np.full_like(q, np.nan),
    "empty": lambda q: np.zeros(0),
}


def live_joint_vel(groups, truth, window=0.15):
    """What the live recorder stores for /joint_states: every message through JointStateMerge
    in arrival order (recorder.on_joint_states without ROS), samples with an unknown velocity
    left out. Returns (sample stamps (N,) ns, joint_vel (N, 7))."""
    msgs = sorted(
        (truth[g[0]][0][k], g, [truth[n][1][k] for n in g])
        for g in groups
        for k in range(len(truth[g[0]][0]))
    )
    merge, stamps, vel = JointStateMerge(window), [], []
    for ns, names, q in msgs:
        merge.update(ns / NS, names, q, [np.nan] * len(names))
        try:
            s = merge.take(ARM + FINGERS)
        except ValueError:
            continue
        if np.isfinite(s.velocities[:7]).all():
            stamps.append(ns)
            vel.append(s.velocities[:7].astype(np.float32))
    return np.array(stamps), np.stack(vel)


@pytest.mark.parametrize("kind", NO_VELOCITY)
@pytest.mark.parametrize("groups", [[ARM + FINGERS], [ARM, FINGERS]])
def test_a_bag_without_velocities_gets_the_live_recorders_joint_vel(tmp_path, kind, groups):
    """Estimated from successive positions, exactly as the recorder would have stored them."""
    truth = write_bag(tmp_path / "bag", groups, velocity=NO_VELOCITY[kind])
    report = to_store(tmp_path / "bag", tmp_path, "rosbag2", embodiment=arm_spec())
    assert f"joint_vel of {ARM} estimated from successive positions" in "; ".join(report["notes"])
    ep = DemoStore.open(tmp_path / "s.zarr").episode(0)
    ticks = ticks_of(ep, DemoStore.open(tmp_path / "s.zarr").episode_meta(0))
    live_ns, live_vel = live_joint_vel(groups, truth)
    idx, _ = latest_index(live_ns, ticks)
    assert (idx >= 0).sum() >= len(ticks) - 1
    np.testing.assert_allclose(ep["joint_vel"][idx >= 0], live_vel[idx[idx >= 0]], rtol=1e-5)
    # live has nothing before its first estimate; the bag's first step takes that estimate
    # (the forward difference to the next message) instead of losing the step
    np.testing.assert_allclose(ep["joint_vel"][idx < 0], live_vel[: (idx < 0).sum()], rtol=1e-5)
    stamps, q = truth[ARM[0]]
    assert np.isclose(live_vel[:, 0], (q[4] - q[3]) / ((stamps[4] - stamps[3]) / NS)).any()


def test_velocities_that_cannot_be_estimated_are_refused_or_dropped(tmp_path):
    """Messages further apart than the window: no velocity can be estimated, live or here."""
    write_bag(tmp_path / "bag", [ARM + FINGERS], velocity=NO_VELOCITY["nan"])
    with pytest.raises(UserError, match=r"no joint state usable: .*max_age_s=0.005.*drop_keys"):
        to_store(tmp_path / "bag", tmp_path, "rosbag2", embodiment=arm_spec(), max_age_s=0.005)
    assert not (tmp_path / "s.zarr").exists()
    report = to_store(
        tmp_path / "bag",
        tmp_path,
        "rosbag2",
        embodiment=arm_spec(),
        max_age_s=0.005,
        drop_keys="joint_vel",
    )
    assert "joint_vel left out (drop_keys)" in report["notes"]
    assert "joint_vel" not in DemoStore.open(tmp_path / "s.zarr").keys


def nan_at(k0, j=0):
    def edit(k, q):
        if k == k0:
            q[j] = np.nan
        return q

    return edit


def test_rosbag_nan_positions_refused_by_topic_key_and_step(tmp_path):
    write_bag(tmp_path / "bag", [ARM + FINGERS], velocity=NO_VELOCITY["nan"], edit=nan_at(50))
    with pytest.raises(
        UserError,
        match=r"episode 0 \(from 100.000 s\): /joint_states position is NaN or infinite at step "
        r"10 \(1 of",
    ):
        to_store(tmp_path / "bag", tmp_path, "rosbag2", embodiment=arm_spec())
    assert not (tmp_path / "s.zarr").exists()


def test_a_future_stamp_in_a_bag_is_left_out_as_live(tmp_path):
    """A message stamped 1000 s after it was logged (data.align.StampCheck) does not count."""
    future = joint_state(int(1100.5 * NS), ARM + FINGERS, np.full(9, 7.0), np.zeros(9))
    raw = {"/joint_states": ("sensor_msgs/msg/JointState", TS.serialize_cdr(future, MSG))}
    write_bag(tmp_path / "bag", [ARM + FINGERS], raw=raw)
    report = to_store(tmp_path / "bag", tmp_path, "rosbag2", embodiment=arm_spec())
    assert any(
        "1 message(s) on /joint_states stamped more than 0.5 s" in n for n in report["notes"]
    )
    ep = DemoStore.open(tmp_path / "s.zarr").episode(0)
    assert len(ep["joint_pos"]) >= 18 and not (ep["joint_pos"] == 7.0).any()
    write_bag(tmp_path / "ahead", [ARM + FINGERS], shift=NS)  # every stamp 1 s ahead
    with pytest.raises(UserError, match=r"/joint_states has no messages stamped before the bag"):
        to_store(tmp_path / "ahead", tmp_path, "rosbag2", "t.zarr", embodiment=arm_spec())
    report = to_store(
        tmp_path / "ahead",
        tmp_path,
        "rosbag2",
        "t.zarr",
        embodiment=arm_spec(),
        future_stamp_tolerance_s=2,
    )  # within the tolerance: each message counts at its log time, the earlier of the two
    assert report["episodes"] == 1
    with pytest.raises(UserError, match=r"future_stamp_tolerance_s='x': give seconds"):
        to_store(
            tmp_path / "bag",
            tmp_path,
            "rosbag2",
            "u.zarr",
            embodiment=arm_spec(),
            future_stamp_tolerance_s="x",
        )


def test_robomimic_nan_names_dataset_and_step(tmp_path):
    write_robomimic(tmp_path / "r.hdf5")
    with h5py.File(tmp_path / "r.hdf5", "a") as f:
        f["data/demo_1/obs/robot0_joint_pos"][5, 2] = np.inf
    with pytest.raises(
        UserError,
        match=r"r.hdf5 data/demo_1: data/demo_1/obs/robot0_joint_pos "
        r"is NaN or infinite at step 5 \(1 of 14",
    ):
        to_store(tmp_path / "r.hdf5", tmp_path, "robomimic")


def test_lerobot_and_handoff_nan_refused(tmp_path):
    write_v21(tmp_path / "v21", (5, 6))
    path = tmp_path / "v21/data/chunk-000/episode_000001.parquet"
    table = pq.read_table(path)
    reward = np.linspace(0, 1, 6, dtype=np.float32)
    reward[3] = np.nan
    i = table.schema.get_field_index("next.reward")
    pq.write_table(table.set_column(i, "next.reward", [reward]), path)
    with pytest.raises(UserError, match=r"episode 1: reward is NaN or infinite at step 3"):
        to_store(tmp_path / "v21", tmp_path, "lerobot")
    store = DemoStore.create(tmp_path / "h.zarr")
    try:
        store.append_episode({"action": np.array([[0.0], [np.nan]], np.float32)})
    except UserError:
        return  # the store itself refuses NaN: nothing for the converter to see
    with pytest.raises(UserError, match=r"h.zarr episode 0: action is NaN or infinite at step 1"):
        convert(tmp_path / "h.zarr", tmp_path / "o.hdf5", "handoff", "robomimic", progress=False)


def test_nan_on_the_command_line_is_one_line(tmp_path, capsys):
    from data.cli import main

    write_bag(tmp_path / "bag", [ARM + FINGERS], edit=nan_at(50))
    spec_file = tmp_path / "arm.json"
    spec_file.write_text(json.dumps(arm_spec().to_dict()))
    with pytest.raises(SystemExit) as e:
        main(
            [
                "convert",
                "--from",
                "rosbag2",
                "--to",
                "handoff",
                str(tmp_path / "bag"),
                str(tmp_path / "s.zarr"),
                "--embodiment",
                str(spec_file),
                "--quiet",
            ]
        )
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "position is NaN" in err[0]


# ---- item 6: a source's rate is carried on ---------------------------------------------


def test_robomimic_rate_reaches_a_lerobot_export(tmp_path):
    write_robomimic(tmp_path / "r.hdf5", lengths=(4, 3))
    to_store(tmp_path / "r.hdf5", tmp_path, "robomimic")
    assert DemoStore.open(tmp_path / "s.zarr").attrs["control_hz"] == 20
    convert(tmp_path / "s.zarr", tmp_path / "lr", "handoff", "lerobot", progress=False)
    assert json.loads((tmp_path / "lr/meta/info.json").read_text())["fps"] == 20
    convert(tmp_path / "r.hdf5", tmp_path / "lr2", "robomimic", "lerobot", progress=False)
    assert json.loads((tmp_path / "lr2/meta/info.json").read_text())["fps"] == 20
    convert(tmp_path / "s.zarr", tmp_path / "r2.hdf5", "handoff", "robomimic", progress=False)
    with h5py.File(tmp_path / "r2.hdf5") as f:
        assert json.loads(f["data"].attrs["env_args"]) == ENV_ARGS


def test_lerobot_rate_survives_a_store_without_embodiment(tmp_path):
    write_v21(tmp_path / "v21", (3, 4), fps=10)
    to_store(tmp_path / "v21", tmp_path, "lerobot")
    convert(tmp_path / "s.zarr", tmp_path / "v3", "handoff", "lerobot", progress=False)
    assert json.loads((tmp_path / "v3/meta/info.json").read_text())["fps"] == 10
    with pytest.raises(UserError, match=r"fps='ten': give a number"):
        convert(
            tmp_path / "s.zarr", tmp_path / "v4", "handoff", "lerobot", progress=False, fps="ten"
        )
    with pytest.raises(UserError, match=r"--fps 30 differs from the source's rate 10 Hz"):
        convert(tmp_path / "s.zarr", tmp_path / "v4", "handoff", "lerobot", progress=False, fps=30)


def test_a_rate_that_contradicts_the_embodiment_is_refused(tmp_path):
    write_robomimic(tmp_path / "r.hdf5", lengths=(3,))
    with h5py.File(tmp_path / "r.hdf5", "a") as f:
        f["data"].attrs["env_args"] = json.dumps({**ENV_ARGS, "env_kwargs": {"control_freq": 10}})
    with pytest.raises(
        UserError,
        match=r"control_freq: 10 Hz, but embodiment 'sim_panda' has "
        r"control_hz 20",
    ):
        to_store(tmp_path / "r.hdf5", tmp_path, "robomimic", embodiment="sim_panda")
    write_v21(tmp_path / "v21", (3,), fps=15)
    with pytest.raises(UserError, match=r"info.json fps: 15 Hz, but embodiment"):
        to_store(tmp_path / "v21", tmp_path, "lerobot", embodiment="sim_panda")


# ---- item 11: hostile inputs end in one line -----------------------------------------------


def _edit_info(root, **changes):
    info = json.loads((root / "meta/info.json").read_text())
    info.update(changes)
    (root / "meta/info.json").write_text(json.dumps(info))


LEROBOT_BREAKS = {
    "data_path_up": ({"data_path": "../../etc/passwd"}, "points outside the dataset"),
    "data_path_abs": ({"data_path": "/etc/passwd"}, "points outside the dataset"),
    "video_path_up": (
        {"video_path": "videos/../../../{video_key}/{episode_index}.mp4"},
        "points outside the dataset",
    ),
    "attribute": ({"data_path": "{episode_index.__class__}"}, r"unknown field \{episode_index"),
    "unknown_field": ({"data_path": "data/{user}.parquet"}, r"unknown field \{user\}"),
    "huge_padding": ({"data_path": "{episode_index:>999999999}"}, "unknown field"),
    "bad_template": ({"data_path": "data/{episode_index"}, "not a valid path template"),
    "template_type": ({"data_path": 7}, "data_path must be a string"),
    "fps_text": ({"fps": "ten"}, "rate 'ten' must be a positive number"),
    "fps_zero": ({"fps": 0}, "must be a positive number"),
    "features_list": ({"features": []}, "features must be an object"),
    "feature_shape": ({"features": {"action": {"dtype": "float32", "shape": "6"}}}, "shape"),
    "chunks": ({"chunks_size": "1000"}, "chunks_size must be an integer"),
    "handoff": ({"handoff": {"embodiment": [1]}}, "handoff.embodiment must be an object"),
}


@pytest.mark.parametrize("case", sorted(LEROBOT_BREAKS))
def test_hostile_lerobot_info(tmp_path, case):
    write_v21(tmp_path / "v21", (3,))
    changes, message = LEROBOT_BREAKS[case]
    _edit_info(tmp_path / "v21", **changes)
    with pytest.raises(UserError, match=message):
        to_store(tmp_path / "v21", tmp_path, "lerobot")
    assert not (tmp_path / "s.zarr").exists()  # nothing written


def test_hostile_lerobot_metadata_files(tmp_path):
    root = tmp_path / "v21"
    write_v21(root, (3,))
    (root / "meta/info.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a JSON object"):
        to_store(root, tmp_path, "lerobot")
    write_v21(tmp_path / "w", (3,))
    (tmp_path / "w/meta/episodes.jsonl").write_text('{"episode_index": "zero"}\n')
    with pytest.raises(UserError, match="no integer 'episode_index'"):
        to_store(tmp_path / "w", tmp_path, "lerobot")
    (tmp_path / "w/meta/episodes.jsonl").write_text("{oops\n")
    with pytest.raises(UserError, match="line 1 is not JSON"):
        to_store(tmp_path / "w", tmp_path, "lerobot")
    write_v21(tmp_path / "x", (3,))
    (tmp_path / "x/data/chunk-000/episode_000000.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(UserError, match="not a readable Parquet file"):
        to_store(tmp_path / "x", tmp_path, "lerobot")


def test_v3_rows_that_point_elsewhere_are_refused(tmp_path):
    make_store(tmp_path / "a.zarr", lengths=(3, 4))
    convert(tmp_path / "a.zarr", tmp_path / "lr", "handoff", "lerobot", progress=False)
    path = tmp_path / "lr/meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    i = table.schema.get_field_index("dataset_from_index")
    pq.write_table(table.set_column(i, "dataset_from_index", [[0, 5]]), path)
    with pytest.raises(UserError, match=r"episode 1's rows .* are not in this file"):
        to_store(tmp_path / "lr", tmp_path, "lerobot")
    pq.write_table(table.set_column(i, "dataset_from_index", [[0, 2]]), path)
    with pytest.raises(UserError, match=r"rows of episode 1 hold episode_index \{0, 1\}"):
        to_store(tmp_path / "lr", tmp_path, "lerobot", name="t.zarr")


def _replace(f, name, data):
    del f[name]
    f[name] = data


ROBOMIMIC_BREAKS = {
    "actions_text": (
        lambda f: _replace(f, "data/demo_0/actions", np.array([b"up"] * 10)),
        r"data/demo_0/actions holds \|S2 \[10\]: expected per-step numbers",
    ),
    "actions_objects": (
        lambda f: _replace(
            f,
            "data/demo_0/actions",
            np.array(["a"] * 10, dtype=h5py.string_dtype()),
        ),
        r"data/demo_0/actions holds object",
    ),
    "actions_1d": (
        lambda f: _replace(f, "data/demo_0/actions", np.zeros(10)),
        r"actions has shape \[10\]; expected \(T, Da\)",
    ),
    "images_float": (
        lambda f: _replace(f, "data/demo_0/obs/agentview_image", np.zeros((10, 16, 16, 3))),
        r"agentview_image holds float64 \[10, 16, 16, 3\]: robomimic images are uint8",
    ),
    "short_dataset": (
        lambda f: _replace(f, "data/demo_0/rewards", np.zeros(4)),
        r"data/demo_0 datasets differ in length",
    ),
    "env_args_text": (
        lambda f: f["data"].attrs.__setitem__("env_args", "{not json"),
        "attribute env_args is not JSON",
    ),
    "control_freq_text": (
        lambda f: f["data"].attrs.__setitem__(
            "env_args", json.dumps({"env_kwargs": {"control_freq": "fast"}})
        ),
        "rate 'fast' must be a positive number",
    ),
    "obs_dataset": (
        lambda f: _replace(f, "data/demo_0/obs", np.zeros(3)),
        "has no actions or obs/",
    ),
    "mask_numbers": (
        lambda f: _replace(f, "mask/train", np.arange(3)),
        "mask/train must list demo names",
    ),
}


@pytest.mark.parametrize("case", sorted(ROBOMIMIC_BREAKS))
def test_hostile_robomimic(tmp_path, case):
    write_robomimic(tmp_path / "r.hdf5")
    breaker, message = ROBOMIMIC_BREAKS[case]
    with h5py.File(tmp_path / "r.hdf5", "a") as f:
        breaker(f)
    with pytest.raises(UserError, match=message):
        to_store(tmp_path / "r.hdf5", tmp_path, "robomimic")


def test_hostile_rosbag_messages(tmp_path):
    good = TS.serialize_cdr(
        joint_state(NS, ARM + FINGERS, np.zeros(9), np.zeros(9)), "sensor_msgs/msg/JointState"
    )
    cases = {
        "truncated": (
            {"/joint_states": ("sensor_msgs/msg/JointState", bytes(good[:30]))},
            r"JointState message on /joint_states logged at 100.500 s does not decode",
        ),
        "lengths": (
            {
                "/joint_states": (
                    "sensor_msgs/msg/JointState",
                    TS.serialize_cdr(
                        joint_state(NS, ARM, np.zeros(3), np.zeros(0)), "sensor_msgs/msg/JointState"
                    ),
                )
            },
            r"/joint_states: the message logged at 100.500 s: 7 joint names but 3 positions",
        ),
        "wrong_type": (
            {
                "/gripper_controller/commands": (
                    "std_msgs/msg/String",
                    TS.serialize_cdr(
                        T_["std_msgs/msg/String"](data="close"), "std_msgs/msg/String"
                    ),
                )
            },
            r"/gripper_controller/commands carries std_msgs/msg/String, expected "
            r"std_msgs/msg/Float64MultiArray",
        ),
        "spec_not_json": (
            {
                "/handoff/embodiment": (
                    "std_msgs/msg/String",
                    TS.serialize_cdr(
                        T_["std_msgs/msg/String"](data="{oops"), "std_msgs/msg/String"
                    ),
                )
            },
            r"/handoff/embodiment: not JSON",
        ),
    }
    for name, (raw, message) in cases.items():
        write_bag(tmp_path / name, [ARM + FINGERS], seconds=0.3, raw=raw)
        spec_arg = None if name == "spec_not_json" else arm_spec()
        with pytest.raises(UserError, match=message):
            to_store(tmp_path / name, tmp_path, "rosbag2", name=f"{name}.zarr", embodiment=spec_arg)


def test_truncated_image_message_is_refused(tmp_path):
    cam_spec = dataclasses.replace(
        arm_spec(), cameras=spec().with_cameras(["wrist"], (4, 6)).cameras
    )
    img = T_["sensor_msgs/msg/Image"](
        header=header(int(100.5 * NS)),
        height=4,
        width=6,
        encoding="rgb8",
        is_bigendian=0,
        step=18,
        data=np.zeros(40, np.uint8),  # 72 bytes expected
    )
    raw = {
        "/wrist/image_raw": (
            "sensor_msgs/msg/Image",
            TS.serialize_cdr(img, "sensor_msgs/msg/Image"),
        )
    }
    write_bag(tmp_path / "bag", [ARM + FINGERS], seconds=1.0, raw=raw)
    with pytest.raises(UserError, match=r"/wrist/image_raw: a 6x4 rgb8 image .* 40 bytes"):
        to_store(tmp_path / "bag", tmp_path, "rosbag2", embodiment=cam_spec)


def test_truncated_bag_file_is_refused(tmp_path):
    write_bag(tmp_path / "bag", [ARM + FINGERS], seconds=0.5)
    mcap = tmp_path / "bag/bag.mcap"
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    with pytest.raises(UserError, match=r"bag"):
        to_store(tmp_path / "bag", tmp_path, "rosbag2", embodiment=arm_spec())
    assert not (tmp_path / "s.zarr").exists()
