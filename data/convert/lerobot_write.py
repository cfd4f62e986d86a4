"""Write a LeRobotDataset v3.0 (layout in lerobot.py), streaming one episode at a time.

Frames go to a Parquet file (one row group per episode) and each camera to its own MP4, both
rotated to a new ``file-NNN`` when they pass LeRobot's default size limits. Episode rows and
statistics are small and written at the end. Everything is built in a staging directory that
is renamed onto DST only when complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from data.convert.base import (
    DONE,
    LABEL,
    NOT_OBSERVATIONS,
    REWARD,
    Episode,
    Reader,
    Report,
    publish,
    staging_dir,
)
from data.convert.lerobot import (
    DEFAULT_CRF,
    DEFAULT_GOP,
    ENV_STATE,
    HANDOFF_INFO,
    IMAGES,
    META_COLUMN,
    STATE,
    TIMESTAMP_COLUMN,
)
from data.dataset import Moments
from data.embodiment import Embodiment
from data.errors import UserError
from data.video import VideoEncoder, pick_codec

# LeRobot v3.0 defaults (lerobot/datasets/utils.py): files per chunk and file size limits
CHUNKS_SIZE = 1000
DATA_FILE_MB = 100
VIDEO_FILE_MB = 500
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
IMAGE_STATS_FRAMES = 16  # frames per episode that image statistics sample


class _Rotating:
    """chunk/file indices of a rotating output: next file when the current one is too big."""

    def __init__(self, limit_mb: int) -> None:
        self.limit = limit_mb * (1 << 20)
        self.chunk = self.file = 0

    def advance(self) -> None:
        self.file += 1
        if self.file == CHUNKS_SIZE:
            self.chunk, self.file = self.chunk + 1, 0


class LeRobotWriter:
    def __init__(
        self,
        path: Path,
        report: Report,
        reader: Reader,
        embodiment: Embodiment | None,
        *,
        force: bool = False,
        fps: float | None = None,
        video_codec: str | None = None,
        images: str = "video",
        crf: int = DEFAULT_CRF,
        task: str | None = None,
    ) -> None:
        # the steps' own rate (the control rate, else the source's), or --fps for a source
        # without one; LeRobot frames are the steps as they are, so --fps cannot retime them
        for name, value in (("fps", fps), ("crf", crf)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise UserError(f"{name}={value!r}: give a number")
        rate = (embodiment.control_hz if embodiment else None) or getattr(reader, "fps", None)
        if fps and rate and abs(float(fps) - rate) > 1e-6 * rate:
            raise UserError(
                f"--fps {fps:g} differs from the source's rate {rate:g} Hz: LeRobot frames are "
                f"the steps as recorded (not resampled); leave --fps out"
            )
        self.fps = float(fps or rate or 0)
        if not self.fps > 0:
            raise UserError("writing LeRobot needs a frame rate: pass --fps or --embodiment")
        self.path, self.tmp = path, staging_dir(path)
        self.report, self.embodiment, self.attrs = report, embodiment, dict(reader.attrs)
        if images not in ("video", "png"):
            raise UserError(f"images={images!r}: choose video (H.264 MP4) or png (lossless)")
        self.png = images == "png"
        self.codec, note = pick_codec(video_codec)
        if self.png:
            report.note("camera frames stored as PNG images in the Parquet files (lossless)")
        elif note:
            report.note(note)
        if not self.png:
            report.note(
                f"camera frames are video ({self.codec}, yuv420p, crf {crf}): lossy; H.264 at the "
                "default crf 18 keeps >= 35 dB PSNR on camera images"
            )
        self.crf, self.default_task = int(crf), task
        self.layout: dict[str, Any] | None = None
        self.tasks: dict[str, int] = {}
        self.rows: list[dict[str, Any]] = []
        self.stats: dict[str, Moments] = {}
        self.n_frames = 0
        self.data_pos, self.data_writer = _Rotating(DATA_FILE_MB), None
        self.video_pos: dict[str, _Rotating] = {}
        self.encoders: dict[str, VideoEncoder] = {}

    # ---- layout from the first episode ---------------------------------------------------

    def _plan(self, episode: Episode) -> dict[str, Any]:
        spec = self.embodiment
        privileged = set(spec.privileged if spec else ()) | {"object_state", "environment_state"}
        order = list(spec.observation) if spec else []
        lowdim = [k for k in episode.lowdim_keys if k not in ("action", "timestamp")]
        lowdim = [k for k in order if k in lowdim] + [k for k in lowdim if k not in order]
        proprio = set(spec.observation) if spec else set(lowdim) - NOT_OBSERVATIONS
        groups = {
            STATE: [k for k in lowdim if k not in privileged and (k in proprio or k == "state")],
            ENV_STATE: [k for k in lowdim if k in privileged],
        }
        grouped = {k for keys in groups.values() for k in keys}
        # labels are no observation: a LeRobot policy takes every observation.* as input
        columns = {REWARD: "next.reward", DONE: "next.done", LABEL: LABEL}
        extras = {k: columns.get(k, f"observation.{k}") for k in lowdim if k not in grouped}
        if "action" not in episode.steps:
            raise UserError(f"{self.report.src}: episodes have no 'action' key")
        return {
            "groups": {g: ks for g, ks in groups.items() if ks},
            "extras": extras,
            "cameras": episode.camera_keys,
            "widths": {k: _2d(episode.steps[k]).shape[1] for k in lowdim},
            "key_shapes": {k: list(episode.steps[k].shape[1:]) for k in lowdim},
            "shapes": {IMAGES + c: list(episode.steps[c].shape[1:]) for c in episode.camera_keys},
        }

    def _names(self, key: str, width: int) -> list[str]:
        spec = self.embodiment
        if spec and key in ("joint_pos", "joint_vel") and width == spec.n_joints:
            return [f"{key}.{j}" for j in spec.joint_names]
        return [f"{key}.{i}" for i in range(width)]

    # ---- writing -----------------------------------------------------------------------------

    def write(self, episode: Episode) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.layout is None:
            self.layout = self._plan(episode)
        steps, T = episode.steps, len(episode)
        ep = len(self.rows)
        task = episode.meta.get("task") or self.default_task or ""
        cols = self._frame_columns(steps, ep, self.tasks.setdefault(task, len(self.tasks)))
        columns = {name: _arrow(v) for name, v in cols.items()}
        if self.png:
            for cam in self.layout["cameras"]:
                columns[IMAGES + cam] = _png_column(steps[cam])
                self._image_stats(IMAGES + cam, steps[cam])
        table = pa.table(columns)
        if self.data_writer is None:
            self.schema = table.schema
            self.data_writer = pq.ParquetWriter(self._data_file(), table.schema)
        elif table.schema != self.schema:
            raise UserError(f"{self.report.src}: episode {ep} has different keys or shapes")
        self.data_writer.write_table(table)
        for name, v in cols.items():
            if name not in ("episode_index", "index", "task_index", TIMESTAMP_COLUMN):
                self.stats.setdefault(name, Moments(v.reshape(T, -1).shape[1])).add(
                    v.reshape(T, -1).astype(np.float64)
                )
        row: dict[str, Any] = {
            "episode_index": ep,
            "tasks": [task],
            "length": T,
            "data/chunk_index": self.data_pos.chunk,
            "data/file_index": self.data_pos.file,
            "dataset_from_index": self.n_frames,
            "dataset_to_index": self.n_frames + T,
        }
        for cam in [] if self.png else self.layout["cameras"]:
            row.update(self._write_video(cam, steps[cam]))
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        row[META_COLUMN] = json.dumps(episode.meta)
        self.rows.append(row)
        self.n_frames += T
        if self._data_file().stat().st_size > self.data_pos.limit:
            self.data_writer.close()
            self.data_writer = None
            self.data_pos.advance()

    def _frame_columns(
        self, steps: dict[str, np.ndarray], ep: int, task_index: int
    ) -> dict[str, np.ndarray]:
        """LeRobot frame columns of one episode, each (T, D)."""
        T = len(steps["action"])
        cols: dict[str, np.ndarray] = {}
        for group, keys in self.layout["groups"].items():
            cols[group] = np.concatenate([_2d(steps[k]) for k in keys], axis=1).astype(np.float32)
        cols["action"] = _2d(steps["action"]).astype(np.float32)
        for key, column in self.layout["extras"].items():
            cols[column] = _2d(steps[key])
        frame_index = np.arange(T, dtype=np.int64)
        # LeRobot requires timestamp = frame_index / fps (it seeks video frames by it)
        cols["timestamp"] = (frame_index / self.fps).astype(np.float32)[:, None]
        cols["frame_index"] = frame_index[:, None]
        cols["episode_index"] = np.full((T, 1), ep, np.int64)
        cols["index"] = (self.n_frames + frame_index)[:, None]
        cols["task_index"] = np.full((T, 1), task_index, np.int64)
        if "timestamp" in steps:
            cols[TIMESTAMP_COLUMN] = np.asarray(steps["timestamp"], np.float64)[:, None]
        return cols

    def _data_file(self) -> Path:
        p = self.tmp / DATA_PATH.format(
            chunk_index=self.data_pos.chunk, file_index=self.data_pos.file
        )
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def _write_video(self, cam: str, frames: np.ndarray) -> dict[str, Any]:
        key = IMAGES + cam
        pos = self.video_pos.setdefault(key, _Rotating(VIDEO_FILE_MB))
        enc = self.encoders.get(key)
        if enc is None:
            rel = VIDEO_PATH.format(video_key=key, chunk_index=pos.chunk, file_index=pos.file)
            enc = self.encoders[key] = VideoEncoder(
                self.tmp / rel, self.fps, frames.shape[1:3], self.codec, self.crf, DEFAULT_GOP
            )
        start = enc.n_frames
        enc.add(frames)
        out = {
            f"videos/{key}/chunk_index": pos.chunk,
            f"videos/{key}/file_index": pos.file,
            f"videos/{key}/from_timestamp": start / self.fps,
            f"videos/{key}/to_timestamp": enc.n_frames / self.fps,
        }
        self._image_stats(key, frames)
        if enc.n_bytes > pos.limit:  # not the file's size: x264 may not have written yet
            enc.close()
            del self.encoders[key]
            pos.advance()
        return out

    def _image_stats(self, key: str, frames: np.ndarray) -> None:
        step = max(1, len(frames) // IMAGE_STATS_FRAMES)
        pixels = frames[::step].reshape(-1, frames.shape[-1]).astype(np.float64) / 255.0
        self.stats.setdefault(key, Moments(frames.shape[-1])).add(pixels)

    # ---- finishing -------------------------------------------------------------------------

    def close(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._close_files()
        meta = self.tmp / "meta"
        (meta / "episodes/chunk-000").mkdir(parents=True, exist_ok=True)
        if self.rows:
            pq.write_table(pa.Table.from_pylist(self.rows), self.tmp / EPISODES_PATH)
        _write_tasks(meta / "tasks.parquet", self.tasks)
        (meta / "info.json").write_text(json.dumps(self._info(), indent=4))
        (meta / "stats.json").write_text(json.dumps(self._stats(), indent=4))
        publish(self.tmp, self.path)

    def abort(self, keep_done: bool = False) -> None:  # staged: nothing to keep
        import shutil

        self._close_files()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _close_files(self) -> None:
        if self.data_writer is not None:
            self.data_writer.close()
            self.data_writer = None
        encoders, self.encoders = self.encoders, {}
        for enc in encoders.values():
            enc.close()

    def _info(self) -> dict[str, Any]:
        features: dict[str, Any] = {}
        layout = self.layout or {"groups": {}, "extras": {}, "cameras": []}
        for group, keys in layout["groups"].items():
            names = [n for k in keys for n in self._names(k, layout["widths"][k])]
            features[group] = {"dtype": "float32", "shape": [len(names)], "names": names}
        features["action"] = self._feature("action")
        if self.embodiment and features["action"]["shape"] == [self.embodiment.action_dim]:
            features["action"]["names"] = [*self.embodiment.joint_names, "gripper"]
        for column in layout["extras"].values():
            features[column] = self._feature(column)
        for cam in layout["cameras"]:
            key = IMAGES + cam
            H, W, C = layout["shapes"][key]
            if self.png:
                features[key] = {
                    "dtype": "image",
                    "shape": [H, W, C],
                    "names": ["height", "width", "channel"],
                }
                continue
            features[key] = {
                "dtype": "video",
                "shape": [H, W, C],
                "names": ["height", "width", "channels"],
                "info": {
                    "video.height": H,
                    "video.width": W,
                    "video.codec": "h264" if self.codec == "libx264" else self.codec,
                    "video.pix_fmt": "yuv420p",
                    "video.is_depth_map": False,
                    "video.fps": self.fps,
                    "video.channels": C,
                    "has_audio": False,
                },
            }
        for name, dtype in (
            ("timestamp", "float32"),
            ("frame_index", "int64"),
            ("episode_index", "int64"),
            ("index", "int64"),
            ("task_index", "int64"),
        ):
            features[name] = {"dtype": dtype, "shape": [1], "names": None}
        if self.rows and TIMESTAMP_COLUMN in self.schema.names:
            features[TIMESTAMP_COLUMN] = {"dtype": "float64", "shape": [1], "names": None}
        return {
            "codebase_version": "v3.0",
            "robot_type": self.embodiment.name if self.embodiment else "unknown",
            "total_episodes": len(self.rows),
            "total_frames": self.n_frames,
            "total_tasks": len(self.tasks),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": DATA_FILE_MB,
            "video_files_size_in_mb": VIDEO_FILE_MB,
            "fps": self.fps,
            "splits": {"train": f"0:{len(self.rows)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH,
            "features": features,
            HANDOFF_INFO: {
                "embodiment": self.embodiment.to_dict() if self.embodiment else None,
                "attrs": self.attrs,
                # per-step shapes of the source keys: (T,) and (T, 1) both become LeRobot [1]
                "key_shapes": layout.get("key_shapes", {}),
            },
        }

    def _feature(self, column: str) -> dict[str, Any]:
        import pyarrow as pa

        t = self.schema.field(column).type
        inner = t.value_type if pa.types.is_fixed_size_list(t) else t
        shape = [t.list_size] if pa.types.is_fixed_size_list(t) else [1]
        dtype = {"float": "float32", "double": "float64", "halffloat": "float16"}.get(
            str(inner), str(inner)
        )
        return {"dtype": dtype, "shape": shape, "names": None}

    def _stats(self) -> dict[str, Any]:
        out = {}
        for name, acc in self.stats.items():
            s = acc.result(name)
            image = name.startswith(IMAGES)
            out[name] = {k: (v.reshape(-1, 1, 1) if image else v).tolist() for k, v in s.items()}
            out[name]["count"] = [acc.n]
        return out


def _2d(v: np.ndarray) -> np.ndarray:
    return v.reshape(len(v), -1)


def _arrow(v: np.ndarray) -> Any:
    """(T, D) -> fixed-size list column (D > 1 or vector features), (T, 1) -> scalar column."""
    import pyarrow as pa

    if v.shape[1] == 1:  # LeRobot (HF datasets) stores shape-[1] features as scalars
        return pa.array(v[:, 0])
    flat = pa.array(np.ascontiguousarray(v).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, v.shape[1])


def _png_column(frames: np.ndarray) -> Any:
    """(T, H, W, 3) -> LeRobot/HF ``image`` column: structs of PNG bytes (lossless)."""
    import cv2
    import pyarrow as pa

    items = []
    for img in frames:
        ok, png = cv2.imencode(".png", np.ascontiguousarray(img[..., ::-1]))  # cv2 wants BGR
        items.append({"bytes": png.tobytes(), "path": None})
    return pa.array(items, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))


def _write_tasks(path: Path, tasks: dict[str, int]) -> None:
    """tasks.parquet as pandas writes it (LeRobot reads it with pandas: index = task string)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"task_index": list(tasks.values()), "task": list(tasks)})
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": "task",
                "field_name": "task",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    table = table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})
    pq.write_table(table, path)
