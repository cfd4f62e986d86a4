"""Simulated tasks: a registry of robosuite scenes on the Panda with a Gymnasium-style API.

``make_task("lift", cameras=("agentview",))`` returns a :class:`SimTask` whose observations are
exactly the store keys of the contract (DESIGN.md): ``joint_pos`` (7,), ``joint_vel`` (7,),
``gripper_pos`` (2,), ``eef_pos`` (3,), ``eef_quat`` (4,) xyzw, the privileged
``object_state`` (D_obj,) and one uint8 (H, W, 3) image per camera. Actions are (Da,) = 7
absolute joint targets + gripper command in [-1 open, +1 closed], clamped to the spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from data.embodiment import Embodiment
from data.registry import Registry
from sim._gl import configure_gl

# The GL back-end must be chosen before anything imports mujoco; tasks are the usual entry.
configure_gl()

if TYPE_CHECKING:
    from sim.mujoco_arm import SimArm

OBJECT_KEY = "object_state"


@dataclass(frozen=True)
class TaskDef:
    """One task: the robosuite environment, its privileged state, its time limit and the body
    the arm must pick up (``grasp_body``: how far a failed episode got, see
    :meth:`SimArm.progress`)."""

    name: str
    env_name: str
    object_dim: int
    object_state: Callable[[SimArm], np.ndarray]
    max_steps: int
    grasp_body: str
    env_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.object_dim <= 0 or self.max_steps <= 0:
            raise ValueError(f"task {self.name!r}: object_dim and max_steps must be positive")

    def embodiment_for(self, spec: Embodiment) -> Embodiment:
        """``spec`` plus this task's privileged ``object_state`` observation."""
        observation = {**spec.observation, OBJECT_KEY: (self.object_dim,)}
        privileged = tuple(dict.fromkeys([*spec.privileged, OBJECT_KEY]))
        return replace(spec, observation=observation, privileged=privileged)


TASKS: Registry[TaskDef] = Registry("task")


def register(task: TaskDef) -> TaskDef:
    return TASKS.register(task.name)(task)


def get_task(name: str) -> TaskDef:
    return TASKS.get(name)


def _pose_rel(arm: SimArm, body: str) -> np.ndarray:
    """(10,): body position (3), quaternion xyzw (4), position relative to the gripper (3)."""
    from sim.mujoco_arm import mat_to_quat_xyzw

    pos, mat = arm.body_pose(body)
    eef = arm.eef_pose()[0]
    return np.concatenate([pos, mat_to_quat_xyzw(mat), pos - eef])


# Time limits: robomimic's rollout horizons for these tasks at 20 Hz, rounded (lift 10 s,
# can/stack/square 20-25 s); the scripted experts finish in well under half of that.
register(
    TaskDef(
        "lift",
        "Lift",
        object_dim=10,
        object_state=lambda arm: _pose_rel(arm, "cube_main"),
        max_steps=200,
        grasp_body="cube_main",
    )
)
register(
    TaskDef(
        "can",
        "PickPlaceCan",
        object_dim=10,
        object_state=lambda arm: _pose_rel(arm, "Can_main"),
        max_steps=400,
        grasp_body="Can_main",
    )
)
register(
    TaskDef(
        "stack",
        "Stack",
        object_dim=20,
        object_state=lambda arm: np.concatenate(
            [_pose_rel(arm, "cubeA_main"), _pose_rel(arm, "cubeB_main")]
        ),
        max_steps=400,
        grasp_body="cubeA_main",  # stacked onto cubeB
    )
)
register(
    TaskDef(
        "square",
        "NutAssemblySquare",
        object_dim=10,
        object_state=lambda arm: _pose_rel(arm, "SquareNut_main"),
        max_steps=400,
        grasp_body="SquareNut_main",
    )
)


class SimTask:
    """A task with the Gymnasium API around one :class:`~sim.mujoco_arm.SimArm`.

    ``reset(seed=s)`` places the scene deterministically for ``s``; without a seed the next one
    comes from the generator seeded at construction. ``step`` returns ``terminated=True`` on
    success and ``truncated=True`` at ``max_steps``.
    """

    def __init__(
        self,
        name: str,
        cameras: tuple[str, ...] | list[str] = (),
        image_size: tuple[int, int] = (84, 84),
        seed: int | None = None,
        max_steps: int | None = None,
    ) -> None:
        from sim.mujoco_arm import SimArm

        self.spec = get_task(name)
        self.name = name
        if max_steps is not None and max_steps <= 0:
            raise ValueError("max_steps must be positive")
        self.max_steps = max_steps or self.spec.max_steps
        self.arm = SimArm(self.spec, cameras=tuple(cameras), image_size=tuple(image_size))
        self.embodiment = self.arm.embodiment
        self._seeds = np.random.default_rng(seed)
        self.seed: int | None = None
        self.t = 0

    def reset(self, seed: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if seed is None:
            seed = int(self._seeds.integers(2**31))
        self.seed = int(seed)
        self.arm.reset(self.seed)
        self.t = 0
        return self.arm.observation(), {"success": self.arm.success(), "seed": self.seed}

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        applied = self.arm.step(action)
        self.t += 1
        success = self.arm.success()
        truncated = self.t >= self.max_steps and not success
        info = {"success": success, "action": applied.astype(np.float32)}
        return self.arm.observation(), float(success), success, truncated, info

    def close(self) -> None:
        self.arm.close()

    def __enter__(self) -> SimTask:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_task(
    name: str,
    cameras: tuple[str, ...] | list[str] = (),
    image_size: tuple[int, int] = (84, 84),
    seed: int | None = None,
    max_steps: int | None = None,
) -> SimTask:
    """Build a registered task; unknown names fail listing the valid ones."""
    get_task(name)
    return SimTask(name, cameras=cameras, image_size=image_size, seed=seed, max_steps=max_steps)
