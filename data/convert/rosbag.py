"""rosbag2 (MCAP or sqlite3) -> episodes, and the format's registration (writer: rosbag_write).

Topics are chosen through the embodiment spec and :class:`BagTopics` (the ROS recorder's
defaults): ``/joint_states`` matched by joint name (plus the gripper finger joints), each spec
camera's ``image_raw`` (or ``image_raw/compressed``), the end-effector pose and object state
when the spec observes them, and as the action the command sent to the controller
(``JointTrajectory`` goal or ``Float64MultiArray`` forward command, plus the gripper command).

Steps come from data/align.py's rule at the spec's control rate, with the recorder's
settings: observations older than ``max_age_s`` (3 control periods) are gaps; a command up to
``action_offset_s`` (half a period) after a tick belongs to it; before the first command the
action holds the measured joint positions and an open gripper. Episodes are delimited by the
marker topic (``/handoff/episode``, JSON ``{"event": "start"|"end", ...metadata}``) when the
bag has it, otherwise by pauses longer than ``gap_s`` in ``/joint_states``.

Messages are judged as the live recorder judges them (data/align.py): a message's time is the
earlier of its header stamp and the time the bag logged it (:class:`StampCheck`; one stamped
more than ``future_stamp_tolerance_s`` after it was logged is left out and counted), and
``/joint_states`` is merged by joint name with :class:`JointStateMerge` within ``max_age_s``
(rosbag_msgs.JointStates), so an arm whose gripper fingers come from a separate driver converts,
and velocities a driver does not measure (empty or NaN: ros2_control without a velocity
interface) are estimated from successive positions, named in the report. Every other non-finite
value is refused by key and step (base.checked_episode); ``-o drop_keys=KEY`` leaves a key out.
Messages are checked against the type each topic is read as, and one that does not decode is
refused by topic and time.

Memory: low-dim messages and image *stamps* are read in one pass; image data is decoded per
episode, only for the frames the steps use.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from data import rosmsg
from data.align import StampCheck, align, common_span, control_grid, split_at_gaps
from data.convert.base import (
    DROP_KEYS,
    FORMATS,
    Episode,
    Format,
    Option,
    Report,
    checked_episode,
    drop_keys_option,
    lazy,
)
from data.convert.rosbag_msgs import (
    EXTRA_PREFIX,
    IMAGE_FORMATS,
    KEYS_FIELD,
    MARKER_TYPE,
    SPEC_TOPIC,
    TOPIC_OPTIONS,
    BagTopics,
    JointStates,
    StreamBuffer,
    decode_image,
    header_stamp_ns,
    parse_marker,
    spec_required,
    stamp_ns,
    typestore,
)
from data.embodiment import Embodiment
from data.errors import UserError

NS = 1_000_000_000
FLOATS = "std_msgs/msg/Float64MultiArray"
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


class RosbagReader:
    def __init__(
        self,
        path: Path,
        report: Report,
        embodiment: Embodiment | None,
        *,
        gap_s: float = 1.0,
        max_age_s: float | None = None,
        action_offset_s: float | None = None,
        future_stamp_tolerance_s: float = 0.5,
        task: str | None = None,
        drop_keys: Any = None,
        **topics: str,
    ) -> None:
        from rosbags.highlevel import AnyReader

        self.topics = BagTopics(**topics)
        try:
            self.bag = AnyReader([path], default_typestore=typestore())
            self.bag.open()
        except Exception as e:  # rosbags raises several reader error types
            raise UserError(f"{path}: not a rosbag2 directory or file ({e})") from None
        self.path, self.report = path, report
        self.conns = {c.topic: c for c in self.bag.connections}
        self.topic_conns: dict[str, list[Any]] = {}  # a topic may have several connections
        for c in self.bag.connections:
            self.topic_conns.setdefault(c.topic, []).append(c)
        if embodiment is None and SPEC_TOPIC in self.conns:
            embodiment = self._bag_spec()
        self.spec = spec = spec_required(embodiment, "reading a rosbag2")
        self.embodiment, self.attrs, self.fps = spec, {}, spec.control_hz
        self.task, self.drop = task, drop_keys_option(drop_keys)
        # recorder defaults (handoff_ros recorder.py): 3 periods max age, half-period offset,
        # 0.5 s future stamp tolerance
        self.max_age = _ns("max_age_s", max_age_s, 3 * spec.dt)
        self.action_offset = _ns("action_offset_s", action_offset_s, spec.dt / 2, zero=True)
        self.gap = _ns("gap_s", gap_s, 1.0)
        self.stamp_check = StampCheck(
            _ns("future_stamp_tolerance_s", future_stamp_tolerance_s, 0.5, zero=True)
        )
        self._pick_topics()
        self._read_lowdim()
        self.segments = self._split()

    def _bag_spec(self) -> Embodiment | None:
        """The embodiment the bag carries on /handoff/embodiment (our writer puts it there)."""
        where = f"{self.path} {SPEC_TOPIC}"
        self._check_type(SPEC_TOPIC, (MARKER_TYPE,))
        for conn, log_ns, raw in self._messages(connections=self.topic_conns[SPEC_TOPIC]):
            try:
                spec_dict = json.loads(self._msg(raw, conn, log_ns).data)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: not JSON ({e})") from None
            if not isinstance(spec_dict, dict):
                raise UserError(f"{where}: not a JSON object")
            return Embodiment.from_dict(spec_dict, where)
        return None

    # ---- topics ------------------------------------------------------------------------------

    def _check_type(self, topic: str, types: tuple[str, ...]) -> None:
        """Refuse a topic recorded with another message type than the one it is read as."""
        for conn in self.topic_conns.get(topic, []):
            if conn.msgtype not in types:
                raise UserError(
                    f"{self.path}: {topic} carries {conn.msgtype}, expected {' or '.join(types)}; "
                    f"set the matching *_topic option"
                )

    def _need(self, topic: str, what: str, option: str) -> Any:
        if topic not in self.conns:
            raise UserError(
                f"{self.path}: no topic {topic} ({what}); the bag has {sorted(self.conns)}; "
                f"set the {option} option"
            )
        return self.conns[topic]

    def _pick_topics(self) -> None:
        t, obs = self.topics, self.spec.observation
        self._need(t.joint_states_topic, "sensor_msgs/JointState", "joint_states_topic")
        self.camera_conns = {}
        for cam in self.spec.camera_names:
            raw = t.camera(cam)
            topic = raw if raw in self.conns else f"{raw}/compressed"
            self.camera_conns[cam] = self._need(topic, f"camera {cam!r} images", "camera_topic")
        self.eef = "eef_pos" in obs or "eef_quat" in obs
        if self.eef:
            self._need(t.eef_pose_topic, "PoseStamped for eef_pos/eef_quat", "eef_pose_topic")
        self.objects = "object_state" in obs or t.object_state_topic in self.conns
        if "object_state" in obs:
            self._need(t.object_state_topic, "object_state", "object_state_topic")
        if t.trajectory_topic not in self.conns and t.forward_topic not in self.conns:
            raise UserError(
                f"{self.path}: no command topic for the action ({t.trajectory_topic} or "
                f"{t.forward_topic}); the bag has {sorted(self.conns)}; set trajectory_topic "
                f"or forward_topic"
            )
        self.extras = {
            topic.removeprefix(EXTRA_PREFIX): topic
            for topic in self.conns
            if topic.startswith(EXTRA_PREFIX) and topic not in (t.marker_topic, SPEC_TOPIC)
        }
        types = {
            t.joint_states_topic: "sensor_msgs/msg/JointState",
            t.trajectory_topic: "trajectory_msgs/msg/JointTrajectory",
            t.forward_topic: FLOATS,
            t.gripper_topic: FLOATS,
            t.engaged_topic: "std_msgs/msg/Bool",
            t.marker_topic: MARKER_TYPE,
            t.eef_pose_topic: "geometry_msgs/msg/PoseStamped",
            t.object_state_topic: FLOATS,
            **{topic: FLOATS for topic in self.extras.values()},
        }
        for topic, msgtype in types.items():
            self._check_type(topic, (msgtype,))
        for conn in self.camera_conns.values():
            self._check_type(conn.topic, IMAGE_TYPES)

    # ---- pass 1: low-dim messages and image stamps ---------------------------------------

    def _read_lowdim(self) -> None:
        t, spec = self.topics, self.spec
        # velocities only where the spec observes them (or lists no observation at all)
        self.read_vel = "joint_vel" in spec.observation or not spec.observation
        self.fingers = t.finger_names(spec) if "gripper_pos" in spec.observation else []
        want = rosmsg.joint_state_names(spec, self.fingers)
        self.joints = JointStates(t.joint_states_topic, want, self.max_age)
        self.streams: dict[str, StreamBuffer] = {}
        for name in ("eef_pose", "object_state", "engaged", "marker", *self.camera_conns):
            self.streams[name] = StreamBuffer(name)
        for topic in self.extras.values():
            self.streams[topic] = StreamBuffer(topic)
        self.camera_log: dict[str, list[int]] = {cam: [] for cam in self.camera_conns}
        self._events: list[tuple[int, str, np.ndarray]] = []  # (log ns, part, command values)
        handlers: dict[str, Callable[[Any, int, str], None]] = {
            t.joint_states_topic: self._on_joint_states,
            t.trajectory_topic: self._on_trajectory,
            t.forward_topic: self._on_forward,
            t.gripper_topic: self._on_gripper,
            t.engaged_topic: lambda msg, ns, topic: self.streams["engaged"].add(
                ns, **rosmsg.intervention_keys(msg)
            ),
            t.marker_topic: lambda msg, ns, topic: self.streams["marker"].add(
                ns, event=np.array(msg.data)
            ),
        }
        if self.eef:
            handlers[t.eef_pose_topic] = self._on_eef_pose
        # Float64MultiArray has no header: stamped when logged; NaN/inf are refused per step
        # (base.checked_episode), so read unchecked here
        if self.objects:
            handlers[t.object_state_topic] = lambda msg, ns, topic: self.streams[
                "object_state"
            ].add(ns, object_state=rosmsg.float_values(msg, finite=False).astype(np.float32))
        for key, topic in self.extras.items():
            handlers[topic] = lambda msg, ns, topic, key=key: self.streams[topic].add(
                ns, **{key: rosmsg.float_values(msg, finite=False)}
            )
        cam_topics = {c.topic: cam for cam, c in self.camera_conns.items()}
        wanted = [c for c in self.bag.connections if c.topic in handlers or c.topic in cam_topics]
        for conn, log_ns, raw in self._messages(connections=wanted):
            cam = cam_topics.get(conn.topic)
            if cam is not None:  # images: only the stamp now, pixels per episode later
                stamp = header_stamp_ns(raw, f"{self.path}: {conn.topic} at {log_ns / NS:.3f} s")
                ns = self._time(stamp, log_ns, conn.topic)
                if ns is not None:
                    self.streams[cam].add(ns)
                    self.camera_log[cam].append(log_ns)
            else:
                handlers[conn.topic](self._msg(raw, conn, log_ns), log_ns, conn.topic)
        self.action = self._commands(self._events)
        self.data = {name: s.arrays() for name, s in self.streams.items() if s.n}
        self.data["joint_states"] = self._joint_samples()

    def _time(self, stamp: int, log_ns: int, topic: str, check: Any = None) -> int | None:
        """A message's time as the live recorder judges it (data.align.StampCheck): the earlier
        of its header stamp (the log time when unset) and its log time; None (counted) when
        stamped beyond the tolerance after it was logged."""
        try:
            return (check or self.stamp_check).time_of(
                stamp if stamp > 0 else log_ns, log_ns, topic
            )
        except ValueError:
            return None

    def _on_joint_states(self, msg: Any, log_ns: int, topic: str) -> None:
        ns = self._time(stamp_ns(msg, log_ns), log_ns, topic)
        if ns is not None:
            self.joints.add(msg.name, msg.position, msg.velocity, ns, log_ns)

    def _joint_samples(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The merged joint samples (rosbag_msgs.JointStates), with what was estimated, left
        out or rejected in the report; refused when nothing is left."""
        topic, tol = self.topics.joint_states_topic, self.stamp_check.future_tolerance / NS
        rejected = self.stamp_check.rejected.get(topic)
        for name, n in self.stamp_check.rejected.items():
            self.report.note(
                f"{n} message(s) on {name} stamped more than {tol:g} s after the bag logged them "
                f"(a publisher clock ahead): left out, as the live recorder does"
            )
        if not self.joints.merge.names:
            also = (
                " stamped before the bag logged them (another clock? see the option "
                "future_stamp_tolerance_s)"
                if rejected
                else ""
            )
            raise UserError(f"{self.path}: {topic} has no messages{also}")
        estimate = self.read_vel and "joint_vel" not in self.drop
        stamps, values, unknown = self.joints.arrays(self.spec.n_joints if estimate else 0)
        window = f"max_age_s={self.max_age / NS:g}"
        left_out = [
            f"{n} {topic} message(s) left out: {why}"
            for n, why in (
                (self.joints.apart, f"not all joints heard within {window} of each other"),
                (unknown, f"no velocity, and no message of the joint within {window} to estimate"),
            )
            if n
        ]
        if not len(stamps):
            raise UserError(
                f"{self.path}: no joint state usable: {'; '.join(left_out)}; raise max_age_s "
                f"(or pass -o drop_keys=joint_vel to convert without velocities)"
            )
        for note in left_out:
            self.report.note(note)
        estimated = [n for n in self.spec.joint_names if n in self.joints.merge.estimated]
        if estimate and estimated:
            self.report.note(
                f"joint_vel of {estimated} estimated from successive positions: {topic} carries "
                f"no finite velocities for them (as the live recorder does)"
            )
        return stamps, values

    def _on_gripper(self, msg: Any, log_ns: int, topic: str) -> None:
        if not len(msg.data):
            raise UserError(f"{self.path}: {topic} message at {log_ns / NS:.3f} s is empty")
        self._events.append((log_ns, "gripper", np.asarray(msg.data[:1], np.float64)))

    def _on_eef_pose(self, msg: Any, log_ns: int, topic: str) -> None:
        ns = self._time(stamp_ns(msg, log_ns), log_ns, topic)
        if ns is None:
            return
        self.streams["eef_pose"].add(ns, **rosmsg.pose_keys(msg))

    def _on_trajectory(self, msg: Any, log_ns: int, topic: str) -> None:
        if not len(msg.points):  # the controller reads an empty trajectory as "cancel"
            return
        try:  # checked as the live recorder checks it (no clock: a bag may hold sim time)
            traj = rosmsg.trajectory_from_msg(msg, self.spec.joint_names, 0.0, now=None)
        except rosmsg.MessageError as e:
            raise UserError(f"{self.path}: {topic}: {e}") from None
        self._events.append((log_ns, "arm", traj.positions[-1]))  # the goal it is sent toward

    def _on_forward(self, msg: Any, log_ns: int, topic: str) -> None:
        spec, data = self.spec, rosmsg.float_values(msg, finite=False)
        if len(data) not in (spec.n_joints, spec.action_dim):
            raise UserError(
                f"{self.path}: {topic} carries {len(data)} values; expected "
                f"{spec.n_joints} joints (or {spec.action_dim} with the gripper)"
            )
        self._events.append((log_ns, "arm" if len(data) == spec.n_joints else "all", data))

    def _messages(self, **kwargs: Any) -> Iterator[tuple[Any, int, Any]]:
        """The bag's messages; a damaged file (chunk, index, database) is one UserError."""
        messages = self.bag.messages(**kwargs)
        while True:
            try:
                item = next(messages)
            except StopIteration:
                return
            except Exception as e:  # rosbags' readers raise many error types on a bad file
                raise UserError(
                    f"{self.path}: the bag cannot be read on ({type(e).__name__}: {e}); it is "
                    f"damaged"
                ) from None
            yield item

    def _msg(self, raw: Any, conn: Any, log_ns: int) -> Any:
        try:
            return self.bag.deserialize(raw, conn.msgtype)
        except Exception as e:  # rosbags raises struct, index, value... errors on bad bytes
            raise UserError(
                f"{self.path}: the {conn.msgtype} message on {conn.topic} logged at "
                f"{log_ns / NS:.3f} s does not decode ({type(e).__name__}: {e}); the bag is "
                f"damaged or was recorded with another definition of that message"
            ) from None

    def _commands(self, events: list[tuple[int, str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """The full command (Da,) after each command message: (stamps (N,), commands (N, Da)).

        Joint targets are NaN until the first arm command (filled per step with the measured
        positions, what a position controller holds); the gripper starts open.
        """
        spec = self.spec
        command = np.full(spec.action_dim, np.nan)
        command[-1] = spec.gripper.open_command
        stamps, rows = [], []
        for ns, kind, values in sorted(events, key=lambda e: e[0]):
            if kind == "arm":
                command[:-1] = values
            elif kind == "all":
                command[:] = values
            else:
                command[-1] = values[0]
            stamps.append(ns)
            rows.append(command.copy())
        if not rows:
            self.report.note("no command messages: the action holds the measured positions")
            return np.zeros(1, np.int64), command[None].copy()
        return np.asarray(stamps, np.int64), np.stack(rows)

    # ---- episodes ----------------------------------------------------------------------------

    def _split(self) -> list[tuple[int, int, dict[str, Any]]]:
        js = self.data["joint_states"][0]
        if "marker" in self.data:
            stamps, values = self.data["marker"]
            segments, start, meta = [], None, {}
            for ns, text in zip(stamps.tolist(), values["event"].tolist()):
                event = parse_marker(text, self.path)
                if event.pop("event") == "start":
                    start, meta = ns, event
                elif start is not None:
                    segments.append((start, ns, {**meta, **event}))
                    start = None
            if start is not None:
                segments.append((start, int(js.max()), meta))
            return segments
        segments = split_at_gaps(js, self.gap)
        self.report.note(
            f"episodes split at pauses > {self.gap / NS:g} s in {self.topics.joint_states_topic}"
        )
        return [(a, b, {}) for a, b in segments]

    def __len__(self) -> int:
        return len(self.segments)

    def episodes(self) -> Iterator[Episode]:
        topic = self.topics.joint_states_topic
        names = {
            "joint_pos": f"{topic} position",
            "joint_vel": f"{topic} velocity",
            "gripper_pos": f"{topic} position of {self.fingers}",
            "action": "the action (command topics)",
        }
        for i, (a, b, meta) in enumerate(self.segments):
            where = f"{self.path} episode {i} (from {a / NS:.3f} s)"
            try:
                episode = self._episode(a, b, meta)
            except (KeyError, TypeError, ValueError, IndexError) as e:
                raise UserError(f"{where} is malformed ({type(e).__name__}: {e})") from None
            if episode is not None:
                yield checked_episode(episode, where, self.report, self.drop, names)

    def _episode(self, a: int, b: int, meta: dict[str, Any]) -> Episode | None:
        obs_streams = ["joint_states", *self.camera_conns]
        obs_streams += [n for n in ("eef_pose", "object_state") if n in self.data]
        obs_streams += [EXTRA_PREFIX + k for k in self.extras if EXTRA_PREFIX + k in self.data]
        inside = {}
        for name in obs_streams:
            stamps = self.data[name][0]
            inside[name] = stamps[(stamps >= a) & (stamps <= b)]
            if not len(inside[name]):
                self.report.note(f"skipped an episode at {a / NS:.3f} s: no {name} messages")
                return None
        start, stop = common_span(inside)
        ticks = control_grid(int(start), int(stop), self.spec.control_hz)
        stamps = {name: self.data[name][0] for name in obs_streams}
        stamps["action"] = self.action[0]
        if "engaged" in self.data:
            stamps["engaged"] = self.data["engaged"][0]
        al = align(
            stamps,
            ticks=ticks,
            max_age={n: self.max_age for n in obs_streams},
            offset={"action": self.action_offset},
        )
        steps: dict[str, np.ndarray] = {}
        for name in obs_streams:
            if name in self.camera_conns:
                steps[name] = self._frames(name, al.index[name])
            elif name != "joint_states":
                for key, values in self.data[name][1].items():
                    steps[key] = al.take(name, values)
        steps |= self._joint_steps(al)
        action = al.take("action", self.action[1])
        before = al.index["action"] < 0  # no command yet at these ticks
        action[before, :-1] = np.nan
        action[before, -1] = self.spec.gripper.open_command
        held = np.isnan(action[:, :-1])
        action[:, :-1][held] = steps["joint_pos"].astype(np.float64)[held]
        steps["action"] = action.astype(np.float32)
        if "engaged" in self.data:
            flags = al.take("engaged", self.data["engaged"][1]["intervention"])
            steps["intervention"] = np.where(al.index["engaged"] < 0, False, flags)
        steps["timestamp"] = np.arange(len(ticks)) / self.spec.control_hz
        gaps = {k: v for k, v in al.report().items() if v and k not in ("any", "action")}
        meta = dict(meta)
        keys = meta.pop(KEYS_FIELD, {})
        for key, (dtype, shape) in keys.items():
            if key in steps:  # back to the source's dtype and per-step shape
                steps[key] = steps[key].astype(dtype).reshape(len(ticks), *shape)
        for key, v in steps.items():
            if v.dtype == np.float64 and key not in keys and key != "timestamp":
                steps[key] = v.astype(np.float32)  # handoff's low-dim dtype
        meta = meta or {"source": "converted", "start_time": int(ticks[0]) / NS}
        if self.task and "task" not in meta:
            meta["task"] = self.task
        if gaps:
            meta.update(has_gaps=True, gap_steps=gaps)
            self.report.note("some episodes have gap steps (meta has_gaps / gap_steps)")
        return Episode(steps, meta)

    def _joint_steps(self, al: Any) -> dict[str, np.ndarray]:
        """joint_pos (T, J), joint_vel (T, J) and gripper_pos (T, F) from the merged joint
        samples (rosbag_msgs.JointStates: arm joints first, then the fingers)."""
        values = self.data["joint_states"][1]
        pos = al.take("joint_states", values["position"])  # (T, J + F)
        vel = al.take("joint_states", values["velocity"]) if self.read_vel else None
        return rosmsg.joint_state_keys(self.spec, pos, vel)

    def _frames(self, cam: str, index: np.ndarray) -> np.ndarray:
        """Decode the frames ``index`` (T,) of camera ``cam`` -> (T, H, W, 3)."""
        import cv2

        stamps = self.data[cam][0]
        idx = np.maximum(index, 0)
        wanted = {int(stamps[i]): None for i in np.unique(idx)}
        logs = np.asarray(self.camera_log[cam])[np.unique(idx)]
        topic = self.camera_conns[cam].topic
        shape = self.spec.camera(cam).shape
        decoded: dict[int, np.ndarray] = {}
        check = StampCheck(self.stamp_check.future_tolerance)  # pass 1's rule, counted there
        for conn, log_ns, raw in self._messages(
            connections=self.topic_conns[topic], start=int(logs.min()), stop=int(logs.max()) + 1
        ):
            ns = self._time(header_stamp_ns(raw, topic), log_ns, topic, check)
            if ns in wanted:
                img = decode_image(self._msg(raw, conn, log_ns), conn.msgtype, conn.topic)
                if img.shape != shape:
                    img = cv2.resize(img, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
                    self.report.note(f"{conn.topic}: frames resized to the spec's {shape[:2]}")
                decoded[ns] = img
        return np.stack([decoded[int(stamps[i])] for i in idx])

    def close(self) -> None:
        self.bag.close()


def _ns(name: str, value: Any, default: float, zero: bool = False) -> int:
    """A seconds option as int ns; a value that is not a (positive) number is refused."""
    value = default if value is None else value
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (number and (0 <= value <= 1e6) and (value > 0 or zero)):
        raise UserError(f"{name}={value!r}: give seconds, a number {'>=' if zero else '>'} 0")
    return int(value * NS)


FORMATS.register("rosbag2")(
    Format(
        name="rosbag2",
        description="ROS 2 bag (read MCAP or sqlite3, write MCAP) via rosbags",
        open_reader=RosbagReader,
        open_writer=lazy("data.convert.rosbag_write:RosbagWriter"),
        read_options=(
            Option("gap_s", "a pause this long (s) splits episodes", float, 1.0),
            Option(
                "max_age_s",
                "observations older than this (s) are gaps (default: 3 control periods)",
                float,
            ),
            Option(
                "action_offset_s",
                "seconds a command may come after its tick (default: half a control period)",
                float,
            ),
            Option(
                "future_stamp_tolerance_s",
                "seconds a header stamp may lie after its logging (clock skew)",
                float,
                0.5,
            ),
            Option("task", "task name for episodes whose source has none"),
            DROP_KEYS,
            *TOPIC_OPTIONS,
        ),
        write_options=(
            Option("gap_s", "seconds between episodes in the bag", float, 1.0),
            Option(
                "image_format", "camera frames as Image or compressed", str, "raw", IMAGE_FORMATS
            ),
            *TOPIC_OPTIONS,
        ),
    )
)
