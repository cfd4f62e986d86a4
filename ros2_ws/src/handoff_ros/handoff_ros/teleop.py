"""teleop node: a human drives the arm (keyboard, joy, SpaceMouse or a leader arm).

The ``device`` parameter names a device in the ``teleop_devices.DEVICES`` registry; the node
connects it (devices that listen to a ROS topic subscribe on this node) and reads it every
tick. A new device is one file, ``handoff_ros/teleop_devices/<name>.py``: see that package.
``device:=scripted`` plays a fixed twist pattern (a 5 cm square), the simulated twin.

Outputs, by ``output``:

* ``twist``: ``geometry_msgs/TwistStamped`` on MoveIt Servo's ``~/delta_twist_cmds`` topic
  (base frame), for a real arm with MoveIt Servo running;
* ``joint``: joint targets on the arm's forward or trajectory controller. Twist devices are
  turned into joint targets with differential IK on the simulated arm's MuJoCo Jacobians
  (sim.kinematics.DiffIK), so sim teleop needs no MoveIt; a leader arm maps joint to joint.

Deadman: nothing is sent to the arm while the operator is not engaged, and joint targets pass
the safety filter (deadman, limits, step and velocity clamps). ``~/engaged`` (std_msgs/Bool)
is published every tick: the recorder stores it as ``data/intervention``. Recorder keys call
``<recorder>/start``, ``/stop``, ``/discard`` and ``/mark_success``; the recorder's answers
decide the recording state shown (``recording`` on /diagnostics). The keyboard device prints
its keys in its terminal and keeps a status line there: engaged, recording, gripper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from geometry_msgs.msg import TwistStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from data.align import JointStateMerge, StampCheck
from data.embodiment import load_embodiment
from data.errors import UserError
from handoff_ros.commands import forward_msg, trajectory_msg
from handoff_ros.rosutil import (
    OK,
    WARN,
    CommandTopics,
    Diagnostics,
    RealtimeParams,
    declare_params,
    merge_joint_state,
    now_sec,
    param,
    realtime_thread,
    run_node,
    topic_param,
)
from handoff_ros.teleop_devices import DEVICES, TeleopInput
from policies.safety import SafetyConfig, SafetyFilter


@dataclass
class TeleopParams(CommandTopics, RealtimeParams):
    device: str = param("joy", f"teleop device: {', '.join(DEVICES.names())}")
    output: str = param("joint", "joint (targets to the controller) or twist (MoveIt Servo)")
    robot: str = param("sim", "sim (differential IK on the sim model) or real")
    task: str = param("lift", "sim task whose MuJoCo model gives the Jacobians (robot:=sim)")
    embodiment: str = param("sim_panda", "embodiment spec name or YAML path")
    control_hz: float = param(0.0, "command rate, Hz; 0: the spec's control_hz")
    joy_topic: str = param("/joy", "sensor_msgs/Joy topic (device:=joy)")
    joy_axes: str = param("1,0,4,-1,-1,3", "Joy axis index per twist component; -1: unused")
    deadman_button: int = param(4, "Joy button that must be held to move (LB on Xbox pads)")
    linear_scale: float = param(0.1, "m/s at full deflection")
    angular_scale: float = param(0.5, "rad/s at full deflection")
    leader_topic: str = param("/leader/joint_states", "leader arm JointState (device:=leader)")
    leader_joint_map: str = param("", "follower:leader joint pairs, comma-separated; empty: same")
    leader_timeout_s: float = param(0.2, "leader messages older than this disengage")
    servo_topic: str = param("/servo_node/delta_twist_cmds", "TwistStamped output topic")
    frame_id: str = param("base_link", "frame of the published twists (the robot base)")
    controller: str = param("forward", "joint output: forward or joint_trajectory")
    joint_states_topic: str = topic_param("joint_states_topic")
    recorder: str = param("/recorder", "recorder node whose services the record keys call")

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            gives_joints = DEVICES.get(self.device).gives_joints
        except UserError as e:  # the registry's message lists the devices
            raise ValueError(str(e)) from None
        joint_devices = " or ".join(n for n in DEVICES if DEVICES.get(n).gives_joints)
        if self.output not in ("joint", "twist"):
            raise ValueError(f"output {self.output!r}: use joint or twist")
        if self.robot not in ("sim", "real"):
            raise ValueError(f"robot {self.robot!r}: use sim or real")
        if self.output == "joint" and self.robot == "real" and not gives_joints:
            raise ValueError(
                "joint output from a twist device needs IK: on a real arm use output:=twist "
                f"with MoveIt Servo (or device:={joint_devices})"
            )
        if self.output == "twist" and gives_joints:
            raise ValueError(f"device {self.device} gives joint targets: use output:=joint")
        if self.controller not in ("forward", "joint_trajectory"):
            raise ValueError(f"controller {self.controller!r}: use forward or joint_trajectory")
        if self.control_hz < 0 or self.linear_scale <= 0 or self.angular_scale <= 0:
            raise ValueError("control_hz must be >= 0 and the scales positive")


class TeleopNode(Node):
    def __init__(self) -> None:
        super().__init__("teleop")
        p = self.p = declare_params(self, TeleopParams)
        self.spec = load_embodiment(p.embodiment)
        self.dt = 1.0 / (p.control_hz or self.spec.control_hz)
        g = self.spec.gripper
        self.gripper = g.open_command
        self.ik = None
        device = DEVICES.get(p.device)
        try:
            self.device = device.from_params(p, self.spec)
            # joy and leader subscribe on this node; problems go to /diagnostics
            self.device.connect(self, lambda message: self.diag.problem(message))
        except (RuntimeError, ValueError) as e:
            raise UserError(f"device {p.device}: {e}") from None
        if p.output == "joint" and not device.gives_joints:
            from sim.kinematics import DiffIK
            from sim.mujoco_arm import SimArm

            self.ik = DiffIK(SimArm(p.task, (), embodiment=self.spec))
        self.q: np.ndarray | None = None
        self.q_ref: np.ndarray | None = None  # integrates twists while engaged
        # the operator is the enable: the deadman layer replaces the enable gate
        self.safety = SafetyFilter(
            self.spec, SafetyConfig(require_enable=False, require_deadman=True)
        )
        self.merge = JointStateMerge(self.safety.config.stale_after_s)
        self.stamps = StampCheck(self.safety.config.future_stamp_tolerance_s)
        self.create_subscription(JointState, p.joint_states_topic, self.on_joint_states, 50)
        self.pub_engaged = self.create_publisher(Bool, "~/engaged", 10)
        self.pub_twist = self.create_publisher(TwistStamped, p.servo_topic, 10)
        if p.controller == "forward":
            self.pub_arm = self.create_publisher(Float64MultiArray, p.forward_topic, 10)
        else:
            self.pub_arm = self.create_publisher(JointTrajectory, p.trajectory_topic, 10)
        self.pub_grip = self.create_publisher(Float64MultiArray, p.gripper_topic, 10)
        self.clients_ = {
            "start": self.create_client(Trigger, f"{p.recorder}/start"),
            "stop": self.create_client(Trigger, f"{p.recorder}/stop"),
            "discard": self.create_client(Trigger, f"{p.recorder}/discard"),
            "success": self.create_client(SetBool, f"{p.recorder}/mark_success"),
        }
        self.sent = 0
        self.recording: bool | None = None  # None until the recorder answers a key
        self.engaged = False
        self.scheduling = ""  # set by the first tick, on the thread that runs them
        self.timer = self.create_timer(self.dt, self.tick)
        self.diag = Diagnostics(self, self.report)

    # ---- inputs ----------------------------------------------------------------------------

    def on_joint_states(self, msg: JointState) -> None:
        """Merged by name (the gripper may publish apart); the watchdog judges the time of the
        oldest part, never a stamp after the message's arrival (data.align.StampCheck)."""
        topic, names = self.p.joint_states_topic, self.spec.joint_names
        try:
            s = merge_joint_state(self.merge, self.stamps, msg, now_sec(self), topic, names)
        except ValueError as e:
            self.diag.problem(f"joint_states: {e}")
            return
        if not np.all(np.isfinite(s.positions)):
            self.diag.problem("joint_states: NaN/inf positions; ignored (the watchdog holds)")
            return
        self.q = s.positions
        self.safety.observe(self.q, s.oldest)

    # ---- the tick --------------------------------------------------------------------------

    def tick(self) -> None:
        if not self.scheduling:
            self.scheduling = realtime_thread(self, self.p.realtime_priority)
        now = now_sec(self)
        inp: TeleopInput = self.device.read()
        self.engaged = inp.engaged
        self.pub_engaged.publish(Bool(data=inp.engaged))
        self.device.show(inp.engaged, self.recording)
        self.safety.set_engaged(inp.engaged, now)
        for event in inp.events:
            self.call_recorder(event)
        if inp.gripper is not None:
            self.gripper = inp.gripper
        if not inp.engaged:
            self.q_ref = None  # re-anchor on the measured joints at the next engage
            return  # deadman: no engaged input, no motion
        if self.p.output == "twist":
            self.publish_twist(inp.twist, now)
            self.pub_grip.publish(forward_msg([self.gripper]))
            return
        if self.q is None:
            self.diag.problem("no joint_states yet: cannot compute joint targets")
            return
        if inp.joints is not None:
            target = inp.joints
        else:
            ref = self.q if self.q_ref is None else self.q_ref
            target = self.ik.twist(ref, inp.twist)
        result = self.safety.filter(np.append(target, self.gripper), now)
        if result.command is None or result.held:
            return
        self.q_ref = result.command[:-1]
        if self.p.controller == "forward":
            self.pub_arm.publish(forward_msg(result.command[:-1]))
        else:
            self.pub_arm.publish(
                trajectory_msg(self.spec.joint_names, result.command[None, :-1], self.dt)
            )
        self.pub_grip.publish(forward_msg(result.command[-1:]))
        self.sent += 1

    def publish_twist(self, twist: np.ndarray, now: float) -> None:
        msg = TwistStamped()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.p.frame_id
        v, w = msg.twist.linear, msg.twist.angular
        v.x, v.y, v.z, w.x, w.y, w.z = (float(x) for x in twist)
        self.pub_twist.publish(msg)
        self.sent += 1

    def call_recorder(self, event: str) -> None:
        client = self.clients_[event]
        if not client.service_is_ready():
            self.diag.problem(f"recorder key {event!r}: {client.srv_name} is not available")
            return
        req = SetBool.Request(data=True) if event == "success" else Trigger.Request()
        client.call_async(req).add_done_callback(lambda f: self._recorder_answered(event, f))
        self.get_logger().info(f"recorder: {event}")

    def _recorder_answered(self, event: str, future: Any) -> None:
        """The operator hears when the recorder refused (e.g. a stop that stored nothing)."""
        res = None if future.exception() is not None else future.result()
        if res is not None and event in ("start", "stop", "discard"):
            # whatever the answer, it tells the state: start fails only when already
            # recording; a stop or discard, refused or not, leaves the recorder idle
            self.recording = event == "start"
        if res is not None and not res.success:
            self.diag.problem(f"recorder {event} failed: {res.message}")
        elif res is not None:
            self.get_logger().info(f"recorder {event}: {res.message}")

    def report(self) -> tuple[int, str, dict]:
        values = {
            "hardware_id": self.p.device,
            "scheduling": self.scheduling,
            "engaged": self.engaged,
            "recording": self.recording,
            "commands_sent": self.sent,
            "rejected_stamps": sum(self.stamps.rejected.values()),
            **self.safety.status(),
        }
        if self.p.output == "joint" and self.q is None:
            return WARN, "waiting for joint_states", values
        return OK, "engaged" if self.engaged else "idle (deadman released)", values

    def close(self) -> None:
        self.device.close()
        if self.ik is not None:
            self.ik.arm.close()


def main(args: list[str] | None = None) -> None:
    run_node(TeleopNode, args, params=TeleopParams, doc=__doc__)


if __name__ == "__main__":
    main()
