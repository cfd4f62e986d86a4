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

Key mapping (LeRobot convention <-> handoff): ``observation.state`` is the concatenated
proprioception; the writer names its dims ``<key>.<i>`` so the reader splits it back into
handoff keys (a dataset from elsewhere becomes one ``state`` key). Privileged keys go to
``observation.environment_state``, cameras to ``observation.images.<camera>``,
``reward``/``done`` to ``next.reward``/``next.done``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from data.convert.base import DONE, FORMATS, REWARD, Episode, Format, Report
from data.convert.video import VideoDecoder
from data.embodiment import Embodiment
from data.errors import UserError

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


def column_to_numpy(column: Any, shape: list[int]) -> np.ndarray:
    """A Parquet column (scalars or fixed-length lists) -> (T, *shape) array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    T = len(col)
    while pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type):
        col = pc.list_flatten(col)
    values = col.to_numpy(zero_copy_only=False)
    return values.reshape(T, *[int(d) for d in (shape or [1])])


class LeRobotReader:
    def __init__(self, path: Path, report: Report, embodiment: Embodiment | None) -> None:
        info_path = path / "meta" / "info.json"
        if not info_path.is_file():
            raise UserError(f"{path}: not a LeRobot dataset (no meta/info.json)")
        try:
            self.info = json.loads(info_path.read_text())
            version = str(self.info["codebase_version"])
            self.features: dict[str, Any] = self.info["features"]
            self.fps = float(self.info["fps"])
        except (json.JSONDecodeError, KeyError) as e:
            raise UserError(f"{info_path}: not a LeRobot info.json ({e})") from None
        if version not in ("v2.1", "v3.0", "v2.0"):
            raise UserError(f"{path}: LeRobot {version} is not supported (reads v2.1 and v3.0)")
        self.v3 = version.startswith("v3")
        self.path, self.report = path, report
        extra = self.info.get(HANDOFF_INFO) or {}
        spec = extra.get("embodiment")
        self.embodiment = embodiment or (
            Embodiment.from_dict(spec, f"{info_path} handoff.embodiment") if spec else None
        )
        self.attrs: dict[str, Any] = dict(extra.get("attrs") or {})
        if not extra:  # a dataset from elsewhere: keep its robot type
            self.attrs["lerobot_robot_type"] = self.info.get("robot_type")
        self.key_shapes: dict[str, list[int]] = extra.get("key_shapes") or {}
        self.tasks = self._load_tasks()
        self.episode_rows = self._load_episodes()
        self._decoders: dict[Path, VideoDecoder] = {}
        self.video_keys = [k for k, f in self.features.items() if f.get("dtype") == "video"]
        if version == "v2.0":
            report.note("LeRobot v2.0 read like v2.1 (per-episode stats are ignored)")

    # ---- metadata --------------------------------------------------------------------------

    def _load_tasks(self) -> dict[int, str]:
        import pyarrow.parquet as pq

        meta = self.path / "meta"
        if self.v3:
            table = pq.read_table(meta / "tasks.parquet")
            names = [c for c in table.column_names if c != "task_index"]
            if "task_index" not in table.column_names or not names:
                raise UserError(f"{meta / 'tasks.parquet'}: expected task and task_index columns")
            col = "task" if "task" in names else names[0]  # pandas index stored as a column
            return dict(zip(table["task_index"].to_pylist(), table[col].to_pylist()))
        rows = _jsonl(meta / "tasks.jsonl")
        return {int(r["task_index"]): r["task"] for r in rows}

    def _load_episodes(self) -> list[dict[str, Any]]:
        import pyarrow.parquet as pq

        meta = self.path / "meta"
        if self.v3:
            files = sorted((meta / "episodes").glob("chunk-*/file-*.parquet"))
            if not files:
                raise UserError(f"{meta / 'episodes'}: no episode tables (chunk-*/file-*.parquet)")
            rows = [r for f in files for r in pq.read_table(f).to_pylist()]
        else:
            rows = _jsonl(meta / "episodes.jsonl")
        return sorted(rows, key=lambda r: int(r["episode_index"]))

    def __len__(self) -> int:
        return len(self.episode_rows)

    # ---- frames ----------------------------------------------------------------------------

    def episodes(self) -> Iterator[Episode]:
        import pyarrow.parquet as pq

        cache: tuple[Path | None, Any] = (None, None)
        for row in self.episode_rows:
            ep = int(row["episode_index"])
            data_path = self._data_path(row, ep)
            if cache[0] != data_path:
                if not data_path.is_file():
                    raise UserError(f"{data_path}: data file of episode {ep} is missing")
                cache = (data_path, pq.read_table(data_path))
            table = cache[1]
            if self.v3:
                start = int(row["dataset_from_index"]) - int(table["index"][0].as_py())
                table = table.slice(start, int(row["length"]))
            steps = self._columns(table)
            for key, shape in self.key_shapes.items():
                if key in steps:
                    steps[key] = steps[key].reshape(len(table), *shape)
            for key in self.video_keys:
                steps[_camera(key)] = self._video(row, ep, key, len(table))
            yield Episode(steps, self._meta(row, table))

    def _data_path(self, row: dict[str, Any], ep: int) -> Path:
        template = self.info.get("data_path")
        if self.v3:
            template = template or "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
            rel = template.format(
                chunk_index=int(row["data/chunk_index"]), file_index=int(row["data/file_index"])
            )
        else:
            chunk = ep // int(self.info.get("chunks_size", 1000))
            rel = template.format(episode_chunk=chunk, episode_index=ep)
        return self.path / rel

    def _columns(self, table: Any) -> dict[str, np.ndarray]:
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
                steps[_camera(name)] = _decode_images(table[name])
                continue
            values = column_to_numpy(table[name], feature.get("shape") or [1])
            if name == "timestamp":
                steps.setdefault("timestamp", values.reshape(-1).astype(np.float64))
            elif name == TIMESTAMP_COLUMN:  # exact store timestamps from our writer
                steps["timestamp"] = values.reshape(-1)
            elif name in (STATE, ENV_STATE):
                runs = split_names(feature.get("names"), values.shape[-1])
                if runs is None:
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

    def _video(self, row: dict[str, Any], ep: int, key: str, n: int) -> np.ndarray:
        if self.v3:
            template = self.info.get("video_path") or (
                "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
            )
            rel = template.format(
                video_key=key,
                chunk_index=int(row[f"videos/{key}/chunk_index"]),
                file_index=int(row[f"videos/{key}/file_index"]),
            )
            start = float(row[f"videos/{key}/from_timestamp"])
        else:
            chunk = ep // int(self.info.get("chunks_size", 1000))
            rel = self.info["video_path"].format(
                episode_chunk=chunk, video_key=key, episode_index=ep
            )
            start = 0.0
        path = self.path / rel
        if path not in self._decoders:
            if not self.v3:  # one file per episode: keep only the current one open
                for dec in self._decoders.values():
                    dec.close()
                self._decoders.clear()
            self._decoders[path] = VideoDecoder(path)
        return self._decoders[path].read(start, n, self.fps)

    def _meta(self, row: dict[str, Any], table: Any) -> dict[str, Any]:
        if row.get(META_COLUMN):
            return json.loads(row[META_COLUMN])
        meta: dict[str, Any] = {"source": "converted", "lerobot_episode": int(row["episode_index"])}
        tasks = row.get("tasks") or []
        if not tasks and "task_index" in table.column_names:
            tasks = [self.tasks.get(int(table["task_index"][0].as_py()), "")]
        if tasks:
            meta["task"] = tasks[0]
        if "next.success" in table.column_names:
            meta["success"] = bool(np.any(table["next.success"].to_numpy(zero_copy_only=False)))
        return meta

    def close(self) -> None:
        for dec in self._decoders.values():
            dec.close()


def _camera(feature: str) -> str:
    return feature.removeprefix(IMAGES).removeprefix("observation.")


def _decode_images(column: Any) -> np.ndarray:
    """LeRobot ``image`` features: structs of encoded bytes (PNG/JPEG) -> (T, H, W, 3)."""
    import cv2

    out = []
    for item in column.to_pylist():
        raw = item["bytes"] if isinstance(item, dict) else item
        img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
        out.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    return np.stack(out)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise UserError(f"{path}: missing (a LeRobot v2.1 dataset has it)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _open_writer(*args: Any, **kwargs: Any) -> Any:
    from data.convert.lerobot_write import LeRobotWriter

    return LeRobotWriter(*args, **kwargs)


FORMATS.register("lerobot")(
    Format(
        name="lerobot",
        description="LeRobotDataset directory (read v2.1/v3.0, write v3.0)",
        open_reader=LeRobotReader,
        open_writer=_open_writer,
        write_options=("fps", "video_codec", "crf", "images", "task"),
    )
)
