"""SimArm: the one simulated position-controlled Panda, shared by tasks, evaluation and ROS.

robosuite builds the scene (table, objects, randomised placement, success checks); SimArm
drives the physics itself so the arm behaves like a ros2_control position controller:

* the seven torque motors of robosuite's Panda become joint-space PD servos inside MuJoCo
  (``gainprm``/``biasprm``) plus gravity compensation, so one control step is one C call of
  ``mj_step`` for all ``substeps`` physics steps (no per-substep Python);
* the gripper command ``g`` in [-1 open, +1 closed] maps linearly onto the finger position
  servos, the convention of robosuite's Panda gripper.

Frames: every pose and Jacobian SimArm reports is in the robot base frame (``robot0_base``),
the frame a real arm's ``/joint_states`` + forward kinematics would give. Quaternions are
(x, y, z, w), the ROS/scipy order (MuJoCo's own order is w, x, y, z).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from data.embodiment import Embodiment, load_embodiment
from data.errors import UserError
from sim._gl import configure_gl

configure_gl()

import mujoco  # noqa: E402  (after configure_gl: MuJoCo binds the GL back-end on import)

if TYPE_CHECKING:
    from sim.tasks import TaskDef

# Spec camera name -> camera in robosuite's scenes.
CAMERAS = {"agentview": "agentview", "wrist": "robot0_eye_in_hand"}
EEF_SITE = "gripper0_right_grip_site"
BASE_BODY = "robot0_base"
FINGER_OPEN = np.array([0.04, -0.04])  # ctrlrange ends of robosuite's panda_gripper.xml
# Joint-impedance gains of Franka's own joint_impedance example controller (Nm/rad, Nms/rad);
# stiff enough that the arm settles on a target within ~0.1 s (tests/sim/test_sim.py checks it).
KP = np.array([600.0, 600.0, 600.0, 600.0, 250.0, 150.0, 50.0])
KD = np.array([50.0, 50.0, 50.0, 50.0, 30.0, 25.0, 15.0])
SCENE_SEED = 0  # robosuite's model-building seed, fixed: see _make_env
SETTLE_STEPS = 5  # control steps (0.25 s at 20 Hz): a 6 cm drop takes ~0.11 s
# How far an episode got with the task's object (SimArm.progress), in order; an episode's
# stage is the furthest it reached. "lifted": LIFT_MARGIN above where the object rested after
# reset, about what robosuite's Lift success asks of its cube (bottom 2 cm off the table).
STAGES = ("not_grasped", "grasped", "lifted")
LIFT_MARGIN = 0.02  # m


class SimArm:
    """A simulated Panda in one robosuite task scene, commanded by absolute joint targets.

    ``step(action)`` takes Da = n_joints + 1 values (joint targets, gripper command), clamps
    them to the embodiment's limits and advances one control period (1 / control_hz).
    """

    def __init__(
        self,
        task: str | TaskDef = "lift",
        cameras: tuple[str, ...] | list[str] = (),
        image_size: tuple[int, int] = (84, 84),
        embodiment: Embodiment | None = None,
    ) -> None:
        from sim.tasks import get_task

        self.task = get_task(task) if isinstance(task, str) else task
        base = embodiment or load_embodiment("sim_panda")
        spec = base.with_cameras(list(cameras), tuple(image_size))
        self.embodiment = self.task.embodiment_for(spec)
        self.env = _make_env(self.task, self.embodiment)
        self.model: mujoco.MjModel = self.env.sim.model._model
        self.data: mujoco.MjData = self.env.sim.data._data
        self._scratch = mujoco.MjData(self.model)  # FK / Jacobians at arbitrary q
        self._rne = np.zeros(self.model.nv)
        self._index_model()
        self._convert_actuators()
        self.substeps = round(self.embodiment.dt / self.model.opt.timestep)
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}
        self._vis = mujoco.MjvOption()
        self._vis.geomgroup[0] = 0  # robosuite's collision meshes: hidden, as robosuite does
        self._low = np.asarray(self.embodiment.action_low(), dtype=np.float64)
        self._high = np.asarray(self.embodiment.action_high(), dtype=np.float64)
        self.last_action = np.zeros(self.embodiment.action_dim)

    # ---- set-up ------------------------------------------------------------------------

    def _index_model(self) -> None:
        m = self.model
        names = self.embodiment.joint_names
        self.qpos_idx = np.array([m.joint(n).qposadr[0] for n in names])
        self.dof_idx = np.array([m.joint(n).dofadr[0] for n in names])
        fingers = self.embodiment.gripper.joint_names  # the spec's, as /joint_states names them
        if len(fingers) != len(FINGER_OPEN):
            raise UserError(
                f"spec {self.embodiment.name!r} lists gripper.joint_names {list(fingers)}; "
                f"the simulated Panda needs its {len(FINGER_OPEN)} finger joints there"
            )
        self.finger_qpos_idx = np.array([m.joint(n).qposadr[0] for n in fingers])
        joint_ids = {m.joint(n).id for n in names}
        self.arm_act = np.array([a for a in range(m.nu) if m.actuator_trnid[a, 0] in joint_ids])
        finger_ids = {m.joint(n).id for n in fingers}
        self.finger_act = np.array([a for a in range(m.nu) if m.actuator_trnid[a, 0] in finger_ids])
        # actuator order follows joint order in robosuite's XML; keep them aligned explicitly
        order = [list(names).index(m.joint(m.actuator_trnid[a, 0]).name) for a in self.arm_act]
        self.arm_act = self.arm_act[np.argsort(order)]
        self.site_id = m.site(EEF_SITE).id
        self.base_id = m.body(BASE_BODY).id
        self.grasp_id = m.body(self.task.grasp_body).id
        self._grasp_geoms = [
            m.geom(g).name for g in range(m.ngeom) if m.geom_bodyid[g] == self.grasp_id
        ]
        self._rest_z = 0.0

    def _convert_actuators(self) -> None:
        """Turn robosuite's torque motors into PD position servos with the same torque limits."""
        m = self.model
        for i, a in enumerate(self.arm_act):
            torque = m.actuator_ctrlrange[a].copy()  # robosuite: the motor's torque limits
            m.actuator_forcerange[a] = torque
            m.actuator_forcelimited[a] = 1
            m.actuator_gaintype[a] = mujoco.mjtGain.mjGAIN_FIXED
            m.actuator_biastype[a] = mujoco.mjtBias.mjBIAS_AFFINE
            m.actuator_gainprm[a, :3] = [KP[i], 0, 0]
            m.actuator_biasprm[a, :3] = [0, -KP[i], -KD[i]]
            m.actuator_ctrlrange[a] = [
                self.embodiment.position_lower[i],
                self.embodiment.position_upper[i],
            ]
        # implicit integration of the servo damping: explicit Euler is unstable for the light
        # wrist links at kd=15 and dt=2 ms
        m.opt.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST

    # ---- episode -----------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> None:
        """Re-place objects and the arm (robosuite's randomisation), deterministic per seed."""
        rng = np.random.default_rng(seed)
        self.env.rng = rng
        _reseed_samplers(getattr(self.env, "placement_initializer", None), rng)
        self.env.reset()
        self.hold()
        # robosuite drops objects from a few cm above their support; let them land so the
        # first observation shows a resting scene
        for _ in range(SETTLE_STEPS):
            self.step()
        self._rest_z = float(self.data.xpos[self.grasp_id][2])

    def hold(self) -> None:
        """Command the current joint positions and the current gripper opening."""
        q = self.joint_positions()
        opening = (self.data.qpos[self.finger_qpos_idx] / FINGER_OPEN).mean()
        self.command(np.concatenate([q, [1.0 - 2.0 * float(np.clip(opening, 0, 1))]]))

    def command(self, action: np.ndarray) -> np.ndarray:
        """Set the servo targets from an action (Da,); returns the clamped action applied."""
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != self._low.shape:
            raise ValueError(f"action has shape {a.shape}, expected ({len(self._low)},)")
        if not np.all(np.isfinite(a)):
            raise ValueError("action contains NaN or inf")
        a = np.clip(a, self._low, self._high)
        self.data.ctrl[self.arm_act] = a[:-1]
        g = a[-1]
        self.data.ctrl[self.finger_act] = FINGER_OPEN * (1.0 - g) / 2.0
        self.last_action = a
        return a

    def step(self, action: np.ndarray | None = None) -> np.ndarray:
        """Apply ``action`` (or keep the last command) for one control period."""
        applied = self.command(action) if action is not None else self.last_action
        # the arm's own weight is carried by the controller, as on a real Panda; gravity at the
        # start of the period is held for its substeps (the arm moves < 0.1 rad in 50 ms)
        self.data.qfrc_applied[self.dof_idx] = self._gravity_torque()
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)
        return applied

    def _gravity_torque(self) -> np.ndarray:
        d = self._scratch
        d.qpos[:] = self.data.qpos
        d.qvel[:] = 0
        d.qacc[:] = 0
        mujoco.mj_fwdPosition(self.model, d)
        mujoco.mj_rne(self.model, d, 0, self._rne)
        return self._rne[self.dof_idx]

    def success(self) -> bool:
        return bool(self.env._check_success())

    def progress(self) -> int:
        """Index into :data:`STAGES` of the task's ``grasp_body`` now: 2 lifted (its height
        LIFT_MARGIN above its rest after reset), 1 grasped (both finger pads touch it:
        robosuite's ``_check_grasp``), else 0."""
        if self.data.xpos[self.grasp_id][2] > self._rest_z + LIFT_MARGIN:
            return 2
        return int(self.env._check_grasp(self.env.robots[0].gripper, self._grasp_geoms))

    # ---- state -------------------------------------------------------------------------

    def joint_positions(self) -> np.ndarray:
        return self.data.qpos[self.qpos_idx].copy()

    def joint_velocities(self) -> np.ndarray:
        return self.data.qvel[self.dof_idx].copy()

    def gripper_positions(self) -> np.ndarray:
        return self.data.qpos[self.finger_qpos_idx].copy()

    def _base(self, data: mujoco.MjData) -> tuple[np.ndarray, np.ndarray]:
        return data.xpos[self.base_id], data.xmat[self.base_id].reshape(3, 3)

    def to_base(self, pos: np.ndarray, mat: np.ndarray | None = None) -> tuple:
        """World position (and 3x3 rotation) -> robot base frame."""
        p0, R0 = self._base(self.data)
        p = R0.T @ (np.asarray(pos) - p0)
        return p if mat is None else (p, R0.T @ np.asarray(mat))

    def eef_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """(position (3,), quaternion xyzw (4,)) of the grip site, base frame."""
        return self._site_pose(self.data)

    def _site_pose(self, data: mujoco.MjData) -> tuple[np.ndarray, np.ndarray]:
        pos, mat = self._site_matrix(data)
        return pos, mat_to_quat_xyzw(mat)

    def _site_matrix(self, data: mujoco.MjData) -> tuple[np.ndarray, np.ndarray]:
        p0, R0 = self._base(data)
        pos = R0.T @ (data.site_xpos[self.site_id] - p0)
        return pos, R0.T @ data.site_xmat[self.site_id].reshape(3, 3)

    def body_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(position, 3x3 rotation) of a scene body, base frame."""
        b = self.model.body(name).id
        return self.to_base(self.data.xpos[b], self.data.xmat[b].reshape(3, 3))

    def object_state(self) -> np.ndarray:
        return np.asarray(self.task.object_state(self), dtype=np.float32)

    # ---- kinematics (differential IK for experts and Cartesian teleop) -----------------

    def _at(self, q: np.ndarray | None) -> mujoco.MjData:
        if q is None:
            return self.data
        d = self._scratch
        d.qpos[:] = self.data.qpos
        d.qpos[self.qpos_idx] = q
        mujoco.mj_kinematics(self.model, d)
        mujoco.mj_comPos(self.model, d)
        return d

    def fk(self, q: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Grip-site pose (pos (3,), quat xyzw (4,)) at joint positions q (default: current)."""
        return self._site_pose(self._at(q))

    def fk_matrix(self, q: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Grip-site (position (3,), rotation (3, 3)) in the base frame at q."""
        return self._site_matrix(self._at(q))

    def jacobian(self, q: np.ndarray | None = None) -> np.ndarray:
        """Grip-site Jacobian (6, n_joints): rows (v_xyz, w_xyz) in the base frame."""
        d = self._at(q)
        jacp = np.zeros((3, self.model.nv))
        jacr = np.zeros((3, self.model.nv))
        mujoco.mj_jacSite(self.model, d, jacp, jacr, self.site_id)
        R0 = self._base(d)[1]
        return np.vstack([R0.T @ jacp[:, self.dof_idx], R0.T @ jacr[:, self.dof_idx]])

    # ---- cameras -----------------------------------------------------------------------

    def render(self, name: str, size: tuple[int, int] | None = None) -> np.ndarray:
        """Camera ``name`` as uint8 (H, W, 3), at the spec's size or ``size`` = (H, W).

        With ``size`` any camera in :data:`CAMERAS` renders, in the spec or not (videos).
        """
        if size is None:
            cam = self.embodiment.camera(name)
            key = (cam.height, cam.width)
        else:
            key = (int(size[0]), int(size[1]))
        if name not in CAMERAS:
            raise KeyError(f"unknown camera {name!r}; simulated cameras: {sorted(CAMERAS)}")
        if key not in self._renderers:
            self._renderers[key] = _renderer(self.model, *key)
        r = self._renderers[key]
        r.update_scene(self.data, camera=CAMERAS[name], scene_option=self._vis)
        return r.render().copy()

    def observation(self) -> dict[str, np.ndarray]:
        """One time step under the store keys of the contract (low-dim float32, images uint8)."""
        pos, quat = self.eef_pose()
        obs = {
            "joint_pos": self.joint_positions().astype(np.float32),
            "joint_vel": self.joint_velocities().astype(np.float32),
            "gripper_pos": self.gripper_positions().astype(np.float32),
            "eef_pos": pos.astype(np.float32),
            "eef_quat": quat.astype(np.float32),
            "object_state": self.object_state(),
        }
        for name in self.embodiment.camera_names:
            obs[name] = self.render(name)
        return obs

    def warnings(self) -> dict[str, int]:
        """MuJoCo warning counters that fired (name -> count); empty for a healthy scene."""
        return {
            mujoco.mjtWarning(i).name: int(w.number)
            for i, w in enumerate(self.data.warning)
            if w.number
        }

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()
        self.env.close()

    def __enter__(self) -> SimArm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _renderer(model: mujoco.MjModel, height: int, width: int) -> mujoco.Renderer:
    # Measured with OSMesa at 84x84 (see tests/benchmarks/bench_sim.py): 4x multisampling,
    # shadows and reflections cost ~7x the frame time for little visible difference at
    # policy resolutions, so the renderer turns them off.
    model.vis.quality.offsamples = 0
    r = mujoco.Renderer(model, height, width)
    r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
    r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
    return r


def mat_to_quat_xyzw(mat: np.ndarray) -> np.ndarray:
    q = np.empty(4)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(mat, dtype=np.float64).reshape(9))
    return np.array([q[1], q[2], q[3], q[0]])  # MuJoCo wxyz -> xyzw


def _reseed_samplers(sampler: object, rng: np.random.Generator) -> None:
    """Point robosuite's placement sampler (and any nested ones) at ``rng``."""
    if sampler is None:
        return
    sampler.rng = rng
    for sub in getattr(sampler, "samplers", {}).values():
        _reseed_samplers(sub, rng)


def _errors_only(record: object) -> bool:
    return record.levelno >= 40  # logging.ERROR


def _make_env(task: TaskDef, spec: Embodiment) -> object:
    import logging

    # robosuite logs set-up chatter at import (private macro file, optional robot models, mink
    # IK) and on every env build; none of it concerns handoff's users. Errors still show.
    logger = logging.getLogger("robosuite_logs")
    if _errors_only not in logger.filters:
        logger.addFilter(_errors_only)
    import robosuite
    from robosuite.controllers import load_composite_controller_config

    controller = load_composite_controller_config(controller="BASIC", robot="Panda")
    env = robosuite.make(
        task.env_name,
        robots="Panda",
        controller_configs=controller,
        has_renderer=False,
        has_offscreen_renderer=False,  # SimArm renders with mujoco.Renderer itself
        use_camera_obs=False,
        use_object_obs=False,
        control_freq=spec.control_hz,
        hard_reset=False,  # keep one compiled model: SimArm edits its actuators in place
        horizon=10**9,
        ignore_done=True,
        reward_shaping=False,
        # robosuite draws some model properties (e.g. Lift's cube size) from its rng when it
        # builds the scene: a fixed seed makes every process build the same scene, so an
        # episode seed reproduces the episode anywhere; reset() reseeds per episode
        seed=SCENE_SEED,
        **task.env_kwargs,
    )
    # robosuite's observables would be recomputed every physics step; SimArm reads state itself
    for ob in env._observables.values():
        ob.set_enabled(False)
        ob.set_active(False)
    return env
