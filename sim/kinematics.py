"""Rotation helpers and damped-least-squares differential IK on a :class:`~sim.mujoco_arm.SimArm`.

Differential IK turns an end-effector motion (a twist, or a step toward a target pose) into
joint-position targets, the action space of the whole stack. The scripted experts use
:meth:`DiffIK.step_toward`; Cartesian teleop (ROS ``TwistStamped``) uses :meth:`DiffIK.twist`.
All poses are in the robot base frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sim._gl import configure_gl

configure_gl()

import mujoco  # noqa: E402  (after configure_gl, as in sim/mujoco_arm.py)

if TYPE_CHECKING:
    from sim.mujoco_arm import SimArm


def rot_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def yaw_of(mat: np.ndarray) -> float:
    """Heading of the frame's x axis projected on the base x-y plane."""
    return float(np.arctan2(mat[1, 0], mat[0, 0]))


def wrap(angle: float, period: float = 2 * np.pi) -> float:
    """``angle`` wrapped into [-period/2, period/2)."""
    return float((angle + period / 2) % period - period / 2)


def quat_xyzw_to_mat(q: np.ndarray) -> np.ndarray:
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def rotvec(mat: np.ndarray) -> np.ndarray:
    """Axis-angle vector (3,) of a rotation matrix."""
    cos = np.clip((np.trace(mat) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    axis = np.array([mat[2, 1] - mat[1, 2], mat[0, 2] - mat[2, 0], mat[1, 0] - mat[0, 1]])
    if angle < 1e-6:
        return axis / 2.0
    if np.pi - angle < 1e-4:  # near pi the antisymmetric part vanishes; use the diagonal
        axis = np.sqrt(np.clip((np.diag(mat) + 1.0) / 2.0, 0.0, None))
        return axis * angle
    return axis / (2.0 * np.sin(angle)) * angle


def _clip_norm(v: np.ndarray, limit: float) -> np.ndarray:
    n = np.linalg.norm(v)
    return v if n <= limit or n == 0 else v * (limit / n)


@dataclass
class DiffIK:
    """Joint-target generator: q <- q + J^+ (damped) * pose error, bounded per control step.

    ``damping`` (m) keeps the pseudo-inverse finite near singularities; 0.05 is the usual
    choice for a 7-dof arm at metre scale. ``posture_gain`` pulls the redundant (null-space)
    motion toward ``posture`` (default: the joint positions at the first call), which keeps
    the elbow from drifting over long episodes.
    """

    arm: SimArm
    damping: float = 0.05
    posture_gain: float = 0.1
    posture: np.ndarray | None = None

    def _solve(self, q: np.ndarray, err: np.ndarray) -> np.ndarray:
        """dq (n,) that realises the 6-vector ``err`` = (dp, drot) at q."""
        J = self.arm.jacobian(q)  # (6, n)
        if self.posture is None:
            self.posture = q.copy()
        # The null-space projector needs a (nearly) exact pseudo-inverse: a damped one leaks
        # the posture pull into the task and leaves a few mm of steady error at full reach.
        null = np.eye(len(q)) - _damped_pinv(J, 1e-3) @ J
        step = _damped_pinv(J, self.damping) @ err
        return step + null @ (self.posture_gain * (self.posture - q))

    def _limit(self, q: np.ndarray, dq: np.ndarray) -> np.ndarray:
        spec = self.arm.embodiment
        vmax = np.asarray(spec.velocity_limit) * spec.dt
        dq = np.clip(dq, -vmax, vmax)
        margin = 0.02  # rad: stay off the hard stops, where the servo would press the limit
        lo = np.asarray(spec.position_lower) + margin
        hi = np.asarray(spec.position_upper) - margin
        return np.clip(q + dq, lo, hi)

    def step_toward(
        self,
        q: np.ndarray,
        pos: np.ndarray,
        mat: np.ndarray,
        max_lin: float,
        max_ang: float,
        iterations: int = 2,
    ) -> np.ndarray:
        """Joint targets one control step from q toward the pose (pos, mat).

        ``max_lin`` (m) and ``max_ang`` (rad) bound the end-effector motion of this step.
        """
        p, R = self.arm.fk_matrix(q)
        dp = _clip_norm(pos - p, max_lin)
        dr = _clip_norm(rotvec(mat @ R.T), max_ang)
        goal_p = p + dp
        goal_R = _exp(dr) @ R
        q_new = q.copy()
        for _ in range(iterations):  # a couple of Newton steps absorb the linearisation error
            p, R = self.arm.fk_matrix(q_new)
            err = np.concatenate([goal_p - p, rotvec(goal_R @ R.T)])
            q_new = self._limit(q_new, self._solve(q_new, err))
        return q_new

    def twist(self, q: np.ndarray, twist: np.ndarray) -> np.ndarray:
        """Joint targets after applying a base-frame twist (6,) = (v m/s, w rad/s) for one step."""
        err = np.asarray(twist, dtype=np.float64) * self.arm.embodiment.dt
        return self._limit(q, self._solve(q, err))


def _damped_pinv(J: np.ndarray, damping: float) -> np.ndarray:
    """J^T (J J^T + damping^2 I)^-1, (n, 6).

    The 6x6 system is symmetric positive definite: MuJoCo's small Cholesky solver beats
    LAPACK here (numpy's solve goes through a multi-threaded BLAS that spins when the cores
    are busy: 9 ms against microseconds).
    """
    A = J @ J.T + damping**2 * np.eye(J.shape[0])
    mujoco.mju_cholFactor(A, 0.0)
    out = np.empty((J.shape[1], J.shape[0]))
    col = np.empty(J.shape[0])
    for i in range(J.shape[1]):
        mujoco.mju_cholSolve(col, A, np.ascontiguousarray(J[:, i]))
        out[i] = col
    return out


def _exp(rv: np.ndarray) -> np.ndarray:
    """Rotation matrix of an axis-angle vector (Rodrigues)."""
    angle = np.linalg.norm(rv)
    if angle < 1e-9:
        return np.eye(3)
    k = rv / angle
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K
