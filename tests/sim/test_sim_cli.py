"""End to end: handoff-collect writes a valid store, a stored episode replays open-loop to the
same outcome, and parallel evaluation returns a correct report."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from data.errors import UserError
from data.store import DemoStore
from sim.evaluate import evaluate_policy
from sim.experts import ScriptedExpert
from sim.replay import ReplayPolicy
from sim.report import summary_line
from sim.tasks import make_task

BIN = Path(sys.executable).parent
ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "osmesa")}


def run(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("collect") / "lift.zarr"
    r = run(
        "handoff-collect",
        "--task",
        "lift",
        "--episodes",
        "3",
        "--out",
        str(out),
        "--seed",
        "10",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    assert "wrote 3 episodes" in r.stdout
    return out


def test_collected_store_has_contract_keys_and_meta(collected):
    store = DemoStore.open(collected)
    assert store.n_episodes == 3
    assert set(store.keys) == {
        "joint_pos",
        "joint_vel",
        "gripper_pos",
        "eef_pos",
        "eef_quat",
        "object_state",
        "action",
        "timestamp",
    }
    ep = store.episode(0)
    assert ep["action"].shape[1] == 8 and ep["action"].dtype == np.float32
    assert ep["object_state"].shape[1] == 10 and ep["timestamp"].dtype == np.float64
    for i in range(3):
        meta = store.episode_meta(i)
        assert meta["task"] == "lift" and meta["source"] == "scripted"
        assert meta["success"] is True and meta["seed"] == 10 + i
    assert store.embodiment.privileged == ("object_state",)
    if (Path(__file__).parents[2] / "data" / "cli.py").exists():
        v = run("handoff-data", "validate", str(collected))
        assert v.returncode == 0, v.stdout + v.stderr


def test_collect_refuses_other_embodiment_and_bad_input(collected):
    r = run(
        "handoff-collect",
        "--task",
        "lift",
        "--episodes",
        "1",
        "--out",
        str(collected),
        "--cameras",
        "wrist",
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "cameras differ" in r.stderr
    r = run("handoff-collect", "--task", "pour", "--out", str(collected))
    assert r.returncode == 2 and "choose one of" in r.stderr
    assert DemoStore.open(collected).n_episodes == 3  # untouched


def test_replay_reproduces_trajectory_and_success(collected):
    store = DemoStore.open(collected)
    policy = ReplayPolicy(str(collected), 1)
    assert policy.seed == 11 and policy.task == "lift"
    report = evaluate_policy(policy, "lift", 1, seed=policy.seed, progress=False)
    assert report["successes"] == 1 and report["per_episode"][0]["length"] == len(policy.actions)
    # step by step: the replayed states are the recorded ones
    ep = store.episode(1)
    task = make_task("lift")
    obs, _ = task.reset(seed=policy.seed)
    for t, a in enumerate(ep["action"]):
        np.testing.assert_allclose(obs["joint_pos"], ep["joint_pos"][t], atol=1e-6)
        obs, *_ = task.step(a)
    task.close()


def test_eval_cli_replay_writes_report(collected, tmp_path):
    out = tmp_path / "ev"
    r = run(
        "handoff-eval",
        "--replay",
        f"{collected}:0",
        "--out",
        str(out),
        "--no-progress",
        "--video-episodes",
        "1",
    )
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["successes"] == 1 and report["seeds"] == [10]
    assert (out / "rollouts.mp4").stat().st_size > 1000
    assert (out / "summary.png").read_bytes()[:4] == b"\x89PNG"
    again = run("handoff-eval", "--replay", f"{collected}:0", "--out", str(out))
    assert again.returncode == 2 and "--force" in again.stderr
    bad = run("handoff-eval", "--replay", f"{collected}", "--no-progress")
    assert bad.returncode == 2 and "STORE:EPISODE" in bad.stderr


def test_eval_expert_with_two_workers(tmp_path):
    report = evaluate_policy(
        functools.partial(ScriptedExpert, "lift"),
        "lift",
        3,
        seed=4,
        workers=2,
        out_dir=tmp_path,
        progress=False,
    )
    assert report["task"] == "lift" and report["n_episodes"] == 3
    assert report["successes"] == 3 and report["success_rate"] == 1.0
    lo, hi = report["success_ci95"]
    assert 0.4 < lo < 0.5 and hi == 1.0
    assert report["seeds"] == [4, 5, 6]
    assert [e["seed"] for e in report["per_episode"]] == [4, 5, 6]
    assert all(e["success"] and 0 < e["length"] < 200 for e in report["per_episode"])
    assert report["mean_length"] == np.mean([e["length"] for e in report["per_episode"]])
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]
    assert json.loads((tmp_path / "report.json").read_text())["successes"] == 3


def test_eval_reports_how_far_failed_episodes_got():
    """An expert cut off at 30 steps fails lift: the report says, per episode and in sum, the
    furthest each got (the expert grasps the cube at ~27 steps, lifts it at ~36)."""
    report = evaluate_policy(
        functools.partial(ScriptedExpert, "lift"), "lift", 4, seed=4, max_steps=30, progress=False
    )
    stages = [e["stage"] for e in report["per_episode"]]
    assert report["successes"] == 0 and set(stages) <= {"not_grasped", "grasped"}
    assert report["failure_stages"] == {
        "not_grasped": stages.count("not_grasped"),
        "grasped": stages.count("grasped"),
        "lifted": 0,
    }
    got = report["failure_stages"]
    assert (
        f"of 4 failures {got['not_grasped']} never grasped the object, {got['grasped']} grasped "
        "it, 0 lifted it" in summary_line(report)
    )
    full = evaluate_policy(
        functools.partial(ScriptedExpert, "lift"), "lift", 2, seed=4, progress=False
    )
    assert full["successes"] == 2 and sum(full["failure_stages"].values()) == 0
    assert [e["stage"] for e in full["per_episode"]] == ["lifted", "lifted"]
    assert "failures" not in summary_line(full)
    # every stage reads as words, and one the phrases do not know still prints by its name
    from sim.mujoco_arm import STAGES
    from sim.report import _STAGE_PHRASES

    assert set(_STAGE_PHRASES) == set(STAGES)
    report["failure_stages"] = {**got, "placed": 1}
    assert summary_line(report).endswith("0 lifted it, 1 reached placed")


def test_eval_rejects_mismatched_embodiment():
    policy = ScriptedExpert("lift")
    policy.embodiment = replace(policy.embodiment, control_hz=10.0)
    with pytest.raises(UserError, match="control rate differs"):
        evaluate_policy(policy, "lift", 1, progress=False)


def test_latency_injection_delays_the_actions(collected):
    """With action latency k the replayed actions reach the arm k steps late: the trajectory is
    the recorded one shifted by k, so the episode takes k more steps."""
    policy = ReplayPolicy(str(collected), 2)
    base = evaluate_policy(policy, "lift", 1, seed=policy.seed, progress=False)
    late = evaluate_policy(policy, "lift", 1, seed=policy.seed, action_latency=2, progress=False)
    assert late["per_episode"][0]["length"] == base["per_episode"][0]["length"] + 2


def test_ctrl_c_keeps_finished_episodes(tmp_path):
    import signal
    import time

    out = tmp_path / "int.zarr"
    proc = subprocess.Popen(
        [
            str(BIN / "handoff-collect"),
            "--task",
            "lift",
            "--episodes",
            "50",
            "--out",
            str(out),
            "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until at least two episodes are committed
        ends = out / "meta" / "episode_ends"
        if ends.exists():
            try:
                if DemoStore.open(out).n_episodes >= 2:
                    break
            except UserError:
                pass
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    store = DemoStore.open(out)
    assert 2 <= store.n_episodes < 50
    assert all(store.episode_meta(i)["success"] for i in range(store.n_episodes))
    assert len(store.episode(store.n_episodes - 1)["action"]) > 10


def _expert_at_10hz() -> ScriptedExpert:
    policy = ScriptedExpert("lift")
    policy.embodiment = replace(policy.embodiment, control_hz=10.0)
    return policy


def test_eval_mismatch_in_worker_processes_fails_cleanly():
    """A set-up error inside a worker reaches the caller (it must not respawn forever)."""
    with pytest.raises(UserError, match="control rate differs"):
        evaluate_policy(_expert_at_10hz, "lift", 2, workers=2, progress=False)
