"""robomimic HDF5 (h5py), read and written.

Layout (robomimic's ``dataset_states_to_obs.py`` output)::

    data/            attrs: total, env_args (JSON string)
      demo_N/        attrs: num_samples (, model_file)
        obs/<key>    (T, ...) low-dim float or uint8 (T, H, W, 3) images named <camera>_image
        actions      (T, Da)
        rewards      (T,)     dones (T,)     states (T, D_sim)  (flattened MuJoCo state)
    mask/<filter>    names of the demos in that filter key (train, valid, 20_percent, ...)

Key names map to handoff's (robosuite's ``robot0_*`` observation names, ``object`` ->
``object_state``, ``<cam>_image`` -> ``<cam>``; ``robot0_eye_in_hand`` is the wrist camera).
``rewards``/``dones``/``states`` become the per-step keys ``reward``/``done``/``sim_state``.
Filter keys become per-episode metadata (``filter_keys``; ``split`` for train/valid) and back.
``env_args`` is kept in the store attrs as ``robomimic_env_args``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from data.convert.base import (
    DONE,
    DROP_KEYS,
    FORMATS,
    REWARD,
    SIM_STATE,
    Episode,
    Format,
    Reader,
    Report,
    checked_episode,
    drop_keys_option,
    is_image,
    publish,
    source_rate,
    staging_dir,
)
from data.embodiment import Embodiment
from data.errors import UserError

ENV_ARGS_ATTR = "robomimic_env_args"
# our own attrs (on data/ and on each demo): spec and episode metadata survive a round trip
SPEC_ATTR = "handoff_embodiment"
META_ATTR = "handoff_meta"
SYNTH_ATTR = "handoff_synthesized"  # datasets our writer made up (rewards/dones), not data
# robomimic (robosuite) observation name -> handoff key; the inverse is used on export
OBS_NAMES = {
    "robot0_joint_pos": "joint_pos",
    "robot0_joint_vel": "joint_vel",
    "robot0_gripper_qpos": "gripper_pos",
    "robot0_eef_pos": "eef_pos",
    "robot0_eef_quat": "eef_quat",  # robosuite quaternions are (x, y, z, w), as handoff's
    "object": "object_state",
    "robot0_eye_in_hand_image": "wrist",
}
TO_ROBOMIMIC = {v: k for k, v in OBS_NAMES.items()}
PER_STEP = {"rewards": REWARD, "dones": DONE, "states": SIM_STATE}
SPLIT_KEYS = ("train", "valid")  # robomimic's filter keys for the train/validation split
IMAGE_COMPRESSION = {"compression": "gzip", "compression_opts": 4}


def handoff_key(name: str) -> str:
    if name in OBS_NAMES:
        return OBS_NAMES[name]
    return name.removesuffix("_image")


def robomimic_key(key: str, image: bool) -> str:
    if key in TO_ROBOMIMIC:
        return TO_ROBOMIMIC[key]
    return f"{key}_image" if image else key


def _demo_order(names: list[str]) -> list[str]:
    def index(n: str) -> tuple[int, str]:
        m = re.fullmatch(r"demo_(\d+)", n)
        return (int(m.group(1)) if m else 1 << 62, n)

    return sorted(names, key=index)


class RobomimicReader:
    """Reads robomimic demos; every dataset's dtype and shape is checked before use."""

    def __init__(
        self, path: Path, report: Report, embodiment: Embodiment | None, *, drop_keys: Any = None
    ) -> None:
        import h5py

        try:
            self.file = h5py.File(path, "r")
        except OSError:
            raise UserError(f"{path}: not an HDF5 file (--from robomimic expects one)") from None
        if "data" not in self.file or not isinstance(self.file["data"], h5py.Group):
            self.file.close()
            raise UserError(f"{path}: not a robomimic file (no data/ group of demo_N)")
        self.path, self.report, self.drop = path, report, drop_keys_option(drop_keys)
        data = self.file["data"]
        spec = _json_attr(data.attrs, SPEC_ATTR, f"{path} data/", dict)
        self.embodiment = embodiment or (
            Embodiment.from_dict(spec, f"{path} data/{SPEC_ATTR}") if spec else None
        )
        self.demos = _demo_order([n for n in data if isinstance(data[n], h5py.Group)])
        self.attrs: dict[str, Any] = {}
        env_args = _json_attr(data.attrs, "env_args", f"{path} data/", dict)
        if env_args is not None:
            self.attrs[ENV_ARGS_ATTR] = env_args
        # robomimic has no time axis: steps are 1 / control_freq apart (robosuite's env kwarg);
        # the rate is carried on (``fps``) so the store and a LeRobot export keep it
        kwargs = (env_args or {}).get("env_kwargs")
        rate = kwargs.get("control_freq") if isinstance(kwargs, dict) else None
        where = f"{path} data/ env_args.env_kwargs.control_freq"
        self.hz = source_rate(where, rate, self.embodiment) or (
            self.embodiment.control_hz if self.embodiment else None
        )
        self.fps = self.hz
        self.filters: dict[str, set[str]] = {}
        for key, names in self.file["mask"].items() if "mask" in self.file else []:
            if not isinstance(names, h5py.Dataset) or names.dtype.kind not in "SOU":
                raise UserError(f"{path}: mask/{key} must list demo names (strings)")
            self.filters[key] = {n.decode() if isinstance(n, bytes) else str(n) for n in names[:]}
        if "model_file" in (data[self.demos[0]].attrs if self.demos else {}):
            report.drop("robomimic model_file (per-demo MJCF XML; replay uses sim_state)")

    def __len__(self) -> int:
        return len(self.demos)

    def episodes(self) -> Iterator[Episode]:
        for name in self.demos:
            where = f"{self.path} data/{name}"
            try:
                steps, meta, names = self._demo(name)
            except (KeyError, TypeError, ValueError, IndexError, OSError) as e:
                raise UserError(f"{where} is malformed ({type(e).__name__}: {e})") from None
            yield checked_episode(Episode(steps, meta), where, self.report, self.drop, names)

    def _demo(self, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, str]]:
        """(steps, meta, {key: source dataset}) of one demo."""
        import h5py

        demo = self.file["data"][name]
        if not isinstance(demo.get("actions"), h5py.Dataset) or not isinstance(
            demo.get("obs"), h5py.Group
        ):
            raise UserError(f"{self.path}: data/{name} has no actions or obs/ (not robomimic)")
        sources = {handoff_key(k): f"data/{name}/obs/{k}" for k in demo["obs"]}
        sources["action"] = f"data/{name}/actions"
        sources |= {dst: f"data/{name}/{src}" for src, dst in PER_STEP.items() if src in demo}
        if len(sources) < len(demo["obs"]) + 1 + sum(s in demo for s in PER_STEP):
            raise UserError(f"{self.path}: data/{name}: two datasets map to one handoff key")
        steps = {key: self._array(self.file[where], where) for key, where in sources.items()}
        lengths = {sources[k]: len(v) for k, v in steps.items()}
        if len(set(lengths.values())) > 1:
            raise UserError(f"{self.path}: data/{name} datasets differ in length: {lengths}")
        if self.hz:
            steps["timestamp"] = np.arange(len(steps["action"])) / float(self.hz)
        synth = _json_attr(demo.attrs, SYNTH_ATTR, f"{self.path} data/{name}", list) or []
        for src in synth:
            steps.pop(PER_STEP.get(src, ""), None)  # filled in by our writer, not data
        meta = _json_attr(demo.attrs, META_ATTR, f"{self.path} data/{name}", dict)
        if meta is None:
            meta = {"source": "converted", "robomimic_demo": name}
            task = (self.attrs.get(ENV_ARGS_ATTR) or {}).get("env_name")
            if task:
                meta["task"] = str(task)
            if REWARD in steps:
                # robomimic tasks reward 1 on success (sparse): a demo that earned it succeeded
                meta["success"] = bool(np.max(steps[REWARD]) > 0)
        keys = sorted(k for k, members in self.filters.items() if name in members)
        if keys:
            meta["filter_keys"] = keys
        split = [k for k in SPLIT_KEYS if k in keys]
        if len(split) == 1:
            meta["split"] = split[0]
        return steps, meta, sources

    def _array(self, ds: Any, where: str) -> np.ndarray:
        """A per-step dataset (T, ...) of numbers; images (``*_image``) uint8 (T, H, W, C)."""
        import h5py

        if not isinstance(ds, h5py.Dataset):
            raise UserError(f"{self.path}: {where} is a group, not a dataset")
        if ds.dtype.kind not in "fiub" or ds.ndim == 0:
            raise UserError(
                f"{self.path}: {where} holds {ds.dtype} {list(ds.shape)}: expected per-step "
                "numbers (T, ...)"
            )
        if where.endswith("_image") and (
            ds.dtype != np.uint8 or ds.ndim != 4 or ds.shape[-1] not in (1, 3, 4)
        ):
            raise UserError(
                f"{self.path}: {where} holds {ds.dtype} {list(ds.shape)}: robomimic images are "
                "uint8 (T, H, W, 3)"
            )
        if where.endswith("/actions") and ds.ndim != 2:
            raise UserError(f"{self.path}: {where} has shape {list(ds.shape)}; expected (T, Da)")
        try:
            a = np.asarray(ds[()])
        except (OSError, KeyError) as e:
            raise UserError(f"{self.path}: cannot read {where} ({e})") from None
        if a.dtype == np.float64:
            self.report.note("float64 arrays stored as float32 (handoff low-dim dtype)")
        return a

    def close(self) -> None:
        self.file.close()


def _json_attr(attrs: Any, name: str, where: str, kind: type) -> Any:
    """A JSON-string attribute (robomimic's env_args, our own) parsed, or None when absent."""
    raw = attrs.get(name)
    if raw is None:
        return None
    try:
        value = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{where}: attribute {name} is not JSON ({e})") from None
    if not isinstance(value, kind):
        raise UserError(f"{where}: attribute {name} must be a JSON {kind.__name__}")
    return value


class RobomimicWriter:
    """Writes to a staging file renamed onto DST when complete (no half-written HDF5)."""

    def __init__(
        self,
        path: Path,
        report: Report,
        reader: Reader,
        embodiment: Embodiment | None,
        *,
        force: bool = False,
    ) -> None:
        import h5py

        self.path = path
        self.tmp = staging_dir(path)
        self.report = report
        self.file = h5py.File(self.tmp, "w")
        self.data = self.file.create_group("data")
        self.env_args = reader.attrs.get(ENV_ARGS_ATTR)
        self.fps = getattr(reader, "fps", None)
        others = sorted(set(reader.attrs) - {ENV_ARGS_ATTR})
        if others:
            report.drop(f"store attrs {others} (robomimic keeps only env_args)")
        self.embodiment = embodiment
        self.filters: dict[str, list[str]] = {}
        self.total = 0
        self.n = 0
        self.task: str | None = None

    def write(self, episode: Episode) -> None:
        name = f"demo_{self.n}"
        demo = self.data.create_group(name)
        obs = demo.create_group("obs")
        T = len(episode)
        for key, v in episode.steps.items():
            if key == "action":
                demo.create_dataset("actions", data=v)
            elif key in PER_STEP.values():
                target = {d: s for s, d in PER_STEP.items()}[key]
                demo.create_dataset(target, data=v)
            elif key == "timestamp":
                self.report.drop("timestamp (robomimic has no time axis; import regenerates it)")
            elif is_image(v):
                obs.create_dataset(robomimic_key(key, True), data=v, **IMAGE_COMPRESSION)
            else:
                obs.create_dataset(robomimic_key(key, False), data=v)
        if "action" not in episode.steps:
            raise UserError(f"{self.report.src}: episode {self.n} has no 'action' key")
        synthesized = []
        if REWARD not in episode.steps:
            # robomimic's loaders read rewards/dones by default: sparse success reward at the end
            success = bool(episode.meta.get("success", False))
            demo.create_dataset("rewards", data=_last_step(T, float(success), np.float64))
            self.report.note("rewards written as sparse success reward (source has none)")
            synthesized.append("rewards")
        if DONE not in episode.steps:
            demo.create_dataset("dones", data=_last_step(T, 1, np.int64))
            self.report.note("dones written as 1 at the last step (source has none)")
            synthesized.append("dones")
        demo.attrs[SYNTH_ATTR] = json.dumps(synthesized)
        if SIM_STATE not in episode.steps:
            self.report.drop("robomimic states (the source has no simulator state)")
        demo.attrs["num_samples"] = T
        for key in episode.meta.get("filter_keys") or []:
            self.filters.setdefault(key, []).append(name)
        split = episode.meta.get("split")
        if split in SPLIT_KEYS and name not in self.filters.get(split, []):
            self.filters.setdefault(split, []).append(name)
        self.task = self.task or episode.meta.get("task")
        demo.attrs[META_ATTR] = json.dumps(episode.meta)
        self.total += T
        self.n += 1

    def close(self) -> None:
        self.data.attrs["total"] = self.total
        env_args = dict(self.env_args or {"env_name": self.task or "unknown", "type": 1})
        # the steps' rate (the spec's, else the source's): robomimic keeps it here
        rate = self.embodiment.control_hz if self.embodiment is not None else self.fps
        kwargs = env_args.get("env_kwargs")
        if rate and (kwargs is None or isinstance(kwargs, dict)):
            env_args["env_kwargs"] = {"control_freq": rate, **(kwargs or {})}
        if self.embodiment is not None:
            self.data.attrs[SPEC_ATTR] = json.dumps(self.embodiment.to_dict())
        self.data.attrs["env_args"] = json.dumps(env_args)
        if self.filters:
            mask = self.file.create_group("mask")
            for key, names in sorted(self.filters.items()):
                mask.create_dataset(key, data=np.array(names, dtype="S"))
        self.file.close()
        publish(self.tmp, self.path)

    def abort(self, keep_done: bool = False) -> None:  # staged: nothing to keep
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def _last_step(T: int, value: float, dtype: Any) -> np.ndarray:
    out = np.zeros(T, dtype=dtype)
    out[-1] = value
    return out


FORMATS.register("robomimic")(
    Format(
        name="robomimic",
        description="robomimic HDF5 (data/demo_N/{obs,actions,rewards,dones,states}, mask/)",
        open_reader=RobomimicReader,
        open_writer=RobomimicWriter,
        read_options=(DROP_KEYS,),
    )
)
