"""Bad clocks, split and non-finite joint states against the policy and recorder nodes, over
real DDS: a stamp cannot keep the watchdog fresh, a gripper publishing apart from its arm is
recorded exactly, NaN never reaches a policy or a store, and a recording that stores nothing
says so."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.time import Time  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from data.store import DemoStore  # noqa: E402
from handoff_ros.processes import NodeProcess, Probe, fresh_domain_id, nodes  # noqa: E402
from handoff_ros.tiny import SIM_HOME, train_tiny_checkpoint  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]

FORWARD = "/forward_position_controller/commands"
ARM = [f"robot0_joint{i}" for i in range(1, 8)]
FINGERS = ["gripper0_right_finger_joint1", "gripper0_right_finger_joint2"]
HOME = np.array(SIM_HOME)
FINGER_POS = [0.02, 0.03]


def joint_state(probe: Probe, names, positions, velocities=(), ahead_s: float = 0.0):
    """A JointState stamped ``ahead_s`` after the probe's clock (negative: behind)."""
    msg = JointState(name=list(names), position=[float(v) for v in positions])
    msg.velocity = [float(v) for v in velocities]
    now = probe.node.get_clock().now().nanoseconds
    msg.header.stamp = Time(nanoseconds=now + int(ahead_s * 1e9)).to_msg()
    return msg


def publish_while(probe: Probe, publish, cond, timeout: float) -> bool:
    """Call ``publish()`` at about 20 Hz until ``cond()`` holds or ``timeout`` s pass."""
    end = probe.node.get_clock().now().nanoseconds * 1e-9 + timeout
    while probe.node.get_clock().now().nanoseconds * 1e-9 < end:
        publish()
        probe.spin_for(0.05)
        if cond():
            return True
    return False


def diag_int(probe: Probe, node: str, key: str) -> int:
    return int(probe.diagnostic_values(node).get(key, 0))


# ---- the policy node's watchdog --------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return train_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def policy_with_probe(checkpoint, tmp_path):
    dom = fresh_domain_id()
    policy = NodeProcess("policy", dom, {"checkpoint": str(checkpoint), "robot": "sim"}, tmp_path)
    probe = Probe(dom)
    probe.subscribe(Float64MultiArray, FORWARD)
    probe.subscribe(DiagnosticArray, "/diagnostics")
    return policy, probe, probe.node.create_publisher(JointState, "/joint_states", 10)


def test_one_future_stamp_then_silence_holds_within_the_stale_timeout(checkpoint, tmp_path):
    policy, probe, pub = policy_with_probe(checkpoint, tmp_path)
    with nodes(policy), probe:

        def healthy() -> None:  # the arm and, apart, its gripper driver (merged by name)
            pub.publish(joint_state(probe, ARM, HOME))
            pub.publish(joint_state(probe, FINGERS, FINGER_POS))

        running = publish_while(probe, healthy, lambda: len(probe.msgs[FORWARD]) >= 10, 90)
        assert running, policy.log()
        before = diag_int(probe, "/policy", "count_stale_observation")
        last_good = probe.msgs[FORWARD][-1][0]
        pub.publish(joint_state(probe, ARM, HOME, ahead_s=1000.0))  # then the arm goes silent

        def counted() -> bool:
            return (
                diag_int(probe, "/policy", "rejected_stamps") >= 1
                and diag_int(probe, "/policy", "count_stale_observation") >= before + 20
            )

        assert probe.spin_until(counted, 10), (probe.diagnostic_values("/policy"), policy.log())
        # once the last good joint state is stale_after_s (0.25 s) old, every command is a hold
        held = [m.data for t, m in probe.msgs[FORWARD] if t > last_good + 0.25 + 0.3]
        assert len(held) >= 10 and all(h == held[0] for h in held), held[:3]
        assert policy.alive()


def test_stamps_far_in_the_past_and_nan_positions_only_ever_hold(checkpoint, tmp_path):
    policy, probe, pub = policy_with_probe(checkpoint, tmp_path)
    with nodes(policy), probe:
        # a publisher clock 1000 s behind: the data looks 1000 s old, the arm holds where it is
        behind = lambda: pub.publish(joint_state(probe, ARM, HOME, ahead_s=-1000.0))  # noqa: E731
        stale = lambda: diag_int(probe, "/policy", "count_stale_observation") >= 20  # noqa: E731
        assert publish_while(probe, behind, stale, 90), policy.log()
        # then good stamps with a NaN position: never passed on, still a hold
        q = HOME.copy()
        q[3] = np.nan
        nan = lambda: pub.publish(joint_state(probe, ARM, q))  # noqa: E731
        rejected = lambda: diag_int(probe, "/policy", "rejected_non_finite") >= 5  # noqa: E731
        assert publish_while(probe, nan, rejected, 10), probe.diagnostic_values("/policy")
        sent = np.array([m.data for _, m in probe.msgs[FORWARD]])
        assert len(sent) >= 10, sent
        np.testing.assert_allclose(sent, np.tile(HOME, (len(sent), 1)), atol=1e-6)  # no +0.3
        assert diag_int(probe, "/policy", "count_non_finite") == 0  # the policy never saw NaN
        assert policy.alive()


# ---- the recorder ----------------------------------------------------------------------------

RECORDER = {
    "task": "lift",
    "sim_task": False,
    "cameras": "none",
    "max_age_s": 0.3,
    "lag_s": 0.3,
    "operator": "pytest",
}


class SplitArm:
    """An arm driver without a velocity interface (NaN velocities) and a separate gripper
    driver, both on /joint_states, plus the end-effector pose; joint 1 moves at 0.5 rad/s."""

    def __init__(self, probe: Probe, pose_ahead_s: float = 0.0) -> None:
        self.probe, self.pose_ahead_s = probe, pose_ahead_s
        self.js = probe.node.create_publisher(JointState, "/joint_states", 50)
        self.pose = probe.node.create_publisher(PoseStamped, "/sim_arm/eef_pose", 10)
        self.t0 = probe.node.get_clock().now().nanoseconds

    def __call__(self) -> None:
        arm = joint_state(self.probe, ARM, HOME, [np.nan] * 7)
        t = Time.from_msg(arm.header.stamp).nanoseconds
        arm.position[0] = HOME[0] + 0.5 * (t - self.t0) * 1e-9
        self.js.publish(arm)
        self.probe.spin_for(0.02)  # the gripper driver publishes a little later
        self.js.publish(joint_state(self.probe, FINGERS, FINGER_POS))
        pose = PoseStamped()
        pose.pose.orientation.w = 1.0
        now = self.probe.node.get_clock().now().nanoseconds
        pose.header.stamp = Time(nanoseconds=now + int(self.pose_ahead_s * 1e9)).to_msg()
        self.pose.publish(pose)


def record(probe: Probe, arm: SplitArm, seconds: float) -> Trigger.Response:
    """~/start, ``seconds`` of messages, ~/stop; returns the stop's answer."""
    publish_while(probe, arm, lambda: False, 0.5)
    # no re-send: a second start, sent because the first answer was slow, answers "already
    # recording" (the first answer is what counts)
    assert probe.call(Trigger, "/recorder/start", Trigger.Request(), 60, resend_s=60).success
    publish_while(probe, arm, lambda: False, seconds)
    return probe.call(Trigger, "/recorder/stop", Trigger.Request(), 60, resend_s=60)


def test_arm_and_gripper_publishing_apart_are_recorded_exactly(tmp_path):
    dom = fresh_domain_id()
    rec = NodeProcess("recorder", dom, {**RECORDER, "store": str(tmp_path / "d.zarr")}, tmp_path)
    with nodes(rec), Probe(dom) as probe:
        res = record(probe, SplitArm(probe), 1.5)
        assert res.success, (res.message, rec.log())
        assert "estimated from successive positions" in res.message, res.message
        assert "estimated" in rec.log()
    store = DemoStore.open(tmp_path / "d.zarr")
    assert store.n_episodes == 1, rec.log()
    ep = store.episode(0)
    assert 15 <= len(ep["joint_pos"]) <= 60
    assert all(np.isfinite(ep[k]).all() for k in ("joint_pos", "joint_vel", "gripper_pos"))
    np.testing.assert_array_equal(
        ep["gripper_pos"], np.tile(np.float32(FINGER_POS), (len(ep["gripper_pos"]), 1))
    )
    np.testing.assert_array_equal(
        ep["joint_pos"][:, 1:], np.tile(HOME[1:].astype(np.float32), (len(ep["joint_pos"]), 1))
    )
    # joint 1 moving; a loaded probe may publish far slower than 20 Hz (steps then repeat the
    # newest message), so only the direction is checked here and the speed below
    q1 = ep["joint_pos"][:, 0]
    assert np.all(np.diff(q1) >= 0) and q1[-1] - q1[0] > 0.04, q1
    np.testing.assert_allclose(ep["joint_vel"][:, 0], 0.5, atol=0.01)  # from the stamps
    np.testing.assert_allclose(ep["joint_vel"][:, 1:], 0.0, atol=1e-6)


def test_a_recording_without_a_usable_step_is_refused_by_stop(tmp_path):
    dom = fresh_domain_id()
    rec = NodeProcess("recorder", dom, {**RECORDER, "store": str(tmp_path / "e.zarr")}, tmp_path)
    with nodes(rec), Probe(dom) as probe:
        probe.subscribe(DiagnosticArray, "/diagnostics")
        # every eef pose is stamped 1000 s after it is sent: rejected, so no step is complete
        res = record(probe, SplitArm(probe, pose_ahead_s=1000.0), 1.0)
        assert not res.success, res.message
        assert "no step recorded" in res.message and "eef_pose" in res.message, res.message
        assert "~/stop: no step recorded" in rec.log()
        counted = lambda: diag_int(probe, "/recorder", "eef_pose.rejected_stamps") > 5  # noqa: E731
        assert probe.spin_until(counted, 5), probe.diagnostic_values("/recorder")
    assert DemoStore.open(tmp_path / "e.zarr").n_episodes == 0


def test_a_probe_keeps_its_matched_client_and_a_failing_test_shows_the_node_logs(tmp_path, capsys):
    """Service answers are not lost to a client the server has not matched yet (one client
    per service, settled once), and an error inside ``nodes`` prints each node's log tail."""
    dom = fresh_domain_id()
    rec = NodeProcess("recorder", dom, {**RECORDER, "store": str(tmp_path / "f.zarr")}, tmp_path)
    with pytest.raises(RuntimeError, match="inside the test"), nodes(rec), Probe(dom) as probe:
        answers = [probe.call(Trigger, "/recorder/discard", Trigger.Request()) for _ in range(3)]
        assert [a.success for a in answers] == [False] * 3, answers  # nothing to discard
        assert len(probe._clients) == 1
        raise RuntimeError("inside the test")
    err = capsys.readouterr().err
    assert f"--- {rec.log_path.name} (" in err and "recorder" in err, err
