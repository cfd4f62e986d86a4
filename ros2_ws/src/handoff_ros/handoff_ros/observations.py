"""The newest observation of an arm, assembled from its topics for a policy (one time step).

Subscribes only to what the policy consumes (``policy.input_keys``): ``/joint_states`` for
joint_pos / joint_vel / gripper_pos, the simulated arm's ``eef_pose`` and ``object_state``,
and ``<camera>/image_raw`` per camera (resized to the checkpoint's camera size). Malformed
messages are reported through ``problem`` and dropped.
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

from data.embodiment import Embodiment
from handoff_ros.commands import forward_from_msg
from handoff_ros.images import ImageError, fit, from_image_msg
from handoff_ros.rosutil import JointMatcher, now_sec, stamp_to_sec

JOINT_KEYS = ("joint_pos", "joint_vel", "gripper_pos")
POSE_KEYS = ("eef_pos", "eef_quat")


class LiveObservation:
    """Thread-safe newest values per key, plus the joint-state stamp (for the watchdog)."""

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
    ) -> None:
        self.node, self.spec, self.keys, self.problem = node, spec, list(keys), problem
        self.matcher = JointMatcher(spec.joint_names)
        self.fingers = JointMatcher(gripper_joints or [])
        self.values: dict[str, np.ndarray] = {}
        self.joint_stamp = -np.inf  # header stamp of the newest valid joint state
        self.joint_names_seen: list[str] = []
        self._lock = threading.Lock()
        node.create_subscription(JointState, joint_states_topic, self._on_joints, 50)
        if any(k in keys for k in POSE_KEYS):
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

    def _set(self, values: dict[str, np.ndarray]) -> None:
        with self._lock:
            self.values.update(values)

    def _on_joints(self, msg: JointState) -> None:
        self.joint_names_seen = list(msg.name)
        try:
            values = {
                "joint_pos": self.matcher.positions(msg).astype(np.float32),
                "joint_vel": self.matcher.velocities(msg).astype(np.float32),
            }
            if "gripper_pos" in self.keys:
                values["gripper_pos"] = self.fingers.positions(msg).astype(np.float32)
        except ValueError as e:
            self.problem(f"joint_states: {e}")
            return
        if not np.all(np.isfinite(values["joint_pos"])):
            self.problem("joint_states: NaN/inf positions")
            return
        with self._lock:
            self.values.update(values)
            self.joint_stamp = stamp_to_sec(msg.header.stamp)

    def _on_pose(self, msg: PoseStamped) -> None:
        p, o = msg.pose.position, msg.pose.orientation
        self._set(
            {
                "eef_pos": np.array([p.x, p.y, p.z], np.float32),
                "eef_quat": np.array([o.x, o.y, o.z, o.w], np.float32),
            }
        )

    def _on_object(self, msg: Float64MultiArray) -> None:
        n = self.spec.observation["object_state"][0]
        try:
            self._set({"object_state": forward_from_msg(msg, n, "object_state")})
        except ValueError as e:
            self.problem(str(e))

    def _on_image(self, cam: str, msg: Image) -> None:
        c = self.spec.camera(cam)
        try:
            rgb = from_image_msg(msg)
        except ImageError as e:
            self.problem(f"{cam}: {e}")
            return
        ratio_live, ratio_spec = msg.width / msg.height, c.width / c.height
        if abs(ratio_live - ratio_spec) > 0.02 * ratio_spec:
            self.problem(
                f"{cam}: frames are {msg.width}x{msg.height}, the checkpoint was trained on "
                f"{c.width}x{c.height} (another aspect ratio)"
            )
            return
        self._set({cam: fit(rgb, c.height, c.width)})

    def snapshot(self) -> tuple[dict[str, np.ndarray] | None, float]:
        """(obs with every key the policy consumes, joint stamp), or (None, stamp) while a key
        has not been heard yet."""
        with self._lock:
            if any(k not in self.values for k in self.keys):
                return None, self.joint_stamp
            return {k: self.values[k] for k in self.keys}, self.joint_stamp

    def joints(self) -> tuple[np.ndarray | None, float]:
        """(newest joint positions (J,) or None, their stamp): the safety filter's input."""
        with self._lock:
            return self.values.get("joint_pos"), self.joint_stamp

    def missing(self) -> list[str]:
        with self._lock:
            return [k for k in self.keys if k not in self.values]

    def age(self) -> float:
        return now_sec(self.node) - self.joint_stamp
