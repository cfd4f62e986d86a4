"""sim_arm node: sim.mujoco_arm.SimArm behind the topics a ros2_control arm exposes.

Publishes ``/joint_states`` (arm + finger joints) every control period, each camera as
``<camera>/image_raw``, ``<camera>/image_raw/compressed`` and ``<camera>/camera_info``
(sensor-data QoS, stamped with the time of the physics state they show), ``~/success``
(std_msgs/Bool), ``~/stage`` (std_msgs/String: how far the task's object is now, one of
sim.mujoco_arm.STAGES, for evaluations' failure stages), ``~/eef_pose`` (PoseStamped, base
frame) and the privileged ``~/object_state`` (Float64MultiArray). Takes a
joint_trajectory_controller topic, a forward_command_controller topic and a gripper forward
command; ``~/reset`` (Trigger) re-places the scene with the next seed. With ``use_sim_time``
it publishes ``/clock`` and stamps everything with simulated time. Messages are built from
store-shaped arrays by data/rosmsg.py, the mapping the recorder, the policy node and the bag
converters read them by.

Rendering uses the GL back-end the rest of handoff picks (sim/_gl.py): EGL on a machine with
a GPU, OSMesa otherwise (~45 ms per 84x84 frame), ``HANDOFF_GL`` or ``MUJOCO_GL`` to override;
/diagnostics reports it as ``gl``. It runs on its own thread on a copy of the physics state, so
the control timer never waits for a camera.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from builtin_interfaces.msg import Time as TimeMsg
from geometry_msgs.msg import Point, Pose, PoseStamped, Quaternion
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rclpy.time import Time
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, Header, MultiArrayLayout, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from data import rosmsg
from data.rosmsg import Trajectory, trajectory_from_msg
from handoff_ros.images import camera_info, to_compressed_msg, to_image_msg
from handoff_ros.rosutil import (
    OK,
    WARN,
    CommandTopics,
    Diagnostics,
    declare_params,
    param,
    run_node,
)

# the rclpy classes data.rosmsg builds this node's messages with, by ROS type name
MSG_TYPES = {
    "sensor_msgs/msg/JointState": JointState,
    "geometry_msgs/msg/PoseStamped": PoseStamped,
    "geometry_msgs/msg/Pose": Pose,
    "geometry_msgs/msg/Point": Point,
    "geometry_msgs/msg/Quaternion": Quaternion,
    "std_msgs/msg/Float64MultiArray": Float64MultiArray,
    "std_msgs/msg/MultiArrayLayout": MultiArrayLayout,
}


@dataclass
class SimArmParams(CommandTopics):
    task: str = param("lift", "simulated task (sim.tasks registry): scene, objects, success")
    embodiment: str = param("sim_panda", "embodiment spec name or YAML path")
    cameras: str = param("agentview", "comma-separated spec cameras to render; empty: none")
    image_height: int = param(84, "rendered height, px (84: robomimic's image size)")
    image_width: int = param(84, "rendered width, px")
    camera_hz: float = param(
        10.0, "render/publish rate, Hz (software GL renders ~45 ms a frame on a CPU machine)"
    )
    control_hz: float = param(0.0, "physics/joint_states rate, Hz; 0: the spec's control_hz")
    seed: int = param(0, "seed of the first scene; each ~/reset uses the next one")

    def __post_init__(self) -> None:
        if self.image_height <= 0 or self.image_width <= 0:
            raise ValueError("image_height and image_width must be positive")
        if self.camera_hz <= 0:
            raise ValueError("camera_hz must be positive")
        if self.control_hz < 0:
            raise ValueError("control_hz must be >= 0 (0 = the spec's rate)")

    @property
    def camera_list(self) -> list[str]:
        return [c.strip() for c in self.cameras.split(",") if c.strip()]


class SimArmNode(Node):
    def __init__(self) -> None:
        super().__init__("sim_arm")
        p = self.p = declare_params(self, SimArmParams)
        from data.embodiment import load_embodiment
        from sim._gl import configure_gl, require_gl
        from sim.mujoco_arm import STAGES, SimArm

        self.stages = STAGES
        self.gl = configure_gl()  # chosen before MuJoCo was imported (by sim.mujoco_arm, above)
        if p.camera_list:  # a GL back-end that cannot render: one line, not a render traceback
            require_gl()

        base = load_embodiment(p.embodiment)
        self.arm = SimArm(p.task, p.camera_list, (p.image_height, p.image_width), base)
        self.arm.reset(p.seed)
        self.spec = self.arm.embodiment
        self.n_resets = 0
        self.sim_time = self.get_parameter("use_sim_time").value
        self.dt = 1.0 / (p.control_hz or self.spec.control_hz)
        self.sim_t = 0.0
        self.state_stamp = self.now()  # time of the physics state last stepped (camera stamps)
        self.lock = threading.Lock()  # guards the physics state against the render thread
        self.target = self.arm.last_action.copy()  # (Da,) what the servos track
        self.trajectory: Trajectory | None = None
        self.commands_received = 0
        self.steps = 0
        self.late_ticks = 0

        self.pub_js = self.create_publisher(JointState, "/joint_states", 10)
        self.pub_success = self.create_publisher(Bool, "~/success", 10)
        self.pub_stage = self.create_publisher(String, "~/stage", 10)
        self.pub_eef = self.create_publisher(PoseStamped, "~/eef_pose", 10)
        self.pub_obj = self.create_publisher(Float64MultiArray, "~/object_state", 10)
        self.pub_clock = self.create_publisher(ClockMsg, "/clock", 10) if self.sim_time else None
        self.create_subscription(JointTrajectory, p.trajectory_topic, self.on_trajectory, 10)
        self.create_subscription(Float64MultiArray, p.forward_topic, self.on_forward, 10)
        self.create_subscription(Float64MultiArray, p.gripper_topic, self.on_gripper, 10)
        self.create_service(Trigger, "~/reset", self.on_reset)
        # wall-clock timer even under use_sim_time: this node is the one that makes sim time
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.timer = self.create_timer(self.dt, self.tick, clock=steady)
        self.diag = Diagnostics(self, self.report)
        self.renderer = CameraThread(self) if p.camera_list else None
        cams = f"cameras {p.camera_list} rendered with MUJOCO_GL={self.gl}"
        self.get_logger().info(
            f"{p.task} at {1 / self.dt:g} Hz; {cams if p.camera_list else 'no camera'}"
        )

    # ---- time ------------------------------------------------------------------------------

    def now(self) -> float:
        return self.sim_t if self.sim_time else self.get_clock().now().nanoseconds * 1e-9

    def stamp(self, t: float) -> TimeMsg:
        return Time(nanoseconds=int(round(t * 1e9))).to_msg()

    # ---- commands --------------------------------------------------------------------------

    def on_trajectory(self, msg: JointTrajectory) -> None:
        try:
            traj = trajectory_from_msg(
                msg, self.spec.joint_names, self.target[:-1].copy(), self.now()
            )
        except ValueError as e:
            self.diag.problem(f"rejected command: {e}")
            return
        self.trajectory = traj
        self.commands_received += 1

    def on_forward(self, msg: Float64MultiArray) -> None:
        try:
            q = rosmsg.float_values(msg, self.spec.n_joints, self.p.forward_topic)
        except ValueError as e:
            self.diag.problem(f"rejected command: {e}")
            return
        self.trajectory = None
        self.target[:-1] = q
        self.commands_received += 1

    def on_gripper(self, msg: Float64MultiArray) -> None:
        try:
            self.target[-1] = rosmsg.float_values(msg, 1, self.p.gripper_topic)[0]
        except ValueError as e:
            self.diag.problem(f"rejected gripper command: {e}")

    def on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.n_resets += 1
        seed = self.p.seed + self.n_resets
        with self.lock:
            self.arm.reset(seed)
            self.target = self.arm.last_action.copy()
            self.trajectory = None
        response.success, response.message = True, f"scene reset with seed {seed}"
        return response

    # ---- the control period ----------------------------------------------------------------

    def tick(self) -> None:
        t0 = time.monotonic()
        if self.trajectory is not None:
            self.target[:-1] = self.trajectory.at(self.now())
        with self.lock:
            self.arm.step(self.target)  # the arm clamps to the spec's limits, as hardware would
            self.sim_t += self.dt
            t = self.now()
            q, dq = self.arm.joint_positions(), self.arm.joint_velocities()
            finger_pos = self.arm.gripper_positions()
            pos, quat = self.arm.eef_pose()
            obj = self.arm.object_state()
            success = self.arm.success()
            stage = self.stages[self.arm.progress()]
            self.state_stamp = t
        self.steps += 1
        stamp = self.stamp(t)
        if self.pub_clock is not None:
            self.pub_clock.publish(ClockMsg(clock=stamp))
        # every finger joint the spec names, whether or not a recorder stores gripper_pos
        js = rosmsg.joint_state_msg(
            MSG_TYPES,
            Header(stamp=stamp),
            self.spec,
            q,
            joint_vel=dq,
            gripper_pos=finger_pos,
            fingers=self.spec.gripper.joint_names,
        )
        self.pub_js.publish(js)
        pose_header = Header(stamp=stamp, frame_id="robot0_base")
        self.pub_eef.publish(rosmsg.pose_msg(MSG_TYPES, pose_header, pos, quat))
        self.pub_obj.publish(rosmsg.float_array_msg(MSG_TYPES, obj))
        self.pub_success.publish(Bool(data=bool(success)))
        self.pub_stage.publish(String(data=stage))
        if time.monotonic() - t0 > self.dt:
            self.late_ticks += 1

    def report(self) -> tuple[int, str, dict]:
        values = {
            "steps": self.steps,
            "commands_received": self.commands_received,
            "late_ticks": self.late_ticks,
            "frames": self.renderer.frames if self.renderer else 0,
            "mujoco_warnings": self.arm.warnings(),
            "gl": self.gl,
        }
        if self.arm.warnings():
            return WARN, "MuJoCo warnings", values
        return OK, "running", values

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
        self.arm.close()


class CameraThread:
    """Renders every camera at ``camera_hz`` from a snapshot of the physics state (the camera
    node's ``driver:=sim`` source, handoff_ros.camera_sources.sim, renders a still scene)."""

    def __init__(self, node: SimArmNode) -> None:
        self.node = node
        self.frames = 0
        self.pubs = {}
        qos = qos_profile_sensor_data
        p = node.p
        for name in p.camera_list:
            self.pubs[name] = (
                node.create_publisher(Image, f"{name}/image_raw", qos),
                node.create_publisher(CompressedImage, f"{name}/image_raw/compressed", qos),
                node.create_publisher(CameraInfo, f"{name}/camera_info", qos),
                camera_info(p.image_width, p.image_height, None, f"{name}_optical_frame"),
            )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sim-render", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import mujoco

        node, arm = self.node, self.node.arm
        data = mujoco.MjData(arm.model)
        p = node.p
        # the GL context belongs to the thread that made it: create the renderer here
        renderer = mujoco.Renderer(arm.model, p.image_height, p.image_width)
        period = 1.0 / p.camera_hz
        next_t = time.monotonic()
        while not self._stop.is_set():
            with node.lock:
                data.qpos[:], data.qvel[:] = arm.data.qpos, arm.data.qvel
                data.mocap_pos[:], data.mocap_quat[:] = arm.data.mocap_pos, arm.data.mocap_quat
                t = node.state_stamp
            mujoco.mj_forward(arm.model, data)
            stamp = node.stamp(t)
            try:
                self._publish(renderer, data, stamp)
            except Exception:
                if not node.context.ok():  # Ctrl-C shut the context down under this thread
                    break
                raise
            self.frames += 1
            next_t += period
            delay = next_t - time.monotonic()
            if delay < -period:
                next_t = time.monotonic()  # rendering is slower than camera_hz: do not pile up
            self._stop.wait(max(0.0, delay))
        renderer.close()

    def _publish(self, renderer, data, stamp) -> None:
        from sim.mujoco_arm import CAMERAS

        for name, (pub_raw, pub_jpeg, pub_info, info) in self.pubs.items():
            renderer.update_scene(data, camera=CAMERAS[name])
            rgb = renderer.render()
            msg = to_image_msg(rgb)
            msg.header.stamp, msg.header.frame_id = stamp, info.header.frame_id
            pub_raw.publish(msg)
            jpeg = to_compressed_msg(rgb)
            jpeg.header = msg.header
            pub_jpeg.publish(jpeg)
            info.header = msg.header
            pub_info.publish(info)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def main(args: list[str] | None = None) -> None:
    run_node(SimArmNode, args, params=SimArmParams, doc=__doc__)


if __name__ == "__main__":
    main()
