"""sim_arm on simulated time: /clock, stamps, success and stage topics and ~/reset over real
DDS."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy")

from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Bool, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from handoff_ros.processes import NodeProcess, Probe, fresh_domain_id, nodes  # noqa: E402

pytestmark = [pytest.mark.ros]


def test_sim_time_clock_and_stamps(tmp_path):
    dom = fresh_domain_id()
    arm = NodeProcess("sim_arm", dom, {"cameras": "", "use_sim_time": True, "seed": 3}, tmp_path)
    with nodes(arm), Probe(dom) as probe:
        probe.subscribe(Clock, "/clock")
        probe.subscribe(JointState, "/joint_states")
        probe.subscribe(Bool, "/sim_arm/success")
        probe.subscribe(String, "/sim_arm/stage")
        assert probe.spin_until(lambda: len(probe.msgs["/joint_states"]) >= 20, 60), arm.log()
        clock = [m.clock.sec + m.clock.nanosec * 1e-9 for _, m in probe.msgs["/clock"]]
        stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for _, m in
                  probe.msgs["/joint_states"]]  # fmt: skip
        # simulated time: exactly one control period (1/20 s) per step, starting near zero
        np.testing.assert_allclose(np.diff(clock), 0.05, atol=1e-6)
        np.testing.assert_allclose(np.diff(stamps), 0.05, atol=1e-6)
        assert stamps[0] < 60 and set(np.round(stamps, 6)) <= set(np.round(clock, 6))
        js = probe.msgs["/joint_states"][-1][1]
        assert len(js.name) == 9 and js.name[-1].endswith("finger_joint2")
        assert probe.msgs["/sim_arm/success"] and not probe.msgs["/sim_arm/success"][-1][1].data
        # the cube rests untouched: closed_loop's failure stages read this topic
        assert {m.data for _, m in probe.msgs["/sim_arm/stage"]} == {"not_grasped"}
        res = probe.call(Trigger, "/sim_arm/reset", Trigger.Request())
        assert res.success and "seed 4" in res.message
        assert arm.alive()
