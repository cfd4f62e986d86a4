"""ROS message plumbing for the rosbag2 format: topic names, stamps, images, buffers.

Which message field is which store key is data/rosmsg.py's, shared with the live nodes.

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

from data import rosmsg
from data.align import JointStateMerge
from data.convert.base import Option
from data.embodiment import Embodiment
from data.errors import UserError

MARKER_TYPE = "std_msgs/msg/String"  # JSON {"event": "start" | "end", ...episode metadata}
EXTRA_PREFIX = "/handoff/"  # other per-step keys (reward, sim_state, ...) as Float64MultiArray
SPEC_TOPIC = "/handoff/embodiment"  # the embodiment spec as JSON, once, so a bag is self-describing
KEYS_FIELD = "handoff_keys"  # in the start marker: {key: [dtype, shape]} of /handoff/<key>


@dataclass(frozen=True)
class BagTopics:
    """Which topics hold what. Every field can be set as a conversion option."""

    joint_states_topic: str = rosmsg.TOPICS["joint_states_topic"][0]
    camera_topic: str = rosmsg.TOPICS["camera_topic"][0]
    gripper_joints: str = rosmsg.TOPICS["gripper_joints"][0]
    eef_pose_topic: str = rosmsg.TOPICS["eef_pose_topic"][0]
    object_state_topic: str = rosmsg.TOPICS["object_state_topic"][0]
    trajectory_topic: str = rosmsg.TOPICS["trajectory_topic"][0]
    forward_topic: str = rosmsg.TOPICS["forward_topic"][0]
    gripper_topic: str = rosmsg.TOPICS["gripper_topic"][0]
    engaged_topic: str = rosmsg.TOPICS["engaged_topic"][0]
    marker_topic: str = "/handoff/episode"

    def __post_init__(self) -> None:
        if "{camera}" not in self.camera_topic:
            raise UserError(f"camera_topic {self.camera_topic!r} must contain {{camera}}")

    def finger_names(self, spec: Embodiment) -> list[str]:
        """The finger joints whose positions form gripper_pos (Embodiment.finger_joints)."""
        return spec.finger_joints(self.gripper_joints)

    def camera(self, name: str) -> str:
        return self.camera_topic.format(camera=name)


TOPIC_HELP = {
    **{name: description for name, (_, description) in rosmsg.TOPICS.items()},
    "camera_topic": rosmsg.TOPICS["camera_topic"][1] + " (+ /compressed is tried too)",
    "marker_topic": "episode start/end markers (std_msgs/String JSON)",
}
TOPIC_OPTIONS = tuple(Option(f.name, TOPIC_HELP[f.name], str, f.default) for f in fields(BagTopics))
IMAGE_FORMATS = ("raw", "png", "jpeg")  # how the bag writer stores camera frames


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
    """sensor_msgs Image or CompressedImage -> (H, W, 3) RGB (data/rosmsg.py's decoders)."""
    try:
        if msgtype.endswith("CompressedImage"):
            return rosmsg.decode_compressed(msg.data, msg.format)
        return np.ascontiguousarray(rosmsg.decode_image(msg))
    except rosmsg.ImageError as e:
        raise UserError(f"{where}: {e}") from None


def spec_required(embodiment: Embodiment | None, what: str) -> Embodiment:
    if embodiment is None:
        raise UserError(
            f"{what} needs --embodiment (a spec name or YAML path: it names the joints to "
            f"match in /joint_states, the cameras and the control rate)"
        )
    return embodiment


class JointStates:
    """``sensor_msgs/JointState`` messages merged by joint name: the live recorder's rule.

    Each message goes through data/align.py's :class:`JointStateMerge` in log order, exactly as
    the recorder feeds it live: an arm and a separate gripper driver may publish apart on one
    topic, and every message with a wanted joint gives one sample of all ``want`` joints (their
    newest values) at the message's time, provided they lie within ``window`` of each other.
    Velocities a driver does not measure (empty or NaN: ros2_control without a velocity
    interface) are estimated from successive positions; see :meth:`arrays` for the samples
    the recorder cannot estimate live. Times are int ns (bag stamps), so samples stay exact.
    """

    def __init__(self, topic: str, want: list[str], window_ns: int) -> None:
        self.topic, self.want = topic, want
        self.merge = JointStateMerge(window_ns, unit_s=1e-9)
        self.samples = StreamBuffer(topic)
        self.apart = 0  # messages whose joints were not all heard within the window

    def add(self, names: Any, positions: Any, velocities: Any, ns: int, log_ns: int) -> None:
        names = [str(n) for n in names]
        try:
            self.merge.update(ns, names, positions, velocities)
        except ValueError as e:
            raise UserError(
                f"{self.topic}: the message logged at {log_ns / 1e9:.3f} s: {e} (damaged message)"
            ) from None
        if not set(names) & set(self.want):
            return
        heard = set(self.merge.names)
        try:
            s = self.merge.take(self.want)
        except ValueError:  # before every joint was heard once, or a driver fell silent
            self.apart += int(all(n in heard for n in self.want))
            return
        self.samples.add(s.newest, position=s.positions, velocity=s.velocities)

    def arrays(self, n_vel: int) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
        """(stamps (N,), {"position": (N, J), "velocity": (N, J)}, left out): one sample per
        message. ``n_vel`` > 0: the first ``n_vel`` joints' velocities are stored, so they must
        be known. Live, a joint's first message after a pause longer than the window has no
        earlier position to estimate from and the recorder leaves its sample out; offline the
        next message is there, so such a sample takes the forward difference to it (the value
        the next sample got) when that lies within the window. Samples still without a velocity
        (finite positions, no neighbour in the window) are left out, as live, and counted.
        """
        missing = [n for n in self.want if n not in self.merge.names]
        if missing:
            raise UserError(
                f"{self.topic}: joint(s) {missing} are in no message (names seen: "
                f"{self.merge.names[:40]}); use an embodiment whose joint_names match, and set "
                f"the gripper_joints option to the finger joints"
            )
        stamps, values = self.samples.arrays()
        if not n_vel or not len(stamps):
            return stamps, values, 0
        vel = values["velocity"]
        n = len(stamps)
        for j in range(n_vel):
            known = np.isfinite(vel[:, j])
            # index of the next sample with a known velocity (n: none), from the end backwards
            nxt = np.minimum.accumulate(np.where(known, np.arange(n), n)[::-1])[::-1]
            fill = ~known & (nxt < n)
            fill[fill] = stamps[nxt[fill]] - stamps[fill] <= self.merge.window
            vel[fill, j] = vel[nxt[fill], j]
        unknown = np.isnan(vel[:, :n_vel]).any(1) & np.isfinite(values["position"]).all(1)
        keep = ~unknown
        return stamps[keep], {k: v[keep] for k, v in values.items()}, int(unknown.sum())


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
