"""The alignment rule shared by the ROS recorder and the rosbag2 importer (data/align.py)."""

from __future__ import annotations

import numpy as np
import pytest

from data.align import (
    JointStateMerge,
    StampCheck,
    align,
    common_span,
    control_grid,
    latest_index,
    split_at_gaps,
)


def test_control_grid_float_and_ns():
    g = control_grid(1.0, 2.0, 10.0)
    assert len(g) == 11
    np.testing.assert_allclose(g, 1.0 + np.arange(11) / 10.0)
    # 30 Hz in ns: every tick rounded on its own, no drift after an hour
    start = 1_700_000_000_000_000_000
    g = control_grid(start, start + 3600 * 10**9, 30.0)
    assert g.dtype == np.int64 and len(g) == 3600 * 30 + 1
    assert g[-1] == start + 3600 * 10**9
    assert g[3] - start == 100_000_000
    assert len(control_grid(5, 4, 10.0)) == 0


def test_newest_not_after_tick_and_ties():
    stamps = np.array([0.0, 0.1, 0.1, 0.25])
    idx, gap = latest_index(stamps, np.array([-0.05, 0.0, 0.09, 0.1, 0.2, 0.3]))
    # before the first message: -1 (gap); exactly at a stamp: that message; ties: last arrival
    assert idx.tolist() == [-1, 0, 0, 2, 2, 3]
    assert gap.tolist() == [True, False, False, False, False, False]


def test_max_age_marks_stale_ticks():
    stamps = np.array([0, 100, 200, 900], dtype=np.int64)
    idx, gap = latest_index(stamps, np.arange(0, 1000, 100, dtype=np.int64), max_age=150)
    assert idx.tolist() == [0, 1, 2, 2, 2, 2, 2, 2, 2, 3]
    # ages: 0,0,0,100,200,...,600,0 -> stale where age > 150
    assert gap.tolist() == [False, False, False, False, True, True, True, True, True, False]


def test_unsorted_stamps_index_arrival_order():
    stamps = np.array([0.3, 0.1, 0.2])
    idx, gap = latest_index(stamps, np.array([0.15, 0.25, 0.35]))
    assert idx.tolist() == [1, 2, 0]
    assert not gap.any()


def test_scalar_tick_for_live_recorder():
    idx, gap = latest_index(np.array([1.0, 2.0]), 1.5, max_age=0.2)
    assert idx.tolist() == [0] and gap.tolist() == [True]


def test_align_streams_take_values_and_report():
    rng = np.random.default_rng(0)
    # joint states at ~100 Hz with jitter, camera at 10 Hz with a 0.5 s dropout, 20 Hz grid
    js = np.sort(rng.uniform(0, 3, 300))
    cam = np.concatenate([np.arange(0.0, 1.0, 0.1), np.arange(1.5, 3.0, 0.1)])
    a = align({"joint_states": js, "camera": cam}, 20.0, max_age={"camera": 0.15})
    start, stop = common_span({"joint_states": js, "camera": cam})
    assert a.ticks[0] == start and a.ticks[-1] <= stop
    # brute-force reference of the rule
    for name, stamps in (("joint_states", js), ("camera", cam)):
        for t, i in zip(a.ticks, a.index[name]):
            expect = max((j for j, s in enumerate(stamps) if s <= t), key=lambda j: stamps[j])
            assert i == expect
    cam_gap = a.gaps["camera"]
    stale_ticks = a.ticks[cam_gap]
    assert len(stale_ticks) > 0 and np.all((stale_ticks > 1.05) & (stale_ticks < 1.5))
    assert not a.gaps["joint_states"].any()  # no age limit for that stream
    values = np.arange(len(cam)) * 10.0
    taken = a.take("camera", values)
    assert taken.shape == (len(a),)
    assert np.all(taken[cam_gap] == 90.0)  # stale ticks hold the last frame before the dropout
    assert a.report() == {
        "joint_states": 0,
        "camera": int(cam_gap.sum()),
        "any": int(cam_gap.sum()),
    }
    assert a.has_gaps


def test_offset_lets_a_later_command_count_for_its_tick():
    ticks = np.array([0, 50, 100], dtype=np.int64)
    cmd = np.array([3, 53, 103], dtype=np.int64)  # published 3 ns after each tick
    plain = align({"cmd": cmd}, ticks=ticks)
    shifted = align({"cmd": cmd}, ticks=ticks, offset={"cmd": 49})
    assert plain.index["cmd"].tolist() == [-1, 0, 1]
    assert shifted.index["cmd"].tolist() == [0, 1, 2]
    np.testing.assert_array_equal(plain.take("cmd", cmd), [3, 3, 53])


def test_split_at_gaps():
    stamps = np.array([0.0, 0.1, 0.2, 5.0, 5.1, 9.0])
    assert split_at_gaps(stamps, 1.0) == [(0.0, 0.2), (5.0, 5.1), (9.0, 9.0)]
    assert split_at_gaps(np.array([]), 1.0) == []


def test_bad_input():
    with pytest.raises(ValueError, match="rate_hz"):
        control_grid(0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="no messages"):
        align({"a": np.array([1.0]), "b": np.array([])}, 10.0)
    with pytest.raises(ValueError, match="ticks or rate_hz"):
        align({"a": np.array([1.0])})


# ---- message times and joint states merged by name --------------------------------------------


def test_stamp_check_takes_the_earlier_time_and_rejects_future_stamps():
    check = StampCheck(future_tolerance=0.5)
    assert check.time_of(9.9, 10.0, "/a") == 9.9  # normal latency: the stamp
    assert check.time_of(10.3, 10.0, "/a") == 10.0  # small skew ahead: the arrival
    assert check.time_of(-990.0, 10.0, "/a") == -990.0  # far in the past: looks old
    with pytest.raises(ValueError, match="after the message arrived"):
        check.time_of(1010.0, 10.0, "/a")
    assert check.rejected == {"/a": 1}
    ns = StampCheck(future_tolerance=500_000_000)  # the same rule on int ns (bag stamps)
    assert ns.time_of(2_000_000_000, 1_900_000_000) == 1_900_000_000
    with pytest.raises(ValueError):
        StampCheck(future_tolerance=-1)


ARM, FINGERS = [f"j{i}" for i in range(3)], ["f1", "f2"]


def test_split_joint_states_merge_by_name_within_the_window():
    m = JointStateMerge(window=0.1)
    m.update(1.00, ARM, [0.1, 0.2, 0.3], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"\['f1', 'f2'\] not heard"):
        m.take([*ARM, *FINGERS])
    m.update(1.02, list(reversed(FINGERS)), [-0.04, 0.04], [])  # the gripper driver, any order
    s = m.take([*FINGERS, *ARM])
    np.testing.assert_array_equal(s.positions, [0.04, -0.04, 0.1, 0.2, 0.3])
    assert (s.oldest, s.newest) == (1.00, 1.02)
    assert m.names == [*ARM, "f2", "f1"]
    m.update(1.20, FINGERS, [0.0, 0.0])  # the arm driver went silent: no stale arm passes
    with pytest.raises(ValueError, match=r"\['j0', 'j1', 'j2'\] last heard"):
        m.take([*ARM, *FINGERS])
    np.testing.assert_array_equal(m.take(FINGERS).positions, [0.0, 0.0])


def test_nan_velocities_are_estimated_from_positions_never_passed_on():
    m = JointStateMerge(window=0.1)
    nan3 = [np.nan] * 3  # ros2_control without a velocity interface
    m.update(0.00, ARM, [0.0, 1.0, 2.0], nan3)
    assert np.isnan(m.take(ARM).velocities).all()  # nothing to estimate from yet
    m.update(0.05, ARM, [0.1, 1.0, 1.9], nan3)
    np.testing.assert_allclose(m.take(ARM).velocities, [2.0, 0.0, -2.0])
    assert m.estimated == set(ARM)
    m.update(0.05, ARM, [0.1, 1.0, 1.9], [])  # the same instant again: keeps the estimate
    np.testing.assert_allclose(m.take(ARM).velocities, [2.0, 0.0, -2.0])
    m.update(0.50, ARM, [0.2, 1.0, 1.9], nan3)  # too long since the last: unknown, not a guess
    assert np.isnan(m.take(ARM).velocities).all()
    m.update(0.55, ARM, [0.2, 1.0, 1.9], [0.5, 0.5, 0.5])  # measured velocities pass unchanged
    np.testing.assert_array_equal(m.take(ARM).velocities, [0.5, 0.5, 0.5])


def test_malformed_joint_states_are_named_and_non_finite_ones_never_estimated_from():
    m = JointStateMerge(window=0.1)
    with pytest.raises(ValueError, match="3 joint names but 2 positions"):
        m.update(0.0, ARM, [0.0, 0.0])
    with pytest.raises(ValueError, match="3 joint names but 1 velocities"):
        m.update(0.0, ARM, [0.0, 0.0, 0.0], [1.0])
    with pytest.raises(ValueError, match="repeat"):
        m.update(0.0, ["a", "a"], [0.0, 0.0])
    m.update(0.0, ARM, [0.0, np.inf, 0.0], [np.nan] * 3)
    m.update(0.05, ARM, [0.0, 0.0, 0.0], [np.nan] * 3)
    s = m.take(ARM)  # passed on as sent (callers refuse it by key), never estimated from
    assert np.isnan(s.velocities[1]) and np.isfinite(s.velocities[[0, 2]]).all()
