"""handoff-data as a user runs it: output, exit codes, and nothing lost on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import zarr

from data.store import DemoStore


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "data.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_info_and_validate(small_store):
    out = run("info", small_store.path, "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["episodes"] == 4 and info["steps"] == 46
    assert info["success"] == {"known": 4, "successful": 3}
    assert info["keys"]["agentview"]["chunks"] == [1, 16, 16, 3]
    assert "lz4" in info["keys"]["agentview"]["codec"]
    text = run("info", small_store.path)
    assert "episodes   4" in text.stdout and "agentview" in text.stdout
    ok = run("validate", small_store.path, "--quiet")
    assert ok.returncode == 0 and "ok (4 episodes" in ok.stdout


def test_validate_reports_each_problem(small_store):
    root = zarr.open_group(small_store.path, mode="r+")
    jp = root["data/joint_pos"]
    jp[3, 2] = np.nan
    ts = root["data/timestamp"]
    ts[12] = ts[11]  # not increasing inside episode 1
    chunk = next(
        p
        for p in (small_store.root.store.root / "data/agentview").iterdir()
        if p.name.startswith("c.")
    )
    chunk.write_bytes(b"garbage")
    out = run("validate", small_store.path, "--quiet")
    assert out.returncode == 1
    lines = out.stdout.strip().splitlines()
    assert any("data/joint_pos holds NaN/inf (first at step 3)" in line for line in lines)
    assert any("data/timestamp is not increasing in episode 1" in line for line in lines)
    assert any("data/agentview" in line and "decode" in line for line in lines)
    assert "Traceback" not in out.stderr


def test_user_errors_exit_2_without_traceback(tmp_path, small_store):
    for args in (
        ("info", str(tmp_path / "missing.zarr")),
        ("validate", str(tmp_path)),
        ("export-video", small_store.path, "--episode", "9", "--out", str(tmp_path / "v.mp4")),
        ("delete", small_store.path, "--episodes", "1"),  # no --yes
    ):
        out = run(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    assert DemoStore.open(small_store.path).n_episodes == 4  # nothing was deleted


def test_merge_split_refuse_overwrite_and_incompatible(tmp_path, small_store, spec):
    merged = tmp_path / "merged.zarr"
    assert run("merge", small_store.path, small_store.path, str(merged)).returncode == 0
    m = DemoStore.open(merged)
    assert m.n_episodes == 8
    np.testing.assert_array_equal(m.episode(5)["agentview"], small_store.episode(1)["agentview"])
    again = run("merge", small_store.path, str(merged))
    assert again.returncode == 2 and "--force" in again.stderr
    assert DemoStore.open(merged).n_episodes == 8  # untouched

    other_spec = spec.to_dict() | {"control_hz": 10.0}
    from data.embodiment import Embodiment

    other = DemoStore.create(tmp_path / "other.zarr", Embodiment.from_dict(other_spec))
    other.append_episode({k: v for k, v in small_store.episode(0).items() if k != "timestamp"})
    bad = run("merge", small_store.path, other.path, str(tmp_path / "x.zarr"))
    assert bad.returncode == 2 and "control rate differs" in bad.stderr
    assert not (tmp_path / "x.zarr").exists()

    tr, va = tmp_path / "train.zarr", tmp_path / "val.zarr"
    out = run("split", str(merged), str(tr), str(va), "--val-fraction", "0.25")
    assert out.returncode == 0, out.stderr
    assert DemoStore.open(tr).n_episodes + DemoStore.open(va).n_episodes == 8
    assert DemoStore.open(va).n_episodes == 2


def test_delete_and_export_video(tmp_path, small_store):
    out = run("delete", small_store.path, "--episodes", "0,2", "--yes")
    assert out.returncode == 0, out.stderr
    assert DemoStore.open(small_store.path).n_episodes == 2
    video = tmp_path / "ep.mp4"
    out = run("export-video", small_store.path, "--episode", "1", "--out", str(video))
    assert out.returncode == 0, out.stderr
    import av

    with av.open(str(video)) as container:
        frames = sum(1 for _ in container.decode(video=0))
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
    assert frames == 13  # episode 3 of the original store, 13 steps
    assert (
        run("export-video", small_store.path, "--episode", "1", "--out", str(video)).returncode == 2
    )  # exists, no --force


def test_format2_store_converts_into_a_writable_copy(tmp_path):
    import numcodecs

    from tests.data.test_store_compat import _write_diffusion_policy_store

    src = tmp_path / "pusht.zarr"
    arrays = _write_diffusion_policy_store(src, numcodecs.Blosc("zstd", 3))
    out = run("merge", str(src), str(tmp_path / "fresh.zarr"))
    assert out.returncode == 0, out.stderr
    fresh = DemoStore.open(tmp_path / "fresh.zarr", "a")
    assert fresh.zarr_format == 3 and fresh.n_episodes == 3
    np.testing.assert_array_equal(fresh.episode(2)["img"], arrays["img"][21:])
