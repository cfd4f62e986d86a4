"""A LeRobot dataset folder where a demonstration store is expected (issue 19).

``handoff-train --data``, ``handoff-data info/validate/...`` and ``handoff-eval --replay`` take
a local LeRobot v2.1/v3.0 folder as they take a store: it is converted once, through the
converter's reader (data/convert/lerobot.py), into a handoff store in the cache, and that store
is what the sampler reads::

    $HANDOFF_CACHE/lerobot/<folder>-<key>.zarr     (default ~/.cache/handoff, or
                                                    $XDG_CACHE_HOME/handoff)

``<key>`` hashes the folder's real path and the size and modification time of every file in
it, so an edited dataset is converted again and an unchanged one never is. A conversion is
built beside its final name and renamed into place when complete: a cache entry that exists
is whole. Deleting the folder frees the space; nothing else refers to it.

Why a cached conversion rather than a direct reader: measured (README "Training from LeRobot
datasets"), a sample read from the cached store costs a third of one decoded from the videos
at 224x224 (4.6 ms against 14.8 ms), and the conversion (about 250 frames/s) pays for itself
within the first ~650 samples, i.e. the first ten batches; the price is disk space, since the
cache holds frames uncompressed by video coding.

A dataset from elsewhere carries no handoff embodiment, so one is inferred
(:func:`infer_embodiment`) and stored with the cached store; ``--embodiment`` overrides it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from data.convert.base import NOT_OBSERVATIONS
from data.embodiment import CameraSpec, Embodiment, GripperSpec
from data.errors import UserError
from data.outputs import is_url, remove
from data.store import DemoStore

log = logging.getLogger("handoff.data")

CACHE_VERSION = 1  # bump when the conversion or inference changes: old entries are not reused
INFERRED_ATTR = "embodiment_inferred"  # store attr: the spec was inferred, not recorded
SOURCE_ATTR = "lerobot_source"  # store attr: the folder the cached store was converted from
FORMAT_HINTS = (  # (how a path is recognised, the --from format that reads it)
    (lambda p: p.suffix in (".hdf5", ".h5"), "robomimic"),
    (lambda p: p.suffix in (".mcap", ".db3") or (p / "metadata.yaml").is_file(), "rosbag2"),
    (lambda p: p.is_dir() and any(f.suffix in (".mcap", ".db3") for f in p.iterdir()), "rosbag2"),
)


def cache_root() -> Path:
    """``$HANDOFF_CACHE``, else ``$XDG_CACHE_HOME/handoff``, else ``~/.cache/handoff``."""
    if os.environ.get("HANDOFF_CACHE"):
        return Path(os.environ["HANDOFF_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "handoff"


def is_lerobot(path: str | Path) -> bool:
    """A local folder with ``meta/info.json`` (what every LeRobot version writes)."""
    return (
        not is_url(path) and (Path(str(path).removeprefix("file://")) / "meta/info.json").is_file()
    )


def _is_zarr(p: Path) -> bool:
    return p.suffix == ".zip" or any((p / m).exists() for m in ("zarr.json", ".zgroup"))


def convert_hint(path: str | Path) -> str | None:
    """The one-line error for a local path that exists but is not a handoff store (None for a
    store, a URL or a missing path): it names ``handoff-data convert`` with the format guessed
    from the path (robomimic HDF5, rosbag2), or lists the formats."""
    if is_url(path):
        return None
    p = Path(str(path).removeprefix("file://"))
    if not p.exists() or _is_zarr(p):
        return None
    guess = next((fmt for test, fmt in FORMAT_HINTS if test(p)), None)
    out = f"{p.with_suffix('').name or 'demos'}.zarr"
    if guess:
        return (
            f"{p}: not a handoff store; it looks like {guess} data: convert it first with "
            f"`handoff-data convert --from {guess} --to handoff {p} {out}`"
        )
    return (
        f"{p}: not a handoff store (no zarr.json or .zgroup) nor a LeRobot dataset (no "
        f"meta/info.json); give a store's root folder, or convert other data first with "
        f"`handoff-data convert --from FORMAT --to handoff {p} {out}` (formats: lerobot, "
        "robomimic, rosbag2)"
    )


def open_store(path: str | Path, *, verify: bool = True, progress: bool = True) -> DemoStore:
    """A store opened read-only: a handoff store (path or URL) as it is, a LeRobot folder
    through its cached conversion (:func:`cached_store`); any other existing path is refused
    with the converter to use (:func:`convert_hint`)."""
    if is_lerobot(path):
        return DemoStore.open(cached_store(Path(str(path).removeprefix("file://")), progress))
    hint = convert_hint(path)
    if hint:
        raise UserError(hint)
    return DemoStore.open(path, verify=verify)


def dataset_key(path: Path) -> str:
    """sha256 over the folder's real path and (name, size, mtime) of each of its files (not
    those in hidden folders: a Hugging Face download keeps its own ``.cache/`` inside)."""
    h = hashlib.sha256(f"{CACHE_VERSION}\0{path.resolve()}".encode())
    for f in sorted(path.rglob("*")):
        rel = f.relative_to(path)
        if f.is_file() and not any(part.startswith(".") for part in rel.parts):  # .cache, .git
            st = f.stat()
            h.update(f"\0{rel}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


def cached_store(path: Path, progress: bool = True) -> Path:
    """The cached handoff store of the LeRobot folder ``path``, converted now if missing."""
    from data.convert import convert

    name = re.sub(r"[^A-Za-z0-9_.-]", "_", path.resolve().name)[:40] or "dataset"
    out = cache_root() / "lerobot" / f"{name}-{dataset_key(path)[:16]}.zarr"
    if out.is_dir():  # only complete conversions are renamed into place
        log.info("%s: LeRobot dataset, reading its cached conversion %s", path, out)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    remove(tmp)
    log.info("%s: LeRobot dataset, converting it once into %s", path, out)
    try:
        report = convert(path, tmp, "lerobot", "handoff", progress=progress)
        store = DemoStore.open(tmp, "a")
        store.set_attr(SOURCE_ATTR, str(path.resolve()))
        if store.embodiment is None:
            info = json.loads((path / "meta/info.json").read_text())
            try:
                spec = infer_embodiment(info, store, path)
            except UserError as e:
                log.warning("%s; pass --embodiment NAME_OR_YAML to train on it", e)
            else:
                store.set_attr("embodiment", spec.to_dict())
                store.set_attr(INFERRED_ATTR, True)
                log.info("%s: embodiment %r inferred from meta/info.json", path, spec.name)
        for what in report["not_carried"]:
            log.info("%s: not carried into the store: %s", path, what)
    except BaseException:
        remove(tmp)
        raise
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished the same conversion first: use theirs
        remove(tmp)
        if not out.is_dir():
            raise
    return out


def _dim_names(names: Any, dim: int) -> list[str] | None:
    """A feature's per-dimension names if there is one distinct string per dimension."""
    if isinstance(names, dict):  # v2.0-style {"motors": [...]}
        names = [n for group in names.values() for n in group]
    if not isinstance(names, list) or len(names) != dim:
        return None
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) != dim:
        return None
    return [n.removesuffix(".pos") for n in names]  # lerobot >= 0.3 motors: "shoulder_pan.pos"


def infer_embodiment(info: dict[str, Any], store: DemoStore, where: Path) -> Embodiment:
    """A spec for a LeRobot dataset that carries none, from its info.json and its data.

    - ``control_hz``: info.json ``fps``; cameras: each camera key with its stored frame size
      and its feature's ``video.fps`` (else ``fps``).
    - joints: the action's dimensions but the last, which is the gripper (handoff's action is
      joint targets + one gripper command, as LeRobot's arms record it); named by the
      ``action`` feature's ``names``, else ``observation.state``'s when it has as many
      dimensions, else ``joint_0``...
    - limits from the recorded actions: position range = min/max per dimension widened by 5 %,
      velocity limit = twice the largest step-to-step change x fps, gripper range = the last
      dimension's (open at its minimum). They bound what the data shows, not the hardware:
      give a real arm its own spec (``--embodiment``) before deploying on it.
    - observation keys: every low-dim key of the store with its shape; ``environment_state``
      (simulator object state) is privileged.

    Raises UserError (naming ``where``) when the data cannot describe an arm this way.
    """
    feats = info.get("features") or {}
    fps = float(info["fps"])
    if "action" not in store.data:
        raise UserError(f"{where}: no action column to infer an embodiment from")
    actions = np.asarray(store.data["action"][: store.n_steps], np.float64)
    actions = actions.reshape(len(actions), -1)  # (N, Da)
    Da = actions.shape[1]
    if Da < 2 or not np.isfinite(actions).all():
        raise UserError(
            f"{where}: cannot infer an embodiment (action has {Da} finite dimension(s); "
            "handoff needs joint targets + a gripper command)"
        )
    names = (
        _dim_names(feats.get("action", {}).get("names"), Da)
        or _dim_names(feats.get("observation.state", {}).get("names"), Da)
        or [f"joint_{i}" for i in range(Da)]
    )
    lo, hi = actions.min(0), actions.max(0)
    pad = 0.05 * (hi - lo) + 1e-3  # never an empty range, even for a constant dimension
    lo, hi = lo - pad, hi + pad
    starts = set(store.episode_ends[:-1].tolist())
    steps = [t for t in range(1, len(actions)) if t not in starts]  # not across episodes
    jump = np.abs(np.diff(actions, axis=0))[np.array(steps, int) - 1] if steps else None
    vel = 2 * fps * (jump.max(0) if jump is not None and len(jump) else np.ones(Da))
    robot = str(info.get("robot_type") or where.resolve().name)
    cameras = []
    for key in store.image_keys:
        H, W = store.data[key].shape[1:3]
        feature = feats.get(f"observation.images.{key}") or feats.get(f"observation.{key}") or {}
        cam_fps = (feature.get("info") or {}).get("video.fps") or fps
        cameras.append((key, int(W), int(H), float(cam_fps)))
    observation = {
        k: tuple(int(d) for d in store.data[k].shape[1:]) or (1,)
        for k in store.lowdim_keys
        if k not in NOT_OBSERVATIONS
    }
    try:
        return Embodiment(
            name="lerobot_" + re.sub(r"\W", "_", robot),
            joint_names=tuple(names[:-1]),
            position_lower=tuple(float(v) for v in lo[:-1]),
            position_upper=tuple(float(v) for v in hi[:-1]),
            velocity_limit=tuple(float(max(v, 1e-3)) for v in vel[:-1]),
            gripper=GripperSpec(float(lo[-1]), float(hi[-1]), float(lo[-1])),
            control_hz=fps,
            cameras=tuple(CameraSpec(*c) for c in cameras),
            observation=observation,
            privileged=("environment_state",) if "environment_state" in observation else (),
        )
    except ValueError as e:
        raise UserError(f"{where}: cannot infer an embodiment ({e})") from None
