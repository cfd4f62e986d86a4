"""ROS message plumbing for the rosbag2 format: topic names, stamps, images, buffers.

Topic defaults are the ROS recorder's (ros2_ws/src/handoff_ros/handoff_ros/recorder.py), so a
bag recorded around the robot imports into the same steps the recorder would have written.
ROS is never imported here: messages are (de)serialised with the pure-Python ``rosbags``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from data.embodiment import Embodiment
from data.errors import UserError

MARKER_TYPE = "std_msgs/msg/String"  # JSON {"event": "start" | "end", ...episode metadata}
EXTRA_PREFIX = "/handoff/"  # other per-step keys (reward, sim_state, ...) as Float64MultiArray
SPEC_TOPIC = "/handoff/embodiment"  # the embodiment spec as JSON, once, so a bag is self-describing
KEYS_FIELD = "handoff_keys"  # in the start marker: {key: [dtype, shape]} of /handoff/<key>


@dataclass(frozen=True)
class BagTopics:
    """Which topics hold what. Every field can be set as a conversion option."""

    joint_states_topic: str = "/joint_states"
    camera_topic: str = "/{camera}/image_raw"  # + "/compressed" is tried too when reading
    gripper_joints: str = "gripper0_right_finger_joint1,gripper0_right_finger_joint2"
    eef_pose_topic: str = "/sim_arm/eef_pose"
    object_state_topic: str = "/sim_arm/object_state"
    trajectory_topic: str = "/arm_controller/joint_trajectory"
    forward_topic: str = "/forward_position_controller/commands"
    gripper_topic: str = "/gripper_controller/commands"
    engaged_topic: str = "/teleop/engaged"
    marker_topic: str = "/handoff/episode"

    def __post_init__(self) -> None:
        if "{camera}" not in self.camera_topic:
            raise UserError(f"camera_topic {self.camera_topic!r} must contain {{camera}}")

    @property
    def finger_names(self) -> list[str]:
        return [n for n in self.gripper_joints.split(",") if n]

    def camera(self, name: str) -> str:
        return self.camera_topic.format(camera=name)


TOPIC_OPTIONS = tuple(f.name for f in fields(BagTopics))


def typestore() -> Any:
    from rosbags.typesys import Stores, get_typestore

    # the message definitions of the ROS 2 release the project targets (DESIGN.md: Kilted)
    return get_typestore(Stores.ROS2_KILTED)


def header_stamp_ns(raw: bytes | memoryview, where: str = "message") -> int:
    """Stamp of a CDR message whose first field is std_msgs/Header, without deserialising it.

    CDR: 4-byte encapsulation header (byte 1: 0 big-endian, 1 little-endian), then
    builtin_interfaces/Time {int32 sec, uint32 nanosec}.
    """
    if len(raw) < 12:
        raise UserError(f"{where}: a message of {len(raw)} bytes is too short for its header")
    order = "<" if raw[1] == 1 else ">"
    sec, nsec = struct.unpack_from(order + "iI", raw, 4)
    return sec * 1_000_000_000 + nsec


def stamp_ns(msg: Any, log_time: int) -> int:
    """header.stamp when the message has a set one, else the time the bag logged it."""
    header = getattr(msg, "header", None)
    if header is None:
        return log_time
    ns = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
    return ns if ns > 0 else log_time


def make_header(ts: Any, ns: int, frame_id: str = "") -> Any:
    t = ts.types
    stamp = t["builtin_interfaces/msg/Time"](sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)
    return t["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)


def float_array(ts: Any, values: np.ndarray) -> Any:
    t = ts.types
    layout = t["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    return t["std_msgs/msg/Float64MultiArray"](
        layout=layout, data=np.asarray(values, np.float64).ravel()
    )


def image_msg(ts: Any, ns: int, rgb: np.ndarray, frame_id: str) -> Any:
    H, W = rgb.shape[:2]
    return ts.types["sensor_msgs/msg/Image"](
        header=make_header(ts, ns, frame_id),
        height=H,
        width=W,
        encoding="rgb8",
        is_bigendian=0,
        step=W * 3,
        data=np.ascontiguousarray(rgb[..., :3]).reshape(-1),
    )


def compressed_msg(ts: Any, ns: int, rgb: np.ndarray, frame_id: str, fmt: str) -> Any:
    """sensor_msgs/CompressedImage: ``png`` (lossless) or ``jpeg`` (quality 90)."""
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if fmt == "jpeg" else []
    ok, data = cv2.imencode(f".{fmt}", np.ascontiguousarray(rgb[..., 2::-1]), params)  # BGR
    if not ok:
        raise UserError(f"{frame_id}: could not encode a frame as {fmt}")
    return ts.types["sensor_msgs/msg/CompressedImage"](
        header=make_header(ts, ns, frame_id), format=fmt, data=data.reshape(-1)
    )


def decode_image(msg: Any, msgtype: str, where: str) -> np.ndarray:
    """sensor_msgs Image (rgb8/bgr8/rgba8/bgra8/mono8) or CompressedImage -> (H, W, 3) RGB."""
    import cv2

    if msgtype.endswith("CompressedImage"):
        img = cv2.imdecode(np.asarray(msg.data, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise UserError(f"{where}: cannot decode compressed image ({msg.format!r})")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    enc = msg.encoding.lower()
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}.get(enc)
    if channels is None:
        raise UserError(f"{where}: image encoding {msg.encoding!r} is not supported (use rgb8)")
    data = np.asarray(msg.data, np.uint8)
    if (
        not (msg.height and msg.width)
        or msg.step < msg.width * channels
        or (len(data) < msg.height * msg.step)
    ):
        raise UserError(
            f"{where}: a {msg.width}x{msg.height} {enc} image with step {msg.step} cannot hold "
            f"its {len(data)} bytes of data (damaged message)"
        )
    rows = data[: msg.height * msg.step].reshape(msg.height, msg.step)
    img = rows[:, : msg.width * channels].reshape(msg.height, msg.width, channels)
    if enc == "mono8":
        return np.repeat(img, 3, axis=2)
    if enc.startswith("bgr"):
        return np.ascontiguousarray(img[..., 2::-1])
    return np.ascontiguousarray(img[..., :3])


def spec_required(embodiment: Embodiment | None, what: str) -> Embodiment:
    if embodiment is None:
        raise UserError(
            f"{what} needs --embodiment (a spec name or YAML path: it names the joints to "
            f"match in /joint_states, the cameras and the control rate)"
        )
    return embodiment


def by_name(names: list[str], values: Any, want: list[str], topic: str) -> np.ndarray:
    """values (len(names),) picked in ``want`` order by name (never by position)."""
    where = {n: i for i, n in enumerate(names)}
    missing = [n for n in want if n not in where]
    if missing:
        raise UserError(f"{topic}: joint(s) {missing} not in the message (it has {list(names)})")
    values = np.asarray(values, np.float64)
    if len(values) < len(names):
        raise UserError(f"{topic}: {len(names)} joint names but {len(values)} values")
    return values[[where[n] for n in want]].astype(np.float32)


class JointStates:
    """``sensor_msgs/JointState`` messages merged by joint name.

    Arms whose gripper fingers come from a separate driver publish them in their own message
    on the same topic (one message with the arm joints, another with the fingers). So each
    message is kept as it is, per set of wanted joints it carries (one buffer add per
    message), and :meth:`streams` gives every wanted joint its own stream: each control tick
    then takes each joint's newest value by data/align.py's rule and max age, which merges
    joints from different messages within the alignment window. Empty ``velocity`` (ROS's
    "unknown") is NaN; a topic that never carries velocities is reported by :attr:`velocities`.
    """

    def __init__(self, topic: str, want: list[str]) -> None:
        self.topic, self.want = topic, want
        self.groups: dict[tuple[str, ...], StreamBuffer] = {}
        self.stamps = StreamBuffer(topic)  # every message with a wanted joint (episode splits)
        self.seen: set[str] = set()
        self.velocities = False  # some message carried velocities

    def add(self, msg: Any, ns: int, log_ns: int) -> None:
        names = [str(n) for n in msg.name]
        pos = np.asarray(msg.position, np.float64)
        vel = np.asarray(msg.velocity, np.float64)
        if len(pos) != len(names) or len(vel) not in (0, len(names)):
            raise UserError(
                f"{self.topic}: the message logged at {log_ns / 1e9:.3f} s has {len(names)} "
                f"names, {len(pos)} positions and {len(vel)} velocities (damaged message)"
            )
        self.seen.update(names)
        index = {n: i for i, n in enumerate(names)}
        carried = tuple(n for n in self.want if n in index)
        if not carried:
            return
        pick = [index[n] for n in carried]
        buf = self.groups.setdefault(carried, StreamBuffer(self.topic))
        buf.add(
            ns, position=pos[pick], velocity=vel[pick] if len(vel) else np.full(len(pick), np.nan)
        )
        self.velocities |= bool(len(vel))
        self.stamps.add(ns)

    def streams(self) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
        """{joint: (stamps (N,) sorted, {"position": (N,), "velocity": (N,)})} of each wanted
        joint, from every message that carried it."""
        missing = [n for n in self.want if not any(n in g for g in self.groups)]
        if missing:
            raise UserError(
                f"{self.topic}: joint(s) {missing} are in no message (names seen: "
                f"{sorted(self.seen)[:40]}); use an embodiment whose joint_names match, and set "
                f"the gripper_joints option to the finger joints"
            )
        groups = {g: buf.arrays() for g, buf in self.groups.items()}
        out = {}
        for name in self.want:
            parts = [
                (stamps, values, g.index(name))
                for g, (stamps, values) in groups.items()
                if name in g
            ]
            stamps = np.concatenate([p[0] for p in parts])
            order = np.argsort(stamps, kind="stable")  # ties keep arrival order per message set
            values = {
                k: np.concatenate([v[k][:, i] for _, v, i in parts])[order]
                for k in ("position", "velocity")
            }
            out[name] = (stamps[order], values)
        return out


def parse_marker(text: Any, path: Path) -> dict[str, Any]:
    try:
        event = json.loads(str(text))
    except json.JSONDecodeError:
        event = {"event": str(text).strip()}
    if not isinstance(event, dict) or event.get("event") not in ("start", "end"):
        raise UserError(f"{path}: episode marker {text!r} is not start/end")
    return event


class StreamBuffer:
    """Stamps (N,) int64 ns and per-key values (N, ...) of one topic, kept in arrays that
    double as they fill: a long bag's 1 kHz joint states stay compact (no object per message).
    """

    def __init__(self, topic: str) -> None:
        self.topic, self.n = topic, 0
        self._stamps = np.empty(256, np.int64)
        self._values: dict[str, np.ndarray] = {}

    def add(self, ns: int, **values: Any) -> None:
        if self.n == len(self._stamps):
            grow = len(self._stamps)
            self._stamps = np.concatenate([self._stamps, np.empty(grow, np.int64)])
            for k, buf in self._values.items():
                self._values[k] = np.concatenate([buf, np.empty_like(buf[:grow])])
        self._stamps[self.n] = ns
        for k, v in values.items():
            v = np.asarray(v)
            buf = self._values.get(k)
            if buf is None:  # strings (markers) as objects: their lengths differ
                dtype = object if v.dtype.kind == "U" else v.dtype
                buf = self._values[k] = np.empty((len(self._stamps), *v.shape), dtype)
            if buf.shape[1:] != v.shape:
                raise UserError(
                    f"{self.topic}: message size changed from {buf.shape[1:]} to {v.shape}"
                )
            buf[self.n] = v
        self.n += 1

    def arrays(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        n = self.n
        return self._stamps[:n].copy(), {k: v[:n].copy() for k, v in self._values.items()}
