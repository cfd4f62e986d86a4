"""The zarr demonstration store: the one API every part of handoff reads and writes.

Layout (compatible with diffusion_policy's ReplayBuffer and UMI)::

    store.zarr/
      data/<key>          (N, ...) arrays concatenated over episodes along axis 0
      data/timestamp      (N,) float64 seconds since the episode start, always written
      meta/episode_ends   (E,) int64 exclusive end index of each episode  <- written last
      data/label          (N,) uint8 where each step's action came from (LABELS), optional
      meta  attrs         {"episodes": [per-episode metadata dicts]}
      attrs               {"handoff_schema": 1, "embodiment": {...}}

Per-step labels (``data/label``) say where each step came from, so learning from corrections
(HG-DAgger, Sirius, RaC) can weight them at training time (data/dataset.py)::

    0 demonstration     an operator or scripted expert drove the whole episode
    1 autonomous        the policy drove (a rollout)
    2 intervention      a person (teleop engaged) or the simulated corrector took over
    3 pre_intervention  the policy's last PRE_INTERVENTION_STEPS steps before a takeover

``label`` and the recorder's ``intervention`` flag are keys with a default (STEP_DEFAULTS):
the flag says who held the arm, the label what that means for training. An episode without
them is written with the default, and a store that predates them gains them with defaults
for the steps it holds (``label`` derived as :meth:`DemoStore.step_labels` does), so old
stores stay readable and appendable. Episode metadata ``source`` says where an episode came
from (SOURCES; ``corrected``: a policy rollout with at least one takeover).

Appending is atomic: arrays grow first, per-episode metadata second, ``meta/episode_ends``
last. Every zarr file write is itself atomic (zarr's LocalStore writes to a temporary file and
renames). A process killed at any instant therefore leaves a store whose committed episodes
are intact; the arrays may hold an unfinished tail past ``episode_ends[-1]``, which opening
the store for writing truncates (and read-only opening ignores), saying so.

New stores are zarr format 3. Format 2 stores written by diffusion_policy / UMI (directory or
``.zarr.zip``) open read-only; their image codecs (imagecodecs' JPEG, JPEG 2000, ...) are
registered on import.

Opening trusts no metadata: ``meta/episode_ends`` must be a 1-D integer array, increasing from
above 0; every chunk the committed rows need must be stored (:meth:`DemoStore.chunk_problems`,
which lists the store instead of reading it, so a shape of 10**12 rows costs nothing); a chunk
may hold at most ``MAX_CHUNK_BYTES``; a ``.zarr.zip`` member may not declare more bytes than
its chunk can encode to. Anything else is refused by name before it is read.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.storage

from data.embodiment import Embodiment
from data.errors import UserError
from data.frames import COMPLETE_ATTR, FrameIO, chunks_complete, shard_frames

log = logging.getLogger("handoff.store")

SCHEMA_VERSION = 1
SCHEMA_ATTR = "handoff_schema"
# Lossless by default, chosen by measurement (tests/benchmarks/bench_store.py, README "Store
# format"): Blosc-LZ4 encodes a 640x480 frame in about half a millisecond, so recording
# never waits on compression; blosc-zstd trades ~5x the encode time for smaller files.
IMAGE_CODEC = "blosc-lz4"
WRITE_THREADS = 2  # frames are encoded and written in parallel (Blosc releases the GIL)
LOWDIM_CHUNK_BYTES = 1 << 20  # ~1 MiB per low-dim chunk: long sequential reads, cheap appends
EPISODE_META_FIELDS = ("task", "source", "success", "operator", "start_time", "seed")
SOURCES = ("teleop", "policy", "corrected", "scripted", "converted", "unknown")
LABEL_KEY = "label"
DEMONSTRATION, AUTONOMOUS, INTERVENTION, PRE_INTERVENTION = 0, 1, 2, 3
LABELS = {
    "demonstration": DEMONSTRATION,
    "autonomous": AUTONOMOUS,
    "intervention": INTERVENTION,
    "pre_intervention": PRE_INTERVENTION,
}
# Sirius (Liu et al. 2022, "Robot Learning on the Job") relabels the 15 steps before each
# takeover as pre-intervention (robomimic/exps/sirius/sirius.json: fixed_preintv_length 15;
# PreintvRelabeledDataset stops at an earlier intervention step): 0.75 s at 20 Hz.
PRE_INTERVENTION_STEPS = 15
# keys with a default: (dtype, default); see the module docstring
STEP_DEFAULTS = {LABEL_KEY: (np.uint8, DEMONSTRATION), "intervention": (np.bool_, False)}
# First scene seed of an evaluation. Collection counts seeds up from 0, so evaluations start
# far above them; ``DemoStore.first_seed_after`` moves past a store that reaches this high.
EVAL_SEED = 100_000
# Bounds on what a store's metadata may claim, checked before anything is read or allocated:
MAX_CHUNK_BYTES = 1 << 30  # one decoded chunk (handoff writes ~1 MiB low-dim, 1 frame images)
MAX_SHARD_CHUNKS = 1 << 20  # chunks per shard (its index is 16 bytes per chunk)
MAX_ZIP_METADATA_BYTES = 64 << 20  # a zarr.json / .zarray / .zattrs member of a .zarr.zip
ZARR_METADATA = ("zarr.json", ".zarray", ".zattrs", ".zgroup")
# arrays handoff creates write every chunk, even all-zero ones (see data.frames.chunks_complete)
ARRAY_CONFIG = {"write_empty_chunks": True}

_codecs_registered = False


def register_codecs() -> None:
    """Make the image codecs that diffusion_policy/UMI stores use known to numcodecs."""
    global _codecs_registered
    if _codecs_registered:
        return
    try:
        from imagecodecs.numcodecs import register_codecs as reg

        reg(verbose=False)
    except ImportError:  # pragma: no cover - imagecodecs is a hard dependency
        log.warning("imagecodecs is not installed: JPEG/JPEG 2000 image arrays will not decode")
    _codecs_registered = True


def is_image_array(arr: zarr.Array) -> bool:
    """Images are uint8 (N, H, W, C) with C in {1, 3, 4}."""
    return arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[-1] in (1, 3, 4)


def image_compressor(codec: str = IMAGE_CODEC) -> Any:
    from zarr.codecs import BloscCodec, BloscShuffle

    if codec == "blosc-zstd":
        return BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.bitshuffle)
    if codec == "blosc-lz4":
        return BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.noshuffle)
    if codec == "none":
        return None
    raise UserError(f"unknown image codec {codec!r}; choose blosc-zstd, blosc-lz4 or none")


def _open_zarr_store(path: str | Path, mode: str) -> tuple[Any, bool]:
    """Return (zarr store, read_only) for a local directory, a .zarr.zip, or an fsspec URL."""
    s = str(path)
    read_only = mode == "r"
    if "://" in s and not s.startswith("file://"):
        return zarr.storage.FsspecStore.from_url(s, read_only=read_only), read_only
    s = s.removeprefix("file://")
    if s.endswith(".zip"):
        if mode != "r":
            raise UserError(
                f"{s}: .zarr.zip stores open read-only; convert with "
                f"`handoff-data merge {s} OUT.zarr` to get a writable copy"
            )
        if not Path(s).is_file():
            raise UserError(f"{s}: no such file")
        for name, size in _zip_members(s).items():
            if name.rsplit("/", 1)[-1] in ZARR_METADATA and size > MAX_ZIP_METADATA_BYTES:
                raise UserError(
                    f"{s}: member {name} declares {size} bytes, more than zarr metadata can "
                    f"sensibly hold ({MAX_ZIP_METADATA_BYTES}); the archive is damaged"
                )
        return zarr.storage.ZipStore(s, mode="r"), True
    return zarr.storage.LocalStore(s, read_only=read_only), read_only


def _zip_members(path: str) -> dict[str, int]:
    """Member name -> declared uncompressed size, from the zip's central directory only."""
    try:
        with zipfile.ZipFile(path) as zf:
            return {i.filename: i.file_size for i in zf.infolist()}
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{path}: not a readable zip archive ({e})") from None


def _key_layout(arr: zarr.Array) -> tuple[str, str]:
    """(prefix, separator) of chunk keys: ``c/0/1`` -> ("c/", "/"), ``0.1`` -> ("", ".")."""
    meta = arr.metadata
    if meta.zarr_format == 2:
        return "", meta.dimension_separator
    enc = meta.chunk_key_encoding
    return ("c" + enc.separator if enc.name == "default" else ""), enc.separator


def _c_order(grid: list[int]) -> Iterator[tuple[int, ...]]:
    """Every coordinate of ``grid`` in C order, lazily (itertools.product would list each axis
    first: a damaged shape of 10**12 rows makes that endless)."""
    if not grid:
        yield ()
        return
    for i in range(grid[0]):
        for rest in _c_order(grid[1:]):
            yield (i, *rest)


def _chunk_coords(key: str, prefix: str, sep: str, ndim: int) -> tuple[int, ...] | None:
    """The grid coordinates a stored key names, or None for metadata and stray files."""
    if not key.startswith(prefix):
        return None
    parts = key[len(prefix) :].split(sep)
    if len(parts) != ndim or not all(p.isdigit() for p in parts):
        return None
    return tuple(map(int, parts))


def label_rollout(intervention: np.ndarray, pre_steps: int = PRE_INTERVENTION_STEPS) -> np.ndarray:
    """Labels of one policy rollout from its (T,) takeover flag -> (T,) uint8.

    Flagged steps are INTERVENTION, the rest AUTONOMOUS, except the ``pre_steps`` steps before
    each takeover, which are PRE_INTERVENTION (stopping at an earlier intervention step, as
    Sirius' relabelling does).
    """
    flag = np.asarray(intervention, dtype=bool).reshape(-1)
    labels = np.where(flag, INTERVENTION, AUTONOMOUS).astype(np.uint8)
    starts = np.flatnonzero(flag & ~np.concatenate([[False], flag[:-1]]))
    for s in starts:
        for j in range(s - 1, max(-1, s - 1 - pre_steps), -1):
            if flag[j]:
                break
            labels[j] = PRE_INTERVENTION
    return labels


def label_names(labels: np.ndarray) -> dict[str, int]:
    """Steps per label name, e.g. {"autonomous": 180, "intervention": 40}; unknown values
    are counted under their number."""
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    names = {v: k for k, v in LABELS.items()}
    return {names.get(int(v), str(int(v))): int(c) for v, c in zip(values, counts)}


class DemoStore:
    """A demonstration store on disk or object storage.

    Use :meth:`create` for a new store and :meth:`open` for an existing one. Arrays are read
    through :meth:`episode`, :meth:`iter_episodes` or ``store.data[key]`` (zarr arrays, axis 0 =
    steps). Only steps below ``n_steps`` belong to committed episodes.
    """

    def __init__(
        self,
        root: zarr.Group,
        path: str,
        read_only: bool,
        zarr_format: int,
        verify: bool = True,
    ) -> None:
        self.root = root
        self.path = path
        self.read_only = read_only
        self.zarr_format = zarr_format
        self.notes: list[str] = []  # what opening set aside (an interrupted write's tail)
        self._arrays: dict[str, zarr.Array] | None = None
        self._readers: dict[str, FrameIO] = {}
        self._zip: dict[str, int] | None = None
        self._ends = self._read_ends()
        self._episode_meta = self._read_episode_meta()
        n = self.n_steps
        for key, arr in self.data.items():
            if arr.ndim == 0 or arr.shape[0] < n:
                raise UserError(
                    f"{self.path}: data/{key} has {arr.shape[0] if arr.ndim else 'no'} steps but "
                    f"meta/episode_ends ends at {n}; the store is damaged"
                )
        if verify:
            problems = list(self.chunk_problems()[0].values())
            if problems:
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                raise UserError(problems[0] + more)
        self._recover()

    # ---- opening ---------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | Path,
        embodiment: Embodiment | None = None,
        *,
        force: bool = False,
        attrs: Mapping[str, Any] | None = None,
    ) -> DemoStore:
        """Create an empty zarr format 3 store. Refuses to overwrite unless ``force``."""
        s = str(path)
        if s.endswith(".zip"):
            raise UserError(f"{s}: new stores are directories (.zarr); zip is read-only")
        local = "://" not in s or s.startswith("file://")
        if local and Path(s.removeprefix("file://")).exists():
            if not force:
                raise UserError(f"{s} already exists; pass --force to overwrite it")
            shutil.rmtree(s.removeprefix("file://"))
        store, _ = _open_zarr_store(s, "w")
        root = zarr.open_group(store, mode="w" if force else "w-", zarr_format=3)
        root.attrs.update({SCHEMA_ATTR: SCHEMA_VERSION, **(attrs or {})})
        if embodiment is not None:
            root.attrs["embodiment"] = embodiment.to_dict()
        root.require_group("data")
        meta = root.require_group("meta")
        meta.attrs["episodes"] = []
        meta.create_array("episode_ends", shape=(0,), chunks=(4096,), dtype="int64", fill_value=0)
        return cls(root, s, read_only=False, zarr_format=3)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r", verify: bool = True) -> DemoStore:
        """Open a store read-only (``"r"``) or for appending (``"a"``).

        Format 2 stores (diffusion_policy / UMI) and zip stores are read-only. ``verify=False``
        skips listing the data arrays' chunks (:meth:`chunk_problems`): for a caller that
        checks them itself, or reopens a store already checked (a DataLoader worker).
        """
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', not {mode!r}")
        s = str(path)
        local = "://" not in s or s.startswith("file://")
        if local and not Path(s.removeprefix("file://")).exists():
            raise UserError(f"{s}: no such store (create one with handoff-collect or the recorder)")
        register_codecs()
        store, read_only = _open_zarr_store(s, mode)
        try:
            root = zarr.open_group(store, mode="r" if read_only else "r+")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError) as e:
            raise UserError(
                f"{s}: not a zarr store (no zarr.json or .zgroup at its top; "
                f"{e.__class__.__name__}) - give the store's root directory"
            ) from None
        fmt = root.metadata.zarr_format
        meta, data = root.get("meta"), root.get("data")
        if not (isinstance(meta, zarr.Group) and isinstance(data, zarr.Group)) or (
            "episode_ends" not in meta
        ):
            raise UserError(f"{s}: not a demonstration store (needs data/ and meta/episode_ends)")
        if fmt == 3:
            version = root.attrs.get(SCHEMA_ATTR)
            if version != SCHEMA_VERSION:
                raise UserError(
                    f"{s}: store schema version {version!r} is not supported (this handoff reads "
                    f"version {SCHEMA_VERSION}); upgrade handoff or re-convert the store"
                )
        elif mode == "a":
            raise UserError(
                f"{s}: zarr format 2 stores open read-only; copy it into a new "
                f"store with `handoff-data merge {s} OUT.zarr` to append"
            )
        return cls(root, s, read_only=read_only or fmt == 2, zarr_format=fmt, verify=verify)

    @classmethod
    def open_or_create(cls, path: str | Path, embodiment: Embodiment) -> DemoStore:
        """Open ``path`` to append episodes of ``embodiment``, or create it with that spec.

        An existing store must carry a spec that matches: joint names, control rate, cameras
        (names and H, W, C) and observation keys with their shapes; otherwise a UserError names
        the store and each field that differs (store's first), since episodes of two arms or
        camera sets in one store break training on it. Used by handoff-collect and the recorder.
        """
        s = str(path)
        if "://" in s and not s.startswith("file://"):
            import fsspec

            fs, inner = fsspec.core.url_to_fs(s)
            exists = fs.exists(inner)
        else:
            exists = Path(s.removeprefix("file://")).exists()
        if not exists:
            return cls.create(s, embodiment)
        store = cls.open(s, "a")
        have = store.embodiment
        if have is None:
            raise UserError(f"{s}: the store has no embodiment spec to check; write a new store")
        problems = have.compatible_with(embodiment)
        if have.camera_names != embodiment.camera_names or any(
            have.camera(c).shape != embodiment.camera(c).shape for c in embodiment.camera_names
        ):
            problems.append(
                f"cameras differ: {[(c.name, c.shape) for c in have.cameras]} vs "
                f"{[(c.name, c.shape) for c in embodiment.cameras]}"
            )
        if set(have.observation) != set(embodiment.observation):
            problems.append(
                f"observation keys differ: {sorted(have.observation)} vs "
                f"{sorted(embodiment.observation)}"
            )
        if problems:
            raise UserError(
                f"{s}: cannot append, the embodiment differs from the store's "
                f"({'; '.join(problems)}); write into another store"
            )
        return store

    def _read_ends(self) -> np.ndarray:
        """``meta/episode_ends``, checked before it is trusted.

        A kill between its resize and the write of its new value leaves one trailing entry that
        does not increase (zarr's fill value 0, or a value an earlier recovery set aside, whose
        chunk it is in may even be absent): that entry is half-committed and left out here
        (:meth:`_recover`). Any other disorder, or a shape its chunks cannot hold, is damage.
        """
        arr = self.root["meta/episode_ends"]
        if not isinstance(arr, zarr.Array) or arr.ndim != 1 or arr.dtype.kind not in "iu":
            kind = f"{arr.dtype} {list(arr.shape)}" if isinstance(arr, zarr.Array) else "a group"
            raise UserError(
                f"{self.path}: meta/episode_ends must be a 1-D integer array, not {kind}; "
                f"the store is damaged"
            )
        missing = self._missing_chunks("meta/episode_ends", arr, max(0, arr.shape[0] - 1))
        if missing:
            raise UserError(f"{missing}; the store is damaged - restore it from a copy")
        ends = _read_rows(self.path, "meta/episode_ends", arr, 0, arr.shape[0]).astype(np.int64)
        if len(ends) and ends[-1] <= (ends[-2] if len(ends) > 1 else 0):
            ends = ends[:-1]
        bad = np.flatnonzero(np.diff(ends, prepend=0) <= 0)
        if len(bad):
            i = int(bad[0])
            raise UserError(
                f"{self.path}: meta/episode_ends[{i}] = {ends[i]} is not above the entry before "
                f"it ({ends[i - 1] if i else 0}); the episode boundaries are damaged"
            )
        return ends

    def _read_episode_meta(self) -> list[dict[str, Any]]:
        """The per-episode metadata list, checked to be a list of mappings with string names."""
        meta = self.root["meta"].attrs.get("episodes", []) if self.zarr_format == 3 else []
        if not isinstance(meta, list) or not all(isinstance(m, dict) for m in meta):
            raise UserError(
                f"{self.path}: meta attribute 'episodes' must be a list of mappings, one per "
                f"episode; the store metadata is damaged"
            )
        for i, m in enumerate(meta):
            for field in ("task", "source"):
                if not isinstance(m.get(field, ""), str):
                    raise UserError(
                        f"{self.path}: episode {i} metadata {field!r} must be a string, not "
                        f"{m[field]!r:.60}"
                    )
        return list(meta)

    def _note(self, text: str) -> None:
        self.notes.append(f"{self.path}: {text}")
        log.warning("%s: %s", self.path, text)

    def _recover(self) -> None:
        """Set aside an unfinished tail left by a killed writer (see module docstring): opening
        read-only ignores it, opening for writing truncates it; both say so in ``notes``."""
        verb = "truncating" if not self.read_only else "ignoring"
        ends_arr = self.root["meta/episode_ends"]
        if ends_arr.shape[0] > len(self._ends):
            self._note(f"{verb} 1 half-committed meta/episode_ends entry (an interrupted write)")
            if not self.read_only:
                self._shrink(ends_arr, len(self._ends))
        n = self.n_steps
        for key, arr in self.data.items():
            if arr.shape[0] > n:
                self._note(
                    f"{verb} {arr.shape[0] - n} unfinished steps in data/{key} past the last "
                    f"committed episode (an interrupted write)"
                )
                if not self.read_only:
                    self._shrink(arr, n)
        if len(self._episode_meta) > self.n_episodes and not self.read_only:
            self._episode_meta = self._episode_meta[: self.n_episodes]
            self.root["meta"].attrs["episodes"] = self._episode_meta
        if not self.read_only and "://" not in self.path:
            for partial in Path(self.path).rglob("*.partial"):
                partial.unlink(missing_ok=True)

    # ---- chunks ----------------------------------------------------------------------------

    def _stored(self, arr: zarr.Array) -> dict[str, int]:
        """The objects stored under ``arr``'s path, relative to it, with their declared size
        where the store has one (zip members), else -1. One listing; nothing is read."""
        store, prefix = arr.store_path.store, arr.store_path.path
        if isinstance(store, zarr.storage.LocalStore):
            base = Path(store.root) / prefix
            out = {}
            for dirpath, _, files in os.walk(base):
                rel = Path(dirpath).relative_to(base).as_posix()
                out |= {(f if rel == "." else f"{rel}/{f}"): -1 for f in files}
            return out
        if isinstance(store, zarr.storage.ZipStore):
            if self._zip is None:
                self._zip = _zip_members(str(store.path))
            members = self._zip.items()
        else:
            from zarr.core.sync import sync

            async def keys() -> list[str]:
                return [k async for k in store.list_prefix(f"{prefix}/")]

            members = ((k, -1) for k in sync(keys()))
        return {k[len(prefix) + 1 :]: size for k, size in members if k.startswith(f"{prefix}/")}

    def _missing_chunks(self, label: str, arr: zarr.Array, n_rows: int) -> str | None:
        """Which of the chunks ``arr``'s rows below ``n_rows`` need are not stored, or None.

        Compares the chunk objects the store lists with those the rows need, reading none, so
        an array claiming 10**12 rows costs no more than the chunks it has. Refuses outright
        chunks too large to decode and zip members declaring more bytes than their chunk can
        encode to (a zip bomb), before anything is decompressed.
        """
        outer = arr.shards or arr.chunks
        chunk_bytes = math.prod(arr.chunks) * arr.dtype.itemsize
        per_shard = math.prod(outer) // math.prod(arr.chunks)
        if chunk_bytes > MAX_CHUNK_BYTES or per_shard > MAX_SHARD_CHUNKS:
            raise UserError(
                f"{self.path}: {label} claims chunks of {list(arr.chunks)} x {per_shard} per "
                f"file ({chunk_bytes} bytes each), beyond what handoff reads "
                f"({MAX_CHUNK_BYTES} bytes, {MAX_SHARD_CHUNKS} per shard); the metadata is damaged"
            )
        # an encoded chunk is at most its raw bytes plus codec headers (+ a shard's index)
        most = int(per_shard * (chunk_bytes * 1.05 + 16)) + (64 << 10)
        prefix, sep = _key_layout(arr)
        grid = [-(-n_rows // outer[0])] + [-(-s // c) for s, c in zip(arr.shape[1:], outer[1:])]
        present = set()
        for key, size in self._stored(arr).items():
            coords = _chunk_coords(key, prefix, sep, arr.ndim)
            if coords is None:
                continue
            if size > most:
                raise UserError(
                    f"{self.path}: {label}/{key} would inflate to {size} bytes, and a chunk of "
                    f"{label} holds at most {most}; refusing to decompress it (damaged archive)"
                )
            if all(c < g for c, g in zip(coords, grid)):
                present.add(coords)
        need = math.prod(grid)
        if len(present) == need:
            return None
        # at most len(present) + 1 steps: the rows need no more chunks than are stored
        first = next(c for c in _c_order(grid) if c not in present)
        start = first[0] * outer[0]
        return (
            f"{self.path}: {label} has no stored chunk for steps {start}.."
            f"{min(n_rows, start + outer[0]) - 1} ({need - len(present)} of {need} chunks "
            f"missing)"
        )

    def chunk_problems(self) -> tuple[dict[str, str], list[str]]:
        """({key: problem}, notes): the data arrays whose committed steps lack a stored chunk.

        Where every chunk must be stored (:func:`data.frames.chunks_complete`) that is a
        problem; elsewhere zarr reads the missing chunk as its fill value, which may be the
        data (zarr leaves out all-fill chunks), so it is a note.
        """
        problems, notes = {}, []
        for key, arr in sorted(self.data.items()):
            missing = self._missing_chunks(f"data/{key}", arr, self.n_steps)
            if missing and chunks_complete(arr):
                problems[key] = f"{missing}; the store is damaged - restore it from a copy"
            elif missing:
                notes.append(
                    f"{missing}, read as fill value {arr.fill_value}: zarr leaves out chunks "
                    f"that are all fill value, and this array predates handoff's marker that "
                    f"every chunk is stored, so a lost chunk cannot be told apart"
                )
        return problems, notes

    def _shrink(self, arr: zarr.Array, n: int) -> None:
        """Cut ``arr`` to ``n`` rows, deleting the stored chunks wholly past the new end.

        zarr's own resize enumerates every chunk the old shape could have: endless for a
        damaged shape of 10**12 rows. This deletes only what the store lists.
        """
        from zarr.core.sync import sync

        rows = (arr.shards or arr.chunks)[0]
        prefix, sep = _key_layout(arr)
        for key in self._stored(arr):
            coords = _chunk_coords(key, prefix, sep, arr.ndim)
            if coords is not None and coords[0] * rows >= n:
                sync(arr.store_path.store.delete(f"{arr.store_path.path}/{key}"))
        sync(arr.async_array.resize((n, *arr.shape[1:]), delete_outside_chunks=False))

    # ---- structure -------------------------------------------------------------------------

    @property
    def data(self) -> dict[str, zarr.Array]:
        """The arrays under data/, by key (opened once: listing them is slow on zarr 3).

        Writable stores hand out arrays that write every chunk, even all-zero ones
        (``ARRAY_CONFIG``), so a missing chunk always means a lost one.
        """
        if self._arrays is None:
            arrays = dict(self.root["data"].arrays())
            if not self.read_only:
                arrays = {
                    k: zarr.Array(zarr.AsyncArray(a.metadata, a.store_path, config=ARRAY_CONFIG))
                    for k, a in arrays.items()
                }
            self._arrays = arrays
        return dict(self._arrays)

    @property
    def keys(self) -> list[str]:
        return sorted(self.data)

    @property
    def image_keys(self) -> list[str]:
        return sorted(k for k, a in self.data.items() if is_image_array(a))

    @property
    def lowdim_keys(self) -> list[str]:
        return sorted(k for k, a in self.data.items() if not is_image_array(a))

    @property
    def episode_ends(self) -> np.ndarray:
        return self._ends.copy()

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self._ends, prepend=0)

    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    @property
    def n_steps(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def embodiment(self) -> Embodiment | None:
        d = self.root.attrs.get("embodiment")
        if d is None:
            return None
        if not isinstance(d, Mapping):
            raise UserError(
                f"{self.path}: attribute 'embodiment' must be a mapping of spec keys, not "
                f"{type(d).__name__} {d!r:.60}; the store metadata is damaged"
            )
        return Embodiment.from_dict(dict(d), source=f"{self.path} attrs embodiment")

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.root.attrs)

    def set_attr(self, key: str, value: Any) -> None:
        self._check_writable()
        self.root.attrs[key] = value

    def episode_slice(self, i: int) -> slice:
        if not -self.n_episodes <= i < self.n_episodes:
            raise UserError(
                f"{self.path}: episode {i} out of range (store has {self.n_episodes} episodes)"
            )
        i %= self.n_episodes
        start = int(self._ends[i - 1]) if i > 0 else 0
        return slice(start, int(self._ends[i]))

    def read(self, key: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Steps ``start..stop-1`` (default: every committed step) of ``data/<key>``.

        Images go through :class:`FrameIO` (shard indexes checked against their CRC32C, no
        stored frame refused); any chunk zarr cannot decode is refused by key and steps.
        """
        stop = self.n_steps if stop is None else stop
        arr = self.data[key]
        if not is_image_array(arr):
            return _read_rows(self.path, f"data/{key}", arr, start, stop)
        if key not in self._readers:
            self._readers[key] = FrameIO(arr, f"data/{key}")
        return self._readers[key].frames(np.arange(start, stop))

    def episode(self, i: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        sl = self.episode_slice(i)
        data = self.data
        missing = set(keys or []) - set(data)
        if missing:
            raise UserError(f"{self.path}: no key(s) {sorted(missing)}; store has {sorted(data)}")
        return {k: self.read(k, sl.start, sl.stop) for k in (keys or data)}

    def iter_episodes(self, keys: list[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        for i in range(self.n_episodes):
            yield self.episode(i, keys)

    def episode_meta(self, i: int) -> dict[str, Any]:
        self.episode_slice(i)  # range check
        if i < len(self._episode_meta):
            return dict(self._episode_meta[i])
        return {"source": "unknown"}

    def episodes_where(self, **conditions: Any) -> list[int]:
        """Episode indices whose metadata matches every ``key=value`` (e.g. success=True)."""
        out = []
        for i in range(self.n_episodes):
            meta = self.episode_meta(i)
            if all(meta.get(k) == v for k, v in conditions.items()):
                out.append(i)
        return out

    def episode_labels(self, i: int) -> np.ndarray:
        """(T,) uint8 labels of episode ``i`` (LABELS): ``data/label`` where the store has it;
        else derived: a ``policy``/``corrected`` episode from its ``intervention`` flag
        (:func:`label_rollout`; all AUTONOMOUS without one), any other as DEMONSTRATION (a
        teleop demonstration holds the flag up throughout: it is not a correction)."""
        sl = self.episode_slice(i)
        if LABEL_KEY in self.data:
            return self.read(LABEL_KEY, sl.start, sl.stop).astype(np.uint8)
        T = sl.stop - sl.start
        if self.episode_meta(i).get("source") not in ("policy", "corrected"):
            return np.full(T, DEMONSTRATION, np.uint8)
        if "intervention" in self.data:
            return label_rollout(self.read("intervention", sl.start, sl.stop))
        return np.full(T, AUTONOMOUS, np.uint8)

    def step_labels(self) -> np.ndarray:
        """(n_steps,) uint8 labels of every committed step (see :meth:`episode_labels`)."""
        if LABEL_KEY in self.data:
            return self.read(LABEL_KEY).astype(np.uint8)
        parts = [self.episode_labels(i) for i in range(self.n_episodes)]
        return np.concatenate(parts) if parts else np.zeros(0, np.uint8)

    def seeds(self) -> set[int]:
        """The scene seeds of the stored episodes (those whose metadata records one)."""
        return {m["seed"] for m in self._episode_meta if isinstance(m.get("seed"), int)}

    def first_seed_after(self, seed: int, n: int) -> int:
        """``seed``, or the first seed past the store's if ``seed .. seed + n - 1`` would
        repeat a stored episode's scene (an evaluation must not test on its training scenes)."""
        seeds = self.seeds()
        if any(s in seeds for s in range(seed, seed + n)):
            return max(seeds) + 1
        return seed

    # ---- writing ---------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self.read_only:
            raise UserError(f"{self.path} is open read-only")

    def _require_array(self, key: str, sample: np.ndarray) -> zarr.Array:
        data = self.data
        if key in data:
            arr = data[key]
            if arr.shape[1:] != sample.shape[1:] or arr.dtype != sample.dtype:
                raise UserError(
                    f"{self.path}: data/{key} holds {arr.dtype}{list(arr.shape[1:])} per step, "
                    f"the new episode has {sample.dtype}{list(sample.shape[1:])}"
                )
            return arr
        if self.n_steps and key not in STEP_DEFAULTS:
            raise UserError(
                f"{self.path}: key {key!r} is new; every episode must have the "
                f"same keys ({sorted(data)})"
            )
        fill = None
        if self.n_steps:  # a key with a default, new to this store: its steps get the default
            dtype, default = STEP_DEFAULTS[key]
            fill = (
                self.step_labels()
                if key == LABEL_KEY
                else np.full((self.n_steps, *sample.shape[1:]), default, dtype)
            )
        arr = self._create_array(key, sample)
        if fill is not None:
            arr.append(fill.astype(sample.dtype), axis=0)
        self._arrays[key] = arr
        return arr

    def _create_array(self, key: str, sample: np.ndarray) -> zarr.Array:
        """A new array that stores every chunk and says so (data.frames.chunks_complete)."""
        group = self.root["data"]
        every_chunk = {"config": ARRAY_CONFIG, "attributes": {COMPLETE_ATTR: True}}
        if is_image_array(sample):
            # one frame per chunk, so random access decodes only the frames a sample needs,
            # grouped into shard files (data/frames.py); "." keys keep them in one directory
            return group.create_array(
                key,
                shape=(0, *sample.shape[1:]),
                chunks=(1, *sample.shape[1:]),
                shards=(shard_frames(sample.shape[1:]), *sample.shape[1:]),
                dtype=np.uint8,
                compressors=image_compressor(),
                fill_value=0,
                chunk_key_encoding={"name": "default", "separator": "."},
                **every_chunk,
            )
        step_bytes = max(1, int(np.prod(sample.shape[1:])) * sample.dtype.itemsize)
        rows = max(256, LOWDIM_CHUNK_BYTES // step_bytes)
        return group.create_array(
            key,
            shape=(0, *sample.shape[1:]),
            chunks=(rows, *sample.shape[1:]),
            dtype=sample.dtype,
            fill_value=0,
            **every_chunk,
        )

    def _check_keys(self, episode: Mapping[str, np.ndarray]) -> int:
        lengths = {k: len(v) for k, v in episode.items()}
        if len(set(lengths.values())) != 1:
            raise UserError(f"episode arrays have unequal lengths: {lengths}")
        if self.n_steps:
            expected = set(self.data) - set(STEP_DEFAULTS)  # those are filled in or added
            if set(episode) - set(STEP_DEFAULTS) != expected:
                raise UserError(
                    f"{self.path}: episode keys {sorted(episode)} differ from the store's "
                    f"{sorted(expected)}"
                )
        return next(iter(lengths.values()))

    def append_episode(self, episode: Mapping[str, np.ndarray], **meta: Any) -> int:
        """Append one whole episode atomically; returns its index.

        ``episode`` maps keys to arrays of equal length T. Low-dim arrays are stored as float32
        (ints and bools keep their dtype); ``timestamp`` is added (t / control rate) when absent.
        ``meta`` holds per-episode metadata (task, source, success, operator, start_time, ...).
        """
        writer = self.episode_writer()
        writer.add_steps(episode)
        return writer.commit(**meta)

    def episode_writer(self, flush_steps: int = 64) -> EpisodeWriter:
        """A streaming writer for one episode (see :class:`EpisodeWriter`).

        Steps are flushed every ``flush_steps`` steps: low-dim arrays whole, frames up to the
        last full shard (:func:`data.frames.shard_frames`: 16 frames at 640x480), the rest held
        until a later flush or the commit, so no flush rewrites a shard another one wrote.
        """
        self._check_writable()
        return EpisodeWriter(self, flush_steps)

    def _commit(self, n_steps: int, meta: dict[str, Any]) -> int:
        meta = _clean_meta(meta)
        self._episode_meta.append(meta)
        self.root["meta"].attrs["episodes"] = self._episode_meta
        ends = self.root["meta/episode_ends"]
        new_end = self.n_steps + n_steps
        ends.append(np.array([new_end], dtype=np.int64))  # the commit point
        self._ends = np.append(self._ends, new_end)
        self._readers.clear()  # their maps of rewritten shards are stale
        return self.n_episodes - 1

    def _truncate_tail(self) -> None:
        n = self.n_steps
        for arr in self.data.values():
            if arr.shape[0] != n:
                self._shrink(arr, n)
        self._readers.clear()

    def delete_episodes(self, indices: list[int]) -> None:
        """Remove episodes by index (an index out of range is refused, never wrapped around).

        The kept episodes are copied into ``.NAME.partial`` beside the store, which is swapped
        in only when complete (:func:`data.outputs.publish`): a failure or a kill on the way
        leaves the store as it was.
        """
        from data.outputs import publish, remove, staging_dir

        self._check_writable()
        if "://" in self.path:
            raise UserError("deleting episodes is supported for local stores only")
        for i in indices:
            self.episode_slice(i)  # refuses an index out of range by name
        drop = {i % self.n_episodes for i in indices}
        tmp = staging_dir(Path(self.path))
        try:
            out = DemoStore.create(
                tmp,
                self.embodiment,
                attrs={k: v for k, v in self.attrs.items() if k != "embodiment"},
            )
            for i in range(self.n_episodes):
                if i not in drop:
                    out.append_episode(self.episode(i), **self.episode_meta(i))
        except BaseException:
            remove(tmp)
            raise
        publish(tmp, Path(self.path))
        fresh = DemoStore.open(self.path, "a")
        self.__dict__.update(fresh.__dict__)

    def summary(self) -> dict[str, Any]:
        lengths = self.episode_lengths
        successes = [m.get("success") for m in map(self.episode_meta, range(self.n_episodes))]
        known = [s for s in successes if s is not None]
        return {
            "path": self.path,
            "zarr_format": self.zarr_format,
            "episodes": self.n_episodes,
            "steps": self.n_steps,
            "episode_length": {
                "min": int(lengths.min()) if len(lengths) else 0,
                "mean": float(lengths.mean()) if len(lengths) else 0.0,
                "max": int(lengths.max()) if len(lengths) else 0,
            },
            "success": {"known": len(known), "successful": int(sum(bool(s) for s in known))},
            "embodiment": self.embodiment.name if self.embodiment else None,
        }


class EpisodeWriter:
    """Streams one episode into a store: steps are flushed to the arrays as they come, so a
    long episode never sits in memory; only :meth:`commit` makes it part of the store.

    A crash before ``commit`` leaves an unfinished tail that the next open truncates.
    """

    def __init__(self, store: DemoStore, flush_steps: int = 64) -> None:
        store._truncate_tail()  # a discarded or crashed episode may have left steps behind
        self.store = store
        self.flush_steps = flush_steps
        self._buffer: dict[str, list[np.ndarray]] = {}
        self._written = 0
        self._buffered = 0
        self._closed = False
        self._start = time.time()
        self._pool = None
        spec = store.embodiment
        self._hz = spec.control_hz if spec else 1.0

    @property
    def n_steps(self) -> int:
        return self._written + self._buffered

    def add_step(self, step: Mapping[str, Any]) -> None:
        self.add_steps({k: np.asarray(v)[None] for k, v in step.items()})

    def add_steps(self, steps: Mapping[str, np.ndarray]) -> None:
        if self._closed:
            raise RuntimeError("episode writer already committed or discarded")
        steps = {k: _storage_dtype(k, np.asarray(v)) for k, v in steps.items()}
        if steps:
            T = len(next(iter(steps.values())))
            if "timestamp" not in steps:
                steps["timestamp"] = np.arange(self.n_steps, self.n_steps + T) / self._hz
            for key, (dtype, default) in STEP_DEFAULTS.items():
                if key in self.store.data and key not in steps:  # e.g. a demonstration
                    steps[key] = np.full(T, default, dtype)
        T = self.store._check_keys(steps) if steps else 0
        if self._buffer and set(steps) != set(self._buffer):
            raise UserError(
                f"step keys {sorted(steps)} differ from the episode's {sorted(self._buffer)}"
            )
        for k, v in steps.items():
            self._buffer.setdefault(k, []).append(v)
        self._buffered += T
        if self._buffered >= self.flush_steps:
            self.flush()

    def flush(self, final: bool = False) -> None:
        """Write the buffered steps. Frames past the last full shard stay buffered (unless
        ``final``): writing them now would make the next flush rewrite their shard."""
        for key, parts in self._buffer.items():
            if not parts:
                continue
            arr = self.store._require_array(key, parts[0])
            if not is_image_array(parts[0]):
                arr.append(np.concatenate(parts, axis=0), axis=0)
                parts.clear()
                continue
            frames = [f for part in parts for f in part]  # views: frames are never stacked
            start = arr.shape[0]
            end = start + len(frames)
            if not final:
                end = max(start, end - end % (arr.shards[0] if arr.shards else 1))
            if end > start:
                self._write_frames(arr, start, frames[: end - start])
            parts[:] = [f[None] for f in frames[end - start :]]  # less than one shard
        self._written += self._buffered
        self._buffered = 0

    def _write_frames(self, arr: zarr.Array, start: int, block: list[np.ndarray]) -> None:
        """Grow the array, then encode (in parallel) and write the frames' shard files."""
        arr.resize((start + len(block), *arr.shape[1:]))
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="handoff-frames")
        FrameIO(arr, arr.path).write(start, block, self._pool)

    def commit(self, **meta: Any) -> int:
        """Flush what is buffered and make the episode part of the store; returns its index."""
        if self.n_steps == 0:
            raise UserError("cannot commit an empty episode")
        self.flush(final=True)
        self._close_pool()
        meta.setdefault("start_time", self._start)
        self._closed = True
        return self.store._commit(self.n_steps, meta)

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def discard(self) -> None:
        self._close_pool()
        self._buffer.clear()
        self._buffered = 0
        self._closed = True
        self.store._truncate_tail()


def _read_rows(path: str, label: str, arr: zarr.Array, start: int, stop: int) -> np.ndarray:
    """``arr[start:stop]``; a chunk zarr cannot read is refused by store, key and steps."""
    try:
        return arr[start:stop]
    except Exception as e:  # zarr's decode error, whichever codec raised it
        raise UserError(
            f"{path}: {label} steps {start}..{stop - 1} cannot be read ({e}); the store is "
            f"damaged - run `handoff-data validate` on it"
        ) from None


def _storage_dtype(key: str, v: np.ndarray) -> np.ndarray:
    """Low-dim floats are stored as float32; timestamps keep float64 (seconds since epoch);
    integer labels are stored as uint8."""
    fits = key == LABEL_KEY and v.dtype.kind in "iu" and v.dtype != np.uint8
    if fits and (not v.size or 0 <= v.min() <= v.max() <= 255):  # else refused, not wrapped
        return v.astype(np.uint8)
    if v.dtype == np.float64 and key != "timestamp":
        return v.astype(np.float32)
    return v


def _clean_meta(meta: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in meta.items():
        if isinstance(v, np.generic):
            v = v.item()
        try:
            json.dumps(v)
        except TypeError:
            raise UserError(f"episode metadata {k!r}={v!r} is not JSON-serialisable") from None
        out[k] = v
    if out.get("source", "unknown") not in SOURCES:
        raise UserError(f"episode source {out['source']!r} must be one of {SOURCES}")
    out.setdefault("source", "unknown")
    return out
