"""ROS messages <-> store keys, both directions, without ROS: the arm's observable contract.

Which message field becomes which store key is written here once, for the live nodes
(handoff_ros: policy node, recorder, simulated arm) and the rosbag2 converters
(data/convert/rosbag*.py). Live rclpy messages and the pure-Python ``rosbags`` library's
messages have the same fields, so every reader takes either (duck-typed: fields only), and
rclpy and rosbags are never imported here.

=====================================  ===============================================
message                                store keys
=====================================  ===============================================
sensor_msgs/JointState (by name)       joint_pos (J,), joint_vel (J,): the spec's
                                       ``joint_names``; gripper_pos (F,): the finger
                                       joints (``Embodiment.finger_joints``)
geometry_msgs/PoseStamped              eef_pos (3,) m, eef_quat (4,) (x, y, z, w)
std_msgs/Float64MultiArray             object_state (privileged, simulated arm),
                                       forward and gripper commands (the action)
std_msgs/Bool (teleop engaged)         intervention ()
trajectory_msgs/JointTrajectory        the arm command (joints by name), checked as
                                       joint_trajectory_controller checks it
sensor_msgs/Image, CompressedImage     <camera> (H, W, 3) uint8 RGB
=====================================  ===============================================

Writers go the other way: ``*_msg`` functions take ``types``, a mapping from ROS type name
(``"sensor_msgs/msg/JointState"``) to a constructor taking the fields as keywords -- the
``rosbags`` typestore's ``types``, or a dict of rclpy message classes -- so the caller chooses
the library. Float sequences are given as float64 ndarrays (what rosbags serialises; rclpy
copies them into its arrays).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from data.embodiment import Embodiment

JOINT_KEYS = ("joint_pos", "joint_vel", "gripper_pos")  # from sensor_msgs/JointState
POSE_KEYS = ("eef_pos", "eef_quat")  # from geometry_msgs/PoseStamped
# every low-dim observation key a topic carries (object_state: a Float64MultiArray)
TOPIC_KEYS = (*JOINT_KEYS, *POSE_KEYS, "object_state")
INTERVENTION_KEY = "intervention"  # from the teleop engaged flag (std_msgs/Bool)

# Where the arm's messages are, by default: {option/parameter name: (topic, description)}.
# The nodes' parameters (handoff_ros.rosutil.CommandTopics/ObservationTopics) and the bag
# converters' options (data/convert/rosbag_msgs.BagTopics) are both made from this table.
TOPICS: dict[str, tuple[str, str]] = {
    "joint_states_topic": ("/joint_states", "sensor_msgs/JointState topic of the arm"),
    "camera_topic": (
        "/{camera}/image_raw",
        "camera image topic, {camera} replaced by the spec's camera name",
    ),
    "gripper_joints": (
        "",
        "comma-separated finger joints in joint_states that form gripper_pos (empty: the "
        "spec's gripper.joint_names)",
    ),
    "eef_pose_topic": ("/sim_arm/eef_pose", "geometry_msgs/PoseStamped: eef_pos, eef_quat"),
    "object_state_topic": (
        "/sim_arm/object_state",
        "privileged object state (the simulated arm; std_msgs/Float64MultiArray)",
    ),
    "trajectory_topic": (
        "/arm_controller/joint_trajectory",
        "trajectory_msgs/JointTrajectory command topic (joint_trajectory_controller input)",
    ),
    "forward_topic": (
        "/forward_position_controller/commands",
        "std_msgs/Float64MultiArray joint command topic (forward_command_controller input)",
    ),
    "gripper_topic": (
        "/gripper_controller/commands",
        "gripper command topic (one value, -1 open .. 1 closed)",
    ),
    "engaged_topic": ("/teleop/engaged", "teleop engaged flag (std_msgs/Bool; intervention)"),
}

# sensor_msgs/Image encodings decoded to RGB, and their bytes per pixel
IMAGE_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}

Types = Mapping[str, Callable[..., Any]]


def seconds(t: Any) -> float:
    """A builtin_interfaces Time or Duration (``sec``, ``nanosec``) in seconds."""
    return t.sec + t.nanosec * 1e-9


class MessageError(ValueError):
    """A malformed message, or values that do not fit the message; the text says what."""


class ImageError(MessageError):
    """A malformed or unsupported image message; the message says what is wrong."""


# ---- sensor_msgs/JointState ---------------------------------------------------------------


def joint_state_names(spec: Embodiment, fingers: Sequence[str] = ()) -> list[str]:
    """The /joint_states names read, in store order: the spec's arm joints (J), then the
    finger joints (F) whose positions form gripper_pos (``spec.finger_joints(...)``; empty
    when gripper_pos is not wanted)."""
    return [*spec.joint_names, *fingers]


def by_name(names: Sequence[str], values: Any, want: Sequence[str], where: str) -> np.ndarray:
    """``values`` (len(names),) picked in ``want`` order by name (never by position) -> (W,)
    float64. Raises :class:`MessageError` naming the joints missing, or too few values."""
    index = {str(n): i for i, n in enumerate(names)}
    missing = [n for n in want if n not in index]
    if missing:
        raise MessageError(
            f"{where}: joint(s) {missing} not in the message (it has {[str(n) for n in names]})"
        )
    values = np.asarray(values, np.float64).reshape(-1)
    if len(values) < len(names):
        raise MessageError(f"{where}: {len(names)} joint names but {len(values)} values")
    return values[[index[n] for n in want]]


def joint_state_keys(
    spec: Embodiment, positions: Any, velocities: Any = None
) -> dict[str, np.ndarray]:
    """Joints in :func:`joint_state_names` order -> store keys, float32.

    positions (..., J + F) -> joint_pos (..., J) and, when F > 0, gripper_pos (..., F);
    velocities (..., J + F) or (..., J) -> joint_vel (..., J) (omitted when None: finger
    velocities are never stored). Works on one sample or on T stacked ones (bags).
    """
    J = spec.n_joints
    positions = np.asarray(positions)
    if positions.shape[-1] < J:
        raise MessageError(f"{positions.shape[-1]} joint positions; the spec has {J} joints")
    keys = {"joint_pos": positions[..., :J].astype(np.float32)}
    if velocities is not None:
        keys["joint_vel"] = np.asarray(velocities)[..., :J].astype(np.float32)
    if positions.shape[-1] > J:
        keys["gripper_pos"] = positions[..., J:].astype(np.float32)
    return keys


def joint_state_msg(
    types: Types,
    header: Any,
    spec: Embodiment,
    joint_pos: Any,
    joint_vel: Any = None,
    gripper_pos: Any = None,
    fingers: Sequence[str] = (),
) -> Any:
    """One step's joint_pos (J,), joint_vel (J,) and gripper_pos (F,) -> sensor_msgs/JointState
    named :func:`joint_state_names`. No joint_vel: an empty velocity array, JointState's
    "unknown" (never made-up zeros); the fingers' velocities are 0. Raises
    :class:`MessageError` when the sizes do not fit the spec's joints and ``fingers``."""
    pos = np.asarray(joint_pos, np.float64).reshape(-1)
    grip = np.asarray(() if gripper_pos is None else gripper_pos, np.float64).reshape(-1)
    if len(pos) != spec.n_joints:
        raise MessageError(f"joint_pos has {len(pos)} values; the spec has {spec.n_joints} joints")
    if len(grip) != len(fingers):
        raise MessageError(
            f"gripper_pos has {len(grip)} values for the finger joints {list(fingers)}"
        )
    if joint_vel is None:
        vel = np.zeros(0)
    else:
        vel = np.concatenate([np.asarray(joint_vel, np.float64).reshape(-1), np.zeros(len(grip))])
        if len(vel) != len(pos) + len(grip):
            raise MessageError(f"joint_vel has {len(vel) - len(grip)} values for {len(pos)} joints")
    return types["sensor_msgs/msg/JointState"](
        header=header,
        name=joint_state_names(spec, fingers),
        position=np.concatenate([pos, grip]),
        velocity=vel,
        effort=np.zeros(0),
    )


# ---- geometry_msgs/PoseStamped ------------------------------------------------------------


def pose_keys(msg: Any) -> dict[str, np.ndarray]:
    """PoseStamped (or Pose) -> eef_pos (3,) and eef_quat (4,) (x, y, z, w: handoff's and
    ROS's order), float32."""
    pose = getattr(msg, "pose", msg)
    p, o = pose.position, pose.orientation
    return {
        "eef_pos": np.array([p.x, p.y, p.z], np.float32),
        "eef_quat": np.array([o.x, o.y, o.z, o.w], np.float32),
    }


def pose_msg(types: Types, header: Any, eef_pos: Any, eef_quat: Any) -> Any:
    """eef_pos (3,) and eef_quat (4,) (x, y, z, w) -> geometry_msgs/PoseStamped."""
    x, y, z = (float(v) for v in np.asarray(eef_pos).reshape(3))
    qx, qy, qz, qw = (float(v) for v in np.asarray(eef_quat).reshape(4))
    pose = types["geometry_msgs/msg/Pose"](
        position=types["geometry_msgs/msg/Point"](x=x, y=y, z=z),
        orientation=types["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw),
    )
    return types["geometry_msgs/msg/PoseStamped"](header=header, pose=pose)


# ---- std_msgs/Float64MultiArray and Bool --------------------------------------------------


def float_values(
    msg: Any, n: int | None = None, where: str = "Float64MultiArray", *, finite: bool = True
) -> np.ndarray:
    """Float64MultiArray ``data`` -> (n,) float64: object_state, a forward command (one value
    per joint, the controller's order) or the gripper command (one value).

    Raises :class:`MessageError` when ``n`` is given and the length differs, or with
    ``finite`` when a value is NaN/inf (a bag's converter checks those per step instead).
    """
    values = np.asarray(msg.data, dtype=np.float64).reshape(-1)
    if n is not None and values.shape != (n,):
        raise MessageError(f"{where} has {values.size} values; expected {n}")
    if finite and not np.all(np.isfinite(values)):
        raise MessageError(f"{where} holds NaN/inf")
    return values


def float_array_msg(types: Types, values: Any) -> Any:
    """(N,) values (any shape, flattened) -> std_msgs/Float64MultiArray with an empty layout."""
    layout = types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    return types["std_msgs/msg/Float64MultiArray"](
        layout=layout, data=np.asarray(values, np.float64).reshape(-1)
    )


def intervention_keys(msg: Any) -> dict[str, np.ndarray]:
    """The teleop engaged flag (std_msgs/Bool) -> intervention () bool."""
    return {INTERVENTION_KEY: np.array(bool(msg.data))}


# ---- trajectory_msgs/JointTrajectory ------------------------------------------------------


@dataclass
class Trajectory:
    """Piecewise-linear joint path: ``origin`` (J,) at ``start``, then ``positions`` (K, J) at
    ``start + times`` (K,), seconds. Holds the last point after the end."""

    start: float
    origin: np.ndarray
    times: np.ndarray
    positions: np.ndarray

    def at(self, t: float) -> np.ndarray:
        """(J,) target at time ``t`` (seconds, the same clock as ``start``)."""
        s = t - self.start
        times = np.concatenate([[0.0], self.times])
        points = np.vstack([self.origin[None], self.positions])
        if s <= 0:
            return points[0].copy()
        if s >= times[-1]:
            return points[-1].copy()
        return np.array([np.interp(s, times, points[:, j]) for j in range(points.shape[1])])


def trajectory_from_msg(
    msg: Any, joint_names: Sequence[str], origin: Any, now: float | None
) -> Trajectory:
    """A JointTrajectory as joint_trajectory_controller reads it -> :class:`Trajectory` in
    ``joint_names`` order (joints matched by name, any order); :class:`MessageError` says what
    is wrong. A zero ``header.stamp`` means "start now". Like that controller, a stamped
    trajectory that ends before ``now`` is refused (a stale or badly stamped goal must not make
    the arm jump to its last point); ``now=None`` (a bag, whose clock may be sim time) skips
    that check and starts at the stamp."""
    names = [str(n) for n in msg.joint_names]
    if not len(msg.points):
        raise MessageError("joint_trajectory has no points")
    times, positions = [], []
    for k, p in enumerate(msg.points):
        if len(p.positions) != len(names):
            raise MessageError(
                f"point {k} has {len(p.positions)} positions for {len(names)} joints"
            )
        times.append(seconds(p.time_from_start))
        positions.append(by_name(names, p.positions, joint_names, "joint_trajectory"))
    times_arr, pos = np.asarray(times), np.vstack(positions)
    if np.any(np.diff(times_arr) <= 0) or times_arr[0] < 0:
        raise MessageError("time_from_start must be >= 0 and strictly increasing over the points")
    if not np.all(np.isfinite(pos)):
        raise MessageError("joint_trajectory holds NaN/inf positions")
    stamp = seconds(msg.header.stamp)
    start = stamp if now is None or stamp != 0 else now
    if now is not None and start + times_arr[-1] < now:
        raise MessageError(
            f"joint_trajectory stamped {now - stamp:.3f} s ago ends in the past; refused"
        )
    return Trajectory(start, np.asarray(origin, dtype=np.float64), times_arr, pos)


# ---- sensor_msgs/Image and CompressedImage -------------------------------------------------


def decode_image(msg: Any) -> np.ndarray:
    """sensor_msgs/Image fields (encoding, height, width, step, data) -> (H, W, 3) uint8 RGB.

    Accepts the encodings in :data:`IMAGE_CHANNELS` (case-insensitive). Rows padded beyond
    width x channels (``step`` larger) are cropped. For rgb8 the result is a read-only view of
    the message's buffer (no copy at 30 fps x 0.9 MB per VGA frame; whoever stores it copies it
    once), otherwise a new array. Raises :class:`ImageError` for another encoding, an empty
    size, a ``step`` below width x channels, or ``data`` shorter than step x height.
    """
    enc = str(msg.encoding).lower()
    channels = IMAGE_CHANNELS.get(enc)
    if channels is None:
        raise ImageError(
            f"encoding {msg.encoding!r} is not supported; publish one of {sorted(IMAGE_CHANNELS)}"
        )
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageError(f"image size {w}x{h} is empty")
    row = w * channels
    if step < row:
        raise ImageError(f"step {step} is below width*channels = {row}")
    data = msg.data
    buf = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    buf = buf.view(np.uint8).reshape(-1)
    if buf.size < step * h:
        raise ImageError(
            f"a {w}x{h} {enc} image with step {step} needs step*height = {step * h} bytes "
            f"but data has {buf.size} bytes (damaged message)"
        )
    pixels = buf[: step * h].reshape(h, step)[:, :row].reshape(h, w, channels)  # (H, W, C)
    if enc == "rgb8":
        return pixels
    import cv2  # lazily: data imports OpenCV only where it decodes

    code = {
        "bgr8": cv2.COLOR_BGR2RGB,
        "rgba8": cv2.COLOR_RGBA2RGB,
        "bgra8": cv2.COLOR_BGRA2RGB,
        "mono8": cv2.COLOR_GRAY2RGB,
    }[enc]
    return cv2.cvtColor(np.ascontiguousarray(pixels), code)


# the first bytes of the formats image_transport's compressed plugin writes
COMPRESSED_MAGIC = {b"\xff\xd8": "jpeg", b"\x89P": "png"}


def check_compressed(data: Any) -> None:
    """Cheap check (no decoding) that CompressedImage ``data`` starts like a JPEG or PNG;
    :class:`ImageError` otherwise (compressedDepth, or not an image)."""
    if bytes(data[:2]) not in COMPRESSED_MAGIC:
        raise ImageError("compressed image is neither JPEG nor PNG (compressedDepth?)")


def decode_compressed(data: Any, fmt: str = "") -> np.ndarray:
    """sensor_msgs/CompressedImage ``data`` (JPEG or PNG bytes, or a uint8 ndarray as rosbags
    gives it) -> (H, W, 3) uint8 RGB. Raises :class:`ImageError` when it does not decode."""
    import cv2

    buf = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    frame = cv2.imdecode(buf.view(np.uint8).reshape(-1), cv2.IMREAD_COLOR)
    if frame is None:
        raise ImageError(f"could not decode compressed image (format {fmt!r})")
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
