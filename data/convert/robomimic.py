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
    FORMATS,
    REWARD,
    SIM_STATE,
    Episode,
    Format,
    Reader,
    Report,
    is_image,
    publish,
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
    def __init__(self, path: Path, report: Report, embodiment: Embodiment | None) -> None:
        import h5py

        try:
            self.file = h5py.File(path, "r")
        except OSError:
            raise UserError(f"{path}: not an HDF5 file (--from robomimic expects one)") from None
        if "data" not in self.file or not isinstance(self.file["data"], h5py.Group):
            self.file.close()
            raise UserError(f"{path}: not a robomimic file (no data/ group of demo_N)")
        self.path = path
        self.report = report
        data = self.file["data"]
        spec = data.attrs.get(SPEC_ATTR)
        self.embodiment = embodiment or (
            Embodiment.from_dict(json.loads(spec), f"{path} data/{SPEC_ATTR}") if spec else None
        )
        self.demos = _demo_order([n for n in data if isinstance(data[n], h5py.Group)])
        self.attrs: dict[str, Any] = {}
        env_args = data.attrs.get("env_args")
        if env_args is not None:
            self.attrs[ENV_ARGS_ATTR] = json.loads(env_args)
        # robomimic has no time axis: steps are 1 / control_freq apart (robosuite's env kwarg)
        kwargs = self.attrs.get(ENV_ARGS_ATTR, {}).get("env_kwargs", {})
        self.hz = self.embodiment.control_hz if self.embodiment else kwargs.get("control_freq")
        self.filters: dict[str, set[str]] = {}
        for key, names in self.file["mask"].items() if "mask" in self.file else []:
            self.filters[key] = {n.decode() if isinstance(n, bytes) else str(n) for n in names[:]}
        if "model_file" in (data[self.demos[0]].attrs if self.demos else {}):
            report.drop("robomimic model_file (per-demo MJCF XML; replay uses sim_state)")

    def __len__(self) -> int:
        return len(self.demos)

    def episodes(self) -> Iterator[Episode]:
        task = (self.attrs.get(ENV_ARGS_ATTR) or {}).get("env_name")
        for name in self.demos:
            demo = self.file["data"][name]
            if "actions" not in demo or "obs" not in demo:
                raise UserError(f"{self.path}: data/{name} has no actions or obs/ (not robomimic)")
            steps: dict[str, np.ndarray] = {}
            for key, ds in demo["obs"].items():
                steps[handoff_key(key)] = self._array(ds, f"data/{name}/obs/{key}")
            steps["action"] = self._array(demo["actions"], f"data/{name}/actions")
            for src, dst in PER_STEP.items():
                if src in demo:
                    steps[dst] = self._array(demo[src], f"data/{name}/{src}")
            if self.hz:
                steps["timestamp"] = np.arange(len(steps["action"])) / float(self.hz)
            for src in json.loads(demo.attrs.get(SYNTH_ATTR, "[]")):
                steps.pop(PER_STEP[src], None)  # filled in by our writer, not data
            if META_ATTR in demo.attrs:
                meta = json.loads(demo.attrs[META_ATTR])
            else:
                meta = {"source": "converted", "robomimic_demo": name}
                if task:
                    meta["task"] = task
                if REWARD in steps:
                    # robomimic tasks reward 1 on success (sparse): a demo that earned it succeeded
                    meta["success"] = bool(np.max(steps[REWARD]) > 0)
            keys = sorted(k for k, members in self.filters.items() if name in members)
            if keys:
                meta["filter_keys"] = keys
            split = [k for k in SPLIT_KEYS if k in keys]
            if len(split) == 1:
                meta["split"] = split[0]
            yield Episode(steps, meta)

    def _array(self, ds: Any, where: str) -> np.ndarray:
        try:
            a = np.asarray(ds[()])
        except (OSError, KeyError) as e:
            raise UserError(f"{self.path}: cannot read {where} ({e})") from None
        if a.dtype == np.float64:
            self.report.note("float64 arrays stored as float32 (handoff low-dim dtype)")
        return a

    def close(self) -> None:
        self.file.close()


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
        env_args = self.env_args or {"env_name": self.task or "unknown", "type": 1}
        if self.embodiment is not None:
            env_args.setdefault("env_kwargs", {}).setdefault(
                "control_freq", self.embodiment.control_hz
            )
            self.data.attrs[SPEC_ATTR] = json.dumps(self.embodiment.to_dict())
        self.data.attrs["env_args"] = json.dumps(env_args)
        if self.filters:
            mask = self.file.create_group("mask")
            for key, names in sorted(self.filters.items()):
                mask.create_dataset(key, data=np.array(names, dtype="S"))
        self.file.close()
        publish(self.tmp, self.path)

    def abort(self) -> None:
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
    )
)
