"""The one registration mechanism of handoff: name -> object tables, and cross-package hooks.

Policies, simulated tasks and store converters each keep a :class:`Registry`. Unknown names
fail with the list of valid ones.

``policies`` and ``sim`` must not import each other (see DESIGN.md), yet the trainer evaluates
in simulation and the evaluator loads checkpoints. They meet through :func:`hook`, which looks
up a function declared under the ``handoff.hooks`` entry-point group in ``pyproject.toml``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator
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


def one_file_each(registry: Registry[Any], package: str) -> Callable[[str], Callable[[T], T]]:
    """A ``register(name)`` decorator for ``registry`` that refuses a class not defined in
    ``<package>.<name>`` (one file per entry; :func:`import_all` finds the files)."""

    def register(name: str) -> Callable[[T], T]:
        def deco(cls: T) -> T:
            expected = f"{package}.{name}"
            if getattr(cls, "__module__", None) != expected:
                raise TypeError(f"{registry.kind} {name!r} must be defined in {expected}")
            cls.name = name  # type: ignore[attr-defined]
            return registry.register(name)(cls)

        return deco

    return register


def import_all(package: str, path: Iterable[str], skip: tuple[str, ...] = ("base",)) -> None:
    """Import every module of ``package`` (its ``__path__``) but ``skip``: each registers
    itself, so a new entry is one new file."""
    for info in pkgutil.iter_modules(list(path)):
        if info.name not in skip:
            importlib.import_module(f"{package}.{info.name}")


def hook(name: str) -> Callable[..., Any]:
    """Return the function registered as ``name`` in the ``handoff.hooks`` entry-point group."""
    for ep in metadata.entry_points(group="handoff.hooks"):
        if ep.name == name:
            return ep.load()
    raise RuntimeError(
        f"hook {name!r} is not installed; reinstall handoff with `make setup` "
        f"(entry points come from pyproject.toml)"
    )
