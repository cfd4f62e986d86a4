"""The embodiment spec: one typed description of a robot that every part of handoff reads.

The sim, the recorder, the policy node, the safety filter and the trainer all take joint
names, limits, rates, cameras and the observation/action layout from here; nothing else
hard-codes them. A spec lives in a YAML file (see ``data/specs/``) and inside every store and
checkpoint, so a checkpoint can be checked against the arm it is about to drive.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data.errors import UserError

SPEC_VERSION = 1
SPECS_DIR = Path(__file__).parent / "specs"


@dataclass(frozen=True)
class CameraSpec:
    name: str
    width: int
    height: int
    fps: float

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"camera name {self.name!r} must be a non-empty identifier")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera {self.name!r}: width and height must be positive")
        if self.fps <= 0:
            raise ValueError(f"camera {self.name!r}: fps must be positive")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Stored frame shape, HWC uint8."""
        return (self.height, self.width, 3)


# The sim Panda's finger joints (robosuite 1.5's panda_gripper.xml). Only the fallback for a
# spec named ``sim_panda`` written before ``gripper.joint_names`` existed (stores and
# checkpoints made then); data/specs/sim_panda.yaml lists them itself.
SIM_PANDA_FINGER_JOINTS = ("gripper0_right_finger_joint1", "gripper0_right_finger_joint2")


@dataclass(frozen=True)
class GripperSpec:
    """The gripper command range in the controller's units (e.g. -1 open .. 1 closed in sim).

    ``joint_names`` are the finger joints as ``/joint_states`` names them; their positions
    form the ``gripper_pos`` observation (one value per finger, in this order). Empty when the
    arm reports no finger joints; a spec that observes ``gripper_pos`` then needs them.
    """

    command_min: float
    command_max: float
    open_command: float
    joint_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(set(self.joint_names)) != len(self.joint_names) or not all(self.joint_names):
            raise ValueError("gripper.joint_names must be unique, non-empty names")
        if not self.command_min < self.command_max:
            raise ValueError("gripper.command_min must be below gripper.command_max")
        if not self.command_min <= self.open_command <= self.command_max:
            raise ValueError("gripper.open_command must lie inside [command_min, command_max]")


@dataclass(frozen=True)
class Embodiment:
    """A robot as the learning stack sees it.

    The default action is ``action`` of shape (Da,) = absolute joint-position targets for every
    joint in ``joint_names`` followed by one gripper command: what a ros2_control position
    controller takes. ``observation`` maps each low-dim observation key to its shape;
    ``privileged`` lists keys only a simulator can provide (object poses), which a policy meant
    for hardware must not use.
    """

    name: str
    joint_names: tuple[str, ...]
    position_lower: tuple[float, ...]
    position_upper: tuple[float, ...]
    velocity_limit: tuple[float, ...]
    gripper: GripperSpec
    control_hz: float
    cameras: tuple[CameraSpec, ...] = ()
    observation: dict[str, tuple[int, ...]] = field(default_factory=dict)
    privileged: tuple[str, ...] = ()
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        n = len(self.joint_names)
        if n == 0:
            raise ValueError("joint_names must list at least one joint")
        if len(set(self.joint_names)) != n:
            raise ValueError("joint_names must be unique")
        for key in ("position_lower", "position_upper", "velocity_limit"):
            values = getattr(self, key)
            if len(values) != n:
                raise ValueError(f"{key} has {len(values)} values but there are {n} joints")
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"{key} must be finite numbers")
        for lo, hi, name in zip(self.position_lower, self.position_upper, self.joint_names):
            if not lo < hi:
                raise ValueError(f"joint {name}: position_lower must be below position_upper")
        if any(v <= 0 for v in self.velocity_limit):
            raise ValueError("velocity_limit must be positive for every joint")
        if self.control_hz <= 0:
            raise ValueError("control_hz must be positive")
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError("camera names must be unique")
        # per-step keys of the store that are not observations (data/store.py: label)
        reserved = {"action", "timestamp", "intervention", "label"} | set(names)
        if set(self.joint_names) & set(self.gripper.joint_names):
            raise ValueError("gripper.joint_names must not repeat arm joint_names")
        for key, shape in self.observation.items():
            if key in reserved:
                raise ValueError(f"observation key {key!r} clashes with a camera or reserved key")
            if not shape or any(int(d) <= 0 for d in shape):
                raise ValueError(f"observation {key!r}: shape {shape} must be positive dims")
        for key in self.privileged:
            if key not in self.observation:
                raise ValueError(f"privileged key {key!r} is not an observation key")
        if self.version != SPEC_VERSION:
            raise ValueError(
                f"embodiment spec version {self.version} is not supported (this handoff reads "
                f"version {SPEC_VERSION})"
            )

    @property
    def n_joints(self) -> int:
        return len(self.joint_names)

    @property
    def action_dim(self) -> int:
        """Da: one target per joint plus the gripper command."""
        return self.n_joints + 1

    @property
    def dt(self) -> float:
        return 1.0 / self.control_hz

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cameras)

    def camera(self, name: str) -> CameraSpec:
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise KeyError(f"camera {name!r} is not in spec {self.name!r} (has {self.camera_names})")

    def finger_joints(self, override: str = "") -> list[str]:
        """The finger joints that form ``gripper_pos``: ``override`` (comma-separated names,
        as a node parameter or converter option gives them) or, when it is empty, the spec's
        ``gripper.joint_names``."""
        names = [n.strip() for n in override.split(",") if n.strip()]
        return names or list(self.gripper.joint_names)

    def action_low(self) -> list[float]:
        return [*self.position_lower, self.gripper.command_min]

    def action_high(self) -> list[float]:
        return [*self.position_upper, self.gripper.command_max]

    def with_cameras(self, names: list[str] | None, size: tuple[int, int] | None) -> Embodiment:
        """A copy keeping only ``names`` (None keeps all), resized to ``size`` = (H, W)."""
        cams = [c for c in self.cameras if names is None or c.name in names]
        missing = set(names or []) - {c.name for c in cams}
        if missing:
            raise UserError(
                f"cameras {sorted(missing)} are not in spec {self.name!r}; "
                f"choose from {list(self.camera_names)}"
            )
        if size is not None:
            cams = [CameraSpec(c.name, size[1], size[0], c.fps) for c in cams]
        return _replace(self, cameras=tuple(cams))

    # ---- (de)serialisation -------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["joint_names"] = list(self.joint_names)
        d["gripper"]["joint_names"] = list(self.gripper.joint_names)
        d["observation"] = {k: list(v) for k, v in self.observation.items()}
        return _jsonable(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "spec") -> Embodiment:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise UserError(
                f"{source}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(known)}"
            )
        for key in ("gripper", "observation"):
            if not isinstance(d.get(key) or {}, dict):
                raise UserError(f"{source}: {key} must be a mapping, got {d[key]!r:.60}")
        try:
            kw = dict(d)
            kw["joint_names"] = tuple(kw["joint_names"])
            for key in ("position_lower", "position_upper", "velocity_limit"):
                kw[key] = tuple(float(v) for v in kw[key])
            kw["gripper"] = _gripper(kw["gripper"], kw["name"])
            kw["cameras"] = tuple(CameraSpec(**c) for c in kw.get("cameras") or ())
            kw["observation"] = {
                k: tuple(int(x) for x in v) for k, v in (kw.get("observation") or {}).items()
            }
            kw["privileged"] = tuple(kw.get("privileged") or ())
            kw["control_hz"] = float(kw["control_hz"])
            return cls(**kw)
        except KeyError as e:
            raise UserError(f"{source}: missing key {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise UserError(f"{source}: {e}") from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def compatible_with(self, other: Embodiment) -> list[str]:
        """Differences that make data or a policy from ``other`` unusable on ``self``."""
        problems = []
        if self.joint_names != other.joint_names:
            problems.append(
                f"joint names differ: {list(self.joint_names)} vs {list(other.joint_names)}"
            )
        if self.control_hz != other.control_hz:
            problems.append(f"control rate differs: {self.control_hz} Hz vs {other.control_hz} Hz")
        for key, shape in other.observation.items():
            if key in self.observation and tuple(self.observation[key]) != tuple(shape):
                problems.append(
                    f"observation {key!r} shape differs: {self.observation[key]} vs {shape}"
                )
        return problems


def _gripper(d: dict[str, Any], spec_name: str) -> GripperSpec:
    """GripperSpec from its mapping; a spec without ``joint_names`` (written before they were
    part of it) gets the sim Panda's fingers when it is ``sim_panda``, else none."""
    kw: dict[str, Any] = {k: v for k, v in d.items() if k != "joint_names"}
    kw = {k: float(v) for k, v in kw.items()}
    if "joint_names" in d:
        names = d["joint_names"] or ()
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"gripper.joint_names must be a list of names, got {names!r:.60}")
        kw["joint_names"] = tuple(names)
    elif spec_name == "sim_panda":
        kw["joint_names"] = SIM_PANDA_FINGER_JOINTS
    return GripperSpec(**kw)


def _replace(spec: Embodiment, **changes: Any) -> Embodiment:
    from dataclasses import replace

    return replace(spec, **changes)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x


def load_embodiment(name_or_path: str | Path) -> Embodiment:
    """Load a spec by bundled name (``sim_panda``) or from a YAML file path."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = SPECS_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            names = sorted(p.stem for p in SPECS_DIR.glob("*.yaml"))
            raise UserError(f"no embodiment spec named {str(name_or_path)!r}; bundled: {names}")
    if not path.is_file():
        raise UserError(f"{path}: embodiment spec file not found")
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: expected a mapping of spec keys at the top level")
    return Embodiment.from_dict(d, source=str(path))
