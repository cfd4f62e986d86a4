"""``leader``: a leader arm publishing sensor_msgs/JointState on ``leader_topic``; the
follower tracks its joints one to one (matched by name, ``leader_joint_map`` renames)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from data.rosmsg import MessageError, by_name
from handoff_ros.teleop_devices.base import TeleopDevice, TeleopInput, need_node, register_device

if TYPE_CHECKING:
    from rclpy.node import Node

    from data.embodiment import Embodiment
    from handoff_ros.teleop import TeleopParams


@register_device("leader")
class Leader(TeleopDevice):
    """Engaged while the leader publishes: messages older than ``timeout_s`` disengage (a
    leader that stopped must not leave the follower on its last target)."""

    gives_joints = True

    def __init__(
        self,
        follower_names: Sequence[str],
        mapping: dict[str, str] | None = None,
        topic: str = "/leader/joint_states",
        timeout_s: float = 0.2,
    ) -> None:
        self.mapping = mapping or {}
        self.topic = topic
        self.timeout_s = timeout_s
        self.leader_names = [self.mapping.get(n, n) for n in follower_names]
        self.clock: Callable[[], float] = time.monotonic
        self._q: np.ndarray | None = None
        self._t = -np.inf
        self._node: Node | None = None
        self._sub = None

    @classmethod
    def from_params(cls, p: TeleopParams, spec: Embodiment) -> Leader:
        pairs = [kv.split(":") for kv in p.leader_joint_map.split(",") if kv]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError(f"leader_joint_map {p.leader_joint_map!r}: follower:leader pairs")
        mapping = {a.strip(): b.strip() for a, b in pairs}
        return cls(spec.joint_names, mapping, p.leader_topic, p.leader_timeout_s)

    def _connect(self, node: Node | None) -> None:
        from sensor_msgs.msg import JointState

        from handoff_ros.rosutil import now_sec

        self._node = need_node(node, "leader", f"sensor_msgs/JointState on {self.topic}")
        self.clock = lambda: now_sec(self._node)
        self._sub = self._node.create_subscription(JointState, self.topic, self.feed, 10)

    def feed(self, msg: Any) -> None:
        """One JointState (``name``, ``position``) -> the follower's targets (J,), matched by
        name; one without the follower's joints or with too few positions is dropped and
        reported."""
        try:
            self._q = by_name(msg.name, msg.position, self.leader_names, f"leader {self.topic}")
        except MessageError as e:
            self.on_problem(str(e))
            return
        self._t = self.clock()

    def read(self) -> TeleopInput:
        if self._q is None or self.clock() - self._t >= self.timeout_s:
            return TeleopInput()
        return TeleopInput(engaged=True, joints=self._q)

    def _close(self) -> None:
        if self._sub is not None:
            self._node.destroy_subscription(self._sub)
            self._sub = None
