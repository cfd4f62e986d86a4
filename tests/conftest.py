"""Shared test setup: headless rendering, DDS on loopback only, small store factories."""

from __future__ import annotations

import os
import signal

# A suite started in the background of a script (`make test &`) inherits SIGINT ignored, and
# so would every node, launch and collection it starts: the tests that stop them with Ctrl-C
# (SIGINT) would find them deaf. Children of a process that handles SIGINT get the default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Before anything imports mujoco/robosuite or rclpy.
os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from data.embodiment import load_embodiment  # noqa: E402
from data.store import DemoStore  # noqa: E402
from handoff_ros.tiny import TINY_ACT  # noqa: E402,F401  (recipes/act_tiny.yaml; ROS-free: test_contract)


def make_episode(T: int, seed: int = 0, image_hw: tuple[int, int] | None = (16, 16)) -> dict:
    """A synthetic episode with the sim Panda's keys (values depend on seed and step)."""
    rng = np.random.default_rng(seed)
    ep = {
        "joint_pos": rng.standard_normal((T, 7)).astype(np.float32),
        "joint_vel": rng.standard_normal((T, 7)).astype(np.float32),
        "action": rng.standard_normal((T, 8)).astype(np.float32),
    }
    if image_hw is not None:
        ep["agentview"] = rng.integers(0, 255, (T, *image_hw, 3), dtype=np.uint8)
    return ep


@pytest.fixture
def spec():
    return load_embodiment("sim_panda").with_cameras(["agentview"], (16, 16))


@pytest.fixture
def small_store(tmp_path, spec):
    """A store with 4 episodes of lengths 10, 11, 12, 13 (episode 1 failed)."""
    store = DemoStore.create(tmp_path / "small.zarr", spec)
    for e in range(4):
        store.append_episode(
            make_episode(10 + e, seed=e), task="lift", source="scripted", success=e != 1, seed=e
        )
    return store
