"""The ``handoff`` format: a zarr demonstration store (data/store.py), read and written as is."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data.convert.base import (
    DROP_KEYS,
    FORMATS,
    RATE_ATTR,
    Episode,
    Format,
    Reader,
    Report,
    checked_episode,
    drop_keys_option,
    source_rate,
)
from data.embodiment import Embodiment
from data.outputs import is_url, publish, remove, staging_if_exists
from data.store import SCHEMA_ATTR, SOURCES, DemoStore

_STORE_OWN_ATTRS = {SCHEMA_ATTR, "embodiment", RATE_ATTR}


class HandoffReader:
    def __init__(
        self,
        path: str | Path,
        report: Report,
        embodiment: Embodiment | None,
        *,
        drop_keys: Any = None,
    ) -> None:
        self.store = DemoStore.open(path, "r")
        self.path, self.report, self.drop = path, report, drop_keys_option(drop_keys)
        self.embodiment = spec = self.store.embodiment or embodiment
        self.attrs = {k: v for k, v in self.store.attrs.items() if k not in _STORE_OWN_ATTRS}
        # the steps' rate: the spec's, or (a store made without one) the one its source had
        rate = self.store.attrs.get(RATE_ATTR)
        self.fps = source_rate(f"{path} attr {RATE_ATTR}", rate, spec) or (
            spec.control_hz if spec else None
        )

    def __len__(self) -> int:
        return self.store.n_episodes

    def episodes(self) -> Iterator[Episode]:
        for i in range(self.store.n_episodes):
            episode = Episode(self.store.episode(i), self.store.episode_meta(i))
            yield checked_episode(episode, f"{self.path} episode {i}", self.report, self.drop)

    def close(self) -> None:
        pass


class HandoffWriter:
    """Appends each episode atomically, so an interrupted conversion leaves a valid store."""

    def __init__(
        self,
        path: str | Path,
        report: Report,
        reader: Reader,
        embodiment: Embodiment | None,
        *,
        force: bool = False,
    ) -> None:
        self.report = report
        self.from_format = report.from_format
        # an existing DST (--force) is replaced only when complete (data/outputs.py)
        self.path, self.stage = path, staging_if_exists(path)
        attrs = _jsonable(reader.attrs)
        rate = getattr(reader, "fps", None)
        if embodiment is None and rate:  # keep the source's rate (a LeRobot export needs it)
            attrs[RATE_ATTR] = rate
        self.store = DemoStore.create(self.stage or path, embodiment, force=force, attrs=attrs)

    def write(self, episode: Episode) -> None:
        meta: dict[str, Any] = dict(episode.meta)
        if meta.get("source") not in SOURCES or meta.get("source") == "unknown":
            meta["source"] = "converted"  # contract: episodes imported from elsewhere
        self.store.append_episode(episode.steps, **meta)

    def close(self) -> None:
        if self.stage:
            publish(self.stage, self.path)

    def abort(self, keep_done: bool) -> None:
        # an interrupted new store keeps its committed episodes (valid up to the last finished
        # one); a refused one is removed; a replacement is dropped, so the DST it was to
        # replace stays as it was
        if self.stage:
            remove(self.stage)
        elif not (keep_done and self.store.n_episodes) and not is_url(self.path):
            remove(self.path)


def _jsonable(attrs: dict[str, Any]) -> dict[str, Any]:
    import json

    out = {}
    for k, v in attrs.items():
        try:
            json.dumps(v)
        except TypeError:
            v = str(v)
        out[k] = v
    return out


FORMATS.register("handoff")(
    Format(
        name="handoff",
        description="handoff zarr demonstration store (directory)",
        open_reader=HandoffReader,
        open_writer=HandoffWriter,
        read_options=(DROP_KEYS,),
        urls=True,  # DemoStore opens fsspec URLs (DESIGN.md: stores on object storage)
    )
)
