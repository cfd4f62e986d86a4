"""Write episodes as a rosbag2 MCAP with the topics the ROS recorder listens to.

Per step t (stamped at the episode's start time + ``timestamp``): ``/joint_states`` (arm
joints + finger joints), ``/sim_arm/eef_pose``, ``/sim_arm/object_state``, each camera's
``image_raw`` (rgb8, lossless; ``image_format=png|jpeg`` writes ``image_raw/compressed``
instead), the action as a forward command (7 joint targets) plus the
gripper command, ``/teleop/engaged`` for ``intervention``, and any other per-step key on
``/handoff/<key>``. ``/handoff/episode`` markers carry each episode's metadata, so importing
the bag gives back the same episodes, steps and metadata (low-dim values bit-exact: float32
fits float64 exactly).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from data import rosmsg
from data.convert.base import Episode, Reader, Report, publish, staging_dir
from data.convert.rosbag_msgs import (
    EXTRA_PREFIX,
    IMAGE_FORMATS,
    KEYS_FIELD,
    MARKER_TYPE,
    SPEC_TOPIC,
    BagTopics,
    compressed_msg,
    image_msg,
    make_header,
    spec_required,
    typestore,
)
from data.embodiment import Embodiment
from data.errors import UserError

NS = 1_000_000_000
# keys with a topic of their own (data/rosmsg.py); every other per-step key goes to /handoff/
OWN_KEYS = {*rosmsg.TOPIC_KEYS, rosmsg.INTERVENTION_KEY, "action", "timestamp"}


class RosbagWriter:
    def __init__(
        self,
        path: Path,
        report: Report,
        reader: Reader,
        embodiment: Embodiment | None,
        *,
        force: bool = False,
        gap_s: float = 1.0,
        image_format: str = "raw",
        **topics: Any,
    ) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.spec = spec_required(embodiment, "writing a rosbag2")
        if image_format not in IMAGE_FORMATS:
            raise UserError(f"image_format={image_format!r}: choose raw, png or jpeg")
        self.image_format = image_format
        if image_format == "jpeg":
            report.note("camera frames written as JPEG (quality 90): lossy")
        topics = {k: v for k, v in topics.items() if k in BagTopics.__dataclass_fields__}
        self.topics = BagTopics(**topics)
        # rosbags names the storage file after the bag directory: stage under the final name
        self.path, self.stage, self.report = path, staging_dir(path), report
        self.stage.mkdir()
        self.tmp = self.stage / path.name
        self.ts = typestore()
        self.bag = Writer(self.tmp, version=9, storage_plugin=StoragePlugin.MCAP)
        self.bag.open()
        self.conns: dict[str, Any] = {}
        self.gap = int(gap_s * NS)
        self.next_free = 0  # episodes never overlap and stay > gap_s apart
        if reader.attrs:
            report.drop(f"store attrs {sorted(reader.attrs)} (a bag has no dataset metadata)")

    def _write(self, topic: str, msgtype: str, ns: int, msg: Any) -> None:
        conn = self.conns.get(topic)
        if conn is None:
            conn = self.conns[topic] = self.bag.add_connection(topic, msgtype, typestore=self.ts)
        self.bag.write(conn, ns, self.ts.serialize_cdr(msg, msgtype))

    def write(self, episode: Episode) -> None:
        spec, t, types = self.spec, self.topics, self.ts.types
        steps, T = episode.steps, len(episode)
        if "joint_pos" not in steps or "action" not in steps:
            raise UserError(f"{self.report.src}: writing a bag needs joint_pos and action")
        rel = steps.get("timestamp", np.arange(T) / spec.control_hz)
        start = int(round(float(episode.meta.get("start_time") or 0) * NS))
        base = max(start, self.next_free)
        ticks = base + np.round((np.asarray(rel) - rel[0]) * NS).astype(np.int64)  # (T,)
        extras = sorted(k for k in set(steps) - OWN_KEYS if not _is_camera(steps[k]))
        # dtype and per-step shape of /handoff/<key> values, which travel as flat float64
        keys = {k: [steps[k].dtype.str, list(steps[k].shape[1:])] for k in extras}
        marker = {"event": "start", **episode.meta, KEYS_FIELD: keys}
        if SPEC_TOPIC not in self.conns:
            self._write(SPEC_TOPIC, MARKER_TYPE, int(ticks[0]), _string(types, spec.to_dict()))
        self._write(t.marker_topic, MARKER_TYPE, int(ticks[0]), _string(types, marker))
        fingers = t.finger_names(spec) if "gripper_pos" in steps else []
        for key in sorted(set(steps) - OWN_KEYS - set(spec.camera_names)):
            if _is_camera(steps[key]):
                self.report.drop(f"camera {key!r} (not in the spec's cameras)")
        for i, ns in enumerate(ticks.tolist()):
            header = make_header(self.ts, ns)
            try:
                js = rosmsg.joint_state_msg(
                    types,
                    header,
                    spec,
                    steps["joint_pos"][i],
                    steps["joint_vel"][i] if "joint_vel" in steps else None,
                    steps["gripper_pos"][i] if fingers else None,
                    fingers,
                )
            except rosmsg.MessageError as e:
                raise UserError(f"{self.report.src}: step {i}: {e}") from None
            self._write(t.joint_states_topic, "sensor_msgs/msg/JointState", ns, js)
            if "eef_pos" in steps and "eef_quat" in steps:
                self._write(
                    t.eef_pose_topic,
                    "geometry_msgs/msg/PoseStamped",
                    ns,
                    rosmsg.pose_msg(types, header, steps["eef_pos"][i], steps["eef_quat"][i]),
                )
            if "object_state" in steps:
                self._write(
                    t.object_state_topic,
                    "std_msgs/msg/Float64MultiArray",
                    ns,
                    rosmsg.float_array_msg(types, steps["object_state"][i]),
                )
            for cam in spec.camera_names:
                if cam in steps:
                    self._write_image(cam, ns, steps[cam][i])
            action = steps["action"][i]
            self._write(
                t.forward_topic,
                "std_msgs/msg/Float64MultiArray",
                ns,
                rosmsg.float_array_msg(types, action[: spec.n_joints]),
            )
            self._write(
                t.gripper_topic,
                "std_msgs/msg/Float64MultiArray",
                ns,
                rosmsg.float_array_msg(types, action[spec.n_joints :]),
            )
            if "intervention" in steps:
                self._write(
                    t.engaged_topic,
                    "std_msgs/msg/Bool",
                    ns,
                    types["std_msgs/msg/Bool"](data=bool(steps[rosmsg.INTERVENTION_KEY][i])),
                )
            for key in extras:
                self._write(
                    EXTRA_PREFIX + key,
                    "std_msgs/msg/Float64MultiArray",
                    ns,
                    rosmsg.float_array_msg(types, steps[key][i]),
                )
        end = int(ticks[-1]) + 1
        self._write(t.marker_topic, MARKER_TYPE, end, _string(types, {"event": "end"}))
        self.next_free = end + 2 * self.gap

    def _write_image(self, cam: str, ns: int, rgb: np.ndarray) -> None:
        topic = self.topics.camera(cam)
        if self.image_format == "raw":
            self._write(topic, "sensor_msgs/msg/Image", ns, image_msg(self.ts, ns, rgb, cam))
        else:  # image_transport's convention: <topic>/compressed
            msg = compressed_msg(self.ts, ns, rgb, cam, self.image_format)
            self._write(f"{topic}/compressed", "sensor_msgs/msg/CompressedImage", ns, msg)

    def close(self) -> None:
        self.bag.close()
        publish(self.tmp, self.path)
        self.stage.rmdir()

    def abort(self, keep_done: bool = False) -> None:  # staged: nothing to keep
        try:
            self.bag.close()
        finally:
            shutil.rmtree(self.stage, ignore_errors=True)


def _is_camera(v: np.ndarray) -> bool:
    return v.dtype == np.uint8 and v.ndim == 4


def _string(types: Any, payload: dict[str, Any]) -> Any:
    return types["std_msgs/msg/String"](data=json.dumps(payload))
