"""The safety filter against adversarial actions, without ROS: nothing ever leaves the limits."""

from __future__ import annotations

from contextlib import suppress

import numpy as np
import pytest

from data.align import StampCheck
from data.embodiment import load_embodiment
from policies.safety import SafetyConfig, SafetyFilter

SPEC = load_embodiment("sim_panda")
LOW = np.array(SPEC.action_low())
HIGH = np.array(SPEC.action_high())
HOME = np.array([0.0, 0.2, 0.0, -2.0, 0.0, 2.2, 0.8])  # inside every limit
DT = SPEC.dt


def make(**kw) -> SafetyFilter:
    f = SafetyFilter(SPEC, SafetyConfig(**kw))
    f.observe(HOME, 0.0)
    f.set_enabled(True)
    return f


def assert_safe(f: SafetyFilter, cmd: np.ndarray, prev: np.ndarray) -> None:
    assert np.all(np.isfinite(cmd))
    assert np.all(cmd >= LOW - 1e-12) and np.all(cmd <= HIGH + 1e-12)
    step = np.abs(cmd[:7] - prev[:7])
    assert np.all(step <= f.config.max_step_delta + 1e-9)
    assert np.all(step <= f.velocity * DT + 1e-9)


def test_enable_gate_blocks_until_enabled_but_sim_starts_enabled():
    f = SafetyFilter(SPEC, SafetyConfig())
    f.observe(HOME, 0.0)
    r = f.filter(np.append(HOME, 0.0), 0.01)
    assert r.command is None and r.reasons == ["disabled"]
    sim = SafetyFilter(SPEC, SafetyConfig(require_enable=False))
    sim.observe(HOME, 0.0)
    assert sim.filter(np.append(HOME, 0.0), 0.01).command is not None


def test_no_command_without_observation():
    f = SafetyFilter(SPEC, SafetyConfig(require_enable=False))
    r = f.filter(np.append(HOME, 0.0), 0.0)
    assert r.command is None and "no_observation" in r.reasons


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_actions_hold_position(bad):
    f = make()
    good = f.filter(np.append(HOME + 0.01, 0.0), DT)
    action = np.append(HOME, 0.0)
    action[3] = bad
    r = f.filter(action, 2 * DT)
    assert r.held and "non_finite" in r.reasons
    np.testing.assert_array_equal(r.command, good.command)


def test_huge_jump_is_clamped_per_step_and_converges():
    f = make(max_step_delta=0.05)
    target = np.append(HOME + 1.0, 1.0)
    prev = np.append(HOME, -1.0)
    for k in range(1, 40):
        f.observe(prev[:7], k * DT)
        r = f.filter(target, k * DT)
        assert "step_limit" in r.reasons or np.allclose(r.command[:7], target[:7])
        assert_safe(f, r.command, prev)
        prev = r.command
    np.testing.assert_allclose(prev[:7], target[:7])


def test_velocity_limit_uses_elapsed_time():
    f = make(max_step_delta=10.0, velocity_scale=1.0)  # only the velocity layer bounds steps
    r = f.filter(np.append(HOME + 1.0, 0.0), DT)
    np.testing.assert_allclose(np.abs(r.command[:7] - HOME), f.velocity * DT)
    # called again 1 ms later: the allowed step shrinks with the elapsed time
    r2 = f.filter(np.append(HOME + 1.0, 0.0), DT + 0.001)
    np.testing.assert_allclose(np.abs(r2.command[:7] - r.command[:7]), f.velocity * 0.001)


def test_out_of_limit_targets_are_clamped():
    f = make(max_step_delta=10.0, velocity_scale=1.0)
    for k in range(1, 200):
        f.observe(HOME, k * DT)
        r = f.filter(np.full(8, 1e6), k * DT)
        assert np.all(r.command <= HIGH) and np.all(r.command >= LOW)
    np.testing.assert_allclose(r.command, HIGH)
    assert "position_limit" in r.reasons


def test_limit_margin_shrinks_the_range():
    f = make(limit_margin=0.1, max_step_delta=10.0, velocity_scale=1.0)
    for k in range(1, 200):
        f.observe(HOME, k * DT)
        r = f.filter(np.full(8, -1e6), k * DT)
    np.testing.assert_allclose(r.command[:7], np.array(SPEC.position_lower) + 0.1)


def test_stale_observation_holds_then_resumes():
    f = make(stale_after_s=0.25)
    r1 = f.filter(np.append(HOME + 0.01, 0.0), 0.1)
    assert not r1.held
    r2 = f.filter(np.append(HOME + 0.5, 0.0), 0.4)  # last joint state at t=0: stale
    assert r2.held and "stale_observation" in r2.reasons
    np.testing.assert_array_equal(r2.command, r1.command)
    f.observe(HOME, 0.45)
    assert not f.filter(np.append(HOME + 0.02, 0.0), 0.5).held


def test_broken_joint_state_is_not_an_observation():
    f = make(stale_after_s=0.25)
    f.observe(np.full(7, np.nan), 0.3)  # ignored: the watchdog still sees t=0
    f.observe(np.zeros(5), 0.3)  # wrong joint count: ignored too
    assert f.filter(np.append(HOME, 0.0), 0.3).held


def test_estop_mid_chunk_latches_until_cleared_and_reenabled():
    f = make()
    chunk = [np.append(HOME + 0.01 * k, 0.0) for k in range(16)]
    sent = []
    for k, a in enumerate(chunk):
        if k == 6:
            f.estop("topic /estop")
        f.observe(HOME, k * DT)
        sent.append(f.filter(a, (k + 1) * DT))
    held = sent[5].command
    for r in sent[6:]:
        assert "estop" in r.reasons
        np.testing.assert_array_equal(r.command, held)
    ok, msg = f.set_enabled(True)
    assert not ok and "latched" in msg
    f.clear_estop()
    assert f.filter(chunk[0], 20 * DT).command is None  # gate closed again after a clear
    assert f.set_enabled(True)[0]
    f.observe(HOME, 20 * DT)
    assert f.filter(chunk[0], 21 * DT).command is not None


def test_deadman_holds_when_released_or_stale():
    f = make(require_deadman=True, deadman_timeout_s=0.2)
    assert "deadman" in f.filter(np.append(HOME + 0.1, 0.0), 0.01).reasons
    f.set_engaged(True, 0.02)
    f.observe(HOME, 0.02)
    assert not f.filter(np.append(HOME + 0.01, 0.0), 0.05).held
    f.observe(HOME, 0.3)
    assert "deadman" in f.filter(np.append(HOME + 0.02, 0.0), 0.3).reasons  # teleop went quiet


def test_wrong_action_shape_is_an_error():
    f = make()
    with pytest.raises(ValueError, match="shape"):
        f.filter(np.zeros(3), 0.01)


def test_config_validation_says_what_to_change():
    with pytest.raises(ValueError, match="velocity_scale"):
        SafetyConfig(velocity_scale=2.0)
    with pytest.raises(ValueError, match="limit_margin"):
        SafetyFilter(SPEC, SafetyConfig(limit_margin=2.0))


def test_fuzz_no_command_ever_leaves_the_limits():
    rng = np.random.default_rng(0)
    f = make()
    prev = np.append(HOME, SPEC.gripper.open_command)
    t = 0.0
    n_sent = 0
    for _ in range(5000):
        t += DT * rng.choice([1.0, 0.1, 3.0, 20.0], p=[0.85, 0.05, 0.05, 0.05])
        kind = rng.integers(6)
        if kind == 0:
            a = rng.normal(0, 1e3, 8)
        elif kind == 1:
            a = np.where(rng.random(8) < 0.3, rng.choice([np.nan, np.inf, -np.inf]), 0.0)
        elif kind == 2:
            a = rng.uniform(LOW - 5, HIGH + 5)
        else:
            a = prev + rng.normal(0, 0.2, 8)
        if rng.random() < 0.9:
            q = prev[:7] + rng.normal(0, 0.01, 7)
            f.observe(q, t - rng.choice([0.0, 0.5], p=[0.95, 0.05]))
        if rng.random() < 0.01:
            f.estop("fuzz")
        if f.estopped and rng.random() < 0.05:
            f.clear_estop()
            f.set_enabled(True)
        # the step bound is relative to the last command, or to the measured joints after a
        # (re-)enable, when there is no last command
        ref = f.last_command[:7] if f.last_command is not None else f.measured
        r = f.filter(a, t)
        if r.command is not None:
            assert np.all(np.isfinite(r.command))
            assert np.all(r.command >= LOW) and np.all(r.command <= HIGH)
            if not r.held:
                assert np.all(np.abs(r.command[:7] - ref) <= f.config.max_step_delta + 1e-9)
            prev = r.command
            n_sent += 1
    assert n_sent > 1000


def test_reanchor_bounds_the_next_step_from_the_measured_joints():
    f = make(max_step_delta=0.05)
    f.filter(np.append(HOME + 0.04, 0.0), DT)
    moved = HOME + 0.5  # an operator moved the arm meanwhile
    f.observe(moved, 2 * DT)
    f.reanchor()
    r = f.filter(np.append(moved, 0.0), 2 * DT)
    np.testing.assert_allclose(r.command[:7], moved)  # no jump back toward the old target


# ---- the staleness watchdog against bad clocks (a node's path: StampCheck, then observe) -----


def watch(stamp: float, received: float, f: SafetyFilter, check: StampCheck) -> None:
    """What a node does with one joint state: judge its time, then observe it (or drop it)."""
    with suppress(ValueError):
        f.observe(HOME, check.time_of(stamp, received, "/joint_states"))


def test_a_future_stamp_then_silence_holds_within_the_stale_timeout():
    f, check = make(), StampCheck(future_tolerance=0.5)
    f.filter(np.append(HOME, 0.0), 0.0)
    for k in range(1, 5):  # healthy 20 Hz joint states
        watch(k * DT, k * DT, f, check)
        assert not f.filter(np.append(HOME, 0.0), k * DT).held
    watch(1000.0 + 5 * DT, 5 * DT, f, check)  # one message stamped 1000 s ahead, then silence
    assert check.rejected == {"/joint_states": 1}
    t_last = 4 * DT
    fresh = f.filter(np.append(HOME + 0.01, 0.0), t_last + 0.2)
    assert not fresh.held
    r = f.filter(np.append(HOME + 0.01, 0.0), t_last + f.config.stale_after_s + 0.01)
    assert r.held and r.reasons == ["stale_observation"]
    assert f.counts["stale_observation"] == 1


def test_a_future_time_given_to_the_filter_directly_is_not_believed():
    f = make()  # observed at 0.0
    f.observe(HOME, 1000.0)  # a caller that skipped StampCheck
    r = f.filter(np.append(HOME, 0.0), 0.05)
    assert r.held and "stale_observation" in r.reasons


def test_every_stamp_far_in_the_past_holds_and_small_skew_is_judged_by_arrival():
    f, check = make(), StampCheck(future_tolerance=0.5)
    for k in range(1, 6):  # a publisher clock 1000 s behind: its data looks 1000 s old
        now = 10.0 + k * DT
        watch(now - 1000.0, now, f, check)
        assert f.filter(np.append(HOME, 0.0), now).held
    # a clock 0.3 s ahead (within tolerance): accepted, but aged from its arrival
    f2, check2 = make(), StampCheck(future_tolerance=0.5)
    watch(10.3, 10.0, f2, check2)
    assert not check2.rejected and not f2.filter(np.append(HOME, 0.0), 10.1).held
    assert f2.filter(np.append(HOME, 0.0), 10.0 + f2.config.stale_after_s + 0.01).held
