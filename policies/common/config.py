"""The base of every policy config: typed, validated in ``__post_init__``, strict about keys."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from data.errors import UserError

NORM_MODES = ("min_max", "mean_std", "identity")


class StrictConfig:
    """Dataclass mixin: ``to_dict`` / ``from_dict`` with unknown keys failing loudly.

    ``LIMITS`` maps a numeric field (or a list of numbers) to its inclusive range. A config
    comes from untrusted files too (a checkpoint's ``config.json``, a run's settings), so sizes
    are bounded before anything is built from them: far above any published model, far below
    what would exhaust memory (``n_encoder_layers: 1000000000`` is refused, not allocated).
    """

    name: ClassVar[str] = ""
    LIMITS: ClassVar[dict[str, tuple[float, float]]] = {}

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> Any:
        if not isinstance(d, dict):
            raise UserError(
                f"{source}: expected a mapping of {cls.name} config keys, got "
                f"{type(d).__name__} {_short(d)}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserError(
                f"{source}: unknown {cls.name} config key(s) {sorted(map(str, unknown))}; "
                f"valid keys: {sorted(known)}"
            )
        hints = typing.get_type_hints(cls)
        kw = {k: _coerce(v, hints[k], f"{source}: {k}") for k, v in d.items()}
        return cls(**kw)

    def replace(self, **changes: Any) -> Any:
        return type(self).from_dict({**self.to_dict(), **changes})

    def check_limits(self) -> None:
        """Every field named in ``LIMITS`` (each entry, for lists; None skipped) in range."""
        for key, (lo, hi) in self.LIMITS.items():
            value = getattr(self, key)
            values = value if isinstance(value, list | tuple) else [value]
            if any(v is not None and not lo <= v <= hi for v in values):
                raise UserError(f"{self.name} config: {key} = {value} must be in [{lo:g}, {hi:g}]")


@dataclass
class PolicyConfig(StrictConfig):
    """Fields every policy has. Subclasses add their own and call ``super().__post_init__()``.

    ``obs_keys`` None means "whatever the training store holds" (its low-dim keys and
    cameras, checked against the embodiment spec); the trainer resolves it before the model is
    built, so a saved config always lists the keys the checkpoint consumes.
    """

    name: ClassVar[str] = ""
    LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "n_obs_steps": (1, 100),
        "horizon": (1, 4096),  # 80 s at 50 Hz; ACT's chunk is 100, diffusion's 16
        "n_action_steps": (1, 4096),
        "crop_ratio": (0.5, 1.0),
        "vision_width": (16, 512),  # 8x ResNet-18's 64 is ~0.7G parameters per camera
    }

    obs_keys: list[str] | None = None
    n_obs_steps: int = 1  # To
    horizon: int = 1  # Tp: predicted action steps
    n_action_steps: int = 1  # Ta: executed action steps per prediction
    # Images: crop to this fraction of each side (random in training, centred at inference);
    # diffusion_policy crops 84 -> 76 on robomimic, i.e. ~0.9.
    crop_ratio: float = 1.0
    vision_width: int = 64  # ResNet-18 stem width; 64 is the standard ResNet-18
    lowdim_norm: str = "min_max"
    action_norm: str = "min_max"
    exclude_keys: list[str] = field(default_factory=list)
    # Simulator-only keys (the spec's ``privileged``, e.g. object_state) are inputs only when
    # this is set (``handoff-train --privileged``): by default a policy is deployable.
    privileged: bool = False

    def __post_init__(self) -> None:
        self.check_limits()
        if self.vision_width % 16:
            raise UserError(
                f"{self.name} config: vision_width must be a multiple of 16 (GroupNorm uses "
                f"width/16 groups)"
            )
        for key in ("lowdim_norm", "action_norm"):
            if getattr(self, key) not in NORM_MODES:
                raise UserError(f"{self.name} config: {key} must be one of {NORM_MODES}")
        if self.obs_keys is not None and not self.obs_keys:
            raise UserError(f"{self.name} config: obs_keys is empty; list keys or leave it unset")


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _finite(x: float, where: str) -> float:
    if not math.isfinite(x):  # JSON's NaN/Infinity, YAML's .nan
        raise UserError(f"{where} = {x} must be a finite number")
    return x


def _plain(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    return v


def _coerce(v: Any, hint: Any, where: str) -> Any:
    """YAML/JSON values -> the field's type (lists to tuples, ints to floats), or a clear error."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if v is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(v, a, where)
            except UserError:
                continue
        raise UserError(f"{where} = {_short(v)} does not fit type {hint}")
    if origin in (list, tuple):
        if not isinstance(v, list | tuple):
            raise UserError(f"{where} must be a list, got {_short(v)}")
        inner = args[0] if args else Any
        items = [_coerce(x, inner, where) for x in v]
        return tuple(items) if origin is tuple else items
    if hint is float and isinstance(v, int | float) and not isinstance(v, bool):
        return _finite(float(v), where)
    if hint is float and isinstance(v, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
        try:
            return _finite(float(v), where)
        except ValueError:
            pass
    if hint is int and isinstance(v, int) and not isinstance(v, bool):
        return v
    if hint is bool and isinstance(v, bool):
        return v
    if hint is str and isinstance(v, str):
        return v
    if hint is Any:
        return v
    raise UserError(f"{where} = {_short(v)} must be of type {getattr(hint, '__name__', hint)}")
