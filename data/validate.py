"""Checks that a demonstration store is sound; each problem is one line naming the key."""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from data.frames import FrameIO
from data.store import DemoStore, is_image_array

BLOCK_ROWS = 65536


def validate_store(store: DemoStore, progress: bool = True) -> list[str]:
    """Return a list of problems (empty when the store is sound)."""
    problems: list[str] = []
    where = store.path
    ends = store.episode_ends
    if len(ends) and (ends[0] <= 0 or np.any(np.diff(ends) <= 0)):
        problems.append(f"{where}: meta/episode_ends is not strictly increasing from > 0")
    n = store.n_steps
    data = store.data
    for key, arr in data.items():
        if arr.shape[0] != n:
            problems.append(f"{where}: data/{key} has {arr.shape[0]} steps, episode_ends says {n}")
    if "timestamp" not in data:
        if store.zarr_format == 3:
            problems.append(f"{where}: data/timestamp is missing")
    else:
        ts = np.asarray(data["timestamp"][:n], dtype=np.float64)
        for e in range(store.n_episodes):
            sl = store.episode_slice(e)
            if np.any(np.diff(ts[sl]) <= 0):
                problems.append(f"{where}: data/timestamp is not increasing in episode {e}")
    spec = store.embodiment
    bar = tqdm(
        total=sum(int(np.prod(a.shape)) for a in data.values()) or 1,
        unit="val",
        unit_scale=True,
        desc="validate",
        disable=not progress,
        leave=False,
    )
    for key, arr in sorted(data.items()):
        if is_image_array(arr):
            problems += _check_images(store, key, spec, bar)
        elif arr.dtype.kind == "f":
            for start in range(0, n, BLOCK_ROWS):
                try:
                    block = np.asarray(arr[start : start + BLOCK_ROWS])
                except Exception as e:  # a truncated or corrupt chunk
                    problems.append(f"{where}: data/{key} rows {start}.. cannot be read ({e})")
                    break
                bad = ~np.isfinite(block)
                if bad.any():
                    row = start + int(np.argwhere(bad)[0][0])
                    problems.append(f"{where}: data/{key} holds NaN/inf (first at step {row})")
                    break
                bar.update(block.size)
    bar.close()
    if spec is not None:
        for key, shape in spec.observation.items():
            if key in data and tuple(data[key].shape[1:]) != tuple(shape):
                problems.append(
                    f"{where}: data/{key} has shape {list(data[key].shape[1:])} per "
                    f"step, the embodiment spec says {list(shape)}"
                )
        if "action" in data and data["action"].shape[1:] != (spec.action_dim,):
            problems.append(
                f"{where}: data/action has shape {list(data['action'].shape[1:])} "
                f"per step, the embodiment spec says [{spec.action_dim}]"
            )
    return problems


def _check_images(store: DemoStore, key: str, spec, bar) -> list[str]:
    arr = store.data[key]
    where = store.path
    problems = []
    if spec is not None and key in spec.camera_names:
        expected = spec.camera(key).shape
        if tuple(arr.shape[1:]) != expected:
            problems.append(
                f"{where}: data/{key} frames are {list(arr.shape[1:])}, the embodiment "
                f"spec says {list(expected)} (HWC)"
            )
    reader = FrameIO(arr, f"data/{key}")
    step = 256
    for start in range(0, store.n_steps, step):
        idx = np.arange(start, min(store.n_steps, start + step))
        try:
            frames = reader.frames(idx)
        except Exception as e:
            problems.append(
                f"{where}: data/{key} frames {start}..{idx[-1]} cannot be decoded ({e})"
            )
            break
        bar.update(frames.size)
    return problems
