"""Generated hostile inputs for tests/test_hostile_inputs.py, and the harness that runs a
console script over one and records what it did.

Each case is a small input built once per session under ``inputs/<case>/`` (a store, a
checkpoint run, a bag, a LeRobot folder or a robomimic file), plus the committed data an exit
0 must reproduce exactly (``truth``). The ``*_CASES`` tables say which commands run over it
and which exit statuses are acceptable: 0 only where the data can be carried exactly, 1 only for
``validate`` (problems found), 2 for a refusal.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BIN = Path(sys.executable).parent  # the venv's console scripts
ZIP_BOMB_BYTES = 2 << 30  # one chunk of 10x8 float32 (320 bytes) that inflates to 2 GiB
# peak memory a command may reach: reading the bomb or allocating for a 10**12-row claim
# goes far past it (the simulator and torch need about 1.1 GB for handoff-eval)
MAX_RSS_MB = {"data": 1000, "torch": 1800}
TIMEOUT_S = {"data": 60, "torch": 120}  # a hang is a failure (torch runs build a model first)

Truth = list[dict[str, np.ndarray]]  # per episode: the exact arrays an output must hold


# ---- small builders ------------------------------------------------------------------------


def _put(path: Path, keys: tuple[str, ...], value: Any) -> None:
    """Set one (nested) key of a JSON file; no keys: replace the whole document."""
    doc = json.loads(path.read_text())
    if not keys:
        doc = value(doc)
    else:
        inner = doc
        for k in keys[:-1]:
            inner = inner[k]
        inner[keys[-1]] = value
    path.write_text(json.dumps(doc))


def _store_truth(path: Path, keys: list[str] | None = None) -> Truth:
    from data.store import DemoStore

    store = DemoStore.open(path)
    return [store.episode(i, keys) for i in range(store.n_episodes)]


def _v3_store(path: Path, images: bool = True, nan_at: int | None = None) -> Truth:
    """The conftest small store: 4 episodes of 10..13 steps (16x16 agentview if ``images``)."""
    from data.embodiment import load_embodiment
    from data.store import DemoStore
    from tests.conftest import make_episode

    spec = load_embodiment("sim_panda").with_cameras(["agentview"] if images else [], (16, 16))
    store = DemoStore.create(path, spec)
    for e in range(4):
        ep = make_episode(10 + e, seed=e, image_hw=(16, 16) if images else None)
        if nan_at is not None and e == 1:
            ep["joint_vel"][nan_at] = np.nan  # one sensor glitch in episode 1
        store.append_episode(ep, task="lift", source="scripted", success=True, seed=e)
    return _store_truth(path)


def _v2_store(path: Path) -> Truth:
    """diffusion_policy's ReplayBuffer layout (zarr format 2), 60 steps, chunks of 10 rows."""
    import zarr

    rng = np.random.default_rng(7)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    data = root.create_group("data")
    for key, dim in (("joint_pos", 7), ("joint_vel", 7), ("action", 8)):
        arr = data.create_array(key, shape=(60, dim), chunks=(10, dim), dtype="float32")
        arr[:] = rng.standard_normal((60, dim)).astype(np.float32)
    ends = root.create_group("meta").create_array("episode_ends", shape=(3,), dtype="int64")
    ends[:] = [20, 45, 60]
    return _store_truth(path)


def _zip_bomb(path: Path) -> None:
    """The v2 store zipped, its first action chunk replaced by a member that inflates to
    ZIP_BOMB_BYTES (a real chunk of 10x8 float32 is 320 bytes before compression)."""
    src = path.with_suffix("")  # x.zarr.zip -> x.zarr
    _v2_store(src)
    zero = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for f in sorted(p for p in src.rglob("*") if p.is_file()):
            name = f.relative_to(src).as_posix()
            if name != "data/action/0.0":
                zf.write(f, name)
                continue
            with zf.open(name, "w", force_zip64=True) as member:
                for _ in range(ZIP_BOMB_BYTES // len(zero)):
                    member.write(zero)
    shutil.rmtree(src)


def _store_case(kind: str) -> Callable[[Path], tuple[str, Truth | None]]:
    """Builder of one store case; returns (input path relative to the case dir, truth)."""

    def build(d: Path) -> tuple[str, Truth | None]:
        s = d / "s.zarr"
        if kind == "good_v2":
            return "s.zarr", _v2_store(s)
        if kind == "v2_missing_chunk":
            _v2_store(s)
            (s / "data/action/1.0").unlink()  # steps 10-19 of data/action
            return "s.zarr", None
        if kind == "zip_bomb":
            _zip_bomb(d / "s.zarr.zip")
            return "s.zarr.zip", None
        if kind == "not_a_store":
            (d / "notes").mkdir()
            (d / "notes/README.txt").write_text("holiday photos, not demonstrations\n")
            (d / "notes/sub").mkdir()
            return "notes", None
        if kind == "empty_file":
            (d / "s.zarr").write_bytes(b"")
            return "s.zarr", None
        if kind == "empty_zip":
            (d / "s.zarr.zip").write_bytes(b"")
            return "s.zarr.zip", None
        truth = _v3_store(
            s, images=kind != "nan_values", nan_at=3 if kind == "nan_values" else None
        )
        shard = s / "data/agentview/c.0.0.0.0"
        if kind == "v3_missing_shard":
            shard.unlink()
        elif kind == "v3_truncated_shard":
            shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
        elif kind == "v3_missing_lowdim_chunk":
            (s / "data/action/c/0/0").unlink()
        elif kind == "v3_bad_shard_checksum":
            raw = bytearray(shard.read_bytes())
            raw[-1] ^= 0xFF  # the CRC32C of the shard index
            shard.write_bytes(bytes(raw))
        elif kind == "ends_decreasing":
            import zarr

            zarr.open_array(str(s / "meta/episode_ends"), mode="r+")[:] = [10, 33, 21, 46]
        elif kind == "embodiment_list":
            _put(s / "zarr.json", ("attributes", "embodiment"), ["sim_panda"])
        elif kind == "rows_1e12_data":
            _put(s / "data/action/zarr.json", ("shape",), [10**12, 8])
        elif kind == "rows_1e12_ends":
            _put(s / "meta/episode_ends/zarr.json", ("shape",), [10**12])
        return "s.zarr", truth if kind in ("good_v3", "nan_values", "rows_1e12_data") else None

    return build


# ---- checkpoints ---------------------------------------------------------------------------


TINY_TRAIN = [  # tests/policies/test_train.py's small budget
    *("--steps", "2", "--batch-size", "2", "--device", "cpu", "--no-progress"),
    *("--set", "train.save_every=2", "--set", "train.warmup_steps=1"),
]


def tiny_act_sets() -> list[str]:
    """``--set`` pairs of the tiny ACT (policies/recipes/act_tiny.yaml, its vision width too)."""
    from tests.conftest import TINY_ACT

    return [a for s in TINY_ACT for a in ("--set", s)]


class _Planted:
    """A pickle that would leave a file behind if anything ever unpickled it."""

    def __reduce__(self):
        return (os.system, ("touch PICKLE_RAN",))


def _checkpoint_case(kind: str, run_template: Path):
    """A copy of a tiny ACT run (``run/``, its checkpoint ``run/last``) with one fault."""

    def build(d: Path) -> tuple[str, Truth | None]:
        run = d / "run"
        shutil.copytree(run_template, run)
        last = run / "last"
        if kind == "ck_layers_1e9":
            _put(last / "config.json", ("config", "n_encoder_layers"), 10**9)
        elif kind == "ck_policy_list":
            _put(last / "config.json", ("policy",), ["act"])
        elif kind == "ck_config_list":
            _put(last / "config.json", ("config",), [])
        elif kind == "ck_embodiment_list":
            (last / "embodiment.yaml").write_text("- sim_panda\n- 20.0\n")
        elif kind == "ck_norm_shape":
            from safetensors.torch import load_file, save_file

            sd = load_file(str(last / "normalizer.safetensors"))
            key = sorted(k for k in sd if k.endswith(".scale"))[0]
            sd[key] = sd[key].new_ones(3)  # the spec says 7 (or 8) per step
            save_file(sd, str(last / "normalizer.safetensors"))
        elif kind == "ck_symlink_outside":
            (d / "elsewhere").mkdir()
            os.replace(last / "model.safetensors", d / "elsewhere/model.safetensors")
            (last / "model.safetensors").symlink_to("../../elsewhere/model.safetensors")
        elif kind == "ck_truncated":
            f = last / "model.safetensors"
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        elif kind == "ck_pickle":
            (last / "train_state/optimizer.pt").write_bytes(pickle.dumps(_Planted()))
        elif kind == "rs_state_truncated":  # what --resume reads (inference weights aside)
            f = last / "train_state/model.safetensors"
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        elif kind == "rs_normalizer_symlink":
            (d / "elsewhere").mkdir()
            os.replace(last / "normalizer.safetensors", d / "elsewhere/normalizer.safetensors")
            (last / "normalizer.safetensors").symlink_to("../../elsewhere/normalizer.safetensors")
        elif kind == "run_layers_1e9":
            _put(run / "config.json", ("policy_config", "n_encoder_layers"), 10**9)
        return "run", None

    return build


def train_template(root: Path) -> tuple[Path, Path]:
    """A state-only store and a tiny ACT run trained on it for 2 steps (shared, read-only)."""
    store = root / "state.zarr"
    _v3_store(store, images=False)
    run = root / "act_run"
    argv = [str(BIN / "handoff-train"), "--policy", "act", "--data", str(store), "--out", str(run)]
    subprocess.run([*argv, *TINY_TRAIN, *tiny_act_sets()], check=True, capture_output=True)
    return store, run


# ---- converter inputs ----------------------------------------------------------------------


def _lerobot_case(kind: str):
    def build(d: Path) -> tuple[str, Truth | None]:
        from tests.data.test_convert_lerobot import write_v21

        ds = d / "ds"
        truth = write_v21(ds, lengths=(4, 5))
        info = ds / "meta/info.json"
        template = "chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
        if kind == "lr_data_path_parent":  # the data exists, but outside the dataset
            shutil.copytree(ds / "data", d / "outside")
            _put(info, ("data_path",), f"../outside/{template}")
        elif kind == "lr_video_path_absolute":
            shutil.copytree(ds / "videos", d / "outside_videos")
            absolute = f"{d / 'outside_videos'}/chunk-{{episode_chunk:03d}}/{{video_key}}/"
            _put(info, ("video_path",), absolute + "episode_{episode_index:06d}.mp4")
        elif kind == "lr_unknown_field":
            _put(info, ("data_path",), "data/{episode_chunk:03d}/{camera}.parquet")
        elif kind == "lr_info_list":
            _put(info, (), lambda m: [m])
        if kind != "lr_good":
            return "ds", None
        return "ds", [{"state": s, "action": a} for s, a, _ in truth]

    return build


def _robomimic_case(kind: str):
    def build(d: Path) -> tuple[str, Truth | None]:
        import h5py

        from tests.data.test_convert_robomimic import write_robomimic

        f = d / "demo.hdf5"
        write_robomimic(f, lengths=(5, 6))
        with h5py.File(f, "a") as h:
            truth = [
                {
                    "action": h[f"data/demo_{i}/actions"][()].astype(np.float32),
                    "joint_pos": h[f"data/demo_{i}/obs/robot0_joint_pos"][()].astype(np.float32),
                }
                for i in range(2)
            ]
            demo = h["data/demo_1"]
            if kind == "rm_actions_bytes":
                del demo["actions"]
                demo["actions"] = np.array([b"up"] * 6, dtype="S8")
            elif kind == "rm_actions_object":
                del demo["actions"]
                demo.create_dataset("actions", data=["up"] * 6, dtype=h5py.string_dtype())
            elif kind == "rm_obs_bytes":
                demo["obs/note"] = np.array([b"x"] * 6, dtype="S4")
            elif kind == "rm_missing_env_args":
                del h["data"].attrs["env_args"]
        return "demo.hdf5", truth if kind in ("rm_good", "rm_missing_env_args") else None

    return build


def _bag_case(kind: str):
    """handoff's own MCAP export of a small store, rewritten message by message."""

    def build(d: Path) -> tuple[str, Truth | None]:
        from rosbags.highlevel import AnyReader
        from rosbags.rosbag2 import StoragePlugin, Writer

        from data.convert import convert
        from data.convert.rosbag_msgs import typestore
        from tests.data.test_convert_common import make_store

        make_store(d / "src.zarr", lengths=(6, 5))
        truth = _store_truth(d / "src.zarr", ["joint_pos", "action"])
        convert(d / "src.zarr", d / "clean", "handoff", "rosbag2", progress=False)
        shutil.rmtree(d / "src.zarr")
        ts = typestore()
        seen = 0
        with (
            AnyReader([d / "clean"], default_typestore=ts) as bag,
            Writer(d / "bag", version=9, storage_plugin=StoragePlugin.MCAP) as out,
        ):
            conns = {
                c.id: out.add_connection(c.topic, c.msgtype, typestore=ts) for c in bag.connections
            }
            for conn, ns, raw in bag.messages():
                if conn.topic == "/joint_states":
                    seen += 1
                    if kind == "bag_nan_velocity":  # ros2_control without a velocity interface
                        msg = ts.deserialize_cdr(raw, conn.msgtype)
                        msg.velocity = np.full_like(msg.velocity, np.nan)
                        raw = ts.serialize_cdr(msg, conn.msgtype)
                    elif kind == "bag_truncated_cdr" and seen == 3:
                        raw = raw[: len(raw) // 2]
                out.write(conns[conn.id], ns, raw)
        shutil.rmtree(d / "clean")
        return "bag", truth if kind in ("bag_good", "bag_nan_velocity") else None

    return build


# ---- the table -----------------------------------------------------------------------------

OK, VALIDATE_BAD, REFUSED = {0}, {1, 2}, {2}
EXACT_OR_REFUSED = {0, 2}

COPIES = ("merge", "to-handoff", "to-lerobot")  # commands that carry the store's data over


def _store(info: set[int], validate: set[int], copy: set[int], train: set[int] | None):
    """Allowed exits of each store command (train left out where it would only repeat info)."""
    out = {"info": info, "validate": validate, **dict.fromkeys(COPIES, copy)}
    return out if train is None else {**out, "train": train}


STORE_CASES: dict[str, dict[str, set[int]]] = {
    # controls: the harness itself must see these pass; good_v3 also as the parent of OUT
    "good_v3": {
        **_store(OK, OK, OK, OK),
        "merge-into-parent": REFUSED,
        "convert-into-parent": REFUSED,
    },
    "good_v2": _store(OK, OK, OK, OK),
    # the committed episodes are intact: an exact copy (the claimed tail ignored) is fine
    "rows_1e12_data": _store(EXACT_OR_REFUSED, {0, 1, 2}, EXACT_OR_REFUSED, EXACT_OR_REFUSED),
    # copying NaN exactly is fine; training must refuse, naming key and step
    "nan_values": _store(OK, {1}, EXACT_OR_REFUSED, REFUSED),
}
for _name in (
    "v2_missing_chunk",
    "v3_missing_shard",
    "v3_truncated_shard",
    "v3_missing_lowdim_chunk",
    "v3_bad_shard_checksum",
    "ends_decreasing",
    "embodiment_list",
    "rows_1e12_ends",
    "zip_bomb",
):  # info reads metadata only: it may show it or refuse
    STORE_CASES[_name] = _store(EXACT_OR_REFUSED, VALIDATE_BAD, REFUSED, REFUSED)
for _name in ("not_a_store", "empty_file", "empty_zip"):  # refused by the open all share
    STORE_CASES[_name] = _store(REFUSED, REFUSED, REFUSED, None)

CHECKPOINT_CASES: dict[str, dict[str, set[int]]] = {
    "ck_good": {"eval": OK},
    "ck_layers_1e9": {"eval": REFUSED},
    "ck_policy_list": {"eval": REFUSED},
    "ck_config_list": {"eval": REFUSED},
    "ck_embodiment_list": {"eval": REFUSED},
    "ck_norm_shape": {"eval": REFUSED, "resume": REFUSED},
    "ck_symlink_outside": {"eval": REFUSED},
    "ck_truncated": {"eval": REFUSED},
    "ck_pickle": {"resume": REFUSED},
    "rs_state_truncated": {"resume": REFUSED},
    "rs_normalizer_symlink": {"resume": REFUSED},
    "run_layers_1e9": {"resume": REFUSED},
}

CONVERT_CASES: dict[str, tuple[str, Callable, dict[str, set[int]]]] = {
    "lr_good": ("lerobot", _lerobot_case("lr_good"), {"to-handoff": OK}),
    "rm_good": ("robomimic", _robomimic_case("rm_good"), {"to-handoff": OK}),
    "bag_good": ("rosbag2", _bag_case("bag_good"), {"to-handoff": OK}),
    "bag_nan_velocity": (
        "rosbag2",
        _bag_case("bag_nan_velocity"),
        {"to-handoff": EXACT_OR_REFUSED},
    ),
    "bag_truncated_cdr": ("rosbag2", _bag_case("bag_truncated_cdr"), {"to-handoff": REFUSED}),
    "rm_missing_env_args": (
        "robomimic",
        _robomimic_case("rm_missing_env_args"),
        {"to-handoff": EXACT_OR_REFUSED},
    ),
}
for _name in ("lr_data_path_parent", "lr_video_path_absolute", "lr_unknown_field", "lr_info_list"):
    CONVERT_CASES[_name] = ("lerobot", _lerobot_case(_name), {"to-handoff": REFUSED})
for _name in ("rm_actions_bytes", "rm_actions_object", "rm_obs_bytes"):
    CONVERT_CASES[_name] = ("robomimic", _robomimic_case(_name), {"to-handoff": REFUSED})

CELLS: list[tuple[str, str]] = [
    (case, cmd)
    for table in (STORE_CASES, CHECKPOINT_CASES, {k: v[2] for k, v in CONVERT_CASES.items()})
    for case, commands in table.items()
    for cmd in commands
]


def allowed(case: str, command: str) -> set[int]:
    for table in (STORE_CASES, CHECKPOINT_CASES):
        if case in table:
            return table[case][command]
    return CONVERT_CASES[case][2][command]


# ---- building the inputs -------------------------------------------------------------------


@dataclass
class Inputs:
    root: Path
    src: dict[str, str] = field(default_factory=dict)  # case -> input path in its folder
    truth: dict[str, Truth | None] = field(default_factory=dict)
    fmt: dict[str, str] = field(default_factory=dict)  # case -> format for to-handoff


def build_inputs(root: Path, cases: set[str]) -> Inputs:
    """Build the named cases under ``root/<case>/`` (only those a session selected)."""
    out = Inputs(root)
    builders: dict[str, Callable] = {k: _store_case(k) for k in STORE_CASES}
    if cases & set(CHECKPOINT_CASES):
        shared = root.parent / "shared"
        shared.mkdir(exist_ok=True)
        _, run = train_template(shared)
        builders |= {k: _checkpoint_case(k, run) for k in CHECKPOINT_CASES}
    for name, (fmt, build, _) in CONVERT_CASES.items():
        builders[name] = build
        out.fmt[name] = fmt
    for name in sorted(cases):
        d = root / name
        d.mkdir(parents=True)
        out.src[name], out.truth[name] = builders[name](d)
    return out


# ---- running one command -------------------------------------------------------------------


@dataclass
class Outcome:
    argv: list[str]
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    max_rss_mb: float
    timed_out: bool
    input_changed: list[str]
    stray: list[str]  # paths created, removed or changed outside the output
    output: Path | None
    timeout_s: int
    max_rss_limit: int
    input_dir: Path  # a refusal names the file it refuses: its message holds this path

    def summary(self) -> str:
        lines = [x for x in self.stderr.splitlines() if x.strip()]
        last = lines[-1].strip()[:200] if lines else "(no stderr)"
        return f"rc={self.rc} {self.seconds:.1f}s rss={self.max_rss_mb:.0f}MB | {last}"


def tree_hashes(path: Path) -> dict[str, str]:
    """relative path -> sha256 of every file (links by target) under ``path``."""
    out = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def command_line(case: str, command: str, inputs: Inputs, src: Path, out: Path) -> list[str]:
    data, train, ev = (str(BIN / n) for n in ("handoff-data", "handoff-train", "handoff-eval"))
    s, o = str(src), str(out)
    if command == "info":
        return [data, "info", s]
    if command == "validate":
        return [data, "validate", s, "--quiet"]
    if command == "merge":
        return [data, "merge", s, o]
    if command == "to-lerobot":
        return [
            data,
            "convert",
            "--from",
            "handoff",
            "--to",
            "lerobot",
            s,
            o,
            "--fps",
            "20",
            "--quiet",
        ]
    if command == "to-handoff":
        fmt = inputs.fmt.get(case, "handoff")
        return [data, "convert", "--from", fmt, "--to", "handoff", s, o, "--quiet"]
    if command == "merge-into-parent":  # the folder that holds the source, --force
        return [data, "merge", s, str(src.parent), "--force"]
    if command == "convert-into-parent":
        convert = [data, "convert", "--from", "handoff", "--to", "handoff"]
        return [*convert, s, str(src.parent), "--force", "--quiet"]
    if command == "train":
        extra = ["--embodiment", "sim_panda"] if case == "good_v2" else []
        return [
            train,
            "--policy",
            "act",
            "--data",
            s,
            "--out",
            o,
            *TINY_TRAIN,
            *tiny_act_sets(),
            *extra,
        ]
    if command == "resume":
        return [train, "--out", s, "--resume", "--steps", "3", "--device", "cpu", "--no-progress"]
    if command == "eval":
        return [
            ev,
            "--checkpoint",
            str(src / "last"),
            "--task",
            "lift",
            "--episodes",
            "1",
            "--max-steps",
            "5",
            "--no-progress",
        ]
    raise ValueError(command)


def run_cell(case: str, command: str, inputs: Inputs, runs: Path) -> Outcome:
    """Copy the case's input into a fresh folder, run the command there, and record it."""
    work = runs / f"{case}-{command}"
    shutil.copytree(inputs.root / case, work / "in", symlinks=True)
    (work / "cwd").mkdir()
    src = work / "in" / inputs.src[case]
    out = work / ("out" if command == "to-lerobot" else "out.zarr")
    if command in ("info", "validate", "eval", "resume") or command.endswith("-into-parent"):
        out = None  # resume writes into its run, which is also its input: refusals only here
    argv = command_line(case, command, inputs, src, out or work / "unused")
    before_all = tree_hashes(work)
    kind = "torch" if command in ("train", "resume", "eval") else "data"
    timeout = TIMEOUT_S[kind]
    logs = runs.parent / "logs"
    logs.mkdir(exist_ok=True)
    rc, seconds, rss, timed_out = _run(argv, work / "cwd", timeout, logs / f"{case}-{command}")
    after_all = tree_hashes(work)
    skip = str(out.relative_to(work)) if out is not None else None
    stray = sorted(
        p
        for p in set(before_all) | set(after_all)
        if before_all.get(p) != after_all.get(p)
        and not (skip and (p == skip or p.startswith(skip + os.sep)))
    )
    changed = [p for p in stray if p.startswith("in" + os.sep) or p == "in"]
    return Outcome(
        argv=argv,
        rc=rc,
        stdout=(logs / f"{case}-{command}.out").read_text(errors="replace"),
        stderr=(logs / f"{case}-{command}.err").read_text(errors="replace"),
        seconds=seconds,
        max_rss_mb=rss,
        timed_out=timed_out,
        input_changed=changed,
        stray=[p for p in stray if p not in changed],
        output=out,
        timeout_s=timeout,
        max_rss_limit=MAX_RSS_MB[kind],
        input_dir=work / "in",
    )


# A small interpreter starts each command and reports its peak memory: a child forked straight
# from pytest would count pytest's own memory as its peak (Linux copies it at fork).
_LAUNCHER = """
import os, subprocess, sys
p = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(p.pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def _run(argv: list[str], cwd: Path, timeout: int, log: Path) -> tuple[int, float, float, bool]:
    """(exit status, seconds, peak RSS in MB, timed out) of one command, killed at timeout."""
    t0 = time.monotonic()
    rss = Path(f"{log}.rss")
    with open(f"{log}.out", "wb") as so, open(f"{log}.err", "wb") as se:
        launcher = [sys.executable, "-I", "-c", _LAUNCHER, str(rss), *argv]
        proc = subprocess.Popen(launcher, cwd=cwd, stdout=so, stderr=se, start_new_session=True)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return -9, time.monotonic() - t0, 0.0, True
    peak = int(rss.read_text()) / 1024 if rss.is_file() else 0.0
    return rc, time.monotonic() - t0, peak, False
