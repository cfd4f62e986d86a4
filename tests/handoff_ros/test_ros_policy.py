"""sim_arm + policy over real DDS, with a checkpoint trained in the test for a few steps."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Bool, Float64, Float64MultiArray  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from handoff_ros.processes import NodeProcess, Probe, fresh_domain_id, nodes  # noqa: E402
from handoff_ros.rosutil import level_value  # noqa: E402
from handoff_ros.tiny import train_tiny_checkpoint  # noqa: E402
from tests.handoff_ros.realtime import assert_only_the_tick_is_realtime  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]

FORWARD = "/forward_position_controller/commands"
TRAJECTORY = "/arm_controller/joint_trajectory"
OFFSET = 0.3  # the demonstrations command joint 1 this far from where it is


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny ACT trained for 10 steps on demonstrations that push joint 1 by +0.3 rad."""
    return train_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), offset=OFFSET)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    dom = fresh_domain_id()
    logs = tmp_path_factory.mktemp("logs")
    arm = NodeProcess("sim_arm", dom, {"cameras": ""}, logs)
    probe = Probe(dom)
    probe.subscribe(JointState, "/joint_states")
    try:
        assert probe.spin_until(lambda: len(probe.msgs["/joint_states"]) > 5, 60), arm.log()
        yield dom, arm, probe, logs
    finally:
        probe.close()
        arm.stop()


def stamps(msgs) -> np.ndarray:
    return np.array([t for t, _ in msgs])


def test_policy_commands_arrive_at_the_control_rate_and_the_arm_moves(sim, checkpoint):
    dom, arm, probe, logs = sim
    probe.subscribe(Float64MultiArray, FORWARD)
    probe.subscribe(Float64, "/policy/inference_ms")
    probe.subscribe(JointTrajectory, "/policy/predicted_chunk")
    probe.subscribe(DiagnosticArray, "/diagnostics")
    q_start = np.array(probe.msgs["/joint_states"][-1][1].position[:7])
    params = {"checkpoint": str(checkpoint), "robot": "sim", "controller": "forward"}
    policy = NodeProcess("policy", dom, params, logs)
    with nodes(policy):
        assert probe.spin_until(lambda: len(probe.msgs[FORWARD]) >= 60, 90), policy.log()
        cmds = probe.msgs[FORWARD][-60:]
        period = np.diff(stamps(cmds))
        assert abs(np.median(period) - 0.05) < 0.01, period  # 20 Hz, the spec's control rate
        assert all(len(m.data) == 7 for _, m in cmds)
        q_now = np.array(probe.msgs["/joint_states"][-1][1].position[:7])
        assert q_now[0] - q_start[0] > 0.1, (q_start, q_now)  # toward the demonstrated +0.3
        assert np.all(np.abs(q_now[1:] - q_start[1:]) < 0.1)
        assert probe.msgs["/policy/inference_ms"] and probe.msgs["/policy/predicted_chunk"]
        chunk = probe.msgs["/policy/predicted_chunk"][-1][1]
        assert len(chunk.points) == 8 and len(chunk.joint_names) == 7  # Tp = horizon 8
        # the node reports how evenly its commands leave (send-side period error)
        has_jitter = lambda: "period_error_ms_p50" in probe.diagnostic_values("/policy")  # noqa: E731
        assert probe.spin_until(has_jitter, 5), probe.diagnostic_values("/policy")
        assert float(probe.diagnostic_values("/policy")["period_error_ms_p50"]) < 10
        # the tick's thread runs at SCHED_FIFO where that is allowed; inference never does
        # (the inference worker exists: chunks were published above)
        scheduling = probe.diagnostic_values("/policy")["scheduling"]
        assert_only_the_tick_is_realtime(scheduling, policy.proc.pid)
        # a teleop operator engages: the policy yields the arm, and resumes after release
        engaged = probe.node.create_publisher(Bool, "/teleop/engaged", 10)
        for _ in range(10):  # commands in flight land and the node sees the operator
            engaged.publish(Bool(data=True))
            probe.spin_for(0.05)
        n = len(probe.msgs[FORWARD])
        for _ in range(20):
            engaged.publish(Bool(data=True))
            probe.spin_for(0.05)
        assert len(probe.msgs[FORWARD]) == n  # none at all while the operator holds the arm
        probe.spin_for(1.0)
        assert len(probe.msgs[FORWARD]) > n + 5
        assert policy.alive()


def test_policy_node_runs_the_runner_scheme_and_delay_it_is_given(sim, checkpoint):
    """Real-time chunking with each chunk used exactly 3 ticks after its observation: the
    commands keep the control rate (holds until the first chunk), /diagnostics reports the
    runner's scheme, delay, held ticks and seam jumps, every chunk is published."""
    dom, arm, probe, logs = sim
    probe.subscribe(Float64MultiArray, FORWARD)
    probe.subscribe(DiagnosticArray, "/diagnostics")
    probe.subscribe(JointTrajectory, "/policy/predicted_chunk")
    params = {"checkpoint": str(checkpoint), "robot": "sim", "scheme": "rtc"}
    policy = NodeProcess("policy", dom, params | {"inference_delay": 3}, logs)
    with nodes(policy):
        assert probe.spin_until(lambda: len(probe.msgs[FORWARD]) >= 40, 90), policy.log()
        period = np.diff(stamps(probe.msgs[FORWARD][-30:]))
        assert abs(np.median(period) - 0.05) < 0.01, period
        # this node's report (an earlier test's policy node may have left a last one behind)
        has = lambda: probe.diagnostic_values("/policy").get("inference_delay_ticks") == "3"  # noqa: E731
        assert probe.spin_until(has, 10), probe.diagnostic_values("/policy")
        values = probe.diagnostic_values("/policy")
        assert values["scheme"] == "rtc"
        assert values["sampling_steps"] == "0"  # an ACT: nothing to sample
        assert int(values["held_ticks"]) >= 3  # the first chunk is usable at tick 3
        assert float(values["chunk_boundary_jump_rad"]) >= 0
        # one chunk per execute_steps (horizon 8 // 2 = 4 actions): ~5 per second at 20 Hz
        assert len(probe.msgs["/policy/predicted_chunk"]) >= 5
    bad = NodeProcess("policy", dom, params | {"scheme": "fastest"}, logs)
    assert bad.proc.wait(timeout=60) == 2  # a parameter mistake: one error line, exit 2
    assert "error:" in bad.log() and "scheme 'fastest'" in bad.log()
    bad = NodeProcess("policy", dom, params | {"realtime_priority": 100}, logs)
    assert bad.proc.wait(timeout=60) == 2
    assert "realtime_priority 100: use 0 (normal) or 1-99 (SCHED_FIFO)" in bad.log(), bad.log()
    bad = NodeProcess("policy", dom, params | {"sampling_steps": 2}, logs)
    assert bad.proc.wait(timeout=60) == 2  # the runner's check, the one handoff-eval makes
    assert "error: sampling_steps 2: ACTPolicy has no denoising steps" in bad.log(), bad.log()


def test_the_node_passes_sampling_steps_to_the_runner_as_handoff_eval_does():
    """The node's parameter builds the same RunnerConfig field handoff-eval --sampling-steps
    sets (tests/policies/test_runner.py: the runner applies it to a diffusion policy)."""
    from handoff_ros.policy import PolicyParams

    assert PolicyParams(checkpoint="runs/x", sampling_steps=4).runner_config().sampling_steps == 4
    with pytest.raises(ValueError, match="sampling_steps must be >= 0"):
        PolicyParams(checkpoint="runs/x", sampling_steps=-1)


def test_closed_loop_refuses_sampling_steps_for_act_before_any_node_starts(checkpoint, capsys):
    from handoff_ros.closed_loop import main

    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", str(checkpoint), "--episodes", "1", "--sampling-steps", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: sampling_steps 2: ACTPolicy has no denoising steps"), err


def test_real_arm_policy_waits_for_enable_and_latches_the_estop(sim, checkpoint):
    dom, arm, probe, logs = sim
    probe.subscribe(JointTrajectory, TRAJECTORY)
    probe.subscribe(DiagnosticArray, "/diagnostics")
    params = {"checkpoint": str(checkpoint), "robot": "real", "controller": "joint_trajectory"}
    policy = NodeProcess("policy", dom, params, logs)
    estop = probe.node.create_publisher(Bool, "/estop", 10)
    with nodes(policy):
        ready = probe.spin_until(lambda: bool(probe.diagnostic_values("/policy")), 90)
        assert ready, policy.log()
        probe.spin_for(1.0)
        assert not probe.msgs[TRAJECTORY]  # the enable gate: nothing until a person enables
        assert probe.call(Trigger, "/sim_arm/reset", Trigger.Request()).success  # arm home
        probe.spin_for(0.3)
        assert probe.call(SetBool, "/policy/enable", SetBool.Request(data=True)).success
        q0 = np.array(probe.msgs["/joint_states"][-1][1].position[:7])
        assert probe.spin_until(lambda: len(probe.msgs[TRAJECTORY]) >= 20, 30), policy.log()
        q1 = np.array(probe.msgs["/joint_states"][-1][1].position[:7])
        assert q1[0] - q0[0] > 0.03  # the sim arm follows the interpolated trajectory
        msg = probe.msgs[TRAJECTORY][-1][1]
        assert len(msg.points) == 1 and msg.points[0].time_from_start.nanosec == 50_000_000
        estop.publish(Bool(data=True))
        probe.spin_for(0.5)
        n = len(probe.msgs[TRAJECTORY])
        probe.spin_for(1.0)
        held = [m.points[0].positions for _, m in probe.msgs[TRAJECTORY][n:]]
        assert len(held) >= 10 and all(h == held[0] for h in held)  # a latched hold
        refused = probe.call(SetBool, "/policy/enable", SetBool.Request(data=True))
        assert not refused.success and "latched" in refused.message
        statuses = [s for _, a in probe.msgs["/diagnostics"] for s in a.status]
        last = [s for s in statuses if s.name == "/policy"][-1]
        assert level_value(last.level) == 2 and "e-stop" in last.message


def test_policy_refuses_an_arm_with_other_joints(checkpoint, tmp_path):
    dom = fresh_domain_id()
    params = {"checkpoint": str(checkpoint), "robot": "sim"}
    policy = NodeProcess("policy", dom, params, tmp_path)
    with nodes(policy), Probe(dom) as probe:
        probe.subscribe(Float64MultiArray, FORWARD)
        probe.subscribe(DiagnosticArray, "/diagnostics")
        pub = probe.node.create_publisher(JointState, "/joint_states", 10)
        names = [f"ur_joint{i}" for i in range(6)]

        def newest_policy_status():
            for _, array in reversed(probe.msgs["/diagnostics"]):
                for status in array.status:
                    if status.name == "/policy":
                        return status
            return None

        def refused() -> bool:
            js = JointState(name=names, position=[0.0] * 6)
            js.header.stamp = probe.node.get_clock().now().to_msg()
            pub.publish(js)
            status = newest_policy_status()
            # the first reports may only say the joint states lack our joints (a warning);
            # once a control tick has compared the arms, the node reports the mismatch
            return status is not None and level_value(status.level) == 2

        assert probe.spin_until(refused, 90), (newest_policy_status(), policy.log())
        status = newest_policy_status()
        assert "robot0_joint1" in status.message and "ur_joint0" in status.message, status
        assert not probe.msgs[FORWARD] and policy.alive()
