"""The first hour (issue 19): LeRobot folders as training data, help texts, human summaries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from data.cli import main as data_main
from data.convert import convert
from data.convert.lerobot_store import cache_root
from policies import load
from tests.data.test_convert_common import make_store
from tests.policies.test_train import train

BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Every test converts into its own cache, never the user's ~/.cache/handoff."""
    monkeypatch.setenv("HANDOFF_CACHE", str(tmp_path / "cache"))


def foreign_v3(tmp_path: Path, images: str) -> Path:
    """A LeRobot v3.0 folder as another project writes it: no handoff section in info.json,
    motor names in lerobot >= 0.3 style (``shoulder_pan.pos``) on the state and action."""
    make_store(tmp_path / "src.zarr", lengths=(12, 15, 9, 14))
    out = tmp_path / f"lr_{images}"
    convert(tmp_path / "src.zarr", out, "handoff", "lerobot", progress=False, images=images)
    info = json.loads((out / "meta/info.json").read_text())
    del info["handoff"]
    info["robot_type"] = "so_arm"
    state = info["features"]["observation.state"]
    state["names"] = [f"motor{i}.pos" for i in range(state["shape"][0])]
    info["features"]["action"]["names"] = [f"m{i}.pos" for i in range(7)] + ["gripper.pos"]
    (out / "meta/info.json").write_text(json.dumps(info))
    return out


@pytest.mark.parametrize("images", ["video", "png"])
def test_train_straight_from_a_lerobot_v3_folder(images, tmp_path, capsys):
    data = foreign_v3(tmp_path, images)
    assert train(data, tmp_path / "run", "act", steps=4) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1])["steps"] == 4
    assert lines[-2].startswith("trained 4 steps in ") and "final loss" in lines[-2]
    policy = load(tmp_path / "run")
    spec = policy.embodiment  # inferred from info.json + the data, not written by hand
    assert spec.name == "lerobot_so_arm" and spec.control_hz == 20.0
    assert spec.joint_names == tuple(f"m{i}" for i in range(7))  # ".pos" dropped
    assert [(c.name, c.width, c.height) for c in spec.cameras] == [
        ("agentview", 48, 32),
        ("wrist", 48, 32),
    ]
    assert spec.observation["state"] == (23,)  # one state key: foreign names are not split
    assert spec.privileged == ("environment_state",)
    assert policy.camera_keys == ["agentview", "wrist"]
    assert (tmp_path / "run" / "training.png").stat().st_size > 10_000
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (tmp_path / "run" / "tb").glob("events.out.tfevents.*")
    tb = EventAccumulator(str(events))
    tb.Reload()
    assert [e.step for e in tb.Scalars("train/loss")] == [1, 2, 3, 4]  # every step of a short run
    assert len(tb.Scalars("train/lr")) == 4
    cached = list((tmp_path / "cache" / "lerobot").glob("lr_*.zarr"))
    assert len(cached) == 1  # converted once ...
    mtime = cached[0].stat().st_mtime_ns
    assert data_main(["info", str(data)]) == 0  # ... and reused by every command
    out = capsys.readouterr().out
    assert "lerobot_so_arm  (inferred from meta/info.json" in out and "episodes   4" in out
    assert cached[0].stat().st_mtime_ns == mtime
    assert data_main(["validate", str(data), "--quiet"]) == 0


def test_embodiment_flag_overrides_the_inferred_one(tmp_path, capsys):
    from data.store import DemoStore
    from policies.train import main

    data = foreign_v3(tmp_path, "png")
    argv = ["--policy", "act", "--steps", "2", "--batch-size", "4", "--device", "cpu"]
    argv += ["--no-progress", "--data", str(data), "--set", "policy.vision_width=16"]
    # sim_panda has joint_pos ... keys and 84x84 cameras: refused, naming the given spec
    with pytest.raises(SystemExit):
        main([*argv, "--out", str(tmp_path / "a"), "--embodiment", "sim_panda"])
    assert "embodiment 'sim_panda'" in capsys.readouterr().err
    (cached,) = (tmp_path / "cache" / "lerobot").glob("*.zarr")
    mine = DemoStore.open(cached).embodiment.to_dict() | {"name": "my_arm", "control_hz": 20}
    mine["gripper"]["open_command"] = mine["gripper"]["command_max"]
    (tmp_path / "my_arm.yaml").write_text(yaml.safe_dump(mine))
    assert (
        main([*argv, "--out", str(tmp_path / "b"), "--embodiment", str(tmp_path / "my_arm.yaml")])
        == 0
    )
    spec = load(tmp_path / "b").embodiment
    assert spec.name == "my_arm" and spec.gripper.open_command == mine["gripper"]["command_max"]


def test_other_data_gets_the_converter_hint(tmp_path, capsys):
    h5 = tmp_path / "demo.hdf5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(SystemExit):
        train(h5, tmp_path / "run", "act")
    err = capsys.readouterr().err
    assert f"handoff-data convert --from robomimic --to handoff {h5} demo.zarr" in err
    folder = tmp_path / "pictures"
    folder.mkdir()
    (folder / "a.txt").write_text("x")
    r = subprocess.run(
        [BIN / "handoff-data", "info", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "handoff-data convert --from FORMAT --to handoff" in r.stderr
    assert "lerobot, robomimic, rosbag2" in r.stderr


COMMANDS = [
    ["handoff-train"],
    ["handoff-eval"],
    ["handoff-collect"],
    ["handoff-data"],
    *[["handoff-data", c] for c in ("info", "validate", "merge", "split", "delete")],
    ["handoff-data", "export-video"],
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_help_is_plain_text_and_explains_every_option(cmd):
    r = subprocess.run([BIN / cmd[0], *cmd[1:], "--help"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "``" not in r.stdout
    # every option and positional line of the help carries an explanation
    body = r.stdout.split("options:", 1)[1]
    entries = [ln for ln in body.splitlines() if ln.startswith("  ") and ln.strip()]
    heads = [ln for ln in entries if ln.startswith("  -") or ln.startswith("  {")]
    for ln in heads:
        at = entries.index(ln)
        explained = len(ln.split("  ")) > 2 or (
            at + 1 < len(entries) and entries[at + 1].startswith(" " * 20)
        )
        assert explained, f"{' '.join(cmd)}: {ln.strip()} has no help"


def test_train_help_answers_without_torch():
    code = (
        "import sys, policies.train as t\n"
        "try: t.parse_args(['--help'])\n"
        "except SystemExit: pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_eval_summary_is_rounded():
    from sim.evaluate import wilson_interval
    from sim.report import summary_line

    report = {
        "task": "lift",
        "n_episodes": 50,
        "successes": 43,
        "success_rate": 43 / 50,
        "success_ci95": wilson_interval(43, 50),
        "mean_length": 98.2666666,
        "latency_ms": {"p50": 1.23456, "p99": 3.3333333},
        "seeds": list(range(100, 150)),
    }
    line = summary_line(report)
    assert line.startswith("lift: success 0.86 [0.74, 0.93] (43/50 episodes, seeds 100-149)")
    assert "mean length 98.3 steps" in line and "p50 1.23 ms p99 3.33 ms" in line


def test_train_summary_is_rounded(tmp_path):
    from policies.trainer import summary_line

    evals = [
        {"step": 100, "success_rate": 0.6, "success_ci95": [0.3123456, 0.8345678]},
        {"step": 200, "success_rate": 0.86, "success_ci95": [0.7812345678, 0.9123456789]},
    ]
    summary = {
        "steps": 200,
        "wall_s": 93.0,
        "samples_per_s": 812.345,
        "final_loss": 0.0123456789,
        "evaluations": evals,
    }
    line = summary_line(tmp_path / "run", summary)
    assert "trained 200 steps in 1.6 min (812 samples/s), final loss 0.01235" in line
    assert "success 0.86 [0.78, 0.91] at step 200 (2 evaluation(s))" in line
    assert f"checkpoint {tmp_path / 'run' / 'best'}" in line


def test_rollouts_carry_seed_step_and_outcome():
    from sim.report import VIDEO_SCALE, overlay

    frame = np.full((160, 160, 3), 128, np.uint8)
    ok = overlay(frame, {"seed": 7, "success": True, "length": 90}, 3)
    bad = overlay(frame, {"seed": 7, "success": False, "length": 90}, 3)
    assert ok.shape == (160 * VIDEO_SCALE, 160 * VIDEO_SCALE, 3)
    strip_ok, strip_bad = ok[:22].reshape(-1, 3), bad[:22].reshape(-1, 3)
    assert (strip_ok[:, 1] > 150).any() and not (strip_ok[:, 0] > 200).all()  # green text
    assert ((strip_bad[:, 0] > 180) & (strip_bad[:, 1] < 80)).any()  # red text
    assert not np.array_equal(ok[:22], bad[:22])
    assert (ok[40:] == 128).all()  # the picture itself is untouched


def test_cache_lives_where_the_environment_says(tmp_path, monkeypatch):
    assert cache_root() == tmp_path / "cache"
    monkeypatch.delenv("HANDOFF_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "handoff"


def test_tensorboard_draws_short_runs_point_by_point():
    from policies.trainer import tb_interval

    assert tb_interval(50, 200) == 1 and tb_interval(50, 4000) == 20
    assert tb_interval(50, 100_000) == 50  # long runs: log_every as configured


def test_export_video_names_dimensions_and_moves_the_cursor(tmp_path):
    import av

    from data.video import PLOT_WIDTH, dimension_names

    make_store(tmp_path / "a.zarr", lengths=(10,))
    assert (
        data_main(
            [
                "export-video",
                str(tmp_path / "a.zarr"),
                "--episode",
                "0",
                "--out",
                str(tmp_path / "e.mp4"),
            ]
        )
        == 0
    )
    with av.open(str(tmp_path / "e.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 10 and frames[0].shape[1] == PLOT_WIDTH
    assert frames[0].shape[0] > 320 + 4 * 150  # cameras on top, four rows of plots below
    red = [
        ((f[330:, :, 0] > 170) & (f[330:, :, 1] < 90)).any(axis=0) for f in (frames[0], frames[-1])
    ]
    assert np.flatnonzero(red[0]).mean() < np.flatnonzero(red[1]).mean()  # the cursor moved right
    from data.embodiment import load_embodiment

    spec = load_embodiment("sim_panda")
    assert dimension_names("action", 8, spec)[-2:] == ["robot0_joint7", "gripper"]
    assert dimension_names("joint_vel", 7, spec)[0] == "robot0_joint1"
    assert dimension_names("eef_pos", 3, spec) == ["eef_pos[0]", "eef_pos[1]", "eef_pos[2]"]
