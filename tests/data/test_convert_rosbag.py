"""rosbag2 <-> handoff: a live-like bag written with rosbags (sqlite3 and MCAP), round trips."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from data.convert import convert
from data.dataset import SequenceDataset
from data.errors import UserError
from data.store import DemoStore
from tests.data.test_convert_common import assert_lowdim_equal, frames, make_store, spec

NS = 1_000_000_000
TS = get_typestore(Stores.ROS2_KILTED)
T_ = TS.types
FINGERS = ["gripper0_right_finger_joint1", "gripper0_right_finger_joint2"]


def bag_spec():
    """sim_panda with its cameras, observing joints and fingers only (no eef pose topic)."""
    return dataclasses.replace(
        spec(), observation={"joint_pos": (7,), "joint_vel": (7,), "gripper_pos": (2,)}
    )


def header(ns):
    stamp = T_["builtin_interfaces/msg/Time"](sec=ns // NS, nanosec=ns % NS)
    return T_["std_msgs/msg/Header"](stamp=stamp, frame_id="")


def floats(values):
    layout = T_["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    return T_["std_msgs/msg/Float64MultiArray"](layout=layout, data=np.asarray(values, float))


def write_live_bag(path, storage, camera_dropout=(1.0, 1.3)):
    """Two teleop sessions 3 s apart, as a robot would log them.

    /joint_states at 100 Hz with jitter and shuffled joint order; agentview raw at 20 Hz,
    wrist PNG-compressed at 20 Hz with frames missing in ``camera_dropout`` (seconds into
    episode 0); trajectory goals 5 ms after each 20 Hz tick; gripper commands at 2 Hz.
    Returns the ground truth streams.
    """
    s = bag_spec()
    rng = np.random.default_rng(0)
    truth = {"js": [], "cmd": [], "cam": {}}
    with Writer(path, version=9, storage_plugin=storage) as w:
        conn = {
            "js": w.add_connection("/joint_states", "sensor_msgs/msg/JointState", typestore=TS),
            "agentview": w.add_connection(
                "/agentview/image_raw", "sensor_msgs/msg/Image", typestore=TS
            ),
            "wrist": w.add_connection(
                "/wrist/image_raw/compressed", "sensor_msgs/msg/CompressedImage", typestore=TS
            ),
            "traj": w.add_connection(
                "/arm_controller/joint_trajectory",
                "trajectory_msgs/msg/JointTrajectory",
                typestore=TS,
            ),
            "grip": w.add_connection(
                "/gripper_controller/commands", "std_msgs/msg/Float64MultiArray", typestore=TS
            ),
        }
        msgs = []
        for ep, (t0, dur) in enumerate(((100.0, 2.0), (105.0, 1.5))):
            for k in range(int(dur * 100)):
                ns = int((t0 + k / 100 + rng.uniform(0, 0.002)) * NS)
                q = rng.normal(size=9)
                order = rng.permutation(9)
                names = [*s.joint_names, *FINGERS]
                js = T_["sensor_msgs/msg/JointState"](
                    header=header(ns),
                    name=[names[i] for i in order],
                    position=q[order],
                    velocity=-q[order],
                    effort=np.zeros(0),
                )
                msgs.append((ns, "js", js))
                truth["js"].append((ns, q))
            for k in range(int(dur * 20)):
                tick = int((t0 + k / 20) * NS)
                goal = rng.normal(size=7)
                point = T_["trajectory_msgs/msg/JointTrajectoryPoint"](
                    positions=goal[::-1].copy(),  # joint order reversed: matched by name
                    velocities=np.zeros(0),
                    accelerations=np.zeros(0),
                    effort=np.zeros(0),
                    time_from_start=T_["builtin_interfaces/msg/Duration"](
                        sec=0, nanosec=50_000_000
                    ),
                )
                traj = T_["trajectory_msgs/msg/JointTrajectory"](
                    header=header(0), joint_names=list(s.joint_names)[::-1], points=[point]
                )
                msgs.append((tick + 5_000_000, "traj", traj))
                truth["cmd"].append((tick + 5_000_000, goal))
                if k % 10 == 0:
                    msgs.append((tick + 5_000_000, "grip", floats([1.0 if k % 20 else -1.0])))
                cam_ns = tick - 3_000_000  # exposure before the tick, logged later
                imgs = frames(rng, 1)
                truth["cam"][cam_ns] = imgs[0]
                img = T_["sensor_msgs/msg/Image"](
                    header=header(cam_ns),
                    height=32,
                    width=48,
                    encoding="bgr8",
                    is_bigendian=0,
                    step=48 * 3,
                    data=imgs[0][..., ::-1].reshape(-1).copy(),
                )
                msgs.append((cam_ns + 20_000_000, "agentview", img))
                if not (ep == 0 and camera_dropout[0] <= k / 20 < camera_dropout[1]):
                    ok, png = cv2.imencode(".png", imgs[0][..., ::-1])
                    comp = T_["sensor_msgs/msg/CompressedImage"](
                        header=header(cam_ns), format="png", data=png.reshape(-1)
                    )
                    msgs.append((cam_ns + 20_000_000, "wrist", comp))
        for ns, key, msg in sorted(msgs, key=lambda m: m[0]):
            w.write(conn[key], ns, TS.serialize_cdr(msg, msg.__msgtype__))
    return truth


@pytest.mark.parametrize("storage", [StoragePlugin.SQLITE3, StoragePlugin.MCAP])
def test_live_bag_imports_with_the_alignment_rule(tmp_path, storage):
    truth = write_live_bag(tmp_path / "bag", storage)
    report = convert(
        tmp_path / "bag",
        tmp_path / "s.zarr",
        "rosbag2",
        "handoff",
        embodiment=bag_spec(),
        progress=False,
        task="stack",
    )
    assert report["episodes"] == 2
    assert any("pauses > 1 s" in n for n in report["notes"])
    store = DemoStore.open(tmp_path / "s.zarr")
    assert set(store.keys) == {
        "joint_pos",
        "joint_vel",
        "gripper_pos",
        "agentview",
        "wrist",
        "action",
        "timestamp",
    }
    js_ns = np.array([t for t, _ in truth["js"]])
    js_q = np.stack([q for _, q in truth["js"]])
    cmd_ns = np.array([t for t, _ in truth["cmd"]])
    cmd = np.stack([g for _, g in truth["cmd"]])
    cam_ns = np.array(sorted(truth["cam"]))
    for e in range(2):
        ep, meta = store.episode(e), store.episode_meta(e)
        T = len(ep["action"])
        assert 25 <= T <= 40
        ticks = int(round(meta["start_time"] * NS)) + np.round(np.arange(T) * NS / 20).astype(int)
        # the rule: newest message stamped at or before the tick
        newest = np.searchsorted(js_ns, ticks, side="right") - 1
        np.testing.assert_array_equal(ep["joint_pos"], js_q[newest, :7].astype(np.float32))
        np.testing.assert_array_equal(ep["gripper_pos"], js_q[newest, 7:].astype(np.float32))
        np.testing.assert_array_equal(ep["joint_vel"], -js_q[newest, :7].astype(np.float32))
        # commands 5 ms after a tick belong to it (action offset = half a period)
        sent = np.searchsorted(cmd_ns, ticks + NS // 40, side="right") - 1
        np.testing.assert_array_equal(ep["action"][:, :7], cmd[sent].astype(np.float32))
        assert set(np.unique(ep["action"][:, 7])) <= {-1.0, 1.0}
        frame = np.searchsorted(cam_ns, ticks, side="right") - 1
        want = np.stack([truth["cam"][cam_ns[i]] for i in frame])
        np.testing.assert_array_equal(ep["agentview"], want)  # bgr8 -> RGB, exact
        assert meta["task"] == "stack" and meta["source"] == "converted"
    meta0 = store.episode_meta(0)
    assert meta0["has_gaps"] and meta0["gap_steps"] == {"wrist": 3}  # 0.3 s dropout, 3 stale
    assert "has_gaps" not in store.episode_meta(1)
    ds = SequenceDataset(store, ["joint_pos", "wrist"], n_obs_steps=2, horizon=8)
    assert ds[5]["obs"]["wrist"].shape == (2, 32, 48, 3)

    # back out as MCAP and in again: the resampled steps survive unchanged
    convert(tmp_path / "s.zarr", tmp_path / "out", "handoff", "rosbag2", progress=False)
    convert(tmp_path / "out", tmp_path / "t.zarr", "rosbag2", "handoff", progress=False)
    again = DemoStore.open(tmp_path / "t.zarr")
    assert_lowdim_equal(store, again, store.keys)
    assert [again.episode_meta(i) for i in range(2)] == [store.episode_meta(i) for i in range(2)]


def test_handoff_to_mcap_and_back_is_exact(tmp_path):
    src = make_store(tmp_path / "a.zarr")
    report = convert(tmp_path / "a.zarr", tmp_path / "bag", "handoff", "rosbag2", progress=False)
    assert report["not_carried"] == []
    assert sorted(p.name for p in (tmp_path / "bag").iterdir()) == ["bag.mcap", "metadata.yaml"]
    from rosbags.highlevel import AnyReader

    with AnyReader([tmp_path / "bag"]) as bag:
        topics = {c.topic: c.msgtype for c in bag.connections}
    assert topics["/joint_states"] == "sensor_msgs/msg/JointState"
    assert topics["/agentview/image_raw"] == "sensor_msgs/msg/Image"
    assert topics["/forward_position_controller/commands"] == "std_msgs/msg/Float64MultiArray"
    assert topics["/handoff/episode"] == "std_msgs/msg/String"
    convert(
        tmp_path / "bag",
        tmp_path / "b.zarr",
        "rosbag2",
        "handoff",
        progress=False,
        embodiment=src.embodiment,
    )
    out = DemoStore.open(tmp_path / "b.zarr")
    assert out.keys == src.keys
    assert_lowdim_equal(src, out, src.keys)  # low-dim and raw images bit-exact
    assert [out.episode_meta(i) for i in range(3)] == [src.episode_meta(i) for i in range(3)]


def test_png_compressed_images_are_exact(tmp_path):
    src = make_store(tmp_path / "a.zarr", lengths=(4, 3))
    convert(
        tmp_path / "a.zarr",
        tmp_path / "bag",
        "handoff",
        "rosbag2",
        progress=False,
        image_format="png",
    )
    from rosbags.highlevel import AnyReader

    with AnyReader([tmp_path / "bag"]) as bag:
        topics = {c.topic: c.msgtype for c in bag.connections}
    assert topics["/wrist/image_raw/compressed"] == "sensor_msgs/msg/CompressedImage"
    convert(tmp_path / "bag", tmp_path / "b.zarr", "rosbag2", "handoff", progress=False)
    assert_lowdim_equal(src, DemoStore.open(tmp_path / "b.zarr"), src.keys)


def test_bad_bags_get_one_line(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk/metadata.yaml").write_text("hello: [")
    with pytest.raises(UserError, match="not a rosbag2"):
        convert(tmp_path / "junk", tmp_path / "o.zarr", "rosbag2", "handoff", embodiment=bag_spec())
    write_live_bag(tmp_path / "bag", StoragePlugin.MCAP)
    with pytest.raises(UserError, match="needs --embodiment"):
        convert(tmp_path / "bag", tmp_path / "o.zarr", "rosbag2", "handoff")
    with pytest.raises(UserError, match=r"no topic /arm/joint_states .*joint_states_topic"):
        convert(
            tmp_path / "bag",
            tmp_path / "o.zarr",
            "rosbag2",
            "handoff",
            embodiment=bag_spec(),
            joint_states_topic="/arm/joint_states",
        )
    with pytest.raises(UserError, match=r"no topic /cams/agentview/image_raw/compressed"):
        convert(
            tmp_path / "bag",
            tmp_path / "o.zarr",
            "rosbag2",
            "handoff",
            embodiment=bag_spec(),
            camera_topic="/cams/{camera}/image_raw",
        )
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize(
    "option, value",
    [
        ("gap_s", "abc"),
        ("max_age_s", 0),
        ("max_age_s", float("nan")),
        ("action_offset_s", -1),
        ("future_stamp_tolerance_s", True),
        ("gap_s", 1e300),
    ],
)
def test_time_options_that_are_not_seconds_are_refused(tmp_path, option, value):
    """``-o KEY=VALUE`` passes text or any number through: each is checked before use."""
    write_live_bag(tmp_path / "bag", StoragePlugin.MCAP)
    with pytest.raises(UserError, match=rf"{option}=.*: give seconds, a number"):
        convert(
            tmp_path / "bag",
            tmp_path / "o.zarr",
            "rosbag2",
            "handoff",
            embodiment=bag_spec(),
            **{option: value},
        )
    assert not (tmp_path / "o.zarr").exists()


def test_unset_header_stamps_take_the_log_time(tmp_path):
    """A driver that leaves header.stamp at 0: its messages count when the bag logged them."""
    spec = bag_spec().with_cameras([], None)
    with Writer(tmp_path / "bag", version=9, storage_plugin=StoragePlugin.MCAP) as w:
        js = w.add_connection("/joint_states", "sensor_msgs/msg/JointState", typestore=TS)
        fwd = w.add_connection(
            "/forward_position_controller/commands", "std_msgs/msg/Float64MultiArray", typestore=TS
        )
        for k in range(40):
            names = [*spec.joint_names, *FINGERS]
            msg = T_["sensor_msgs/msg/JointState"](
                header=header(0),
                name=names,
                position=np.full(9, float(k)),
                velocity=np.zeros(0),
                effort=np.zeros(0),
            )
            ns = int((100 + k / 100) * NS)
            w.write(js, ns, TS.serialize_cdr(msg, msg.__msgtype__))
            if k % 5 == 0:
                w.write(fwd, ns + 1, TS.serialize_cdr(floats(np.zeros(7)), fwd.msgtype))
    report = convert(
        tmp_path / "bag",
        tmp_path / "o.zarr",
        "rosbag2",
        "handoff",
        embodiment=spec,
        progress=False,
    )
    ep = DemoStore.open(tmp_path / "o.zarr").episode(0)
    np.testing.assert_array_equal(ep["joint_pos"][:, 0], [0, 5, 10, 15, 20, 25, 30, 35])
    np.testing.assert_allclose(ep["joint_vel"], 100.0, rtol=1e-4)  # 1 rad per 10 ms
    assert any("estimated from successive positions" in n for n in report["notes"])
