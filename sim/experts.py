"""Scripted experts: pick-and-place plans turned into joint-position actions by differential IK.

Each expert is a plan of end-effector waypoints (base frame) computed from the privileged
``object_state`` of the observation. Every control step the expert moves its *commanded*
joint targets a bounded step toward the current waypoint with :class:`~sim.kinematics.DiffIK`
and returns them with a gripper command, so the recorded action is exactly what a
position-controlled arm is sent. Plans are randomised per episode seed (hover heights, grasp
offsets, speeds, dwell times, yaw) so demonstrations are diverse.

Experts implement the policy interface (DESIGN.md: ``reset``, ``select_action``,
``embodiment``, ``input_keys``, ``config``); they need the task's arm for kinematics, so they
are built with :func:`make_expert` from a :class:`~sim.tasks.SimTask`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from data.embodiment import load_embodiment
from data.registry import Registry
from sim.kinematics import DiffIK, quat_xyzw_to_mat, rot_z, rotvec, wrap, yaw_of
from sim.tasks import SimTask, get_task

OPEN, CLOSED = -1.0, 1.0
ANGULAR_SPEED = 1.5  # rad/s: the wrist turns to a grasp yaw within ~1 s
WAYPOINT_TIMEOUT = 80  # control steps: a blocked waypoint is abandoned rather than held forever


@dataclass
class Waypoint:
    """Go to (pos, mat) at ``speed`` m/s with the gripper at ``gripper``, then wait ``dwell``
    steps once the real end effector is within ``tol`` m."""

    pos: np.ndarray
    mat: np.ndarray
    gripper: float
    speed: float
    tol: float = 0.01
    dwell: int = 0


Plan = Iterator[Waypoint]
EXPERTS: Registry[Callable[[ScriptedExpert], Plan]] = Registry("expert")


class ScriptedExpert:
    """The scripted expert of one task; ``reset()`` draws its variations from the task seed.

    Built on a :class:`~sim.tasks.SimTask`, or on a task name and then :meth:`bind`-ed to the
    task instance it will drive (the evaluator does this: the expert needs the arm's
    kinematics, which a learned policy does not).
    """

    def __init__(self, task: SimTask | str, seed: int | None = None) -> None:
        name = task if isinstance(task, str) else task.name
        self._plan_fn = EXPERTS.get(name)
        self.task_name = name
        self.embodiment = get_task(name).embodiment_for(load_embodiment("sim_panda"))
        self.input_keys = ["joint_pos", "eef_pos", "eef_quat", "object_state"]
        self.config = {"type": "scripted_expert", "task": name}
        self._seed = seed
        self.rng = np.random.default_rng(seed)
        self.obs: dict[str, np.ndarray] = {}
        self._plan: Plan | None = None
        self.task: SimTask | None = None
        if not isinstance(task, str):
            self.bind(task)

    def bind(self, task: SimTask) -> None:
        if task.name != self.task_name:
            raise ValueError(f"expert for {self.task_name!r} cannot drive task {task.name!r}")
        self.task = task
        self.arm = task.arm

    def reset(self, seed: int | None = None) -> None:
        if self.task is None:
            raise RuntimeError("bind(task) the expert before reset()")
        if seed is None:
            seed = self.task.seed if self._seed is None else self._seed
        self.rng = np.random.default_rng(seed)
        self.ik = DiffIK(self.arm)
        self.q_cmd: np.ndarray | None = None
        self._plan = None
        self._wp: Waypoint | None = None
        self._gripper = OPEN
        self._steps_on_wp = 0
        self._dwelt = 0

    # ---- helpers for plans -------------------------------------------------------------

    def uniform(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def object_pose(self, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(pos, 3x3 rotation) of object ``index`` in object_state (10 values per object)."""
        s = self.obs["object_state"].astype(np.float64)[10 * index : 10 * index + 10]
        return s[:3], quat_xyzw_to_mat(s[3:7])

    def eef(self) -> tuple[np.ndarray, np.ndarray]:
        return self.obs["eef_pos"].astype(np.float64), quat_xyzw_to_mat(self.obs["eef_quat"])

    def grasp_rotation(
        self, obj_mat: np.ndarray, symmetry: float, noise: float, across: bool = False
    ) -> np.ndarray:
        """Gripper pointing down with its finger axis (the grip site's x axis) on the object's
        x axis, or across it (``across``), yaw taken modulo ``symmetry``; ``symmetry=0`` is a
        round object: keep the current yaw."""
        down = self.home_mat
        delta = 0.0
        if symmetry > 0:
            goal = yaw_of(obj_mat) + (np.pi / 2 if across else 0.0)
            delta = wrap(goal - yaw_of(down), symmetry)
        return rot_z(delta + self.uniform(-noise, noise)) @ down

    # ---- policy interface --------------------------------------------------------------

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """One control step: (Da,) = joint targets (7) + gripper command."""
        self.obs = obs
        if self._plan is None:
            self.q_cmd = obs["joint_pos"].astype(np.float64)
            self.home_pos, self.home_mat = self.arm.fk_matrix(self.q_cmd)
            self._plan = self._plan_fn(self)
        self._advance()
        wp = self._wp
        if wp is not None:
            dt = self.embodiment.dt
            self.q_cmd = self.ik.step_toward(
                self.q_cmd, wp.pos, wp.mat, wp.speed * dt, ANGULAR_SPEED * dt
            )
            self._gripper = wp.gripper
        return np.concatenate([self.q_cmd, [self._gripper]]).astype(np.float32)

    def _advance(self) -> None:
        while True:
            if self._wp is not None and not self._done(self._wp):
                return
            try:
                self._wp = next(self._plan)
            except StopIteration:
                self._wp = None
                return
            self._steps_on_wp = 0
            self._dwelt = 0

    def _done(self, wp: Waypoint) -> bool:
        self._steps_on_wp += 1
        if self._steps_on_wp > WAYPOINT_TIMEOUT:
            return True
        cmd_pos, cmd_mat = self.arm.fk_matrix(self.q_cmd)
        real = self.obs["eef_pos"].astype(np.float64)
        arrived = (
            np.linalg.norm(cmd_pos - wp.pos) < 2e-3
            and np.linalg.norm(rotvec(wp.mat @ cmd_mat.T)) < 0.03  # rad: the wrist has turned
            and np.linalg.norm(real - wp.pos) < wp.tol
        )
        if arrived:
            self._dwelt += 1
        return arrived and self._dwelt > wp.dwell


def make_expert(task: SimTask | str, seed: int | None = None) -> ScriptedExpert:
    """The scripted expert for ``task`` (fails listing the tasks that have one)."""
    return ScriptedExpert(task, seed)


# ---- plans ---------------------------------------------------------------------------


def _pick(
    ex: ScriptedExpert,
    index: int,
    symmetry: float,
    grasp_dz: float,
    offset: np.ndarray,
    xy_noise: float = 0.004,
    across: bool = False,
    rotation: np.ndarray | None = None,
) -> Plan:
    """Hover over object ``index``, descend, close; ``offset`` is the grasp point in the
    object's frame. Leaves the object grasped at the grasp height."""
    pos, mat = ex.object_pose(index)
    R = (
        rotation
        if rotation is not None
        else ex.grasp_rotation(mat, symmetry, np.deg2rad(4), across)
    )
    grasp = pos + mat @ offset + np.array([0.0, 0.0, grasp_dz])
    grasp[:2] += ex.rng.uniform(-xy_noise, xy_noise, size=2)
    hover = grasp + np.array([0.0, 0.0, ex.uniform(0.08, 0.14)])
    yield Waypoint(hover, R, OPEN, speed=ex.uniform(0.25, 0.4), tol=0.02)
    yield Waypoint(grasp, R, OPEN, speed=ex.uniform(0.12, 0.2), tol=0.008, dwell=1)
    yield Waypoint(grasp, R, CLOSED, speed=0.1, tol=0.02, dwell=int(ex.rng.integers(6, 10)))


def _relative(ex: ScriptedExpert, index: int) -> tuple[np.ndarray, np.ndarray]:
    """The grasped object's pose in the gripper frame: (p_rel (3,), R_rel (3, 3))."""
    p_g, R_g = ex.eef()
    p_o, R_o = ex.object_pose(index)
    return R_g.T @ (p_o - p_g), R_g.T @ R_o


def _gripper_for(
    obj_pos: np.ndarray, obj_mat: np.ndarray, rel: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Gripper pose that puts the grasped object at (obj_pos, obj_mat)."""
    p_rel, R_rel = rel
    R_g = obj_mat @ R_rel.T
    return obj_pos - R_g @ p_rel, R_g


@EXPERTS.register("lift")
def lift_plan(ex: ScriptedExpert) -> Plan:
    yield from _pick(ex, 0, np.pi / 2, ex.uniform(-0.006, 0.002), np.zeros(3))
    pos, R = ex.eef()
    up = pos + np.array([0.0, 0.0, ex.uniform(0.12, 0.18)])
    yield Waypoint(up, R, CLOSED, speed=ex.uniform(0.15, 0.25), tol=0.02, dwell=20)


def _place(
    ex: ScriptedExpert,
    index: int,
    target: np.ndarray,
    target_mat: np.ndarray | float,
    carry_height: float,
    release_height: float,
) -> Plan:
    """Carry the grasped object over ``target`` (its desired position), lower it to
    ``release_height`` above the target, open, and retreat upward.

    ``target_mat`` is the object's desired rotation, or for a round object a float: the yaw
    to turn the gripper by (its tilt in the fingers then does not matter).
    """
    pos, R_now = ex.eef()
    lift_to = pos.copy()
    lift_to[2] = max(pos[2], target[2] + carry_height)
    yield Waypoint(lift_to, R_now, CLOSED, speed=ex.uniform(0.2, 0.3), tol=0.03, dwell=2)
    rel = _relative(ex, index)  # measured once lifted: the object settles in the fingers
    if isinstance(target_mat, float):
        _, R_g = ex.eef()
        target_mat = rot_z(target_mat) @ R_g @ rel[1]
    above_obj = target + np.array([0.0, 0.0, carry_height])
    above, R = _gripper_for(above_obj, target_mat, rel)
    yield Waypoint(above, R, CLOSED, speed=ex.uniform(0.2, 0.3), tol=0.01, dwell=3)
    down, _ = _gripper_for(target + np.array([0.0, 0.0, release_height]), target_mat, rel)
    yield Waypoint(down, R, CLOSED, speed=ex.uniform(0.08, 0.12), tol=0.006, dwell=3)
    yield Waypoint(down, R, OPEN, speed=0.05, tol=0.02, dwell=int(ex.rng.integers(5, 8)))
    retreat = down + np.array([0.0, 0.0, 0.12])
    yield Waypoint(retreat, R, OPEN, speed=ex.uniform(0.15, 0.25), tol=0.02, dwell=20)


def _flat(obj_mat: np.ndarray, yaw: float) -> np.ndarray:
    """The object's rotation turned about base z so its x axis heads at ``yaw``."""
    return rot_z(wrap(yaw - yaw_of(obj_mat))) @ obj_mat


@EXPERTS.register("can")
def can_plan(ex: ScriptedExpert) -> Plan:
    yield from _pick(ex, 0, 0.0, ex.uniform(0.0, 0.015), np.zeros(3), xy_noise=0.002)
    # robosuite's PickPlace checks the can against its quadrant of bin2 (not_in_bin, bin_id 3:
    # x from bin2_pos.x, y from bin2_pos.y, each bin_size/2 wide). Aim at the quadrant corner
    # nearest the robot: its centre is at the edge of the Panda's reach.
    env = ex.arm.env
    margin = 0.05  # can radius (~0.035) plus clearance from the quadrant's edges
    corner = np.array(env.bin2_pos, dtype=np.float64)
    corner[:2] += margin + ex.rng.uniform(0.0, 0.03, size=2)
    target = ex.arm.to_base(corner) + np.array([0.0, 0.0, 0.06])  # can centre when resting
    # the can is round: turn it with the base joint instead of winding the wrist to its limit
    pos, _ = ex.object_pose(0)
    swing = float(np.arctan2(target[1], target[0]) - np.arctan2(pos[1], pos[0]))
    yield from _place(ex, 0, target, swing, 0.16, 0.03)


@EXPERTS.register("stack")
def stack_plan(ex: ScriptedExpert) -> Plan:
    yield from _pick(ex, 0, np.pi / 2, ex.uniform(-0.004, 0.002), np.zeros(3))
    pos_b, mat_b = ex.object_pose(1)
    _, mat_a = ex.object_pose(0)
    yaw = yaw_of(mat_a) + wrap(yaw_of(mat_b) - yaw_of(mat_a), np.pi / 2)
    # cubeA (half size 0.02) resting on cubeB (half size 0.025)
    target = pos_b + np.array([0.0, 0.0, 0.045])
    yield from _place(ex, 0, target, _flat(mat_a, yaw), 0.08, 0.012)


@EXPERTS.register("square")
def square_plan(ex: ScriptedExpert) -> Plan:
    peg, peg_mat = ex.arm.body_pose("peg1")
    nut_pos, nut_mat = ex.object_pose(0)
    # The square hole fits the peg every 90 degrees. Of the four nut headings, take the one
    # whose handle points from the peg back toward the robot: the peg is near the edge of the
    # Panda's reach, and the gripper holds the handle.
    toward_robot = np.arctan2(-peg[1], -peg[0])
    base_yaw = yaw_of(nut_mat) + wrap(yaw_of(peg_mat) - yaw_of(nut_mat), np.pi / 2)
    final_yaw = toward_robot - wrap(toward_robot - base_yaw, np.pi / 2)  # on base_yaw's lattice
    turn = wrap(final_yaw - yaw_of(nut_mat))  # the nut's (and the wrist's) turn while carrying
    # Grasp the handle across its 3.2 cm width (robosuite's SquareNut handle, geom g4, is a
    # 5 x 3.2 x 2 cm box centred 0.054 m along the nut's x axis). The two finger orientations
    # differ by pi; take the one that keeps joint 7 (the wrist, +-2.9 rad) furthest from its
    # limits through both the grasp and the carry. The gripper's heading is q1 - q7 (joint 7
    # turns about the downward tool axis), so the wrist's share of a turn is the heading
    # change minus what the base joint already turns toward the new position.
    down = ex.home_mat
    heading = [np.arctan2(p[1], p[0]) for p in (ex.home_pos, nut_pos, peg)]
    q7 = ex.q_cmd[6]
    lo, hi = ex.embodiment.position_lower[6], ex.embodiment.position_upper[6]

    def wrist_margin(g: float) -> float:
        at_grasp = q7 + (heading[1] - heading[0]) - g
        at_place = at_grasp + (heading[2] - heading[1]) - turn
        return min(at_grasp - lo, hi - at_grasp, at_place - lo, hi - at_place)

    first = wrap(yaw_of(nut_mat) + np.pi / 2 - yaw_of(down), np.pi)
    grasp = max((first, wrap(first + np.pi)), key=wrist_margin)
    R = rot_z(grasp + ex.uniform(-0.05, 0.05)) @ down
    handle = np.array([0.054, 0.0, 0.0])
    yield from _pick(ex, 0, 0.0, ex.uniform(0.0, 0.004), handle, xy_noise=0.003, rotation=R)
    target = peg.copy()
    target[2] = nut_pos[2]  # nut resting height on the table
    yield from _place(ex, 0, target, _flat(nut_mat, final_yaw), 0.14, 0.035)


def run_episode(
    task: SimTask, seed: int, policy: Any | None = None
) -> tuple[dict[str, list[np.ndarray]], bool]:
    """Roll out the expert (or ``policy``) from ``seed``; returns (steps by key, success).

    Steps hold the observation at t and the action sent at t, the store's convention.
    """
    policy = policy or make_expert(task)
    obs, _ = task.reset(seed=seed)
    policy.reset()
    steps: dict[str, list[np.ndarray]] = {}
    success = False
    while True:
        action = np.asarray(policy.select_action(obs), dtype=np.float32)
        for k, v in obs.items():
            steps.setdefault(k, []).append(v)
        obs, _, terminated, truncated, info = task.step(action)
        steps.setdefault("action", []).append(info["action"])
        if terminated or truncated:
            success = bool(info["success"])
            break
    return steps, success
