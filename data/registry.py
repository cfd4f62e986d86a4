"""The one registration mechanism of handoff: name -> object tables, and cross-package hooks.

Policies, simulated tasks and store converters each keep a :class:`Registry`. Unknown names
fail with the list of valid ones.

``policies`` and ``sim`` must not import each other (see DESIGN.md), yet the trainer evaluates
in simulation and the evaluator loads checkpoints. They meet through :func:`hook`, which looks
up a function declared under the ``handoff.hooks`` entry-point group in ``pyproject.toml``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any, Generic, TypeVar

from data.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of ``kind`` objects (policies, tasks, formats, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UserError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))


def hook(name: str) -> Callable[..., Any]:
    """Return the function registered as ``name`` in the ``handoff.hooks`` entry-point group."""
    for ep in metadata.entry_points(group="handoff.hooks"):
        if ep.name == name:
            return ep.load()
    raise RuntimeError(
        f"hook {name!r} is not installed; reinstall handoff with `make setup` "
        f"(entry points come from pyproject.toml)"
    )
