"""Open-loop replay of a stored episode, as an object with the policy interface.

``handoff-eval --replay demos/lift.zarr:3`` resets the task with the episode's seed and sends
the recorded actions one per control step: with deterministic physics this reproduces the
recorded rollout (and its success), which checks the store, the seed handling and the
simulator together.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data.errors import UserError
from data.store import DemoStore


class ReplayPolicy:
    """Sends ``action`` (T, Da) of one stored episode; holds the last action afterwards."""

    def __init__(self, store: str, episode: int) -> None:
        s = DemoStore.open(store)
        if s.embodiment is None:
            raise UserError(f"{store}: store has no embodiment spec to replay against")
        if "action" not in s.keys:
            raise UserError(f"{store}: store has no 'action' array to replay")
        meta = s.episode_meta(episode)
        for key in ("task", "seed"):
            if meta.get(key) is None:
                raise UserError(
                    f"{store}: episode {episode} metadata has no {key!r}; replay needs the "
                    f"simulated task and seed it was recorded with"
                )
        self.task: str = meta["task"]
        self.seed: int = int(meta["seed"])
        self.recorded_success: bool | None = meta.get("success")
        self.actions = np.asarray(s.episode(episode, ["action"])["action"], dtype=np.float32)
        self.embodiment = s.embodiment
        self.input_keys: list[str] = []
        self.config: dict[str, Any] = {"type": "replay", "store": store, "episode": episode}
        self.t = 0

    def reset(self) -> None:
        self.t = 0

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """(Da,) the recorded action of this step."""
        a = self.actions[min(self.t, len(self.actions) - 1)]
        self.t += 1
        return a.copy()
