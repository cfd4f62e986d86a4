"""Camera policies a real arm can run: the CPU camera recipes, no privileged input unless asked
for, and evaluation seeds disjoint from the demonstrations'."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data.store import EVAL_SEED, DemoStore
from policies.checkpoint import load_policy
from policies.train import main as train_main
from policies.train import tiny_overrides

pytestmark = pytest.mark.slow
CAMERAS = ["agentview", "wrist"]


@pytest.fixture(scope="module")
def camera_store(tmp_path_factory) -> DemoStore:
    """Two scripted lift episodes with both cameras at 32x32 (seeds 0 and 1)."""
    from sim.collect import main as collect_main

    path = tmp_path_factory.mktemp("cam") / "lift.zarr"
    argv = ["--task", "lift", "--episodes", "2", "--out", str(path), "--no-progress"]
    collect_main([*argv, "--cameras", ",".join(CAMERAS), "--image-size", "32"])
    return DemoStore.open(path)


def train(store: DemoStore, out: Path, policy: str, *extra: str) -> dict:
    argv = ["--policy", policy, "--data", store.path, "--out", str(out), "--device", "cpu"]
    argv += ["--steps", "3", "--batch-size", "4", "--no-progress", *extra]
    sets = ["train.warmup_steps=1", "train.save_every=3"]
    # tiny networks, but the camera recipe's own vision width (a test below checks it)
    sets += tiny_overrides(policy, exclude=("vision_width",))
    for s in sets:
        argv += ["--set", s]
    assert train_main(argv) == 0
    return json.loads((out / "config.json").read_text())


@pytest.mark.parametrize("policy", ["act", "diffusion"])
def test_camera_recipe_is_deployable_by_default(policy, camera_store, tmp_path):
    run = train(camera_store, tmp_path / "cam", policy)
    assert Path(run["recipe"]).name == f"{policy}_cpu_camera.yaml"  # picked for a camera store
    keys = run["policy_config"]["obs_keys"]
    assert set(CAMERAS) <= set(keys) and {"joint_pos", "gripper_pos", "eef_pos"} <= set(keys)
    assert "object_state" in camera_store.keys and "object_state" not in keys
    assert run["policy_config"]["vision_width"] == 16 and not run["policy_config"]["privileged"]
    loaded = load_policy(tmp_path / "cam" / "last")
    obs = {k: v[0] for k, v in camera_store.episode(0).items()}
    action = loaded.select_action(obs)
    assert action.shape == (8,) and np.isfinite(action).all()

    asked = train(camera_store, tmp_path / "priv", policy, "--privileged")
    assert (
        "object_state" in asked["policy_config"]["obs_keys"]
        and asked["policy_config"]["privileged"]
    )


def test_privileged_keys_need_the_flag(camera_store, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train(camera_store, tmp_path / "r", "act", "--set", "policy.obs_keys=[wrist,object_state]")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "object_state" in err and "--privileged" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "last").exists()


def test_evaluation_seeds_are_disjoint_from_the_demonstrations(camera_store, tmp_path):
    from sim.evaluate import main as eval_main

    train(camera_store, tmp_path / "run", "act")
    argv = ["--checkpoint", str(tmp_path / "run"), "--task", "lift", "--episodes", "2"]
    eval_main([*argv, "--max-steps", "3", "--out", str(tmp_path / "ev"), "--no-progress"])
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["seeds"] == [EVAL_SEED, EVAL_SEED + 1]  # the default: past every demo seed
    assert camera_store.seeds() == {0, 1}
    meta = json.loads((tmp_path / "run" / "last" / "train_meta.json").read_text())
    assert meta["data"] == camera_store.path  # what the evaluator reads the store's seeds from


def test_seeds_move_past_a_store_that_reaches_the_evaluation_base(tmp_path):
    from data.embodiment import load_embodiment

    store = DemoStore.create(
        tmp_path / "s.zarr", load_embodiment("sim_panda").with_cameras([], None)
    )
    T = 4
    for seed in (EVAL_SEED + 3, 7):
        ep = {
            "joint_pos": np.zeros((T, 7), np.float32),
            "joint_vel": np.zeros((T, 7), np.float32),
            "action": np.zeros((T, 8), np.float32),
        }
        store.append_episode(ep, task="lift", source="scripted", success=True, seed=seed)
    assert store.seeds() == {7, EVAL_SEED + 3}
    assert store.first_seed_after(EVAL_SEED, 3) == EVAL_SEED  # 100000..100002: none stored
    assert store.first_seed_after(EVAL_SEED, 4) == EVAL_SEED + 4  # would repeat 100003
    assert store.first_seed_after(0, 8) == EVAL_SEED + 4


@pytest.mark.ros
def test_policy_node_refuses_a_privileged_checkpoint_on_a_real_arm(camera_store, tmp_path):
    import time

    from handoff_ros.processes import NodeProcess, fresh_domain_id, nodes

    train(camera_store, tmp_path / "run", "act", "--privileged")
    params = {"checkpoint": str(tmp_path / "run"), "robot": "real"}
    policy = NodeProcess("policy", fresh_domain_id(), params, tmp_path)
    with nodes(policy):
        deadline = time.monotonic() + 90
        while "--privileged" not in policy.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        log = policy.log()
    assert "object_state" in log and "retrain without --privileged" in log, log
    assert "Traceback" not in log


@pytest.mark.ros
@pytest.mark.parametrize("cameras", [False, True])
def test_make_demo_cameras_switch(cameras, tmp_path, monkeypatch):
    """make demo DEMO_ARGS=--cameras collects cameras and trains without simulator-only state;
    the default state demo asks for it (--privileged). The stages' commands are recorded."""
    import handoff_ros.closed_loop
    import handoff_ros.demo as demo

    out, commands = tmp_path / "demo", []
    run_dir = out / ("act_cameras" if cameras else "act")

    def run(cmd):
        commands.append([Path(cmd[0]).name, *cmd[1:]])
        if commands[-1][0] == "handoff-eval":
            report = {"successes": 0, "n_episodes": 1, "success_rate": 0.0}
            report |= {"success_ci95": [0.0, 1.0], "latency_ms": {"p50": 1.0, "p99": 2.0}}
            (run_dir / "eval").mkdir(parents=True)
            (run_dir / "eval" / "report.json").write_text(json.dumps(report))

    ros = {"successes": 0, "episodes": 1, "inference_ms": {"p50": 1.0, "p99": 2.0}}
    monkeypatch.setattr(demo, "run", run)
    monkeypatch.setattr(demo, "launched_closed_loop", lambda *a, **k: ros)
    monkeypatch.setattr(handoff_ros.closed_loop, "run_closed_loop", lambda *a, **k: ros)
    size = demo.CAMERA_FULL if cameras else demo.FULL
    demo.demo("act", out, size, fresh=True, workers=1, cameras=cameras)
    collect, train_cmd, _ = commands
    assert ("--cameras" in collect) == cameras and ("--privileged" in train_cmd) != cameras
    assert collect[collect.index("--out") + 1] == str(out / f"lift{'_cameras' * cameras}.zarr")
    assert collect[collect.index("--episodes") + 1] == ("200" if cameras else "100")
    assert ("train.max_minutes=9.0" in train_cmd) != cameras  # cameras: the recipe's 30 min


def test_too_few_samples_for_a_batch_leaves_no_run_directory(camera_store, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train(camera_store, tmp_path / "run", "act", "--batch-size", "100000")
    assert e.value.code == 2 and "fewer than one batch" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # the retry with a smaller batch needs no --force
    train(camera_store, tmp_path / "run", "act")
