"""What a policy consumes, decided from the training store and checked against the spec.

By default a policy's inputs follow what the store holds, as far as a real arm observes it:
every camera and every low-dim key (except the action, timestamps, intervention flags and
per-step labels: they say who acted, which a deployed policy cannot observe)
that the embodiment spec does not mark ``privileged``. Simulator-only keys such as
``object_state`` (the object's true pose) are inputs only with ``handoff-train --privileged``
(config ``privileged: true``), and such a policy runs in simulation only: the policy node
refuses it on ``robot:=real``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from data.embodiment import Embodiment
from data.errors import UserError
from data.store import LABEL_KEY, DemoStore
from policies.common.config import PolicyConfig
from policies.common.normalizer import Normalizer
from policies.common.policy import ACTION_KEY

log = logging.getLogger("handoff.train")

NOT_OBSERVATIONS = {ACTION_KEY, "timestamp", "intervention", LABEL_KEY}


def store_embodiment(store: DemoStore, override: Embodiment | None = None) -> Embodiment:
    spec = override or store.embodiment
    if spec is None:
        raise UserError(
            f"{store.path}: the store carries no embodiment spec (converted from another "
            f"project?); pass --embodiment NAME_OR_YAML"
        )
    return spec


def resolve_inputs(store: DemoStore, config: PolicyConfig, spec: Embodiment) -> PolicyConfig:
    """Return ``config`` with ``obs_keys`` filled from the store and every key checked."""
    data = store.data
    hidden = set() if config.privileged else set(spec.privileged)
    if config.obs_keys is None:
        keys = [k for k in store.lowdim_keys if k not in NOT_OBSERVATIONS]
        keys += store.image_keys
        keys = [k for k in keys if k not in config.exclude_keys and k not in hidden]
        if not keys:
            raise UserError(f"{store.path}: the store holds no observation keys to train on")
        left_out = sorted(hidden & set(store.keys))
        if left_out and not store.image_keys:
            log.warning(
                "inputs leave out the simulator-only key(s) %s and the store has no cameras: "
                "the policy sees only the arm's own state. Collect cameras "
                "(handoff-collect --cameras agentview,wrist) for a deployable policy, or pass "
                "--privileged for a simulation-only state policy",
                left_out,
            )
    else:
        keys = list(config.obs_keys)
        asked = sorted(hidden & set(keys))
        if asked:
            raise UserError(
                f"obs_keys {asked} are simulator-only (privileged in embodiment {spec.name!r}): "
                f"pass --privileged to train a simulation-only policy on them"
            )
    for k in keys:
        if k not in data:
            raise UserError(
                f"{store.path}: key {k!r} needed by the {config.name} config is not in the store "
                f"(it has {store.keys}); collect it or drop it from obs_keys"
            )
        shape = tuple(data[k].shape[1:])
        if k in spec.camera_names:
            if shape != spec.camera(k).shape:
                raise UserError(
                    f"{store.path}: camera {k!r} frames are {shape} but embodiment "
                    f"{spec.name!r} says {spec.camera(k).shape}"
                )
        elif k in spec.observation:
            if int(np.prod(shape)) != int(np.prod(spec.observation[k])):
                raise UserError(
                    f"{store.path}: data/{k} has shape {shape} per step but embodiment "
                    f"{spec.name!r} says {tuple(spec.observation[k])}"
                )
        else:
            raise UserError(
                f"{store.path}: key {k!r} is neither an observation nor a camera of embodiment "
                f"{spec.name!r}; add it to the spec or exclude it (exclude_keys)"
            )
    if ACTION_KEY not in data:
        raise UserError(f"{store.path}: key 'action' is not in the store (it has {store.keys})")
    if tuple(data[ACTION_KEY].shape[1:]) != (spec.action_dim,):
        raise UserError(
            f"{store.path}: data/action has shape {tuple(data[ACTION_KEY].shape[1:])} per step, "
            f"embodiment {spec.name!r} expects ({spec.action_dim},)"
        )
    privileged = [k for k in keys if k in spec.privileged]
    if privileged:
        log.warning("policy uses privileged key(s) %s: it runs in simulation only", privileged)
    return config.replace(obs_keys=keys)


def build_normalizer(
    store: DemoStore, config: PolicyConfig, spec: Embodiment, episodes: Sequence[int] | None
) -> Normalizer:
    """Statistics over the training episodes -> the policy's normaliser."""
    from data.dataset import compute_stats

    lowdim = [k for k in config.obs_keys or [] if k not in spec.camera_names]
    stats = compute_stats(store, [*lowdim, ACTION_KEY], episodes=episodes)
    for key, s in stats.items():
        if not all(np.isfinite(v).all() for v in s.values()):  # NaN/inf reach min, max and sums
            raise_non_finite(store, key, episodes)
    modes = {k: config.lowdim_norm for k in lowdim} | {ACTION_KEY: config.action_norm}
    return Normalizer.from_stats(stats, modes)


def raise_non_finite(store: DemoStore, key: str, episodes: Sequence[int] | None) -> None:
    """Name the first NaN/inf of ``key`` in the training episodes, before any training step.

    Called only when the statistics pass has seen one (a NaN would otherwise surface hundreds
    of steps later as "loss became nan"), so finding it costs a second pass only then.
    """
    arr = store.data[key]
    for e in range(store.n_episodes) if episodes is None else episodes:
        sl = store.episode_slice(e)
        block = np.asarray(arr[sl]).reshape(sl.stop - sl.start, -1)
        bad = np.argwhere(~np.isfinite(block))
        if len(bad):
            t, d = (int(i) for i in bad[0])
            drop = f"drop the episode (handoff-data delete {store.path} --episodes {e} --yes)"
            if key != ACTION_KEY:
                drop += f" or the key (--set policy.exclude_keys=[{key}])"
            raise UserError(
                f"{store.path}: data/{key} holds {block[t, d]} at episode {e}, step {t} "
                f"(dimension {d}); training needs finite values: repair or re-convert it, or {drop}"
            )
    raise UserError(f"{store.path}: data/{key} is too large in magnitude for its statistics")
