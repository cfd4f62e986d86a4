"""A correction session over real DDS: policy + joy teleop + recorder, a scripted operator.

The nodes are those launch/correct.launch.py starts, with its parameters (the package's sim
parameter file, the recorder with ``source: policy``), as separate processes: the launch
file's ``device:=joy`` also starts the ROS ``joy`` driver, which is not on PyPI, so this test
plays the driver and publishes ``sensor_msgs/Joy`` itself. It starts an episode, lets the
policy drive, holds the deadman for a known interval, lets go, stops the episode and reads the
labels the recorder committed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest

pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import Joy  # noqa: E402
from std_msgs.msg import Bool, Float64MultiArray  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from data.store import (  # noqa: E402
    AUTONOMOUS,
    INTERVENTION,
    LABEL_KEY,
    PRE_INTERVENTION,
    PRE_INTERVENTION_STEPS,
    DemoStore,
)
from data.validate import validate_store  # noqa: E402
from handoff_ros.closed_loop import sim_params_file  # noqa: E402
from handoff_ros.processes import NodeProcess, Probe, fresh_domain_id, nodes  # noqa: E402
from handoff_ros.tiny import train_tiny_checkpoint  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]

FORWARD = "/forward_position_controller/commands"
DT = 0.05  # s: the sim_panda spec's 20 Hz control period, every node's tick
STARTUP_S = 90  # a node's first message, on a loaded 2-core machine
AUTONOMOUS_S = 1.5  # the policy alone: ~30 steps, more than the 15-step pre-intervention window
HOLD_S = 1.5  # the operator holds the deadman this long (~30 steps)
AFTER_S = 1.5  # released: the policy resumes at once (silence would wait the 0.5 s timeout)
DEADMAN = 4  # sim_panda.yaml's teleop deadman_button (LB)
STICK = 0.5  # half forward on the left stick: +x at 0.05 m/s (linear_scale 0.1 m/s)
# Block length tolerance, in steps: each edge of the hold reaches the recorder through the
# teleop node's 20 Hz timer (0-1 period late at either edge: length +-1), the recorder's tick
# grid (+-1), and delivery and timer jitter on a loaded machine (one more).
TOLERANCE_STEPS = 3
YIELD_SLACK_S = 5 * DT  # a policy tick that ran before it handled the first engaged report


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny state-only ACT that pushes joint 1 by +0.3 rad (reads no camera)."""
    return train_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), offset=0.3)


class Commands:
    """Every forward command seen, with the node that sent it (by publisher gid)."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.seen: list[tuple[float, bytes, np.ndarray]] = []  # (received, gid, (7,))
        # a deep history: a probe slowed by a loaded machine must not lose commands
        probe.node.create_subscription(Float64MultiArray, FORWARD, self.on_command, 200)

    def on_command(self, msg: Float64MultiArray, info: dict) -> None:
        received = info["received_timestamp"] * 1e-9
        self.seen.append((received, bytes(info["publisher_gid"]["data"]), np.array(msg.data)))

    def gids(self) -> dict[str, bytes]:
        """node name -> publisher gid of each node publishing forward commands."""
        infos = self.probe.node.get_publishers_info_by_topic(FORWARD)
        return {i.node_name: bytes(i.endpoint_gid) for i in infos}

    def of(self, gid: bytes, start: float = -np.inf, end: float = np.inf) -> np.ndarray:
        """(N, 7) commands from ``gid`` received in [start, end] (wall clock, s)."""
        q = [c for t, g, c in self.seen if g == gid and start <= t <= end]
        return np.array(q).reshape(-1, 7)


def diagnostic(probe: Probe, node: str) -> tuple[str, dict[str, str]]:
    """(message, values) of the newest /diagnostics status of ``node``."""
    for _, array in reversed(probe.msgs["/diagnostics"]):
        for status in array.status:
            if status.name == node:
                return status.message, {kv.key: kv.value for kv in status.values}
    return "", {}


def matches(actions: np.ndarray, sent: np.ndarray) -> np.ndarray:
    """(T,) bool: each recorded (T, 7) action is one of the ``sent`` (N, 7) commands
    (float32 in the store, float64 on the wire)."""
    if not len(sent):
        return np.zeros(len(actions), bool)
    dist = np.abs(actions[:, None, :] - sent[None, :, :].astype(np.float32)).max(axis=2)
    return dist.min(axis=1) < 1e-5


def test_an_operator_takeover_is_labelled_intervention_and_the_policy_yields(checkpoint, tmp_path):
    dom = fresh_domain_id()
    store_path = tmp_path / "corrected.zarr"
    params = ["--params-file", str(sim_params_file())]  # correct.launch.py's params_file
    # the checkpoint reads joints only: no camera is rendered (software GL costs a core) or
    # recorded; the labels come from /teleop/engaged alone
    arm = NodeProcess("sim_arm", dom, {"cameras": ""}, tmp_path, params)
    policy = NodeProcess(
        "policy", dom, {"checkpoint": str(checkpoint), "robot": "sim"}, tmp_path, params
    )
    teleop = NodeProcess("teleop", dom, {"device": "joy", "robot": "sim"}, tmp_path, params)
    recorder = NodeProcess(
        "recorder",
        dom,
        {"store": str(store_path), "source": "policy", "cameras": "none"},
        tmp_path,
        params,
    )
    procs = (arm, policy, teleop, recorder)

    def logs() -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.log()[-3000:]}" for p in procs)

    with nodes(*procs), Probe(dom) as probe:
        probe.subscribe(Bool, "/teleop/engaged", 100)
        probe.subscribe(DiagnosticArray, "/diagnostics", 50)
        commands = Commands(probe)
        joy = probe.node.create_publisher(Joy, "/joy", 10)

        def wait(cond: Callable[[], bool], what: str) -> None:
            """Spin until ``cond``; fail at once, with the logs, when a node has exited."""
            alive = lambda: all(p.alive() for p in procs)  # noqa: E731
            probe.spin_until(lambda: cond() or not alive(), STARTUP_S)
            assert alive() and cond(), f"{what}\n{logs()}"

        # every node up and connected: the policy commands the arm, the teleop node has joint
        # states and hears /joy, the recorder hears joints, commands and the engaged flag
        wait(lambda: {"policy", "teleop"} <= set(commands.gids()), "forward publishers")
        gid = commands.gids()
        wait(lambda: len(commands.of(gid["policy"])) >= 10, "policy commands")
        teleop_ready = lambda: diagnostic(probe, "/teleop")[0].startswith("idle")  # noqa: E731
        wait(teleop_ready, "teleop node with joint states")
        wait(lambda: joy.get_subscription_count() >= 1, "teleop's /joy subscription")

        def recorder_heard(stream: str) -> bool:
            return int(diagnostic(probe, "/recorder")[1].get(f"{stream}.received", 0)) > 0

        wait(
            lambda: all(recorder_heard(s) for s in ("joint_states", "action", "engaged")),
            "recorder inputs",
        )

        def operator(seconds: float, deadman: bool) -> float:
            """Publish the pad at 20 Hz (as the joy driver does while a button is held);
            returns the wall time of the first message."""
            buttons = [0] * 8
            buttons[DEADMAN] = int(deadman)
            msg = Joy(axes=[0.0, STICK if deadman else 0.0, 0.0, 0.0, 0.0, 0.0], buttons=buttons)
            first = time.time()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                joy.publish(msg)
                probe.spin_for(DT)
            return first

        operator(0.5, deadman=False)  # the pad is on, the deadman released
        sent_start = time.time()
        assert probe.call(Trigger, "/recorder/start", Trigger.Request(), 60).success, logs()
        answered_start = time.time()
        probe.spin_for(AUTONOMOUS_S)
        t_press = operator(HOLD_S, deadman=True)
        t_release = operator(AFTER_S, deadman=False)
        stop = probe.call(Trigger, "/recorder/stop", Trigger.Request(), 60, resend_s=60)
        assert stop.success, stop.message
        committed = "episode 0 committed"
        assert probe.spin_until(lambda: committed in recorder.log(), 30), logs()
        engaged_at = [t for t, m in probe.msgs["/teleop/engaged"] if m.data and t >= t_press]
        assert engaged_at, logs()
        # the policy yields from its first tick after it hears the teleop report engaged until
        # 0.5 s after the last report; YIELD_SLACK_S for a tick that ran before that report was
        # handled (a loaded machine delays a node's executor by a few periods)
        during = commands.of(gid["policy"], engaged_at[0] + YIELD_SLACK_S, engaged_at[-1])
        assert not len(during), (len(during), engaged_at[0], engaged_at[-1])
        teleop_sent = commands.of(gid["teleop"], t_press, t_release + 2 * DT)
        assert len(teleop_sent) >= HOLD_S / DT - 2 * TOLERANCE_STEPS, len(teleop_sent)
        policy_sent = commands.of(gid["policy"])
        # an explicit release hands the arm back at once, before the 0.5 s silence timeout
        resumed = commands.of(gid["policy"], engaged_at[-1], engaged_at[-1] + 0.45)
        assert len(resumed) > 0, logs()
        assert all(p.alive() for p in procs), logs()

    store = DemoStore.open(store_path)
    assert store.n_episodes == 1 and validate_store(store, progress=False) == []
    assert store.episode_meta(0)["source"] == "corrected"  # a rollout with a takeover
    assert LABEL_KEY in store.data  # written by the recorder as it recorded, not derived later
    ep = store.episode(0)
    labels = store.episode_labels(0)
    T = len(labels)
    on = np.flatnonzero(labels == INTERVENTION)
    assert len(on), labels
    first, last = on[0], on[-1]
    report = (labels.tolist(), t_release - t_press, T)
    # one contiguous takeover, as long as the deadman was held, where it was held: the
    # episode's first step is the first tick at/after the start request was handled
    assert (labels[first : last + 1] == INTERVENTION).all(), report
    assert abs(len(on) - (t_release - t_press) / DT) <= TOLERANCE_STEPS, report
    lo = (t_press - answered_start) / DT - TOLERANCE_STEPS
    hi = (t_press - sent_start) / DT + TOLERANCE_STEPS
    assert lo <= first <= hi, (lo, first, hi)
    np.testing.assert_array_equal(ep["intervention"], labels == INTERVENTION)
    # the policy's steps just before the takeover are its pre-intervention window, the rest
    # of the rollout (before it and after the release) autonomous
    assert first > PRE_INTERVENTION_STEPS, report  # the whole window fits this episode
    pre = first - PRE_INTERVENTION_STEPS
    assert (labels[pre:first] == PRE_INTERVENTION).all(), report
    assert (labels[:pre] == AUTONOMOUS).all(), report
    assert last < T - 1 and (labels[last + 1 :] == AUTONOMOUS).all(), report
    # the recorded actions: the policy's commands before the takeover (the step just before
    # it may already hold the operator's first target: the recorder may handle that command
    # before the engaged report sent just ahead of it), the operator's during it (its first
    # two steps may still hold the policy's last command, one may be in flight; the teleop
    # safety filter may hold a tick or two on a loaded machine)
    arm_action = ep["action"][:, :7]
    assert matches(arm_action[: first - 1], policy_sent).all(), report
    # At the release the race runs the other way: the policy resumes at once on the
    # operator's explicit release, so the block's last step may already hold the policy's
    # first command; the one before it is the operator's.
    by_operator = matches(arm_action[first + 2 : last + 1], teleop_sent)
    resumed = matches(arm_action[last : last + 1], policy_sent)[0]
    assert by_operator.mean() > 0.8 and (by_operator[-1] or (resumed and by_operator[-2])), (
        by_operator,
        resumed,
    )
    # after the release the policy drives again, and its steps are labelled autonomous
    assert matches(arm_action[-3:], policy_sent).all(), report
    # and the arm followed the operator: the end effector moved forward (+x in the base frame)
    # at half stick, 0.05 m/s, once the last policy command had settled
    moved = ep["eef_pos"][last, 0] - ep["eef_pos"][first + 3, 0]
    assert moved > 0.02, (moved, ep["eef_pos"][first : last + 1, 0])
