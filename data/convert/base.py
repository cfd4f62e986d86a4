"""What every format plugs into: an episode, a reader, a writer, and the conversion report.

A reader opens SRC and yields :class:`Episode` objects one at a time; a writer takes them one
at a time. Only one episode is ever held in memory, so conversions of any size run in bounded
memory. Episodes use handoff's key names (see DESIGN.md "Store keys"): low-dim float32
(T, D) arrays, camera frames uint8 (T, H, W, 3) keyed by camera name, ``action`` (T, Da),
``timestamp`` float64 (T,) seconds since the episode start. Extra per-step keys that some
formats carry (``reward``, ``done``, ``sim_state``) keep those names.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from data.embodiment import Embodiment
from data.errors import UserError
from data.outputs import publish, staging_dir  # noqa: F401  (the writers' staging, shared)
from data.registry import Registry

# Per-step extras some formats carry besides observations and actions (robomimic, LeRobot).
REWARD, DONE, SIM_STATE = "reward", "done", "sim_state"
LABEL = "label"  # data/store.py's per-step labels: carried by every format as an extra
# per-step keys that are not observations (the recorder's teleop flag and the labels included)
NOT_OBSERVATIONS = {REWARD, DONE, SIM_STATE, "intervention", LABEL, "action", "timestamp"}


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

    def abort(self, keep_done: bool) -> None:
        """Leave no half-written output behind; ``keep_done``: an interrupted run may keep a
        valid output of the episodes already written (a refused one never does)."""


@dataclass(frozen=True)
class Option:
    """A format option, declared once on its :class:`Format`.

    The declaration is the whole definition: ``convert()`` checks option names against it and
    passes ``default`` when an option is not given, and ``handoff-data convert`` makes it the
    flag ``--name-with-dashes`` (read as ``type``, restricted to ``choices``) with ``help``.
    A ``default`` of None means the reader or writer works the value out (``help`` says how).
    """

    name: str  # the reader's/writer's keyword argument (snake_case)
    help: str
    type: type = str  # str, int or float: how the flag's text is read
    default: Any = None
    choices: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.type not in (str, int, float):
            raise TypeError(f"option {self.name!r}: a keyword name and a str/int/float type")


@dataclass(frozen=True)
class Format:
    """A registered format: how to recognise, read and write it.

    ``open_reader(path, report, embodiment, **options)`` and
    ``open_writer(path, report, reader, embodiment, **options)``; either may be None.
    ``read_options``/``write_options`` declare the keyword options each side takes
    (:class:`Option`; checked before anything is opened).
    """

    name: str
    description: str
    open_reader: Any = None
    open_writer: Any = None
    read_options: tuple[Option, ...] = ()
    write_options: tuple[Option, ...] = ()
    urls: bool = False  # SRC/DST may be fsspec URLs (s3://...), not only local paths

    def __post_init__(self) -> None:
        for side in (self.read_options, self.write_options):
            names = [o.name for o in side]
            if len(set(names)) != len(names):
                raise TypeError(f"format {self.name!r} declares an option twice: {names}")


def lazy(target: str) -> Callable[..., Any]:
    """``"module:attr"`` as a callable that imports its module on the first call: a format
    whose writer needs heavy imports registers it without importing them."""
    module, attr = target.split(":")

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)

    return call


FORMATS: Registry[Format] = Registry("format")
PLUMBING = ("base", "cli")  # modules of this package that are not converters


def load_formats() -> Registry[Format]:
    """:data:`FORMATS` with every converter registered: the package's modules are imported.

    A converter is one module ``data/convert/<name>.py`` (no underscore) that registers its
    :class:`Format` with ``FORMATS.register``; its helpers are ``<name>_<part>.py`` modules it
    imports itself (lazily where heavy). Adding a format is adding that module: nothing else
    lists the formats.
    """
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if "_" not in info.name and info.name not in PLUMBING:
            importlib.import_module(f"{__package__}.{info.name}")
    return FORMATS


def require_keys(where: str, have: list[str] | set[str], need: list[str]) -> None:
    missing = [k for k in need if k not in have]
    if missing:
        raise UserError(f"{where}: missing key(s) {missing}; it has {sorted(have)}")


# ---- checks every reader applies to what it hands on (helper D, issue 12 items 5 and 6) ----

RATE_ATTR = "control_hz"  # store attr: the steps' rate, kept when a store has no embodiment


def source_rate(where: str, rate: Any, embodiment: Embodiment | None) -> float | None:
    """A source's step rate in Hz (None when it has none), checked before anything is read.

    Readers expose it as ``fps`` so a writer can carry it (a handoff store without an
    embodiment keeps it in the ``control_hz`` attr; a LeRobot export needs it). Refused when it
    is not a positive number, or disagrees with the embodiment's ``control_hz``: steps recorded
    at one rate and run at another are silently wrong.
    """
    if rate is None:
        return None
    hz = float(rate) if isinstance(rate, int | float) and not isinstance(rate, bool) else 0.0
    if not 0 < hz < float("inf"):
        raise UserError(f"{where}: rate {rate!r} must be a positive number of Hz")
    if embodiment is not None and abs(hz - embodiment.control_hz) > 1e-6 * hz:
        raise UserError(
            f"{where}: {hz:g} Hz, but embodiment {embodiment.name!r} has control_hz "
            f"{embodiment.control_hz:g}; pass an embodiment with control_hz {hz:g}"
        )
    return hz


DROP_KEYS = Option(
    "drop_keys", "comma-separated keys to leave out (a column the source never measured)"
)


def drop_keys_option(value: Any) -> tuple[str, ...]:
    """The ``drop_keys`` read option (``"joint_vel,reward"`` or a list) as key names."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(k, str) for k in items):
        raise UserError(f"drop_keys={value!r}: give key names, e.g. -o drop_keys=joint_vel")
    return tuple(k.strip() for k in items if k.strip())


def checked_episode(
    episode: Episode,
    where: str,
    report: Report,
    drop: tuple[str, ...] = (),
    names: dict[str, str] | None = None,
) -> Episode:
    """``episode`` without the ``drop`` keys; refused if a float value is NaN or infinite.

    Non-finite values surface in training only as "loss became nan", far from their cause, so
    every reader passes its episodes through here. The refusal names the source (``where``:
    file and episode), the key (``names`` maps handoff keys to the source's own names) and the
    first bad step. A key that is never finite (a sensor the source never had: a LeRobot or
    robomimic column of NaN) can be left out with ``-o drop_keys=KEY``. (NaN or empty joint
    velocities in a bag never get here: the bag reader estimates them from positions, as the
    live recorder does.)
    """
    for key in drop:
        if episode.steps.pop(key, None) is not None:
            report.note(f"{key} left out (drop_keys)")
    for key, v in episode.steps.items():
        if v.dtype.kind not in "fc" or not len(v):
            continue
        bad = ~np.isfinite(v).reshape(len(v), -1).all(axis=1)  # (T,)
        if not bad.any():
            continue
        name = (names or {}).get(key, key)
        if bad.all():
            raise UserError(
                f"{where}: {name} is NaN or infinite at every step: the source never measured "
                f"it; "
                f"pass -o drop_keys={key} to convert without it"
            )
        raise UserError(
            f"{where}: {name} is NaN or infinite at step {int(np.argmax(bad))} ({int(bad.sum())} "
            f"of {len(v)} steps); repair the source, or pass -o drop_keys={key} to leave it out"
        )
    return episode
