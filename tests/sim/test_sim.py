"""Simulated tasks, the simulated arm and the scripted experts, on real MuJoCo physics.

Every registered task goes through the same tests (one scene build per task, shared by the
module): random actions with no MuJoCo warnings, observations matching the spec, and an
expert episode that succeeds.
"""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from data.errors import UserError
from sim.evaluate import wilson_interval
from sim.experts import make_expert, run_episode
from sim.kinematics import DiffIK
from sim.tasks import TASKS, make_task

_TASKS: dict[str, object] = {}


def task_named(name: str):
    """One SimTask per name for the whole module (building a robosuite scene takes seconds)."""
    if name not in _TASKS:
        cams = ("agentview", "wrist") if name == "lift" else ()
        _TASKS[name] = make_task(name, cameras=cams, image_size=(48, 64))
    return _TASKS[name]


@pytest.fixture(scope="module", autouse=True)
def _close_tasks():
    yield
    for t in _TASKS.values():
        t.close()
    _TASKS.clear()


def random_actions(task, rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Joint targets wandering +-0.4 rad around the reset pose, random gripper commands."""
    q0 = task.arm.joint_positions()
    return [
        np.concatenate([q0 + rng.uniform(-0.4, 0.4, size=7), rng.uniform(-1, 1, size=1)])
        for _ in range(n)
    ]


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(UserError, match="lift") as e:
        make_task("pour")
    assert "square" in str(e.value) and "can" in str(e.value)


def test_registry_has_the_required_tasks():
    assert {"lift", "can", "stack", "square"} <= set(TASKS.names())


@pytest.mark.parametrize("name", TASKS.names())
def test_random_actions_no_warnings_and_obs_match_spec(name):
    task = task_named(name)
    spec = task.embodiment
    assert "object_state" in spec.privileged
    obs, info = task.reset(seed=11)
    assert info["success"] is False
    rng = np.random.default_rng(0)
    for a in random_actions(task, rng, 60):  # 3 s at 20 Hz
        obs, reward, terminated, truncated, info = task.step(a)
        assert isinstance(info["success"], bool)
    assert task.arm.warnings() == {}
    assert set(obs) == set(spec.observation) | set(spec.camera_names)
    for key, shape in spec.observation.items():
        assert obs[key].shape == tuple(shape), key
        assert obs[key].dtype == np.float32 and np.all(np.isfinite(obs[key])), key
    for cam in spec.cameras:
        img = obs[cam.name]
        assert img.shape == cam.shape and img.dtype == np.uint8
        assert img.std() > 5, f"{cam.name} rendered a blank image"
    assert abs(np.linalg.norm(obs["eef_quat"]) - 1) < 1e-4


@pytest.mark.parametrize("name", TASKS.names())
def test_expert_succeeds(name):
    task = task_named(name)
    steps, success = run_episode(task, seed=0)
    assert success, f"{name} expert failed on seed 0 after {len(steps['action'])} steps"
    actions = np.stack(steps["action"])
    low, high = task.embodiment.action_low(), task.embodiment.action_high()
    assert actions.shape[1] == task.embodiment.action_dim
    assert np.all(actions >= np.array(low) - 1e-6) and np.all(actions <= np.array(high) + 1e-6)
    assert len(steps["action"]) < task.max_steps


@pytest.mark.parametrize("name", ["lift", "can"])
def test_progress_follows_an_expert_grasp_then_lift(name):
    """SimArm.progress, which handoff-eval's failure stages come from: 0 at reset, grasped
    (both finger pads on the object) before lifted, lifted by the time the task succeeds."""
    task = task_named(name)
    expert = make_expert(task)
    obs, _ = task.reset(seed=3)
    expert.reset()
    stages = [task.arm.progress()]
    while True:
        obs, _, terminated, truncated, info = task.step(expert.select_action(obs))
        stages.append(task.arm.progress())
        if terminated or truncated:
            break
    assert info["success"] and stages[0] == 0
    stages = np.array(stages)
    first_grasp, first_lift = np.argmax(stages >= 1), np.argmax(stages == 2)
    assert 0 < first_grasp < first_lift, stages.tolist()


def test_progress_closed_gripper_in_the_air_is_no_grasp_and_a_raised_object_is_lifted():
    """Variants the expert never shows: a gripper closed on nothing is not a grasp; an object
    raised by something other than the gripper counts as lifted."""
    task = task_named("can")
    task.reset(seed=3)
    arm = task.arm
    arm.step(np.append(arm.joint_positions(), 1.0))  # close the gripper in the air
    assert arm.progress() == 0
    joint = arm.model.body(arm.grasp_id).jntadr[0]  # the can's free joint: x, y, z, quat
    arm.data.qpos[arm.model.jnt_qposadr[joint] + 2] += 0.10
    arm.data.qvel[arm.model.jnt_dofadr[joint] : arm.model.jnt_dofadr[joint] + 6] = 0
    mujoco.mj_forward(arm.model, arm.data)
    assert arm.progress() == 2


def test_same_seed_same_trajectory_other_seed_differs():
    task = task_named("stack")
    actions = random_actions(task, np.random.default_rng(1), 25)

    def rollout(seed):
        obs, _ = task.reset(seed=seed)
        traj = [obs["object_state"]]
        for a in actions:
            obs, *_ = task.step(a)
            traj.append(np.concatenate([obs["joint_pos"], obs["object_state"]]))
        return traj

    first = rollout(5)
    other = rollout(6)
    again = rollout(5)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(first[0], other[0]), "different seeds placed objects identically"


def test_arm_tracks_joint_targets_and_clamps():
    task = task_named("lift")
    task.reset(seed=0)
    arm = task.arm
    target = arm.joint_positions() + np.array([0.3, -0.2, 0.2, -0.3, 0.2, 0.3, 0.4])
    for _ in range(30):  # 1.5 s
        arm.step(np.concatenate([target, [1.0]]))
    assert np.max(np.abs(arm.joint_positions() - target)) < 0.01
    assert np.all(np.abs(arm.gripper_positions()) < 0.005)  # closed on nothing
    wild = np.full(8, 100.0)
    _, _, _, _, info = task.step(wild)
    np.testing.assert_allclose(info["action"], task.embodiment.action_high(), rtol=1e-6)
    with pytest.raises(ValueError, match="NaN"):
        arm.step(np.full(8, np.nan))


def test_jacobian_matches_finite_differences_and_ik_reaches_pose():
    task = task_named("lift")
    task.reset(seed=0)
    arm = task.arm
    q = arm.joint_positions()
    J = arm.jacobian(q)
    eps = 1e-6
    for j in range(7):
        dq = np.zeros(7)
        dq[j] = eps
        p1, _ = arm.fk_matrix(q + dq)
        p0, _ = arm.fk_matrix(q - dq)
        np.testing.assert_allclose((p1 - p0) / (2 * eps), J[:3, j], atol=1e-5)
    ik = DiffIK(arm)
    p0, R0 = arm.fk_matrix(q)
    goal = p0 + np.array([0.05, -0.08, -0.06])
    qc = q
    for _ in range(40):
        qc = ik.step_toward(qc, goal, R0, max_lin=0.01, max_ang=0.05)
    p, R = arm.fk_matrix(qc)
    assert np.linalg.norm(p - goal) < 1e-3 and np.allclose(R, R0, atol=1e-2)
    # a twist of 0.1 m/s along x for one 50 ms step moves the grip site ~5 mm along x
    p_t, _ = arm.fk_matrix(ik.twist(q, np.array([0.1, 0, 0, 0, 0, 0])))
    np.testing.assert_allclose(p_t - p0, [0.005, 0, 0], atol=5e-4)


def test_expert_requires_binding_and_matching_task():
    expert = make_expert("lift")
    with pytest.raises(RuntimeError, match="bind"):
        expert.reset()
    with pytest.raises(ValueError, match="cannot drive"):
        expert.bind(task_named("stack"))


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(5, 10)
    assert abs(lo - 0.2366) < 1e-3 and abs(hi - 0.7634) < 1e-3
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and abs(lo - 0.7225) < 1e-3
    assert wilson_interval(0, 0) == [0.0, 1.0]
