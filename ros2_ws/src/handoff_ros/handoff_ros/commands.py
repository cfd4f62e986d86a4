"""Arm command messages as ros2_control's controllers read them, both directions.

* joint_trajectory_controller: ``trajectory_msgs/JointTrajectory`` on
  ``<controller>/joint_trajectory``; points carry explicit ``time_from_start``; joints are
  matched by ``joint_names`` (any order, as the controller does).
* forward_command_controller: ``std_msgs/Float64MultiArray`` on ``<controller>/commands``,
  one value per joint in the controller's configured joint order (the spec's order here).

The gripper has its own forward controller taking one value (the spec's gripper command).
Reading them back (and checking them as the controllers do) is data/rosmsg.py's
``trajectory_from_msg`` and ``float_values``, shared with the bag converter.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from builtin_interfaces.msg import Duration
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint


def trajectory_msg(joint_names: Sequence[str], positions: np.ndarray, dt: float) -> JointTrajectory:
    """positions (K, J) -> JointTrajectory with points at dt, 2 dt, ... (header.stamp 0 = now)."""
    msg = JointTrajectory()
    msg.joint_names = list(joint_names)
    for k, q in enumerate(np.atleast_2d(positions)):
        point = JointTrajectoryPoint()
        point.positions = [float(v) for v in q]
        t = (k + 1) * dt
        point.time_from_start = Duration(sec=int(t), nanosec=int(round((t % 1) * 1e9)))
        msg.points.append(point)
    return msg


def forward_msg(values: np.ndarray) -> Float64MultiArray:
    msg = Float64MultiArray()
    msg.data = [float(v) for v in np.asarray(values).reshape(-1)]
    return msg
