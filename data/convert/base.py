"""What every format plugs into: an episode, a reader, a writer, and the conversion report.

A reader opens SRC and yields :class:`Episode` objects one at a time; a writer takes them one
at a time. Only one episode is ever held in memory, so conversions of any size run in bounded
memory. Episodes use handoff's key names (see DESIGN.md "Store keys"): low-dim float32
(T, D) arrays, camera frames uint8 (T, H, W, 3) keyed by camera name, ``action`` (T, Da),
``timestamp`` float64 (T,) seconds since the episode start. Extra per-step keys that some
formats carry (``reward``, ``done``, ``sim_state``) keep those names.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from data.embodiment import Embodiment
from data.errors import UserError
from data.registry import Registry

# Per-step extras some formats carry besides observations and actions (robomimic, LeRobot).
REWARD, DONE, SIM_STATE = "reward", "done", "sim_state"
# per-step keys that are not observations (the recorder's teleop flag included)
NOT_OBSERVATIONS = {REWARD, DONE, SIM_STATE, "intervention", "action", "timestamp"}


@dataclass
class Episode:
    """One episode: ``steps`` {key: (T, ...)} and its metadata (task, source, success, ...)."""

    steps: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        lengths = {k: len(v) for k, v in self.steps.items()}
        if len(set(lengths.values())) > 1:
            raise UserError(f"episode arrays have unequal lengths: {lengths}")

    def __len__(self) -> int:
        return len(next(iter(self.steps.values()))) if self.steps else 0

    @property
    def camera_keys(self) -> list[str]:
        return sorted(k for k, v in self.steps.items() if is_image(v))

    @property
    def lowdim_keys(self) -> list[str]:
        return sorted(k for k, v in self.steps.items() if not is_image(v))


def is_image(v: np.ndarray) -> bool:
    """Frames are uint8 (T, H, W, C) with C in {1, 3, 4}, as in data/store.py."""
    return v.dtype == np.uint8 and v.ndim == 4 and v.shape[-1] in (1, 3, 4)


@dataclass
class Report:
    """What a conversion did and what it could not carry (returned as a JSON-able dict)."""

    src: str
    dst: str
    from_format: str
    to_format: str
    episodes: int = 0
    frames: int = 0
    keys: list[str] = field(default_factory=list)
    not_carried: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def drop(self, what: str) -> None:
        """Record something the destination cannot hold (once)."""
        if what not in self.not_carried:
            self.not_carried.append(what)

    def note(self, what: str) -> None:
        if what not in self.notes:
            self.notes.append(what)

    def as_dict(self) -> dict[str, Any]:
        return {
            "src": self.src,
            "dst": self.dst,
            "from": self.from_format,
            "to": self.to_format,
            "episodes": self.episodes,
            "frames": self.frames,
            "keys": self.keys,
            "not_carried": self.not_carried,
            "notes": self.notes,
        }


class Reader(Protocol):
    """An opened source. ``attrs`` holds dataset-level metadata (e.g. robomimic env_args)."""

    embodiment: Embodiment | None
    attrs: dict[str, Any]

    def __len__(self) -> int: ...  # number of episodes (for the progress bar)

    def episodes(self) -> Iterator[Episode]: ...

    def close(self) -> None: ...


class Writer(Protocol):
    def write(self, episode: Episode) -> None: ...

    def close(self) -> None: ...  # finish the output (called once, after the last episode)

    def abort(self) -> None: ...  # leave no half-written output behind (where that applies)


@dataclass(frozen=True)
class Format:
    """A registered format: how to recognise, read and write it.

    ``open_reader(path, report, embodiment, **options)`` and
    ``open_writer(path, report, reader, embodiment, **options)``; either may be None.
    ``read_options``/``write_options`` list the keyword options each side understands
    (checked before anything is opened).
    """

    name: str
    description: str
    open_reader: Any = None
    open_writer: Any = None
    read_options: tuple[str, ...] = ()
    write_options: tuple[str, ...] = ()
    urls: bool = False  # SRC/DST may be fsspec URLs (s3://...), not only local paths


FORMATS: Registry[Format] = Registry("format")


def staging_dir(dst: Path) -> Path:
    """A sibling directory to build a non-handoff output in; renamed into place when done."""
    tmp = dst.with_name(f".{dst.name}.partial")
    tmp.parent.mkdir(parents=True, exist_ok=True)  # DST may name folders that do not exist yet
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    return tmp


def publish(tmp: Path, dst: Path) -> None:
    """Move a finished output from its staging path to ``dst`` (replacing a --force'd one)."""
    if dst.exists():
        shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
    os.replace(tmp, dst)


def require_keys(where: str, have: list[str] | set[str], need: list[str]) -> None:
    missing = [k for k in need if k not in have]
    if missing:
        raise UserError(f"{where}: missing key(s) {missing}; it has {sorted(have)}")
