"""DemoStore.open_or_create: the one way handoff-collect and the recorder get a store to append
to, with one strictness: the spec must match the existing store's."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from data.embodiment import load_embodiment
from data.errors import UserError
from data.store import DemoStore


def spec(size=(32, 48)):
    return load_embodiment("sim_panda").with_cameras(["agentview"], size)


def test_creates_then_reopens_with_the_same_spec(tmp_path):
    path = tmp_path / "s.zarr"
    store = DemoStore.open_or_create(path, spec())
    assert store.embodiment == spec() and store.n_episodes == 0
    T = 4
    steps = {
        "joint_pos": np.zeros((T, 7), np.float32),
        "action": np.zeros((T, 8), np.float32),
        "timestamp": np.arange(T) / 20.0,
    }
    store.append_episode(steps, task="lift")
    again = DemoStore.open_or_create(path, spec())
    assert again.n_episodes == 1 and not again.read_only


@pytest.mark.parametrize(
    ("other", "field"),
    [
        (spec((64, 64)), "cameras differ"),
        (load_embodiment("sim_panda").with_cameras([], None), "cameras differ"),
        (replace(spec(), control_hz=spec().control_hz * 2), "control rate differs"),
    ],
)
def test_a_different_spec_is_refused_naming_store_and_field(tmp_path, other, field):
    path = tmp_path / "s.zarr"
    DemoStore.open_or_create(path, spec())
    with pytest.raises(UserError) as e:
        DemoStore.open_or_create(path, other)
    msg = str(e.value)
    assert msg.startswith(f"{path}: cannot append") and field in msg and "\n" not in msg


def test_a_store_without_a_spec_is_refused(tmp_path):
    path = tmp_path / "s.zarr"
    DemoStore.create(path)
    with pytest.raises(UserError, match="no embodiment spec"):
        DemoStore.open_or_create(path, spec())
