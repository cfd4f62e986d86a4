"""Policies by name: ``policies/<name>/config.py`` holds its config, ``model.py`` its model.

The folder rule is enforced here: :func:`register_policy` refuses a class whose module or
config module is not ``policies.<name>.model`` / ``policies.<name>.config``, and
:func:`get_policy_class` imports ``policies.<name>.model`` on demand, so a new policy is a new
folder and nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path

from data.errors import UserError
from data.registry import Registry
from policies.common.config import PolicyConfig
from policies.common.policy import Policy

POLICIES: Registry[type[Policy]] = Registry("policy")
_NOT_POLICIES = {"common", "recipes"}


def register_policy(name: str) -> Callable[[type[Policy]], type[Policy]]:
    def deco(cls: type[Policy]) -> type[Policy]:
        expected_model = f"policies.{name}.model"
        expected_config = f"policies.{name}.config"
        if cls.__module__ != expected_model:
            raise TypeError(
                f"policy {name!r} must be defined in {expected_model}, not {cls.__module__}"
            )
        if cls.config_class.__module__ != expected_config:
            raise TypeError(f"policy {name!r}'s config must live in {expected_config}")
        if cls.config_class.name != name or not issubclass(cls.config_class, PolicyConfig):
            raise TypeError(f"policy {name!r}: config_class must be a PolicyConfig named {name!r}")
        cls.name = name
        return POLICIES.register(name)(cls)

    return deco


def policy_names() -> list[str]:
    """Every policy folder under ``policies/`` (imported, so each registers itself)."""
    root = Path(__file__).parent
    for info in pkgutil.iter_modules([str(root)]):
        if (
            info.ispkg
            and info.name not in _NOT_POLICIES
            and (root / info.name / "model.py").exists()
        ):
            importlib.import_module(f"policies.{info.name}.model")
    return POLICIES.names()


def get_policy_class(name: str) -> type[Policy]:
    if not isinstance(name, str):  # e.g. "policy": ["act"] in a hand-edited config.json
        raise UserError(f"a policy name must be a string, got {name!r:.60}")
    if name not in POLICIES:
        policy_names()
    return POLICIES.get(name)


def make_config(name: str, overrides: dict | None = None, source: str = "config") -> PolicyConfig:
    cls = get_policy_class(name).config_class
    return cls.from_dict(dict(overrides or {}), source=source)
