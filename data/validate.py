"""Checks that a demonstration store is sound; each problem is one line naming the key.

What is a problem and what is a note:

- Problems (``handoff-data validate`` exits 1): a data array whose committed steps need a
  chunk the store does not hold, where every chunk must be stored; a chunk that does not
  decode; a shard index whose CRC32C does not match; NaN/inf in float arrays; timestamps
  that do not increase; shapes that differ from the embodiment spec; a ``data/label`` that is
  not one (N,) uint8 value of data.store.LABELS per step.
- Notes (printed as ``note: ...``, exit 0): what an interrupted write left past the last
  committed episode (the store is intact; the next write drops it, see data/store.py), and a
  missing chunk in an array that cannot say whether zarr left it out on purpose.

Missing chunks. zarr does not write a chunk that is all fill value unless
``write_empty_chunks`` is set, so absence alone does not prove a loss. Decision: every array
handoff creates writes every chunk and carries the ``handoff_complete_chunks`` attribute, and
zarr-python 2 (diffusion_policy, UMI: every zarr format 2 store) writes every chunk by
default; for those arrays a missing chunk is a problem, and every reader refuses it too. Only a
format 3 array without the marker (written before it existed, or by another tool) reads a
missing chunk as fill value, and that is a note. A format 2 store written with
``write_empty_chunks=False`` (not diffusion_policy's default) is refused where a chunk of
zeros was left out: rewrite it with every chunk stored.

Hostile metadata (episode boundaries out of order, shapes beyond the chunks, zip members that
inflate beyond their chunk, an embodiment that is not a mapping) is refused when the store is
opened (:meth:`data.store.DemoStore.open`), before this runs: exit 2.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from data.errors import UserError
from data.frames import FrameIO
from data.store import LABEL_KEY, LABELS, DemoStore, is_image_array

BLOCK_ROWS = 65536


def check_store(store: DemoStore, progress: bool = True) -> tuple[list[str], list[str]]:
    """Return (problems, notes) for ``store`` (see the module docstring)."""
    where = store.path
    incomplete, notes = store.chunk_problems()  # keys whose chunks are not all stored
    problems = list(incomplete.values())
    notes = store.notes + notes
    n = store.n_steps
    data = store.data
    if "timestamp" not in data:
        if store.zarr_format == 3:
            problems.append(f"{where}: data/timestamp is missing")
    elif "timestamp" not in incomplete:
        try:
            ts = np.asarray(store.read("timestamp"), dtype=np.float64)
        except UserError as e:
            problems.append(str(e))
            ts = np.zeros(0)
        for e in range(store.n_episodes if len(ts) else 0):
            sl = store.episode_slice(e)
            if np.any(np.diff(ts[sl]) <= 0):
                problems.append(f"{where}: data/timestamp is not increasing in episode {e}")
    if LABEL_KEY in data and LABEL_KEY not in incomplete:
        problems += _check_labels(store)
    spec = store.embodiment
    bar = tqdm(
        total=n * sum(int(np.prod(a.shape[1:])) for a in data.values()) or 1,
        unit="val",
        unit_scale=True,
        desc="validate",
        disable=not progress,
        leave=False,
    )
    for key, arr in sorted(data.items()):
        if key in incomplete:
            continue
        if is_image_array(arr):
            problems += _check_images(store, key, spec, bar)
        elif arr.dtype.kind == "f":
            problems += _check_finite(store, key, bar)
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
    return problems, notes


def validate_store(store: DemoStore, progress: bool = True) -> list[str]:
    """Return a list of problems (empty when the store is sound); notes are left out."""
    return check_store(store, progress)[0]


def _check_labels(store: DemoStore) -> list[str]:
    """``data/label`` holds one known label (data.store.LABELS) per step, as uint8."""
    arr = store.data[LABEL_KEY]
    known = f"{', '.join(f'{v} {k}' for k, v in LABELS.items())}"
    if arr.dtype != np.uint8 or arr.ndim != 1:
        return [
            f"{store.path}: data/{LABEL_KEY} is {arr.dtype}{list(arr.shape[1:])} per step; "
            f"labels are one uint8 per step ({known})"
        ]
    try:
        labels = store.read(LABEL_KEY)
    except UserError as e:
        return [str(e)]
    bad = np.flatnonzero(~np.isin(labels, list(LABELS.values())))
    if len(bad):
        return [
            f"{store.path}: data/{LABEL_KEY} holds {labels[bad[0]]} at step {bad[0]} "
            f"({len(bad)} step(s) in all); labels are {known}"
        ]
    return []


def _check_finite(store: DemoStore, key: str, bar) -> list[str]:
    for start in range(0, store.n_steps, BLOCK_ROWS):
        try:
            block = store.read(key, start, min(store.n_steps, start + BLOCK_ROWS))
        except UserError as e:  # a truncated or corrupt chunk
            return [str(e)]
        bad = ~np.isfinite(block)
        if bad.any():
            row = start + int(np.argwhere(bad)[0][0])
            return [f"{store.path}: data/{key} holds NaN/inf (first at step {row})"]
        bar.update(block.size)
    return []


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
