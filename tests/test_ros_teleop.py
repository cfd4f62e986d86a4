"""Teleop: device mappings without ROS, then joy -> differential IK -> sim_arm over real DDS."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy")

from geometry_msgs.msg import PoseStamped  # noqa: E402
from sensor_msgs.msg import JointState, Joy  # noqa: E402
from std_msgs.msg import Bool, Float64MultiArray  # noqa: E402

from handoff_ros.teleop_devices import JoyMapping, leader_targets  # noqa: E402
from handoff_ros.testing import NodeProcess, Probe, fresh_domain_id, nodes  # noqa: E402

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


def test_leader_targets_match_by_name_and_report_missing():
    pos = {"l1": 0.1, "l2": 0.2, "j3": 0.3}
    q = leader_targets(pos, ["j1", "j2", "j3"], {"j1": "l1", "j2": "l2"})
    np.testing.assert_allclose(q, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="j2"):
        leader_targets(pos, ["j1", "j2"], {"j1": "l1"})


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
