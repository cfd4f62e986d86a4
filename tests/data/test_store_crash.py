"""A writer SIGKILLed at random moments never costs a finished episode."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np

from data.store import DemoStore
from data.validate import validate_store

WRITER = r"""
import sys
import numpy as np
from data.embodiment import load_embodiment
from data.store import DemoStore
from tests.conftest import make_episode

path = sys.argv[1]
spec = load_embodiment("sim_panda").with_cameras(["agentview"], (16, 16))
try:
    store = DemoStore.open(path, "a")
except Exception:
    store = DemoStore.create(path, spec)
print("ready", flush=True)
e = store.n_episodes
while True:
    ep = make_episode(7 + e % 5, seed=e)
    w = store.episode_writer(flush_steps=3)
    for t in range(len(ep["action"])):
        w.add_step({k: v[t] for k, v in ep.items()})
    w.commit(seed=e, success=True)
    e += 1
"""


def test_sigkill_at_random_moments(tmp_path):
    from tests.conftest import make_episode

    path = str(tmp_path / "crash.zarr")
    rng = np.random.default_rng(0)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": repo}
    kills = 0
    for _ in range(20):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, path],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        store = DemoStore.open(path, "a")  # recovers the tail
        assert validate_store(store, progress=False) == []
    store = DemoStore.open(path)
    assert kills == 20 and store.n_episodes > 0
    for e in range(store.n_episodes):
        expected = make_episode(7 + e % 5, seed=e)
        got = store.episode(e)
        assert store.episode_meta(e)["seed"] == e
        for k, v in expected.items():
            np.testing.assert_array_equal(got[k], v)
