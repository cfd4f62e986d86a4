"""Issue 12, items 3, 10, 13: a store is read exactly or refused by store, key and steps.

Missing chunks and damaged shard indexes are refused by every reader; hostile metadata is
refused at open (exit 2, one line); an interrupted write's tail is a note, not a problem.
"""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr

from data.cli import main as data_cli
from data.dataset import SequenceDataset
from data.errors import UserError
from data.frames import COMPLETE_ATTR
from data.store import DemoStore
from tests.conftest import make_episode


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run handoff-data in-process; (exit status, stdout, stderr)."""
    try:
        code = data_cli(list(args))
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


def refused(capsys, *args: str) -> str:
    code, _, err = cli(capsys, *args)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err


def dp_store(path: Path, steps: int = 60) -> np.ndarray:
    """diffusion_policy's ReplayBuffer layout in zarr format 2: data/action chunked (10, 8)."""
    action = np.random.default_rng(0).standard_normal((steps, 8)).astype(np.float32)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    arr = root.create_group("data").create_array(
        "action", shape=action.shape, chunks=(10, 8), dtype="f4"
    )
    arr[:] = action
    ends = root.create_group("meta").create_array("episode_ends", shape=(3,), dtype="i8")
    ends[:] = [20, 40, steps]
    return action


def zip_dir(src: Path, dst: Path, compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(dst, "w", compression=compression) as zf:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(src).as_posix())
    return dst


def image_store(tmp_path: Path, spec, steps: int = 600) -> DemoStore:
    """One episode of 8x8 frames: 512 frames per shard, so steps 512.. are in shard 1."""
    store = DemoStore.create(tmp_path / "img.zarr", spec.with_cameras(["agentview"], (8, 8)))
    store.append_episode(make_episode(steps, image_hw=(8, 8)))
    return store


def set_json(path: Path, **changes) -> None:
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


# ---- item 3: missing chunks and bad checksums ---------------------------------------------


@pytest.mark.parametrize("as_zip", [False, True])
def test_missing_chunk_in_diffusion_policy_store_is_refused(tmp_path, capsys, as_zip):
    src = tmp_path / "dp.zarr"
    dp_store(src)
    (src / "data/action/1.0").unlink()
    path = str(zip_dir(src, tmp_path / "dp.zarr.zip") if as_zip else src)

    code, out, _ = cli(capsys, "validate", path, "--quiet")
    assert code == 1 and "data/action has no stored chunk for steps 10..19" in out
    with pytest.raises(UserError, match=r"data/action has no stored chunk for steps 10\.\.19"):
        DemoStore.open(path)
    err = refused(capsys, "merge", path, str(tmp_path / "out.zarr"))
    assert path in err and "data/action" in err and "10..19" in err
    assert not (tmp_path / "out.zarr").exists()


def test_missing_image_shard_is_refused_by_every_reader(tmp_path, spec, capsys):
    store = image_store(tmp_path, spec)  # opened before the loss: its readers must notice
    (Path(store.path) / "data/agentview/c.1.0.0.0").unlink()

    code, out, _ = cli(capsys, "validate", store.path, "--quiet")
    assert code == 1 and "data/agentview has no stored chunk for steps 512..599" in out
    for read in (
        lambda: DemoStore.open(store.path),
        lambda: SequenceDataset(store.path, ["agentview"], n_obs_steps=2, horizon=4),
        lambda: SequenceDataset(store, ["agentview"], n_obs_steps=2, horizon=4),
        lambda: store.episode(0),
    ):
        with pytest.raises(UserError, match=r"512\.\.599"):
            read()
    refused(
        capsys,
        "convert",
        "--from",
        "handoff",
        "--to",
        "handoff",
        store.path,
        str(tmp_path / "out.zarr"),
    )
    assert not (tmp_path / "out.zarr").exists()


def test_shard_index_checksum_mismatch_is_refused(tmp_path, spec, capsys):
    store = image_store(tmp_path, spec, steps=40)
    shard = Path(store.path) / "data/agentview/c.0.0.0.0"
    raw = bytearray(shard.read_bytes())
    raw[-20] ^= 0x01  # an index entry (the last frame's length), not its checksum
    shard.write_bytes(bytes(raw))

    code, out, _ = cli(capsys, "validate", store.path, "--quiet")
    assert code == 1 and "data/agentview" in out and "checksum" in out
    for read in (
        lambda: SequenceDataset(store.path, ["agentview"], n_obs_steps=1, horizon=1),
        lambda: DemoStore.open(store.path).episode(0),
    ):
        with pytest.raises(UserError, match=r"data/agentview \(steps 0\.\.511\) does not match"):
            read()


def test_missing_low_dim_chunk_in_handoff_store(tmp_path, spec, capsys, monkeypatch):
    monkeypatch.setattr("data.store.LOWDIM_CHUNK_BYTES", 256 * 28)  # joint_pos: 256 rows a chunk
    store = DemoStore.create(tmp_path / "s.zarr", spec)
    ep = make_episode(600, image_hw=None)
    ep["intervention"] = np.zeros(600, bool)  # all fill value: zarr alone would not store it
    store.append_episode(ep)
    assert cli(capsys, "validate", store.path, "--quiet")[0] == 0  # every chunk was stored
    assert (Path(store.path) / "data/intervention/c/0").is_file()
    np.testing.assert_array_equal(
        DemoStore.open(store.path).episode(0)["joint_pos"], ep["joint_pos"]
    )

    (Path(store.path) / "data/joint_pos/c/1/0").unlink()
    with pytest.raises(UserError, match=r"data/joint_pos has no stored chunk for steps 256\.\.511"):
        DemoStore.open(store.path)
    # an array without handoff's marker cannot tell a lost chunk from one zarr left out: a note
    meta = Path(store.path) / "data/joint_pos/zarr.json"
    assert json.loads(meta.read_text())["attributes"] == {COMPLETE_ATTR: True}
    set_json(meta, attributes={})
    code, out, _ = cli(capsys, "validate", store.path, "--quiet")
    assert code == 0 and "note: " in out and "steps 256..511" in out


# ---- item 10: hostile metadata ------------------------------------------------------------


@pytest.mark.parametrize(
    "ends, message",
    [
        ([20, 10, 60], r"episode_ends\[1\] = 10 is not above the entry before it \(20\)"),
        ([-5, 20, 60], r"episode_ends\[0\] = -5"),
        ([20, 40, 70], "data/action has 60 steps but meta/episode_ends ends at 70"),
        ([20.0, 40.0, 60.0], "must be a 1-D integer array"),
        ([[20, 40, 60]], "must be a 1-D integer array"),
    ],
)
def test_bad_episode_ends_are_refused(tmp_path, capsys, ends, message):
    path = tmp_path / "dp.zarr"
    dp_store(path)
    meta = zarr.open_group(str(path / "meta"), mode="r+", zarr_format=2)
    value = np.asarray(ends)
    del meta["episode_ends"]
    meta.create_array("episode_ends", shape=value.shape, dtype=value.dtype)[...] = value
    with pytest.raises(UserError, match=message):
        DemoStore.open(path)
    for command in ("validate", "info"):
        refused(capsys, command, str(path))


@pytest.mark.parametrize(
    "embodiment",
    [["sim_panda"], "sim_panda", {"name": "x", "joint_names": 5}, {"gripper": [1, 2]}],
)
def test_embodiment_attribute_of_the_wrong_type_is_refused(small_store, capsys, embodiment):
    zarr.open_group(small_store.path, mode="r+").attrs["embodiment"] = embodiment
    for command in ("info", "validate"):
        assert "embodiment" in refused(capsys, command, small_store.path)


def test_episode_metadata_of_the_wrong_type_is_refused(small_store, capsys):
    zarr.open_group(small_store.path, mode="r+")["meta"].attrs["episodes"] = "lift"
    refused(capsys, "info", small_store.path)


def test_arrays_claiming_far_more_rows_than_stored_neither_hang_nor_allocate(tmp_path, capsys):
    path = tmp_path / "dp.zarr"
    action = dp_store(path)
    zarray = path / "data/action/.zarray"
    set_json(zarray, shape=[10**12, 8])
    t0 = time.perf_counter()
    # past the committed episodes the rows are an interrupted write's tail: noted, never read
    code, out, _ = cli(capsys, "validate", str(path), "--quiet")
    assert code == 0 and "note: " in out and str(10**12 - 60) in out
    np.testing.assert_array_equal(DemoStore.open(path).episode(2)["action"], action[40:])
    # claimed by the episode boundaries too: the chunks they need are not there
    (path / "meta/episode_ends/0").unlink()
    zarr.open_group(str(path / "meta"), mode="r+", zarr_format=2)["episode_ends"][...] = [
        20,
        40,
        10**12,
    ]
    err = refused(capsys, "info", str(path))
    assert "data/action has no stored chunk for steps 60..69" in err
    # the episode index itself claiming 10**12 entries, or one chunk that large
    set_json(path / "meta/episode_ends/.zarray", shape=[10**12])
    assert "meta/episode_ends has no stored chunk" in refused(capsys, "info", str(path))
    set_json(path / "meta/episode_ends/.zarray", shape=[10**12], chunks=[10**12])
    assert "beyond what handoff reads" in refused(capsys, "info", str(path))
    assert time.perf_counter() - t0 < 10


def test_writable_open_truncates_a_huge_claimed_tail_quickly(tmp_path, spec):
    store = DemoStore.create(tmp_path / "s.zarr", spec)
    store.append_episode(make_episode(6, image_hw=None))
    set_json(Path(store.path) / "data/action/zarr.json", shape=[10**12, 8])
    t0 = time.perf_counter()
    again = DemoStore.open(store.path, "a")
    assert again.data["action"].shape == (6, 8) and time.perf_counter() - t0 < 5
    again.append_episode(make_episode(4, seed=1, image_hw=None))
    np.testing.assert_array_equal(
        DemoStore.open(store.path).episode(1)["action"],
        make_episode(4, seed=1, image_hw=None)["action"],
    )


def test_zip_member_that_inflates_beyond_its_chunk_is_refused(tmp_path, capsys):
    src = tmp_path / "dp.zarr"
    dp_store(src)
    (src / "data/action/1.0").write_bytes(bytes(64 << 20))  # 64 MiB of zeros: ~64 KiB deflated
    path = zip_dir(src, tmp_path / "bomb.zarr.zip", zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 1 << 20
    err = refused(capsys, "validate", str(path))
    assert "data/action/1.0" in err and "inflate" in err
    # a metadata member too, refused before zarr reads any
    (src / "meta/.zattrs").write_bytes(b" " * (65 << 20))
    path = zip_dir(src, tmp_path / "bomb2.zarr.zip", zipfile.ZIP_DEFLATED)
    assert "meta/.zattrs" in refused(capsys, "info", str(path))


# ---- item 13: an interrupted write's tail is a note ---------------------------------------


def test_uncommitted_tail_is_a_note_and_real_problems_stay_problems(tmp_path, spec, capsys):
    store = DemoStore.create(tmp_path / "s.zarr", spec)
    store.append_episode(make_episode(6))
    w = store.episode_writer(flush_steps=2)
    w.add_steps(make_episode(5, seed=9))  # flushed, never committed: a crash

    code, out, _ = cli(capsys, "validate", store.path, "--quiet")
    assert code == 0 and "ok (1 episodes, 6 steps)" in out
    notes = [line for line in out.splitlines() if line.startswith("note: ")]
    assert notes and all("unfinished steps" in line for line in notes)

    zarr.open_group(store.path, mode="r+")["data/joint_pos"][2, 0] = np.nan
    code, out, _ = cli(capsys, "validate", store.path, "--quiet")
    assert code == 1 and "note: " in out and "data/joint_pos holds NaN/inf" in out
    # a half-committed episode index entry is a note too
    zarr.open_group(store.path, mode="r+")["meta/episode_ends"].resize((2,))
    code, out, _ = cli(capsys, "validate", store.path, "--quiet")
    assert "half-committed" in out
