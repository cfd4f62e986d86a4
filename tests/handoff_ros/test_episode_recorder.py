"""The recorder's plain-Python core (no DDS): alignment, gaps, background writing, discard."""

from __future__ import annotations

import numpy as np

from data.embodiment import load_embodiment
from data.store import DemoStore
from data.validate import validate_store
from handoff_ros.episode_recorder import EpisodeRecorder, Stream

SPEC = load_embodiment("sim_panda").with_cameras(["agentview"], (16, 16))


def make(tmp_path):
    store = DemoStore.create(tmp_path / "rec.zarr", SPEC)
    streams = {
        "joint_states": Stream("joint_states", max_age=0.1),
        "agentview": Stream("agentview", max_age=0.1),
        "action": Stream("action", max_age=None),
        "engaged": Stream("engaged", max_age=0.5),
    }
    rec = EpisodeRecorder(
        store,
        streams,
        {"agentview": (16, 16)},
        {"task": "lift", "source": "teleop", "operator": "test"},
        optional={
            "action": lambda s: {"action": np.append(s["joint_pos"], -1.0).astype(np.float32)},
            "engaged": {"intervention": np.array(False)},
        },
    )
    return store, streams, rec


def push_obs(streams, t, q):
    streams["joint_states"].push(
        t, {"joint_pos": np.full(7, q, np.float32), "joint_vel": np.zeros(7, np.float32)}, t
    )
    frame = np.full((32, 32, 3), int(q * 10) % 255, np.uint8)  # resized to 16x16 on write
    streams["agentview"].push(t, {"agentview": frame}, t)


def test_steps_follow_the_alignment_rule_and_episodes_validate(tmp_path):
    store, streams, rec = make(tmp_path)
    assert rec.tick(0.0) is None  # nothing heard yet: nothing to record
    push_obs(streams, 0.0, 0.0)
    rec.start(seed=3)
    # before any command the action holds the measured position (no gap)
    step = rec.tick(0.01)
    np.testing.assert_array_equal(step["action"][:7], np.zeros(7))
    assert not step["intervention"]
    for k in range(1, 20):
        t = k * 0.05
        push_obs(streams, t - 0.01, float(k))  # observation stamped just before the tick
        streams["action"].push(t + 0.001, {"action": np.full(8, k, np.float32)}, t)
        streams["engaged"].push(t, {"intervention": np.array(k > 10)}, t)
        step = rec.tick(t)
        assert step["joint_pos"][0] == k  # newest stamp <= tick
        # the command stamped after the tick is not used; before the first, hold the measured
        assert step["action"][0] == (k - 1 if k > 1 else k)
    rec.mark_success(True)
    ok, msg = rec.stop()
    assert ok, msg
    assert rec.flush()
    store = DemoStore.open(store.path)
    assert store.n_episodes == 1 and store.n_steps == 20
    meta = store.episode_meta(0)
    assert meta["success"] is True and meta["has_gaps"] is False and meta["seed"] == 3
    ep = store.episode(0)
    assert ep["agentview"].shape == (20, 16, 16, 3)
    assert ep["intervention"].dtype == bool and ep["intervention"][-1] and not ep["intervention"][5]
    assert np.all(np.diff(ep["timestamp"]) > 0) and ep["timestamp"][0] == 0
    assert validate_store(store, progress=False) == []
    rec.close()


def test_stale_stream_flags_the_episode_and_discard_leaves_nothing(tmp_path):
    store, streams, rec = make(tmp_path)
    push_obs(streams, 0.0, 0.0)
    rec.start()
    for k in range(10):
        rec.tick(k * 0.05)  # joint_states never updates again: stale after 0.1 s
    rec.stop()
    rec.start()
    push_obs(streams, 1.0, 1.0)
    rec.tick(1.0)
    rec.discard()
    assert rec.flush()
    rec.close()
    store = DemoStore.open(store.path)
    assert store.n_episodes == 1 and store.n_steps == 10
    meta = store.episode_meta(0)
    assert meta["has_gaps"] is True and meta["gap_steps"]["joint_states"] == 7
    assert meta["success"] is None


def test_drops_estimated_from_stamp_gaps():
    s = Stream("cam", max_age=0.1)
    stamps = [k / 30 for k in range(10)] + [k / 30 for k in range(13, 20)]  # 3 frames lost
    for t in stamps:
        s.push(t, {}, t + 0.002)
    assert s.stats.dropped == 3
    summary = s.stats.summary()
    assert abs(summary["latency_ms_p50"] - 2.0) < 0.01 and 25 < summary["rate_hz"] < 31


def test_compressed_frames_are_decoded_by_the_writer(tmp_path):
    from handoff_ros.episode_recorder import EncodedFrame
    from handoff_ros.images import to_compressed_msg

    store, streams, rec = make(tmp_path)
    frame = np.zeros((32, 32, 3), np.uint8)
    frame[:, :16] = (200, 30, 30)  # left half red: survives PNG exactly, and the resize
    png = to_compressed_msg(frame, "png")
    rec.start()
    for k in range(5):
        t = k * 0.05
        push_obs(streams, t, float(k))
        streams["agentview"].push(t, {"agentview": EncodedFrame(png.data, png.format)}, t)
        rec.tick(t)
    rec.stop()
    assert rec.flush() and not rec.write_errors
    rec.close()
    stored = DemoStore.open(store.path).episode(0)["agentview"]
    assert stored.shape == (5, 16, 16, 3)
    np.testing.assert_array_equal(stored[:, :, :8], np.broadcast_to([200, 30, 30], (5, 16, 8, 3)))


def test_an_episode_without_a_step_says_why_and_stores_nothing(tmp_path):
    store, streams, rec = make(tmp_path)
    streams["joint_states"].push(
        0.0, {"joint_pos": np.zeros(7, np.float32), "joint_vel": np.zeros(7, np.float32)}, 0.0
    )  # the camera never delivers
    rec.start()
    for k in range(5):
        assert rec.tick(k * 0.05) is None
    ok, msg = rec.stop()
    assert not ok and "agentview" in msg and "nothing stored" in msg, msg
    rec.start()  # started and stopped before any tick
    ok, msg = rec.stop()
    assert not ok and "not begun" in msg, msg
    assert rec.flush()
    rec.close()
    assert DemoStore.open(store.path).n_episodes == 0


def test_steps_holding_nan_are_dropped_and_named(tmp_path):
    store, streams, rec = make(tmp_path)
    rec.start()
    for k in range(6):
        t = k * 0.05
        push_obs(streams, t, float(k))
        if k % 2:  # a sensor that sends NaN velocities every other message
            streams["joint_states"].push(
                t, {"joint_pos": np.zeros(7, np.float32), "joint_vel": np.full(7, np.nan)}, t
            )
        rec.tick(t)
    ok, msg = rec.stop()
    assert ok and "dropped 3 step(s) holding NaN/inf in ['joint_vel']" in msg, msg
    rec.start()
    for k in range(6, 9):
        t = k * 0.05
        push_obs(streams, t, float(k))
        streams["agentview"].push(t, {"agentview": np.zeros((32, 32, 3), np.uint8)}, t)
        streams["engaged"].push(t, {"intervention": np.array(False)}, t)
        streams["action"].push(t, {"action": np.full(8, np.inf, np.float32)}, t)
        rec.tick(t)
    ok, msg = rec.stop()
    assert not ok and "every step held NaN/inf in ['action']" in msg, msg
    assert rec.flush()
    rec.close()
    stored = DemoStore.open(store.path)
    assert stored.n_episodes == 1 and stored.n_steps == 3
    assert stored.episode_meta(0)["gap_steps"] == {"non_finite": 3}
    assert np.isfinite(stored.episode(0)["joint_vel"]).all()


def test_a_stop_at_a_time_ends_with_its_tick_and_answers_the_outcome(tmp_path):
    store, streams, rec = make(tmp_path)
    for k in range(3):
        push_obs(streams, k * 0.05, float(k))
        if k == 0:
            rec.start()
        rec.tick(k * 0.05)
    ok, msg = rec.stop(at=0.22)  # ticks 0.15 and 0.2 are not assembled yet (lag_s)
    assert ok and msg.startswith("stopping after 3 steps"), msg
    for k in range(3, 10):
        push_obs(streams, k * 0.05, float(k))
        rec.tick(k * 0.05)
    assert rec.flush()
    rec.close()
    assert DemoStore.open(store.path).n_steps == 5  # the last step is the tick at 0.2


def test_a_stop_before_any_step_discards_at_once_and_says_so(tmp_path):
    store, streams, rec = make(tmp_path)
    rec.start()
    ok, msg = rec.stop(at=0.1)  # no tick yet: the episode has not begun
    assert not ok and "not begun" in msg, msg
    rec.start()
    rec.tick(0.0)  # begins, but the streams never spoke: no step
    ok, msg = rec.stop(at=0.1)
    assert not ok and "nothing stored" in msg, msg
    for k in range(1, 4):
        push_obs(streams, k * 0.05, float(k))
        rec.tick(k * 0.05)  # later ticks record nothing: the episode is over
    assert rec.flush()
    rec.close()
    assert DemoStore.open(store.path).n_episodes == 0


def test_a_command_sent_just_after_a_tick_belongs_to_it():
    """The recorder's action_offset_s, as the bag importer applies it (data.align): a command
    stamped up to the offset after a tick is that tick's action; a later one is the next's."""
    late = Stream("action", None, offset=0.025)
    on_time = Stream("action", None)
    for s in (late, on_time):
        s.push(0.99, {"action": np.array([1.0])}, 0.99)
        s.push(1.01, {"action": np.array([2.0])}, 1.01)  # 10 ms after tick 1.0
        s.push(1.04, {"action": np.array([3.0])}, 1.04)  # 40 ms after: tick 1.05's
    assert late.at(1.0)[0]["action"][0] == 2.0
    assert on_time.at(1.0)[0]["action"][0] == 1.0
    assert late.at(1.05)[0]["action"][0] == 3.0
