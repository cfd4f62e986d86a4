"""Tiny training configs, poses and checkpoints shared by the tests, ROS and pure alike.

ROS-free on purpose: tests/conftest.py imports it, so store and policy tests run where rclpy
is not installed; ROS tests import it beside handoff_ros.processes.
"""

from __future__ import annotations

from pathlib import Path

from policies.train import tiny_overrides

# A tiny ACT through the same --set overrides a user has: policies/recipes/act_tiny.yaml
TINY_ACT = tiny_overrides("act")


# the sim Panda's initial pose in the lift scene (robosuite's init_qpos), rad
SIM_HOME = (0.0, 0.19, 0.01, -2.6, -0.01, 2.95, 0.81)


def train_tiny_checkpoint(root: Path, offset: float = 0.3, steps: int = 10) -> Path:
    """A tiny state-only ACT trained with handoff-train for a few steps, on demonstrations
    that command joint 1 ``offset`` rad away from where it is. Returns the run directory."""
    import numpy as np

    from data.embodiment import load_embodiment
    from data.store import DemoStore
    from policies.train import main

    spec = load_embodiment("sim_panda").with_cameras([], None)
    store = DemoStore.create(root / "demo.zarr", spec, force=True)
    rng = np.random.default_rng(0)
    home = np.asarray(SIM_HOME, np.float32)
    for e in range(3):
        q = home + rng.normal(0, 0.02, (30, 7)).astype(np.float32)
        action = np.concatenate([q, np.ones((30, 1), np.float32)], 1)
        action[:, 0] += offset
        store.append_episode(
            {"joint_pos": q, "joint_vel": np.zeros_like(q), "action": action},
            task="lift",
            source="scripted",
            success=True,
            seed=e,
        )
    argv = ["--policy", "act", "--data", str(root / "demo.zarr"), "--out", str(root / "run")]
    argv += ["--steps", str(steps), "--batch-size", "4", "--device", "cpu", "--no-progress"]
    argv += ["--force"]
    for s in [*TINY_ACT, f"train.save_every={steps}", "train.warmup_steps=2"]:
        argv += ["--set", s]
    if main(argv) != 0:
        raise RuntimeError("handoff-train failed on the tiny checkpoint")
    return root / "run"
