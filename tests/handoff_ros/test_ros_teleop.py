"""Teleop: the device interface and mappings without ROS, then joy (and the scripted twin) ->
differential IK -> sim_arm over real DDS."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from sensor_msgs.msg import JointState, Joy  # noqa: E402
from std_msgs.msg import Bool, Float64MultiArray  # noqa: E402

from data.embodiment import load_embodiment  # noqa: E402
from data.errors import UserError  # noqa: E402
from handoff_ros.processes import NodeProcess, Probe, fresh_domain_id, nodes  # noqa: E402
from handoff_ros.teleop import TeleopParams  # noqa: E402
from handoff_ros.teleop_devices import (  # noqa: E402
    DEVICES,
    JoyMapping,
    TeleopDevice,
    TeleopInput,
    register_device,
)
from handoff_ros.teleop_devices.joy import Joy as JoyDevice  # noqa: E402
from handoff_ros.teleop_devices.leader import Leader  # noqa: E402
from handoff_ros.teleop_devices.scripted import Scripted  # noqa: E402
from tests.handoff_ros.realtime import assert_only_the_tick_is_realtime  # noqa: E402

FORWARD = "/forward_position_controller/commands"


def test_joy_mapping_deadman_deadzone_gripper_and_button_edges():
    joy = JoyMapping(linear_scale=0.1, angular_scale=0.5)
    axes = [0.05, 1.0, 0.0, -0.5, 0.0, 0.0]  # axis 0 inside the dead zone
    buttons = [0] * 8
    out = joy(axes, buttons, (-1.0, 1.0))
    assert not out.engaged
    np.testing.assert_allclose(out.twist, [0.1, 0.0, 0.0, 0.0, 0.0, -0.25])
    buttons[4] = buttons[0] = buttons[7] = 1  # deadman, close gripper, start
    out = joy(axes, buttons, (-1.0, 1.0))
    assert out.engaged and out.gripper == 1.0 and out.events == ["start"]
    assert joy(axes, buttons, (-1.0, 1.0)).events == []  # held: no repeat
    with pytest.raises(ValueError, match="6 indices"):
        JoyMapping(axes=(0, 1))


def test_devices_are_found_by_name_and_an_unknown_name_lists_them():
    assert DEVICES.names() == ["joy", "keyboard", "leader", "scripted", "spacemouse"]
    for name in DEVICES:
        cls = DEVICES.get(name)
        assert issubclass(cls, TeleopDevice) and cls.name == name
        assert cls.__module__ == f"handoff_ros.teleop_devices.{name}"
    assert [n for n in DEVICES if DEVICES.get(n).gives_joints] == ["leader"]
    valid = "joy, keyboard, leader, scripted, spacemouse"
    with pytest.raises(UserError, match=f"unknown teleop device 'gamepad'; choose one of: {valid}"):
        DEVICES.get("gamepad")
    # the node's parameters check the name through the registry (exit 2 with this line)
    with pytest.raises(ValueError, match=f"choose one of: {valid}"):
        TeleopParams(device="gamepad")
    with pytest.raises(ValueError, match="device leader gives joint targets: use output:=joint"):
        TeleopParams(device="leader", output="twist")
    with pytest.raises(ValueError, match="or device:=leader"):
        TeleopParams(device="scripted", output="joint", robot="real")
    # a device must live in teleop_devices/<name>.py: one file per device, by rule
    with pytest.raises(TypeError, match="handoff_ros.teleop_devices.pedal"):

        @register_device("pedal")
        class Pedal(Scripted):
            pass


def test_scripted_twin_plays_its_steps_once_then_releases_or_loops():
    steps = [
        TeleopInput(engaged=True, twist=np.full(6, 0.1), events=["start"]),
        TeleopInput(engaged=True, twist=np.zeros(6), gripper=1.0),
    ]
    dev = Scripted(steps)
    first, second, after = dev.read(), dev.read(), dev.read()
    assert first.engaged and first.events == ["start"]
    np.testing.assert_allclose(first.twist, 0.1)
    assert second.engaged and second.gripper == 1.0 and second.events == []
    assert not after.engaged and after.twist is None and after.events == []
    first.events.clear()  # the node consumes events: the script itself keeps them
    assert steps[0].events == ["start"]
    looped = Scripted(steps, loop=True)
    assert [looped.read().gripper for _ in range(5)] == [None, 1.0, None, 1.0, None]
    with pytest.raises(ValueError, match="at least one step"):
        Scripted([])


def test_scripted_square_from_the_node_parameters_comes_back_to_its_start():
    spec = load_embodiment("sim_panda")
    p = TeleopParams(device="scripted", linear_scale=0.05, control_hz=20.0)
    dev = DEVICES.get("scripted").from_params(p, spec)
    ticks = round(0.05 / 0.05 * 20.0)  # a 5 cm side at 5 cm/s, 20 reads a second
    reads = [dev.read() for _ in range(4 * ticks)]
    assert all(r.engaged for r in reads)
    path = np.cumsum([r.twist for r in reads], axis=0) / 20.0  # (4 ticks, 6) m
    np.testing.assert_allclose(path[ticks - 1, :3], [0.05, 0, 0], atol=1e-9)
    np.testing.assert_allclose(path[2 * ticks - 1, :3], [0.05, 0.05, 0], atol=1e-9)
    np.testing.assert_allclose(path[-1], 0.0, atol=1e-9)
    np.testing.assert_allclose(dev.read().twist, reads[0].twist)  # loops


def test_devices_are_context_managers_that_close_once():
    closed = []

    class Counted(Scripted):
        def _close(self) -> None:
            closed.append(True)

    with Counted([TeleopInput(engaged=True)]) as dev:
        assert dev.connected and dev.read().engaged
    assert not dev.connected and closed == [True]
    dev.close()  # idempotent: released once
    assert closed == [True]
    joy = JoyDevice()
    with pytest.raises(RuntimeError, match="connect it to a ROS node"), joy:
        joy.read()  # never reached: a joy device subscribes, so it needs connect(node)
    assert not joy.connected


def test_joy_device_drops_a_silent_pad_but_keeps_its_events():
    t = [0.0]
    joy = JoyDevice(JoyMapping(), gripper_range=(-1.0, 1.0))
    joy.clock = lambda: t[0]
    buttons = [0] * 8
    buttons[4] = buttons[7] = 1  # deadman + start
    joy.feed([0.0, 1.0, 0.0, 0.0, 0.0, 0.0], buttons)
    buttons[7] = 0
    joy.feed([0.0, 1.0, 0.0, 0.0, 0.0, 0.0], buttons)  # two messages between two ticks
    inp = joy.read()
    assert inp.engaged and inp.events == ["start"]
    np.testing.assert_allclose(inp.twist[:3], [0.1, 0.0, 0.0])
    assert joy.read().events == []  # each event once
    buttons[3] = 1  # success, then the pad goes silent
    joy.feed([0.0, 1.0, 0.0, 0.0, 0.0, 0.0], buttons)
    t[0] = 0.6
    inp = joy.read()
    assert not inp.engaged and inp.events == ["success"]


def test_leader_device_follows_by_name_reports_bad_messages_and_times_out():
    t, problems = [0.0], []
    leader = Leader(["j1", "j2"], {"j1": "l1"}, timeout_s=0.2)
    leader.clock = lambda: t[0]
    leader.on_problem = problems.append
    assert not leader.read().engaged  # nothing heard yet
    leader.feed(JointState(name=["j2", "l1"], position=[0.2, 0.1]))
    inp = leader.read()
    assert inp.engaged and inp.twist is None
    np.testing.assert_allclose(inp.joints, [0.1, 0.2])
    leader.feed(JointState(name=["j1", "j2"], position=[0.0, 0.0]))  # no l1: dropped
    leader.feed(JointState(name=["l1", "j2"], position=[0.5]))  # a position short: dropped
    assert len(problems) == 2 and "['l1']" in problems[0] and "2 joint names but 1" in problems[1]
    np.testing.assert_allclose(leader.read().joints, [0.1, 0.2])
    t[0] = 0.25
    assert not leader.read().engaged


@pytest.mark.ros
@pytest.mark.slow
def test_joy_teleop_moves_the_sim_arm_only_while_the_deadman_is_held(tmp_path):
    dom = fresh_domain_id()
    arm = NodeProcess("sim_arm", dom, {"cameras": ""}, tmp_path)
    teleop = NodeProcess(
        "teleop", dom, {"device": "joy", "robot": "sim", "frame_id": "robot0_base"}, tmp_path
    )
    with nodes(arm, teleop), Probe(dom) as probe:
        for msg_type, topic in [
            (PoseStamped, "/sim_arm/eef_pose"),
            (Float64MultiArray, FORWARD),
            (Bool, "/teleop/engaged"),
            (JointState, "/joint_states"),
        ]:
            probe.subscribe(msg_type, topic)
        joy = probe.node.create_publisher(Joy, "/joy", 10)
        ready = probe.spin_until(
            lambda: probe.msgs["/teleop/engaged"] and probe.msgs["/sim_arm/eef_pose"], 90
        )
        assert ready, arm.log() + teleop.log()

        def drive(seconds: float, deadman: bool) -> None:
            buttons = [0] * 8
            buttons[4] = int(deadman)
            for _ in range(int(seconds / 0.05)):
                joy.publish(Joy(axes=[0.0, 1.0, 0.0, 0.0, 0.0, 0.0], buttons=buttons))
                probe.spin_for(0.05)

        def eef_x() -> float:
            return probe.msgs["/sim_arm/eef_pose"][-1][1].pose.position.x

        x0 = eef_x()
        drive(1.0, deadman=False)  # stick pushed, deadman released: nothing moves
        assert not probe.msgs[FORWARD], teleop.log()
        assert not probe.msgs["/teleop/engaged"][-1][1].data
        assert abs(eef_x() - x0) < 0.005
        drive(2.0, deadman=True)  # 0.1 m/s forward for 2 s
        probe.spin_for(0.3)
        assert len(probe.msgs[FORWARD]) > 20 and probe.msgs["/teleop/engaged"][-1][1].data
        moved = eef_x() - x0
        assert 0.08 < moved < 0.3, moved  # ~0.2 m, less the step clamp and servo lag
        n = len(probe.msgs[FORWARD])
        drive(0.5, deadman=False)
        # released: commands stop within a few ticks (those in flight, a tick before the
        # released Joy is read) and then no more come at all
        assert len(probe.msgs[FORWARD]) <= n + 6
        assert not probe.msgs["/teleop/engaged"][-1][1].data
        n = len(probe.msgs[FORWARD])
        drive(0.5, deadman=False)
        assert len(probe.msgs[FORWARD]) == n
        assert teleop.alive() and arm.alive()


@pytest.mark.ros
@pytest.mark.slow
def test_scripted_device_drives_the_sim_arm_through_the_registry(tmp_path):
    """device:=scripted: no publisher at all, the node finds the twin by name and the arm
    moves along its square; an unknown device name is one line listing the devices."""
    dom = fresh_domain_id()
    bad = NodeProcess("teleop", dom, {"device": "gamepad"}, tmp_path)
    bad.proc.wait(timeout=60)
    assert bad.proc.returncode == 2, bad.log()
    assert "choose one of: joy, keyboard, leader, scripted, spacemouse" in bad.log()
    assert "Traceback" not in bad.log()
    bad.stop()
    arm = NodeProcess("sim_arm", dom, {"cameras": ""}, tmp_path)
    params = {"device": "scripted", "robot": "sim", "linear_scale": 0.05}
    teleop = NodeProcess("teleop", dom, params, tmp_path)
    with nodes(arm, teleop), Probe(dom) as probe:
        probe.subscribe(PoseStamped, "/sim_arm/eef_pose")
        probe.subscribe(Bool, "/teleop/engaged")
        probe.subscribe(Float64MultiArray, FORWARD)
        started = probe.spin_until(lambda: len(probe.msgs[FORWARD]) > 10, 90)
        assert started, arm.log() + teleop.log()
        poses = probe.msgs["/sim_arm/eef_pose"]
        x0 = poses[-1][1].pose.position
        probe.spin_for(1.0)
        x1 = poses[-1][1].pose.position
        moved = np.hypot(x1.x - x0.x, x1.y - x0.y)
        assert 0.01 < moved < 0.1, moved  # 5 cm/s along a 5 cm square
        assert all(m.data for _, m in probe.msgs["/teleop/engaged"][-5:])
        # the teleop tick runs at SCHED_FIFO where allowed, as the policy node's (only the
        # thread that spins the executor; DDS's threads stay at normal priority)
        probe.subscribe(DiagnosticArray, "/diagnostics")
        assert probe.spin_until(lambda: probe.diagnostic_values("/teleop"), 10), teleop.log()
        scheduling = probe.diagnostic_values("/teleop")["scheduling"]
        assert_only_the_tick_is_realtime(scheduling, teleop.proc.pid)
        assert teleop.alive() and arm.alive()
