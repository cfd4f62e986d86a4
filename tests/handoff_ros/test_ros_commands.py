"""Controller command messages both ways: trajectory parsing/interpolation, forward commands."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("trajectory_msgs")

from std_msgs.msg import Float64MultiArray  # noqa: E402

from data.rosmsg import float_values, trajectory_from_msg  # noqa: E402
from handoff_ros.commands import forward_msg, trajectory_msg  # noqa: E402

NAMES = ["j1", "j2", "j3"]


def test_trajectory_round_trip_matches_by_name_and_interpolates():
    points = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    msg = trajectory_msg(NAMES[::-1], points[:, ::-1], dt=0.5)  # joints in another order
    assert [p.time_from_start.nanosec for p in msg.points] == [500_000_000, 0]
    assert msg.points[1].time_from_start.sec == 1
    traj = trajectory_from_msg(msg, NAMES, origin=np.zeros(3), now=10.0)
    np.testing.assert_allclose(traj.at(10.0), [0, 0, 0])  # starts at the current command
    np.testing.assert_allclose(traj.at(10.25), [0.5, 1.0, 1.5])
    np.testing.assert_allclose(traj.at(10.75), [2.0, 2.0, 2.0])
    np.testing.assert_allclose(traj.at(99.0), [3.0, 2.0, 1.0])  # holds the last point


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: setattr(m, "joint_names", ["a", "b", "c"]), "not in the message"),
        (lambda m: m.points.clear(), "no points"),
        (lambda m: setattr(m.points[0], "positions", [1.0]), "positions for"),
        (
            lambda m: setattr(m.points[1], "time_from_start", m.points[0].time_from_start),
            "strictly",
        ),
        (lambda m: setattr(m.points[0], "positions", [np.nan, 0.0, 0.0]), "NaN"),
    ],
)
def test_bad_trajectories_are_rejected_with_a_reason(mutate, message):
    msg = trajectory_msg(NAMES, np.zeros((2, 3)), dt=0.1)
    mutate(msg)
    with pytest.raises(ValueError, match=message):
        trajectory_from_msg(msg, NAMES, np.zeros(3), 0.0)


def test_forward_commands():
    np.testing.assert_allclose(float_values(forward_msg([1, 2, 3]), 3), [1, 2, 3])
    with pytest.raises(ValueError, match="2 values"):
        float_values(Float64MultiArray(data=[1.0, 2.0]), 3)
    with pytest.raises(ValueError, match="NaN"):
        float_values(Float64MultiArray(data=[1.0, np.inf, 0.0]), 3)


def test_a_stamped_trajectory_that_ends_in_the_past_is_refused():
    """As joint_trajectory_controller does: a stale or badly stamped goal must not make the
    arm jump to its last point."""
    msg = trajectory_msg(NAMES, np.ones((2, 3)), dt=0.1)  # ends 0.2 s after its stamp
    msg.header.stamp.sec = 100
    with pytest.raises(ValueError, match="ends in the past"):
        trajectory_from_msg(msg, NAMES, np.zeros(3), now=1100.0)  # stamped 1000 s ago
    traj = trajectory_from_msg(msg, NAMES, np.zeros(3), now=100.1)  # still running: accepted
    np.testing.assert_allclose(traj.at(100.1), [1.0, 1.0, 1.0])
    ahead = trajectory_from_msg(msg, NAMES, np.zeros(3), now=50.0)  # starts later: waits there
    np.testing.assert_allclose(ahead.at(50.0), [0.0, 0.0, 0.0])
