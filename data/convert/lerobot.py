"""LeRobotDataset: read v2.1 and v3.0, write v3.0 (see lerobot_write.py).

v3.0 layout (what the writer produces)::

    meta/info.json                      codebase_version "v3.0", fps, features, path templates
    meta/stats.json                     per-feature min/max/mean/std/count
    meta/tasks.parquet                  task strings (pandas index "task") -> task_index
    meta/episodes/chunk-000/file-000.parquet   one row per episode: length, tasks, where its
                                        frames and video segments live (from/to timestamps)
    data/chunk-000/file-000.parquet     frames of many episodes, one row per step
    videos/<video_key>/chunk-000/file-000.mp4  a camera's episodes back to back

v2.1 differs in ``meta/episodes.jsonl`` + ``meta/tasks.jsonl`` and one Parquet and one MP4 per
episode (paths from info.json's ``data_path``/``video_path`` templates).

Video frames are matched to rows by time, as LeRobot does: row t of an episode shows the
frame nearest ``from_timestamp`` (v3; 0 in v2.1) + its ``timestamp``, within ``tolerance_s``
(default 1e-4 s, LeRobot's); a row without such a frame is refused by episode and time. Path
templates in info.json must stay inside the dataset and use only LeRobot's fields.

Key mapping (LeRobot convention <-> handoff): ``observation.state`` is the concatenated
proprioception; the writer names its dims ``<key>.<i>`` so the reader splits it back into
handoff keys (a dataset from elsewhere becomes one ``state`` key, whatever its names; its
embodiment is inferred in lerobot_store.py when it is used as training data). Privileged keys go to
``observation.environment_state``, cameras to ``observation.images.<camera>``,
``reward``/``done`` to ``next.reward``/``next.done``.
"""

from __future__ import annotations

import json
import os
import re
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from data.convert.base import (
    DONE,
    DROP_KEYS,
    FORMATS,
    REWARD,
    Episode,
    Format,
    Option,
    Report,
    checked_episode,
    drop_keys_option,
    lazy,
    source_rate,
)
from data.embodiment import Embodiment
from data.errors import UserError
from data.video import VideoDecoder

# Cameras are H.264 video (data/video.py). crf 18 is x264's "visually lossless" point: frames
# decode at >= 35 dB PSNR on camera-like content (tests/data/test_convert_lerobot.py checks it);
# that loss is what a video round trip costs. A keyframe every 2nd frame follows LeRobot's
# encoder default (``g=2``): random access (training-time seeking) stays cheap.
DEFAULT_CRF = 18
DEFAULT_GOP = 2
# How far a frame's time may be from a row's timestamp: LeRobot's default ``tolerance_s``
# (LeRobotDataset), far below any frame period yet above float32 timestamp rounding (< 1e-5 s
# for episodes under ~100 s).
DEFAULT_TOLERANCE_S = 1e-4

STATE, ENV_STATE, IMAGES = (
    "observation.state",
    "observation.environment_state",
    "observation.images.",
)
FRAME_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
RENAMED = {"next.reward": REWARD, "next.done": DONE, "action": "action"}
HANDOFF_INFO = "handoff"  # our own key in info.json: embodiment + store attrs for round trips
META_COLUMN = "handoff_meta"  # our own column in the episodes table: episode metadata as JSON
TIMESTAMP_COLUMN = "handoff.timestamp"  # our own frame column: the store's float64 timestamps


def split_names(names: Any, dim: int) -> list[tuple[str, int]] | None:
    """[(key, width)] if every dim name is ``<key>.<x>`` with keys in contiguous runs."""
    if isinstance(names, dict):  # v2.0-style {"motors": [...]}
        names = [n for group in names.values() for n in group]
    if not isinstance(names, list) or len(names) != dim:
        return None
    runs: list[tuple[str, int]] = []
    for name in names:
        if not isinstance(name, str) or "." not in name:
            return None
        key = name.split(".", 1)[0]
        if runs and runs[-1][0] == key:
            runs[-1] = (key, runs[-1][1] + 1)
        elif any(k == key for k, _ in runs):
            return None
        else:
            runs.append((key, 1))
    return runs


def column_to_numpy(column: Any, shape: list[int], where: Any = "", name: str = "") -> np.ndarray:
    """A Parquet column (scalars or fixed-length lists) -> (T, *shape) numeric array.

    Refused (naming ``where`` and the column ``name``) when its values are not numbers or do
    not fill ``shape`` per row.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    T = len(col)
    while pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type):
        col = pc.list_flatten(col)
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)) and not (
        pa.types.is_boolean(col.type)
    ):
        raise UserError(f"{where}: column {name!r} holds {col.type}, not numbers")
    if col.null_count:
        raise UserError(f"{where}: column {name!r} has empty (null) values")
    values = col.to_numpy(zero_copy_only=False)
    dims = [int(d) for d in (shape or [1])]
    if values.size != T * int(np.prod(dims)):
        raise UserError(
            f"{where}: column {name!r} has {values.size} values for {T} rows of shape {dims}"
        )
    return values.reshape(T, *dims)


class LeRobotReader:
    """Reads a LeRobot v2.1 or v3.0 dataset one episode at a time.

    Everything in the dataset is checked before it is used (hostile or damaged files end in
    one UserError naming the file, episode and key): info.json's types, path templates that
    must stay inside the dataset, episode rows that must point at their own frames, numeric
    columns, and video frames matched to each row's timestamp within ``tolerance_s``.
    """

    def __init__(
        self,
        path: Path,
        report: Report,
        embodiment: Embodiment | None,
        *,
        tolerance_s: float = DEFAULT_TOLERANCE_S,
        drop_keys: Any = None,
    ) -> None:
        self.path, self.report = path, report
        self.info_path = info_path = path / "meta" / "info.json"
        if not info_path.is_file():
            raise UserError(f"{path}: not a LeRobot dataset (no meta/info.json)")
        self.info = _load_info(info_path)
        version = self.info["codebase_version"]
        self.features: dict[str, Any] = self.info["features"]
        if version not in ("v2.1", "v3.0", "v2.0"):
            raise UserError(f"{path}: LeRobot {version} is not supported (reads v2.1 and v3.0)")
        self.v3 = version.startswith("v3")
        extra = self.info.get(HANDOFF_INFO) or {}
        spec = extra.get("embodiment")
        self.embodiment = embodiment or (
            Embodiment.from_dict(spec, f"{info_path} handoff.embodiment") if spec else None
        )
        self.fps = source_rate(f"{info_path} fps", self.info["fps"], self.embodiment)
        if not isinstance(tolerance_s, int | float) or not tolerance_s > 0:
            raise UserError(f"tolerance_s={tolerance_s!r}: give a positive number of seconds")
        self.tolerance_s, self.drop = float(tolerance_s), drop_keys_option(drop_keys)
        self.attrs: dict[str, Any] = dict(extra.get("attrs") or {})
        if not extra:  # a dataset from elsewhere: keep its robot type
            self.attrs["lerobot_robot_type"] = self.info.get("robot_type")
        # our writer names state dims <key>.<name>; elsewhere ("shoulder_pan.pos") a name's
        # prefix is no key, and the state stays one array
        self.split_state = bool(extra)
        self.key_shapes: dict[str, list[int]] = extra.get("key_shapes") or {}
        self.chunks_size = self.info.get("chunks_size") or 1000  # LeRobot's default
        self.tasks = self._load_tasks()
        self.episode_rows = self._load_episodes()
        self._decoders: dict[Path, VideoDecoder] = {}
        self.video_keys = [k for k, f in self.features.items() if f.get("dtype") == "video"]
        if version == "v2.0":
            report.note("LeRobot v2.0 read like v2.1 (per-episode stats are ignored)")

    # ---- metadata --------------------------------------------------------------------------

    def _load_tasks(self) -> dict[int, str]:
        meta = self.path / "meta"
        if self.v3:
            table = _parquet(meta / "tasks.parquet")
            names = [c for c in table.column_names if c != "task_index"]
            if "task_index" not in table.column_names or not names:
                raise UserError(f"{meta / 'tasks.parquet'}: expected task and task_index columns")
            col = "task" if "task" in names else names[0]  # pandas index stored as a column
            pairs = zip(table["task_index"].to_pylist(), table[col].to_pylist())
            rows = [{"task_index": i, "task": t} for i, t in pairs]
            where = meta / "tasks.parquet"
        else:
            rows, where = _jsonl(meta / "tasks.jsonl"), meta / "tasks.jsonl"
        return {_int(r, "task_index", where): str(r.get("task", "")) for r in rows}

    def _load_episodes(self) -> list[dict[str, Any]]:
        meta = self.path / "meta"
        if self.v3:
            files = sorted((meta / "episodes").glob("chunk-*/file-*.parquet"))
            if not files:
                raise UserError(f"{meta / 'episodes'}: no episode tables (chunk-*/file-*.parquet)")
            rows = [r for f in files for r in _parquet(f).to_pylist()]
            where = meta / "episodes"
        else:
            rows, where = _jsonl(meta / "episodes.jsonl"), meta / "episodes.jsonl"
        indices = [_int(r, "episode_index", where) for r in rows]
        if len(set(indices)) != len(indices):
            raise UserError(f"{where}: episode_index values repeat")
        return sorted(rows, key=lambda r: int(r["episode_index"]))

    def __len__(self) -> int:
        return len(self.episode_rows)

    # ---- frames ----------------------------------------------------------------------------

    def episodes(self) -> Iterator[Episode]:
        import pyarrow as pa

        self._cache: tuple[Path | None, Any] = (None, None)
        for row in self.episode_rows:
            ep = int(row["episode_index"])
            try:
                episode = self._episode(row, ep)
            except (KeyError, TypeError, ValueError, IndexError, pa.ArrowException) as e:
                raise UserError(
                    f"{self.path}: episode {ep} is malformed ({type(e).__name__}: {e})"
                ) from None
            yield checked_episode(episode, f"{self.path} episode {ep}", self.report, self.drop)

    def _episode(self, row: dict[str, Any], ep: int) -> Episode:
        data_path = self._data_path(row, ep)
        if self._cache[0] != data_path:
            if not data_path.is_file():
                raise UserError(f"{data_path}: data file of episode {ep} is missing")
            self._cache = (data_path, _parquet(data_path))
        table = self._cache[1]
        if self.v3:
            start = _int(row, "dataset_from_index", data_path) - int(table["index"][0].as_py())
            length = _int(row, "length", data_path)
            if start < 0 or length < 1 or start + length > len(table):
                raise UserError(
                    f"{data_path}: episode {ep}'s rows (dataset_from_index "
                    f"{row['dataset_from_index']}, length {length}) are not in this file"
                )
            table = table.slice(start, length)
        if "episode_index" in table.column_names:
            found = set(table["episode_index"].to_pylist())
            if found != {ep}:
                raise UserError(f"{data_path}: rows of episode {ep} hold episode_index {found}")
        steps = self._columns(table, data_path)
        for key, shape in self.key_shapes.items():
            if key in steps:
                steps[key] = steps[key].reshape(len(table), *shape)
        if self.video_keys:
            times = self._times(table, data_path)
            for key in self.video_keys:
                steps[_camera(key)] = self._video(row, ep, key, times)
        return Episode(steps, self._meta(row, table))

    def _path(self, name: str, default: str | None, **fields: Any) -> Path:
        """info.json's ``name`` template filled in: refused unless it names a file inside the
        dataset using only ``fields`` (no ``..``, no absolute path, no attribute lookups)."""
        template = self.info.get(name) or default
        where = f"{self.info_path}: {name} {template!r}"
        if not isinstance(template, str):
            raise UserError(f"{where}: must be a path template")
        try:
            for _, field, spec, conversion in string.Formatter().parse(template):
                if field is not None and (
                    field not in fields or conversion or not re.fullmatch(r"0?\d{0,2}d?", spec)
                ):
                    raise UserError(f"{where}: unknown field {{{field}}}; use {sorted(fields)}")
            rel = template.format(**fields)
        except (ValueError, KeyError, IndexError) as e:
            raise UserError(f"{where}: not a valid path template ({e})") from None
        norm = os.path.normpath(rel)
        if "\0" in rel or os.path.isabs(rel) or norm == "." or norm.split(os.sep)[0] == "..":
            raise UserError(f"{where}: {rel!r} points outside the dataset")
        return self.path / norm

    def _data_path(self, row: dict[str, Any], ep: int) -> Path:
        if self.v3:
            where = self.path / "meta/episodes"
            return self._path(
                "data_path",
                "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
                chunk_index=_int(row, "data/chunk_index", where),
                file_index=_int(row, "data/file_index", where),
            )
        return self._path("data_path", None, episode_chunk=ep // self.chunks_size, episode_index=ep)

    def _columns(self, table: Any, where: Path) -> dict[str, np.ndarray]:
        steps: dict[str, np.ndarray] = {}
        for name in table.column_names:
            feature = self.features.get(name, {})
            dtype = feature.get("dtype")
            if name in FRAME_COLUMNS[1:]:
                continue
            if dtype in ("video", "string") or (dtype is None and name != "timestamp"):
                if dtype != "video":
                    self.report.drop(f"LeRobot column {name!r} ({dtype or 'undeclared'})")
                continue
            if dtype == "image":
                steps[_camera(name)] = _decode_images(table[name], f"{where} column {name!r}")
                continue
            values = column_to_numpy(table[name], feature.get("shape") or [1], where, name)
            if name == "timestamp":
                steps.setdefault("timestamp", values.reshape(-1).astype(np.float64))
            elif name == TIMESTAMP_COLUMN:  # exact store timestamps from our writer
                steps["timestamp"] = values.reshape(-1)
            elif name in (STATE, ENV_STATE):
                runs = self.split_state and split_names(feature.get("names"), values.shape[-1])
                if not runs:
                    steps[name.removeprefix("observation.")] = values
                    continue
                at = 0
                for key, width in runs:
                    steps[key] = values[:, at : at + width]
                    at += width
            elif name in RENAMED:
                steps[RENAMED[name]] = values.reshape(len(values)) if name != "action" else values
            elif name == "next.success":
                continue  # carried as episode metadata (success)
            else:
                steps[name.removeprefix("observation.")] = values
        return steps

    def _times(self, table: Any, where: Path) -> np.ndarray:
        """(T,) float64 seconds of each row in its episode: the LeRobot ``timestamp`` column
        (not ours: video frames are placed by LeRobot's), else frame_index / fps."""
        if "timestamp" in table.column_names:
            return column_to_numpy(table["timestamp"], [1], where, "timestamp").reshape(-1)
        self.report.note("no timestamp column: video frames taken at frame_index / fps")
        return np.arange(len(table)) / self.fps

    def _video(self, row: dict[str, Any], ep: int, key: str, times: np.ndarray) -> np.ndarray:
        where = self.path / "meta/episodes"
        if self.v3:
            path = self._path(
                "video_path",
                "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
                video_key=key,
                chunk_index=_int(row, f"videos/{key}/chunk_index", where),
                file_index=_int(row, f"videos/{key}/file_index", where),
            )
            start = float(row[f"videos/{key}/from_timestamp"])  # where the episode begins
        else:
            path = self._path(
                "video_path",
                None,
                episode_chunk=ep // self.chunks_size,
                video_key=key,
                episode_index=ep,
            )
            start = 0.0
        if path not in self._decoders:
            if not self.v3:  # one file per episode: keep only the current one open
                for dec in self._decoders.values():
                    dec.close()
                self._decoders.clear()
            self._decoders[path] = VideoDecoder(path)
        where_rows = f"episode {ep} ({key}, from {start:g} s)"
        return self._decoders[path].frames_at(start + times, self.tolerance_s, where_rows)

    def _meta(self, row: dict[str, Any], table: Any) -> dict[str, Any]:
        if row.get(META_COLUMN):
            meta = json.loads(row[META_COLUMN])
            if not isinstance(meta, dict):
                raise UserError(f"{self.path}: episode row {META_COLUMN} is not a JSON object")
            return meta
        meta: dict[str, Any] = {"source": "converted", "lerobot_episode": int(row["episode_index"])}
        tasks = row.get("tasks") or []
        tasks = [tasks] if isinstance(tasks, str) else tasks
        if not tasks and "task_index" in table.column_names:
            tasks = [self.tasks.get(int(table["task_index"][0].as_py()), "")]
        if tasks:
            meta["task"] = str(tasks[0])
        if "next.success" in table.column_names:
            meta["success"] = bool(np.any(table["next.success"].to_numpy(zero_copy_only=False)))
        return meta

    def close(self) -> None:
        for dec in self._decoders.values():
            dec.close()


JSON_KINDS = {str: "a string", dict: "an object", int: "an integer"}


def _load_info(path: Path) -> dict[str, Any]:
    """info.json with the types the reader relies on checked (a wrong type is one line)."""
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a LeRobot info.json ({e})") from None
    if not isinstance(info, dict):
        raise UserError(f"{path}: not a LeRobot info.json (not a JSON object)")
    for key in ("codebase_version", "features", "fps"):
        if key not in info:
            raise UserError(f"{path}: not a LeRobot info.json (no {key!r})")
    kinds = {
        "codebase_version": str,
        "features": dict,
        "chunks_size": int,
        "data_path": str,
        "video_path": str,
        HANDOFF_INFO: dict,
    }
    for key, kind in kinds.items():
        if info.get(key) is not None and not isinstance(info[key], kind):
            raise UserError(f"{path}: {key} must be {JSON_KINDS[kind]}, got {info[key]!r:.60}")
    if (info.get("chunks_size") or 1) < 1:
        raise UserError(f"{path}: chunks_size must be positive, got {info['chunks_size']}")
    for name, feature in info["features"].items():
        shape = feature.get("shape", []) if isinstance(feature, dict) else None
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
        ):
            raise UserError(f"{path}: features.{name} must be an object with a shape of sizes")
    extra = info.get(HANDOFF_INFO) or {}
    for key, kind in (("embodiment", dict), ("attrs", dict), ("key_shapes", dict)):
        if extra.get(key) is not None and not isinstance(extra[key], kind):
            raise UserError(f"{path}: {HANDOFF_INFO}.{key} must be {JSON_KINDS[kind]}")
    return info


def _int(row: Any, key: str, where: Path) -> int:
    """An integer field of a metadata row (JSON or Parquet), refused by name otherwise."""
    v = row.get(key) if isinstance(row, dict) else None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool):
        raise UserError(f"{where}: row {row!r:.80} has no integer {key!r}")
    return v


def _parquet(path: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: not a readable Parquet file ({e})") from None


def _camera(feature: str) -> str:
    return feature.removeprefix(IMAGES).removeprefix("observation.")


def _decode_images(column: Any, where: str) -> np.ndarray:
    """LeRobot ``image`` features: structs of encoded bytes (PNG/JPEG) -> (T, H, W, 3)."""
    import cv2

    out = []
    for step, item in enumerate(column.to_pylist()):
        raw = item.get("bytes") if isinstance(item, dict) else item
        img = None
        if isinstance(raw, bytes) and raw:
            img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise UserError(f"{where}: step {step} is not a decodable PNG/JPEG image")
        out.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    if len({im.shape for im in out}) > 1:
        raise UserError(f"{where}: images change size within the episode")
    return np.stack(out)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise UserError(f"{path}: missing (a LeRobot v2.1 dataset has it)")
    rows = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            row = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: line {n} is not JSON ({e})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}: line {n} is not a JSON object")
        if row:
            rows.append(row)
    return rows


FORMATS.register("lerobot")(
    Format(
        name="lerobot",
        description="LeRobotDataset directory (read v2.1/v3.0, write v3.0)",
        open_reader=LeRobotReader,
        open_writer=lazy("data.convert.lerobot_write:LeRobotWriter"),
        read_options=(
            Option(
                "tolerance_s",
                "seconds a video frame may lie from its row's timestamp",
                float,
                DEFAULT_TOLERANCE_S,
            ),
            DROP_KEYS,
        ),
        write_options=(
            Option("fps", "frame rate for LeRobot output (default: the spec's)", float),
            Option("video_codec", "LeRobot video encoder (default libx264, H.264)"),
            Option("crf", "video quality, lower is better", int, DEFAULT_CRF),
            Option(
                "images", "LeRobot cameras: video or png (lossless)", str, "video", ("video", "png")
            ),
            Option("task", "task name for episodes whose source has none"),
        ),
    )
)
