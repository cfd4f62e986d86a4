"""The real loop on the simulated arm: handoff-collect -> handoff-train -> handoff-eval."""

from __future__ import annotations

import json

import pytest

from policies.train import main as train_main
from tests.conftest import TINY_ACT


@pytest.mark.slow
def test_collect_train_eval_on_lift(tmp_path, capsys):
    from sim.collect import main as collect_main
    from sim.evaluate import main as eval_main

    store = tmp_path / "lift.zarr"
    collect_main(["--task", "lift", "--episodes", "3", "--out", str(store), "--no-progress"])
    argv = [
        "--policy",
        "act",
        "--data",
        str(store),
        "--task",
        "lift",
        "--out",
        str(tmp_path / "run"),
        "--steps",
        "24",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--no-progress",
        "--eval-every",
        "0",
        "--eval-episodes",
        "2",
    ]
    for s in TINY_ACT:
        argv += ["--set", s]
    assert train_main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 24 and len(summary["evaluations"]) == 1  # evaluated at the end
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    run = json.loads((tmp_path / "run" / "config.json").read_text())
    assert "object_state" not in run["policy_config"]["obs_keys"]  # simulator-only: not by default
    eval_main(
        [
            "--checkpoint",
            str(tmp_path / "run" / "best"),
            "--task",
            "lift",
            "--episodes",
            "2",
            "--seed",
            "1000",
            "--no-progress",
        ]
    )
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["n_episodes"] == 2 and 0 <= report["success_rate"] <= 1
    assert report["latency_ms"]["p50"] > 0
    # the node's execution, rehearsed: real-time chunking with each chunk usable 2 steps late
    argv = ["--checkpoint", str(tmp_path / "run" / "best"), "--task", "lift", "--episodes", "1"]
    argv += ["--max-steps", "30", "--scheme", "rtc", "--inference-delay", "2", "--no-progress"]
    eval_main(argv + ["--soft-steps", "2"])
    out = capsys.readouterr().out.strip().splitlines()
    report = json.loads(out[-1])
    assert report["scheme"] == "rtc" and report["inference_delay"] == 2 and report["safety"]
    assert report["soft_steps"] == 2
    assert report["held_ticks_per_episode"] == 2  # nothing to execute before the first chunk
    assert report["chunks_per_episode"] >= 30 // 10 and "rtc at inference delay 2" in out[-2]
    with pytest.raises(SystemExit) as e:
        eval_main(argv[:-3] + ["--inference-delay", "soon"])
    assert e.value.code == 2 and "--inference-delay 'soon'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        eval_main(argv + ["--soft-steps", "-3"])
    assert e.value.code == 2 and "error: --soft-steps" in capsys.readouterr().err
