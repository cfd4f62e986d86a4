"""The newest observation of an arm, assembled from its topics for a policy (one time step).

Subscribes only to what the policy consumes (``policy.input_keys``): ``/joint_states`` for
joint_pos / joint_vel / gripper_pos, the simulated arm's ``eef_pose`` and ``object_state``,
and ``<camera>/image_raw`` per camera (resized to the checkpoint's camera size). Malformed
messages are reported through ``problem`` and dropped, and so are messages stamped after their
arrival (``data.align.StampCheck``) and values that are NaN/inf: the policy never sees them,
and the joint-state time the watchdog judges stops advancing, so the safety filter holds.
Joint states are merged by name across messages (``data.align.JointStateMerge``: an arm and
its gripper may publish separately), and their time is that of the oldest message merged.
Which field is which key is data/rosmsg.py's (shared with the recorder and the bag converters).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray

from data import rosmsg
from data.align import JointStateMerge, StampCheck
from data.embodiment import Embodiment
from handoff_ros.episode_recorder import non_finite_keys
from handoff_ros.images import fit
from handoff_ros.rosutil import merge_joint_state, now_sec, stamp_to_sec


class LiveObservation:
    """Thread-safe newest values per key, plus the joint-state time (for the watchdog)."""

    def __init__(
        self,
        node: Node,
        spec: Embodiment,
        keys: list[str],
        problem: Callable[[str], None],
        *,
        joint_states_topic: str = "/joint_states",
        gripper_joints: list[str] | None = None,
        camera_topic: str = "/{camera}/image_raw",
        eef_pose_topic: str = "/sim_arm/eef_pose",
        object_state_topic: str = "/sim_arm/object_state",
        merge_window_s: float = 0.25,
        future_stamp_tolerance_s: float = 0.5,
    ) -> None:
        self.node, self.spec, self.keys, self.problem = node, spec, list(keys), problem
        self.joints_topic = joint_states_topic
        self.fingers = list(gripper_joints or []) if "gripper_pos" in keys else []
        self.joint_names = rosmsg.joint_state_names(spec, self.fingers)  # arm, then fingers
        self.merge = JointStateMerge(merge_window_s)
        self.stamps = StampCheck(future_stamp_tolerance_s)
        self.rejected_non_finite = 0
        self.values: dict[str, np.ndarray] = {}
        self.joint_stamp = -np.inf  # time of the oldest message in the newest joint state
        self._lock = threading.Lock()
        node.create_subscription(JointState, joint_states_topic, self._on_joints, 50)
        if any(k in keys for k in rosmsg.POSE_KEYS):
            node.create_subscription(PoseStamped, eef_pose_topic, self._on_pose, 10)
        if "object_state" in keys:
            node.create_subscription(Float64MultiArray, object_state_topic, self._on_object, 10)
        for cam in spec.camera_names:
            if cam in keys:
                node.create_subscription(
                    Image,
                    camera_topic.format(camera=cam),
                    lambda m, c=cam: self._on_image(c, m),
                    qos_profile_sensor_data,
                )

    @property
    def joint_names_seen(self) -> list[str]:
        """Every joint /joint_states has carried, over all its publishers."""
        return self.merge.names

    def _set(
        self, topic: str, values: dict[str, np.ndarray], joint_time: float | None = None
    ) -> None:
        """Store finite values (and the joint-state time); report and drop anything else."""
        bad = non_finite_keys(values)
        if bad:
            self.rejected_non_finite += 1
            self.problem(f"{topic}: NaN/inf in {bad}; not passed to the policy")
            return
        with self._lock:
            self.values.update(values)
            if joint_time is not None:
                self.joint_stamp = joint_time

    def _checked(self, topic: str, stamp: object) -> bool:
        """False (reported) when the message is stamped after its arrival."""
        try:
            self.stamps.time_of(stamp_to_sec(stamp), now_sec(self.node), topic)
        except ValueError as e:
            self.problem(f"{topic}: {e}")
            return False
        return True

    def _on_joints(self, msg: JointState) -> None:
        topic = self.joints_topic
        try:
            sample = merge_joint_state(
                self.merge, self.stamps, msg, now_sec(self.node), topic, self.joint_names
            )
        except ValueError as e:
            self.problem(f"{topic}: {e}")
            return
        vel = sample.velocities if "joint_vel" in self.keys else None
        values = rosmsg.joint_state_keys(self.spec, sample.positions, vel)
        self._set(topic, values, joint_time=sample.oldest)

    def _on_pose(self, msg: PoseStamped) -> None:
        if not self._checked("eef_pose", msg.header.stamp):
            return
        self._set("eef_pose", rosmsg.pose_keys(msg))

    def _on_object(self, msg: Float64MultiArray) -> None:
        n = self.spec.observation["object_state"][0]
        try:
            values = {"object_state": rosmsg.float_values(msg, n, "object_state")}
        except rosmsg.MessageError as e:
            self.problem(str(e))
            return
        self._set("object_state", values)

    def _on_image(self, cam: str, msg: Image) -> None:
        c = self.spec.camera(cam)
        if not self._checked(cam, msg.header.stamp):
            return
        try:
            rgb = rosmsg.decode_image(msg)
        except rosmsg.ImageError as e:
            self.problem(f"{cam}: {e}")
            return
        ratio_live, ratio_spec = msg.width / msg.height, c.width / c.height
        if abs(ratio_live - ratio_spec) > 0.02 * ratio_spec:
            self.problem(
                f"{cam}: frames are {msg.width}x{msg.height}, the checkpoint was trained on "
                f"{c.width}x{c.height} (another aspect ratio)"
            )
            return
        self._set(cam, {cam: fit(rgb, c.height, c.width)})

    def snapshot(self) -> tuple[dict[str, np.ndarray] | None, float]:
        """(obs with every key the policy consumes, joint-state time), or (None, time) while a
        key has not been heard yet."""
        with self._lock:
            if any(k not in self.values for k in self.keys):
                return None, self.joint_stamp
            return {k: self.values[k] for k in self.keys}, self.joint_stamp

    def clear(self) -> None:
        """Forget every value (a new episode): :meth:`snapshot` waits until each key has been
        heard again, so no observation from before a scene reset reaches the policy."""
        with self._lock:
            self.values.clear()

    def joints(self) -> tuple[np.ndarray | None, float]:
        """(newest joint positions (J,) or None, their time): the safety filter's input."""
        with self._lock:
            return self.values.get("joint_pos"), self.joint_stamp

    def missing(self) -> list[str]:
        with self._lock:
            return [k for k in self.keys if k not in self.values]

    def age(self) -> float:
        return now_sec(self.node) - self.joint_stamp
