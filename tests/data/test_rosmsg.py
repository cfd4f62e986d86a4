"""data/rosmsg.py: messages <-> store keys, both directions, on duck-typed messages (no ROS).

rclpy and rosbags messages have the same fields; here they are SimpleNamespaces, and the
writers build them through a ``types`` mapping of SimpleNamespace factories (issue 18).
"""

from __future__ import annotations

import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from data import rosmsg
from data.align import JointStateMerge
from data.embodiment import load_embodiment

ROOT = Path(__file__).resolve().parents[2]
SPEC = load_embodiment("sim_panda")
FINGERS = list(SPEC.gripper.joint_names)
J, F = SPEC.n_joints, len(FINGERS)
# every message type the writers build, as a namespace that keeps its type name
TYPE_NAMES = (
    "sensor_msgs/msg/JointState",
    "geometry_msgs/msg/PoseStamped",
    "geometry_msgs/msg/Pose",
    "geometry_msgs/msg/Point",
    "geometry_msgs/msg/Quaternion",
    "std_msgs/msg/Float64MultiArray",
    "std_msgs/msg/MultiArrayLayout",
)
TYPES = {name: partial(SimpleNamespace, type=name) for name in TYPE_NAMES}
HEADER = SimpleNamespace(stamp=SimpleNamespace(sec=3, nanosec=5), frame_id="")
RNG = np.random.default_rng(0)


def _step() -> dict[str, np.ndarray]:
    return {
        "joint_pos": RNG.normal(size=J).astype(np.float32),
        "joint_vel": RNG.normal(size=J).astype(np.float32),
        "gripper_pos": RNG.uniform(0, 0.04, F).astype(np.float32),
    }


# ---- sensor_msgs/JointState ---------------------------------------------------------------


def test_joint_state_round_trip_with_fingers():
    step = _step()
    msg = rosmsg.joint_state_msg(TYPES, HEADER, SPEC, **step, fingers=FINGERS)
    assert msg.type == "sensor_msgs/msg/JointState" and msg.header is HEADER
    assert msg.name == [*SPEC.joint_names, *FINGERS] == rosmsg.joint_state_names(SPEC, FINGERS)
    assert msg.position.dtype == np.float64 and len(msg.effort) == 0
    np.testing.assert_array_equal(msg.velocity[J:], np.zeros(F))  # fingers: 0, not stored
    keys = rosmsg.joint_state_keys(SPEC, msg.position, msg.velocity)
    assert sorted(keys) == sorted(step)
    for key, value in step.items():
        assert keys[key].dtype == np.float32
        np.testing.assert_array_equal(keys[key], value)  # float32 fits float64 exactly


def test_without_velocity_or_fingers_the_message_says_unknown_and_no_gripper_key():
    step = _step()
    msg = rosmsg.joint_state_msg(TYPES, HEADER, SPEC, step["joint_pos"])
    assert msg.name == list(SPEC.joint_names) and len(msg.velocity) == 0
    keys = rosmsg.joint_state_keys(SPEC, msg.position)
    assert sorted(keys) == ["joint_pos"]
    np.testing.assert_array_equal(keys["joint_pos"], step["joint_pos"])


def test_joints_are_taken_by_name_from_messages_in_any_order_and_split():
    """An arm driver and a gripper driver publish apart, names shuffled: the keys come by
    name (data.align.JointStateMerge does the merging, rosmsg names and splits)."""
    step = _step()
    want = rosmsg.joint_state_names(SPEC, FINGERS)
    arm_names = list(reversed(SPEC.joint_names))
    arm = SimpleNamespace(
        name=arm_names,
        position=step["joint_pos"][::-1].astype(np.float64),
        velocity=step["joint_vel"][::-1].astype(np.float64),
    )
    fingers = SimpleNamespace(
        name=[FINGERS[1], "other_joint", FINGERS[0]],
        position=[step["gripper_pos"][1], 9.0, step["gripper_pos"][0]],
        velocity=[],
    )
    merge = JointStateMerge(0.1)
    for t, msg in ((0.0, arm), (0.01, fingers)):
        merge.update(t, msg.name, msg.position, msg.velocity)
    sample = merge.take(want)
    keys = rosmsg.joint_state_keys(SPEC, sample.positions, sample.velocities)
    for key in ("joint_pos", "joint_vel", "gripper_pos"):
        np.testing.assert_array_equal(keys[key], step[key])
    # one message, picked by name: what the bag reader does with a trajectory goal
    picked = rosmsg.by_name(fingers.name, fingers.position, FINGERS, "/joint_states")
    np.testing.assert_array_equal(picked, step["gripper_pos"].astype(np.float64))


def test_stacked_samples_split_the_same_way():
    steps = [_step() for _ in range(4)]
    pos = np.stack([np.concatenate([s["joint_pos"], s["gripper_pos"]]) for s in steps])  # (T, J+F)
    vel = np.stack([np.concatenate([s["joint_vel"], np.zeros(F)]) for s in steps])
    keys = rosmsg.joint_state_keys(SPEC, pos, vel)
    assert keys["joint_pos"].shape == (4, J) and keys["gripper_pos"].shape == (4, F)
    np.testing.assert_array_equal(keys["joint_vel"][2], steps[2]["joint_vel"])


@pytest.mark.parametrize(
    ("names", "values", "message"),
    [
        (
            ["a", "b"],
            [1.0, 2.0],
            r"/js: joint\(s\) \['c'\] not in the message \(it has \['a', 'b'\]\)",
        ),
        (["a", "b", "c"], [1.0, 2.0], "/js: 3 joint names but 2 values"),
    ],
)
def test_by_name_refuses_missing_joints_and_short_arrays(names, values, message):
    with pytest.raises(rosmsg.MessageError, match=message):
        rosmsg.by_name(names, values, ["c", "a"], "/js")


def test_joint_values_that_do_not_fit_the_spec_are_refused():
    step = _step()
    with pytest.raises(rosmsg.MessageError, match="joint_pos has 3 values; the spec has 7"):
        rosmsg.joint_state_msg(TYPES, HEADER, SPEC, step["joint_pos"][:3])
    with pytest.raises(rosmsg.MessageError, match="gripper_pos has 2 values for the finger"):
        rosmsg.joint_state_msg(TYPES, HEADER, SPEC, step["joint_pos"], None, step["gripper_pos"])
    with pytest.raises(rosmsg.MessageError, match="joint_vel has 2 values for 7 joints"):
        rosmsg.joint_state_msg(TYPES, HEADER, SPEC, step["joint_pos"], step["joint_vel"][:2])
    with pytest.raises(rosmsg.MessageError, match="2 joint positions; the spec has 7 joints"):
        rosmsg.joint_state_keys(SPEC, np.zeros(2))


# ---- geometry_msgs/PoseStamped, Float64MultiArray, Bool ------------------------------------


def test_pose_round_trip_keeps_xyzw_order():
    pos = np.array([0.1, -0.2, 0.3], np.float32)
    quat = np.array([0.0, 0.6, 0.0, 0.8], np.float32)  # (x, y, z, w)
    msg = rosmsg.pose_msg(TYPES, HEADER, pos, quat)
    assert msg.type == "geometry_msgs/msg/PoseStamped" and msg.header is HEADER
    assert (msg.pose.orientation.y, msg.pose.orientation.w) == (quat[1], quat[3])
    keys = rosmsg.pose_keys(msg)
    np.testing.assert_array_equal(keys["eef_pos"], pos)
    np.testing.assert_array_equal(keys["eef_quat"], quat)
    assert keys["eef_pos"].dtype == keys["eef_quat"].dtype == np.float32


def test_float_array_round_trip_and_checks():
    values = RNG.normal(size=10).astype(np.float32)
    msg = rosmsg.float_array_msg(TYPES, values)
    assert msg.layout.dim == [] and msg.layout.data_offset == 0
    out = rosmsg.float_values(msg, 10, "object_state")
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out.astype(np.float32), values)
    with pytest.raises(rosmsg.MessageError, match="^object_state has 10 values; expected 3$"):
        rosmsg.float_values(msg, 3, "object_state")
    msg.data = np.array([1.0, np.nan])
    with pytest.raises(rosmsg.MessageError, match="^/cmd holds NaN/inf$"):
        rosmsg.float_values(msg, 2, "/cmd")
    assert np.isnan(rosmsg.float_values(msg, finite=False)[1])  # bags check NaN per step


def test_engaged_flag_is_the_intervention_key():
    keys = rosmsg.intervention_keys(SimpleNamespace(data=True))
    assert keys == {"intervention": np.array(True)} and keys["intervention"].dtype == bool
    assert set(rosmsg.TOPIC_KEYS) >= {*rosmsg.JOINT_KEYS, *rosmsg.POSE_KEYS, "object_state"}


# ---- images --------------------------------------------------------------------------------


def test_compressed_images_decode_and_bad_bytes_fail_with_the_module_error():
    cv2 = pytest.importorskip("cv2")
    rgb = RNG.integers(0, 255, (6, 5, 3), dtype=np.uint8)
    ok, png = cv2.imencode(".png", rgb[..., ::-1])
    assert ok
    np.testing.assert_array_equal(rosmsg.decode_compressed(png.tobytes(), "png"), rgb)
    np.testing.assert_array_equal(rosmsg.decode_compressed(png.reshape(-1), "png"), rgb)
    with pytest.raises(
        rosmsg.ImageError, match=r"could not decode compressed image \(format 'x'\)"
    ):
        rosmsg.decode_compressed(b"\x00\x01\x02", "x")
    assert issubclass(rosmsg.ImageError, rosmsg.MessageError)


def test_bad_image_is_a_message_error():
    msg = SimpleNamespace(encoding="yuv422", height=2, width=2, step=4, data=b"\x00" * 8)
    with pytest.raises(rosmsg.MessageError, match="encoding 'yuv422' is not supported"):
        rosmsg.decode_image(msg)


def test_the_module_imports_no_ros():
    code = (
        "import sys, data.rosmsg\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('rclpy', 'rosbags', 'sensor_msgs', 'std_msgs', 'geometry_msgs')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def _trajectory(names, points, dt=0.1, stamp=(0, 0)):
    """A duck-typed trajectory_msgs/JointTrajectory, rosbags-style (positions as ndarrays)."""
    return SimpleNamespace(
        header=SimpleNamespace(stamp=SimpleNamespace(sec=stamp[0], nanosec=stamp[1])),
        joint_names=list(names),
        points=[
            SimpleNamespace(
                positions=np.asarray(q, np.float64),
                time_from_start=SimpleNamespace(sec=0, nanosec=int((k + 1) * dt * 1e9)),
            )
            for k, q in enumerate(points)
        ],
    )


def test_trajectory_by_name_with_and_without_a_clock():
    """One parser for the live nodes (a clock: stale goals refused) and bags (no clock: a bag
    recorded in sim time has stamps of a few seconds that a wall clock would call stale)."""
    names = SPEC.joint_names
    points = RNG.normal(size=(3, J))
    msg = _trajectory(names[::-1], points[:, ::-1], stamp=(4, 0))  # joints in reverse order
    traj = rosmsg.trajectory_from_msg(msg, names, np.zeros(J), now=None)
    assert traj.start == 4.0
    np.testing.assert_allclose(traj.positions, points)
    np.testing.assert_allclose(traj.at(4.3), points[-1])
    with pytest.raises(rosmsg.MessageError, match="ends in the past"):
        rosmsg.trajectory_from_msg(msg, names, np.zeros(J), now=1.7e9)
    bad = points.copy()
    bad[1, 2] = np.nan
    with pytest.raises(rosmsg.MessageError, match="NaN"):
        rosmsg.trajectory_from_msg(_trajectory(names, bad), names, np.zeros(J), now=None)
    with pytest.raises(rosmsg.MessageError, match=r"joint\(s\) \['robot0_joint1'\] not in"):
        rosmsg.trajectory_from_msg(_trajectory(names[1:], points[:, 1:]), names, 0.0, None)
