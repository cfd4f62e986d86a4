"""The ``handoff`` format: a zarr demonstration store (data/store.py), read and written as is."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data.convert.base import FORMATS, Episode, Format, Reader, Report
from data.embodiment import Embodiment
from data.store import SCHEMA_ATTR, SOURCES, DemoStore

_STORE_OWN_ATTRS = {SCHEMA_ATTR, "embodiment"}


class HandoffReader:
    def __init__(self, path: str | Path, report: Report, embodiment: Embodiment | None) -> None:
        self.store = DemoStore.open(path, "r")
        self.embodiment = self.store.embodiment or embodiment
        self.attrs = {k: v for k, v in self.store.attrs.items() if k not in _STORE_OWN_ATTRS}

    def __len__(self) -> int:
        return self.store.n_episodes

    def episodes(self) -> Iterator[Episode]:
        for i in range(self.store.n_episodes):
            yield Episode(self.store.episode(i), self.store.episode_meta(i))

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
        self.store = DemoStore.create(path, embodiment, force=force, attrs=_jsonable(reader.attrs))

    def write(self, episode: Episode) -> None:
        meta: dict[str, Any] = dict(episode.meta)
        if meta.get("source") not in SOURCES or meta.get("source") == "unknown":
            meta["source"] = "converted"  # contract: episodes imported from elsewhere
        self.store.append_episode(episode.steps, **meta)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass  # committed episodes stay: the store is valid up to the last finished one


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
        urls=True,  # DemoStore opens fsspec URLs (DESIGN.md: stores on object storage)
    )
)
