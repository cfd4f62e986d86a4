"""Arm command messages as ros2_control's controllers read them, both directions.

* joint_trajectory_controller: ``trajectory_msgs/JointTrajectory`` on
  ``<controller>/joint_trajectory``; points carry explicit ``time_from_start``; joints are
  matched by ``joint_names`` (any order, as the controller does).
* forward_command_controller: ``std_msgs/Float64MultiArray`` on ``<controller>/commands``,
  one value per joint in the controller's configured joint order (the spec's order here).

The gripper has its own forward controller taking one value (the spec's gripper command).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Duration
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint


@dataclass
class Trajectory:
    """Piecewise-linear joint path: ``origin`` (J,) at ``start``, then ``positions`` (K, J) at
    ``start + times`` (K,). Holds the last point after the end."""

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


def _duration_sec(d: Duration) -> float:
    return d.sec + d.nanosec * 1e-9


def trajectory_from_msg(
    msg: JointTrajectory, joint_names: Sequence[str], origin: np.ndarray, now: float
) -> Trajectory:
    """Parse and check a JointTrajectory; ValueError says what is wrong (for /diagnostics).

    A zero ``header.stamp`` means "start now", as joint_trajectory_controller reads it; like
    that controller, a stamped trajectory that ends before ``now`` is refused (a stale or
    badly stamped message must not make the arm jump to its last point).
    """
    names = list(msg.joint_names)
    missing = [n for n in joint_names if n not in names]
    if missing:
        raise ValueError(f"joint_trajectory lacks joint(s) {missing}; got {names}")
    if not msg.points:
        raise ValueError("joint_trajectory has no points")
    idx = [names.index(n) for n in joint_names]
    times, positions = [], []
    for k, p in enumerate(msg.points):
        if len(p.positions) != len(names):
            raise ValueError(f"point {k} has {len(p.positions)} positions for {len(names)} joints")
        times.append(_duration_sec(p.time_from_start))
        positions.append(np.asarray(p.positions, dtype=np.float64)[idx])
    times_arr = np.asarray(times)
    if np.any(np.diff(times_arr) <= 0) or times_arr[0] < 0:
        raise ValueError("time_from_start must be >= 0 and strictly increasing over the points")
    pos = np.vstack(positions)
    if not np.all(np.isfinite(pos)):
        raise ValueError("joint_trajectory holds NaN/inf positions")
    stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
    start = now if stamp == 0 else stamp
    if start + times_arr[-1] < now:
        raise ValueError(
            f"joint_trajectory stamped {now - stamp:.3f} s ago ends in the past; refused"
        )
    return Trajectory(start, np.asarray(origin, dtype=np.float64), times_arr, pos)


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
