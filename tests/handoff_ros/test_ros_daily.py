"""A day at the arm, over real DDS: the shipped Fast DDS profiles, safety parameters set while
the policy node runs, the keyboard teleop's terminal, closed_loop's domain and seeds, and the
sim arm's GL back-end."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import TwistStamped  # noqa: E402
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import GetParameters, SetParameters  # noqa: E402
from rclpy.qos import QoSProfile, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402

from data.errors import UserError  # noqa: E402
from handoff_ros.closed_loop import domain_id  # noqa: E402
from handoff_ros.processes import NodeProcess, Probe, fresh_domain_id, nodes, param_args, ros_env  # noqa: E402
from handoff_ros.rosutil import DDS_PROFILES, dds_profile  # noqa: E402
from handoff_ros.tiny import SIM_HOME, train_tiny_checkpoint  # noqa: E402

pytestmark = [pytest.mark.ros]

FORWARD = "/forward_position_controller/commands"

# Three 640x480 rgb8 cameras, one second at 30 fps, from a process that picks its profile the
# way every handoff node does (rosutil.use_dds_profile).
PUBLISH_FRAMES = """
import time, numpy as np, rclpy
from handoff_ros.rosutil import use_dds_profile
use_dds_profile()
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node("frames")
pubs = [node.create_publisher(Image, f"/cam{i}/image_raw", qos_profile_sensor_data)
        for i in range(3)]
end = time.monotonic() + 30
while time.monotonic() < end and min(p.get_subscription_count() for p in pubs) < 1:
    rclpy.spin_once(node, timeout_sec=0.05)
time.sleep(0.5)  # discovery of the probe's reader completes on both sides
data = np.random.default_rng(0).integers(0, 255, 480 * 640 * 3, dtype=np.uint8).tobytes()
t0 = time.monotonic()
for k in range(30):
    for p in pubs:
        msg = Image(height=480, width=640, encoding="rgb8", step=640 * 3, data=data)
        msg.header.frame_id = str(k)
        p.publish(msg)
    time.sleep(max(0.0, t0 + (k + 1) / 30 - time.monotonic()))
time.sleep(1.0)
print("profile", __import__("os").environ["FASTDDS_DEFAULT_PROFILES_FILE"], flush=True)
"""


def test_the_profile_is_chosen_by_name_or_by_the_discovery_range():
    assert dds_profile({}) == DDS_PROFILES["host"]
    assert dds_profile({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}) == DDS_PROFILES["host"]
    assert dds_profile({"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}) == DDS_PROFILES["lan"]
    assert dds_profile({"ROS_STATIC_PEERS": "10.0.0.2"}) == DDS_PROFILES["lan"]
    both = {"HANDOFF_DDS_PROFILE": "udp", "ROS_STATIC_PEERS": "10.0.0.2"}
    assert dds_profile(both) == DDS_PROFILES["udp"]  # the name wins
    for path in DDS_PROFILES.values():
        assert path.is_file()
    with pytest.raises(UserError, match="not one of host, lan, udp"):
        dds_profile({"HANDOFF_DDS_PROFILE": "wifi"})


@pytest.mark.parametrize("name", sorted(DDS_PROFILES))
def test_each_shipped_profile_loads_and_carries_vga_frames(name, tmp_path):
    """Every profile parses (Fast DDS prints XML errors and falls back silently otherwise) and
    carries 640x480 frames to a reader on the host profile. Shared memory delivers them all;
    UDP alone loses a large share of their fragments (tests/benchmarks/bench_ros.py). The
    reader keeps 30 frames a topic, as the recorder does, so a busy test process does not
    count as a transport loss."""
    dom = fresh_domain_id()
    env = ros_env(dom)
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE")
    env["HANDOFF_DDS_PROFILE"] = name
    deep = QoSProfile(depth=30, reliability=qos_profile_sensor_data.reliability)
    with Probe(dom) as probe:
        for i in range(3):
            probe.subscribe(Image, f"/cam{i}/image_raw", deep)
        proc = subprocess.Popen(
            [sys.executable, "-c", PUBLISH_FRAMES],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            probe.spin_until(lambda: proc.poll() is not None, 60)
            probe.spin_for(0.2)
        finally:
            proc.kill()
            out = proc.communicate()[0]
    assert proc.returncode == 0, out
    assert f"profile {DDS_PROFILES[name]}" in out
    assert "error" not in out.lower(), out  # e.g. [XMLPARSER Error ...]
    got = {(t, m.header.frame_id) for t, msgs in probe.msgs.items() for _, m in msgs}
    assert got and all(
        len(m.data) == 640 * 480 * 3 for msgs in probe.msgs.values() for _, m in msgs
    )
    if name != "udp":  # shared memory between the two processes (UDP: 15-60 % arrive)
        assert len(got) >= 0.9 * 90, f"{name}: {len(got)} of 90 frames"


def test_an_unknown_profile_name_is_one_error_line():
    env = ros_env(fresh_domain_id())
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE")
    env["HANDOFF_DDS_PROFILE"] = "wifi"
    r = subprocess.run(
        [sys.executable, "-m", "handoff_ros.camera"], env=env, capture_output=True, text=True
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: HANDOFF_DDS_PROFILE='wifi' is not one of host, lan, udp "
        "(for a profile of your own set FASTDDS_DEFAULT_PROFILES_FILE)"
    ]


def test_retune_changes_all_or_nothing_and_the_next_step_follows():
    from data.embodiment import load_embodiment
    from policies.safety import SafetyConfig, SafetyFilter

    spec = load_embodiment("sim_panda")
    f = SafetyFilter(spec, SafetyConfig(require_enable=False))
    q = np.array(SIM_HOME)  # inside the limits, 0.2 rad from them at least
    f.observe(q, 0.0)
    with pytest.raises(ValueError, match=r"max_step_delta=0.5 is outside \(0, 0.1305\]"):
        f.retune({"velocity_scale": 0.3, "max_step_delta": 0.5})
    with pytest.raises(ValueError, match="limit_margin cannot change while running"):
        f.retune({"limit_margin": 0.1})
    assert (f.config.velocity_scale, f.config.max_step_delta) == (0.5, 0.05)  # untouched
    f.retune({"velocity_scale": 0.3, "max_step_delta": 0.01})
    r = f.filter(np.append(q + 0.2, 0.0), 0.0)
    np.testing.assert_allclose(r.command[:7] - q, 0.01)  # min(0.01, 0.3 * 2.175 * 0.05)
    f.retune({"max_step_delta": 0.1})
    r = f.filter(np.append(q + 0.2, 0.0), 0.05)
    bound = 0.3 * np.array(spec.velocity_limit) * 0.05  # now the velocity layer binds
    np.testing.assert_allclose(r.command[:7] - q - 0.01, bound)


def set_param(probe: Probe, name: str, value: float) -> tuple[bool, str]:
    req = SetParameters.Request()
    v = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=float(value))
    req.parameters = [Parameter(name=name, value=v)]
    res = probe.call(SetParameters, "/policy/set_parameters", req).results[0]
    return res.successful, res.reason


def test_safety_parameters_change_while_running_within_bounds_and_sim_arm_picks_its_gl(tmp_path):
    """max_step_delta and velocity_scale are set with `ros2 param set` (the same service) and
    bound the very next commands; out-of-bounds values and the read-only parameters are refused
    with a reason. The sim arm, started without MUJOCO_GL, renders with the back-end sim/_gl.py
    picks for this machine (EGL with a GPU), not a forced OSMesa."""
    from sim._gl import _gpu_present

    ckpt = train_tiny_checkpoint(tmp_path / "ckpt", offset=1.0)  # a target 1 rad away
    dom = fresh_domain_id()
    env = ros_env(dom)
    for key in ("MUJOCO_GL", "HANDOFF_GL", "PYOPENGL_PLATFORM"):
        env.pop(key, None)
    log = open(tmp_path / "sim_arm.log", "w")  # noqa: SIM115 (closed below)
    args = [sys.executable, "-m", "handoff_ros.sim_arm", "--ros-args", *param_args({"cameras": ""})]
    arm = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    params = {"checkpoint": str(ckpt), "robot": "sim", "controller": "forward"}
    policy = NodeProcess("policy", dom, params, tmp_path)
    try:
        with nodes(policy), Probe(dom) as probe:
            probe.subscribe(Float64MultiArray, FORWARD)
            probe.subscribe(DiagnosticArray, "/diagnostics")
            up = probe.spin_until(lambda: len(probe.msgs[FORWARD]) > 5, 90)
            assert up, policy.log() + (tmp_path / "sim_arm.log").read_text()
            assert set_param(probe, "max_step_delta", 0.01) == (True, "")
            # start over from the home pose: the filter re-anchors on the measured joints
            assert probe.call(Trigger, "/sim_arm/reset", Trigger.Request()).success
            for on in (False, True):
                assert probe.call(SetBool, "/policy/enable", SetBool.Request(data=on)).success
            probe.spin_for(0.2)  # a command in flight may predate the change
            probe.msgs[FORWARD].clear()
            probe.spin_for(1.0)
            q = np.array([m.data for _, m in probe.msgs[FORWARD]])  # (T, 7)
            steps = np.abs(np.diff(q, axis=0)).max(axis=1)
            assert len(q) > 10 and steps.max() <= 0.01 + 1e-9, steps
            assert steps.max() > 0.009, steps  # still moving: the new bound is what binds
            ok, reason = set_param(probe, "velocity_scale", 1.5)
            assert not ok and "velocity_scale=1.5 is outside (0, 1]" in reason
            ok, reason = set_param(probe, "max_step_delta", 0.5)  # sim Panda: 2.61 * 0.05
            assert not ok and "outside (0, 0.1305]" in reason, reason
            ok, reason = set_param(probe, "stale_after_s", 1.0)
            assert not ok and "read-only" in reason, reason
            assert set_param(probe, "velocity_scale", 0.2) == (True, "")
            get = GetParameters.Request(names=["max_step_delta", "velocity_scale"])
            values = probe.call(GetParameters, "/policy/get_parameters", get).values
            assert [v.double_value for v in values] == [0.01, 0.2]
            probe.spin_until(lambda: "gl" in probe.diagnostic_values("/sim_arm"), 10)
            gl = probe.diagnostic_values("/sim_arm").get("gl")
            assert gl == ("egl" if _gpu_present() else "osmesa")
            assert policy.alive() and arm.poll() is None
    finally:
        arm.terminate()
        arm.wait(timeout=10)
        log.close()


def read_until(fd: int, needle: str, timeout: float, probe: Probe | None = None) -> str:
    """Read a pty until ``needle`` shows up (spinning ``probe`` meanwhile); returns all read."""
    out, end = "", time.monotonic() + timeout
    while needle not in out and time.monotonic() < end:
        if probe is not None:
            probe.spin_for(0.05)
        if select.select([fd], [], [], 0.05)[0]:
            try:
                out += os.read(fd, 4096).decode(errors="replace")
            except OSError:
                break
    return out


def test_keyboard_teleop_shows_its_keys_and_the_engaged_and_recording_state(tmp_path):
    """The node in a terminal (a pty): the key help, then one status line that follows the
    operator (holding w engages and sends twists) and the recorder's answer to key 1."""
    dom = fresh_domain_id()
    master, slave = pty.openpty()
    params = {"device": "keyboard", "output": "twist", "robot": "sim"}
    args = [sys.executable, "-m", "handoff_ros.teleop", "--ros-args", *param_args(params)]
    proc = subprocess.Popen(args, env=ros_env(dom), stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    starts = []
    try:
        with Probe(dom) as probe:
            probe.subscribe(TwistStamped, "/servo_node/delta_twist_cmds")

            def start(req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
                starts.append(time.monotonic())
                res.success, res.message = True, "episode starts at the next tick"
                return res

            probe.node.create_service(Trigger, "/recorder/start", start)
            out = read_until(master, "[released] [recorder: no answer yet]", 60, probe)
            assert "w/s +x/-x" in out and "1 start" in out and "4 discard" in out, out
            out = ""
            for _ in range(20):  # until the node has discovered the service: then one call
                os.write(master, b"1")
                out += read_until(master, "[released] [RECORDING]", 1.0, probe)
                if starts:
                    break
            out += read_until(master, "[released] [RECORDING]", 5, probe)
            assert "[released] [RECORDING]" in out and starts, out
            engaged = ""
            for _ in range(20):  # a held key: the terminal's auto-repeat
                os.write(master, b"w")
                engaged += read_until(master, "[ENGAGED]", 0.05, probe)
            assert "[ENGAGED] [RECORDING] [gripper open]" in engaged, engaged
            twists = [m.twist.linear.x for _, m in probe.msgs["/servo_node/delta_twist_cmds"]]
            assert twists and max(twists) == pytest.approx(0.1)  # linear_scale, +x
            assert "[released] [RECORDING]" in read_until(master, "[released]", 5, probe)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        os.close(master)


def test_closed_loop_joins_the_callers_domain_and_says_which_seeds_it_runs(monkeypatch):
    monkeypatch.setenv("ROS_DOMAIN_ID", "42")
    assert domain_id() == 42
    monkeypatch.setenv("ROS_DOMAIN_ID", "0")
    assert domain_id() == 0
    monkeypatch.delenv("ROS_DOMAIN_ID")
    assert 1 <= domain_id() <= 101
    for bad in ("233", "-1", "lab"):
        monkeypatch.setenv("ROS_DOMAIN_ID", bad)
        with pytest.raises(UserError, match="not a domain id"):
            domain_id()
    r = subprocess.run(
        [sys.executable, "-m", "handoff_ros.closed_loop", "--help"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "episode k runs SEED+k, as in handoff-eval" in text and "$ROS_DOMAIN_ID" in text
