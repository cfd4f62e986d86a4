"""Outputs never cost the user data: an output that is, holds or lies inside an input is refused
before anything is read; an overwrite (--force) swaps a complete new output in; an unwritable
location or a GL back-end that cannot open is one error line with nothing left behind; resume
and append refuse by name what differs from the run or the store (issue 12, items 1, 12, 14)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from data.cli import main as data_main
from data.errors import UserError
from data.outputs import check_output, publish, staging_dir
from data.store import DemoStore
from tests.conftest import make_episode
from tests.policies import test_train


def tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` (or the file itself) by relative name -> content hash."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def cli(capsys, *argv: str) -> tuple[int, list[str]]:
    """Run handoff-data in-process; (exit status, stderr lines)."""
    try:
        code = data_main(list(argv))
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture
def nested(tmp_path, small_store) -> tuple[Path, Path, dict[str, str]]:
    """The issue's layout: ``mkdir D; cp -r S D/in.zarr`` -> (D, D/in.zarr, its hashes)."""
    d = tmp_path / "D"
    d.mkdir()
    shutil.copytree(small_store.path, d / "in.zarr")
    return d, d / "in.zarr", tree(d / "in.zarr")


def disk_dies_at_episode(monkeypatch, n: int) -> None:
    """Make every store's append fail once it holds ``n`` episodes (a crash mid-write)."""
    append = DemoStore.append_episode

    def crash(self, *a, **k):
        if self.n_episodes == n:
            raise RuntimeError("disk died")
        return append(self, *a, **k)

    monkeypatch.setattr(DemoStore, "append_episode", crash)


def test_convert_into_folder_holding_the_source_is_refused(nested):
    """The issue's exact command, as a user runs it."""
    d, src, before = nested
    r = subprocess.run(
        [sys.executable, "-m", "data.cli", "convert", "--from", "handoff", "--to", "handoff"]
        + [str(src), str(d), "--force"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert str(d) in lines[0] and str(src) in lines[0] and "contains" in lines[0]
    assert tree(src) == before
    assert sorted(p.name for p in d.iterdir()) == ["in.zarr"]


def test_merge_split_export_refuse_outputs_overlapping_inputs(nested, tmp_path, capsys):
    d, src, before = nested
    link = tmp_path / "link.zarr"
    link.symlink_to(src)
    cases = [
        ("merge", str(src), str(d), "--force"),  # output holds the input
        ("merge", str(src), str(src / "sub.zarr"), "--force"),  # output inside the input
        ("merge", str(src), str(link), "--force"),  # output is the input, through a link
        ("convert", "--from", "handoff", "--to", "lerobot", str(link), str(src), "--force"),
        ("split", str(src), str(d), str(tmp_path / "val.zarr"), "--force"),
        ("split", str(src), str(tmp_path / "t.zarr"), str(tmp_path / "t.zarr/v"), "--force"),
        ("export-video", str(src), "--episode", "0", "--out", str(src / "v.mp4")),
    ]
    for argv in cases:
        code, err = cli(capsys, *argv)
        assert code == 2 and len(err) == 1 and err[0].startswith("error:"), (argv, err)
        assert tree(src) == before, argv
    assert sorted(p.name for p in d.iterdir()) == ["in.zarr"]
    assert not (tmp_path / "t.zarr").exists() and not (tmp_path / "val.zarr").exists()


def test_force_replaces_only_a_complete_output(small_store, tmp_path, capsys, monkeypatch):
    """--force over an existing output: the old one stays whole until the new one is done."""
    out = tmp_path / "out.zarr"
    assert cli(capsys, "merge", small_store.path, str(out))[0] == 0
    before = tree(out)

    disk_dies_at_episode(monkeypatch, 2)
    convert = ("convert", "--from", "handoff", "--to", "handoff", "--quiet")
    for argv in (
        ("merge", small_store.path, str(out), "--force"),
        (*convert, small_store.path, str(out), "--force"),
    ):
        with pytest.raises(RuntimeError, match="disk died"):
            data_main(list(argv))
        assert tree(out) == before, argv
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr", "small.zarr"]
    monkeypatch.undo()  # the disk works again
    assert cli(capsys, *convert, small_store.path, str(out), "--force")[0] == 0
    assert DemoStore.open(out).n_episodes == 4


def test_publish_swaps_files_folders_and_links(tmp_path):
    """publish() replaces whatever is at DST (a folder, a file, a link - never its target)."""
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep").write_text("keep")
    for kind in ("dir", "file", "link", "none"):
        dst = tmp_path / f"dst_{kind}"
        if kind == "dir":
            dst.mkdir()
            (dst / "old").write_text("old")
        elif kind == "file":
            dst.write_text("old")
        elif kind == "link":
            dst.symlink_to(target)
        tmp = staging_dir(dst)
        tmp.mkdir()
        (tmp / "new").write_text("new")
        publish(tmp, dst)
        assert dst.is_dir() and not dst.is_symlink() and os.listdir(dst) == ["new"], kind
        assert not tmp.exists()
    assert (target / "keep").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dst_dir",
        "dst_file",
        "dst_link",
        "dst_none",
        "target",
    ]


# ---- item 12: unwritable outputs ------------------------------------------------------------


def test_output_under_a_file_is_one_clear_error(small_store, tmp_path, capsys):
    blocker = tmp_path / "somefile"
    blocker.write_text("x")
    for argv in (
        ("merge", small_store.path, str(blocker / "out.zarr")),
        ("convert", "--from", "handoff", "--to", "robomimic", small_store.path, f"{blocker}/o.h5"),
        ("export-video", small_store.path, "--episode", "0", "--out", str(blocker / "a/v.mp4")),
    ):
        code, err = cli(capsys, *argv)
        assert code == 2 and len(err) == 1, (argv, err)
        assert f"cannot write {blocker}" in err[0] and "is a file, not a folder" in err[0]
    assert blocker.read_text() == "x"


def test_read_only_location_is_refused_by_its_errno(tmp_path, monkeypatch):
    """A read-only mount (EROFS) shows only when written; root ignores permission bits, so the
    probe write is made to fail the way the kernel would."""
    import errno

    import data.outputs

    def refuse(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(data.outputs.tempfile, "mkstemp", refuse)
    with pytest.raises(UserError, match="cannot write .*out.zarr: Read-only file system"):
        check_output(tmp_path / "ro" / "out.zarr", force=True)


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to drop to nobody"
)
def test_read_only_folder_as_an_unprivileged_user(small_store):
    """A real 0o555 folder, written by a user the permission bits apply to (nobody)."""
    base = Path(tempfile.mkdtemp(prefix="handoff-ro-"))
    try:
        base.chmod(0o755)
        src = base / "in.zarr"
        shutil.copytree(small_store.path, src)
        ro = base / "ro"
        ro.mkdir(mode=0o555)
        ro.chmod(0o555)
        for p in [src, *src.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        r = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            + [sys.executable, "-m", "data.cli", "merge", str(src), str(ro / "out.zarr")],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=Path(__file__).parents[1],
            env={**os.environ, "HOME": str(base), "MPLCONFIGDIR": str(base)},
        )
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines() == [
            f"error: cannot write {ro / 'out.zarr'}: Permission denied ({ro}); "
            "choose a writable location"
        ]
        assert os.listdir(ro) == []
    finally:
        shutil.rmtree(base)


# ---- handoff-collect: GL back-end, appending, --force ----------------------------------------


def lift_store(path: Path, seeds=(0, 1)) -> DemoStore:
    """A small store as handoff-collect --task lift writes it (no cameras)."""
    from data.embodiment import load_embodiment
    from sim.tasks import TASKS

    spec = TASKS.get("lift").embodiment_for(load_embodiment("sim_panda").with_cameras([], None))
    store = DemoStore.create(path, spec)
    for s in seeds:
        ep = make_episode(5, seed=s, image_hw=None)
        ep["object_state"] = np.zeros((5, 10), np.float32)
        store.append_episode(ep, task="lift", source="scripted", seed=s, success=True)
    return store


@pytest.fixture
def fake_sim(monkeypatch):
    """handoff-collect's episodes without the simulator; ``fail_after`` episodes, then a crash."""
    import sim.collect

    state = {"fail_after": None}

    def run_jobs(setup, fn, seeds, workers):
        for n, s in enumerate(seeds):
            if state["fail_after"] is not None and n >= state["fail_after"]:
                raise RuntimeError("simulator died")
            ep = make_episode(5, seed=100 + s, image_hw=None)
            ep["object_state"] = np.ones((5, 10), np.float32)
            yield s, ep, True

    monkeypatch.setattr(sim.collect, "run_jobs", run_jobs)
    return state


def test_collect_refuses_another_task_or_repeated_seeds(tmp_path, fake_sim):
    from sim.collect import collect

    store = lift_store(tmp_path / "lift.zarr")
    before = tree(tmp_path / "lift.zarr")
    with pytest.raises(UserError, match=r"holds task\(s\) \['lift'\], not 'can'"):
        collect("can", 2, store.path, progress=False)
    with pytest.raises(UserError, match=r"seeds \[1\] of --task lift are already in the store"):
        collect("lift", 2, store.path, seed=1, progress=False)
    assert tree(tmp_path / "lift.zarr") == before
    assert collect("lift", 2, store.path, progress=False)["written"] == 2  # continues at seed 2
    metas = [DemoStore.open(store.path).episode_meta(i) for i in range(4)]
    assert [m["seed"] for m in metas] == [0, 1, 2, 3]


def test_collect_force_keeps_the_old_store_until_the_new_one_is_done(tmp_path, fake_sim):
    from sim.collect import collect

    out = tmp_path / "lift.zarr"
    lift_store(out)
    before = tree(out)
    fake_sim["fail_after"] = 1
    with pytest.raises(RuntimeError, match="simulator died"):
        collect("lift", 3, out, force=True, progress=False)
    assert tree(out) == before
    with pytest.raises(RuntimeError):  # a new store that got no episode is not left behind
        fake_sim["fail_after"] = 0
        collect("lift", 3, tmp_path / "new.zarr", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lift.zarr"]
    fake_sim["fail_after"] = None
    collect("lift", 3, out, force=True, progress=False)
    assert DemoStore.open(out).n_episodes == 3 and tree(out) != before


def refused_under_glfw(cmd: list[str]) -> str:
    """Run a handoff command with MUJOCO_GL=glfw on a headless machine; assert it exits 2 with
    one error line saying glfw cannot render, and return that line."""
    env = {k: v for k, v in os.environ.items() if k not in ("HANDOFF_GL", "PYOPENGL_PLATFORM")}
    r = subprocess.run(
        [str(Path(sys.executable).parent / cmd[0]), *cmd[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "MUJOCO_GL": "glfw"},
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: MUJOCO_GL=glfw cannot render"), lines
    return lines[0]


@pytest.mark.skipif(bool(os.environ.get("DISPLAY")), reason="glfw can open a window here")
def test_collect_with_a_gl_backend_that_cannot_open(tmp_path):
    """MUJOCO_GL=glfw on a headless machine: one line naming the back-ends that work, no store."""
    line = refused_under_glfw(
        ["handoff-collect", "--task", "lift", "--episodes", "1", "--cameras", "agentview"]
        + ["--out", str(tmp_path / "s.zarr")]
    )
    assert "back-ends that work here: osmesa" in line
    assert list(tmp_path.iterdir()) == []


# ---- handoff-train: --out, --force, --resume ----------------------------------------------


def train_main(*argv: str) -> int:
    from policies.train import main

    try:
        return main(list(argv))
    except SystemExit as e:
        return e.code


state_store = test_train.state_store  # the fixture: a state-only copy of small_store


def train(store, out: Path, *flags: str, steps: int = 6, sets: tuple[str, ...] = ()) -> int:
    """A tiny diffusion run on the CPU (the settings tests/policies/test_train.py uses)."""
    argv = ["--policy", "diffusion", "--data", str(store), "--out", str(out), "--steps"]
    argv += [str(steps), "--batch-size", "4", "--device", "cpu", "--no-progress", *flags]
    for item in (
        "train.save_every=6",
        "train.warmup_steps=2",
        *test_train.TINY["diffusion"],
        *sets,
    ):
        argv += ["--set", item]
    return train_main(*argv)


@pytest.fixture
def run_dir(tmp_path, state_store):
    """A 6-step tiny diffusion run on the state-only store (checkpoint at step 6)."""
    assert train(state_store.path, tmp_path / "run") == 0
    return tmp_path / "run"


def resume(run: Path, *extra: str) -> int:
    return train_main("--out", str(run), "--resume", "--no-progress", "--device", "cpu", *extra)


def test_resume_refuses_settings_that_differ_from_the_run(run_dir, capsys):
    before = tree(run_dir)
    for extra, named in (
        (["--set", "train.lr=3e-4"], "train.lr=3e-4 (run: 0.001)"),
        (["--set", "policy.horizon=32", "--batch-size", "8"], "--batch-size 8 (run: 4)"),
        (["--set", "policy.nope=1"], "policy.nope=1 (run: unset)"),
        (["--policy", "act"], "--policy act (run: diffusion)"),
    ):
        assert resume(run_dir, *extra) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --resume continues the run"), err
        assert named in err[0], err
    assert tree(run_dir) == before
    # what README documents: --steps extends a run; a --set equal to the saved value is fine
    assert resume(run_dir, "--steps", "8", "--set", "train.warmup_steps=2") == 0
    assert json.loads((run_dir / "last/train_meta.json").read_text())["step"] == 8


def test_resume_refuses_a_store_that_changed(run_dir, state_store, capsys):
    ep = state_store.episode(0)
    state_store = DemoStore.open(state_store.path, "a")
    state_store.append_episode(ep, task="lift", source="scripted", success=True, seed=9)
    assert resume(run_dir, "--steps", "8") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and state_store.path in err[0], err
    assert "changed since this run began (episodes 4 -> 5, steps 46 -> 56" in err[0]
    assert "--allow-data-change" in err[0]
    assert resume(run_dir, "--steps", "8", "--allow-data-change") == 0
    assert resume(run_dir, "--steps", "10") == 0  # the accepted store is the run's store now


def test_train_out_overlapping_the_data_is_refused(tmp_path, state_store, capsys):
    d = tmp_path / "D"
    d.mkdir()
    shutil.copytree(state_store.path, d / "in.zarr")
    before = tree(d / "in.zarr")
    for out in (d, d / "in.zarr" / "run"):
        assert train(d / "in.zarr", out, "--force") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"the input {d / 'in.zarr'}" in err[0], err
        assert tree(d / "in.zarr") == before


def test_train_force_keeps_the_old_run_until_the_new_one_finishes(
    run_dir, state_store, monkeypatch
):
    from policies.diffusion.model import DiffusionPolicy

    before = tree(run_dir)
    # a bad setting is refused before the old run is touched
    assert train(state_store.path, run_dir, "--force", sets=("train.lr=-1",)) == 2
    assert tree(run_dir) == before

    def killed(self, batch):
        raise KeyboardInterrupt

    monkeypatch.setattr(DiffusionPolicy, "forward", killed)
    assert train(state_store.path, run_dir, "--force") == 130
    (aside,) = run_dir.parent.glob("run.replaced-*")
    assert tree(aside) == before
    monkeypatch.undo()
    shutil.rmtree(aside)
    assert train(state_store.path, run_dir, "--force") == 0
    assert not list(run_dir.parent.glob("run.replaced-*"))


# ---- handoff-eval --out, closed_loop --out, delete_episodes ----------------------------------


def eval_main(*argv: str) -> int:
    from sim.evaluate import main

    try:
        main(list(argv))
    except SystemExit as e:
        return e.code
    return 0


def replay_eval(store: Path, out: Path, *flags: str) -> int:
    """handoff-eval --replay of a 5-step stored episode, cut at 5 steps (about a second)."""
    argv = ["--replay", f"{store}:0", "--out", str(out), "--max-steps", "5", "--no-progress"]
    return eval_main(*argv, "--video-episodes", "0", *flags)


def fake_run(run_dir: Path) -> Path:
    """A run directory's layout (run config, last/ checkpoint with train_state/); the refusals
    come before anything is loaded, so the files need not hold a model."""
    for name in ("config.json", "last/config.json", "last/model.safetensors"):
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_text("{}")
    (run_dir / "last" / "train_state").mkdir()
    (run_dir / "last" / "train_state" / "state.json").write_text("{}")
    return run_dir


def test_eval_out_overlapping_its_checkpoint_or_store_is_refused(tmp_path, capsys):
    """An --out that is, holds or lies inside the checkpoint (or a run's best/last) or the
    replayed store is refused before anything is loaded; a run's eval/ is allowed."""
    run_dir = fake_run(tmp_path / "run")
    store = lift_store(tmp_path / "lift.zarr")
    before = {p: tree(p) for p in (run_dir, tmp_path / "lift.zarr")}
    ckpt = ["--checkpoint", str(run_dir / "last"), "--task", "lift", "--episodes", "1"]
    run = ["--checkpoint", str(run_dir), "--task", "lift", "--episodes", "1"]
    for argv, how in (
        ([*ckpt, "--out", str(run_dir / "last" / "ev")], "lies inside"),  # the example
        ([*ckpt, "--out", str(run_dir / "last"), "--force"], "is"),
        ([*run, "--out", str(run_dir), "--force"], "contains"),
        ([*run, "--out", str(run_dir / "last" / "train_state"), "--force"], "lies inside"),
        (["--replay", f"{store.path}:0", "--out", str(tmp_path / "lift.zarr/ev")], "lies inside"),
        (["--replay", f"{store.path}:0", "--out", str(tmp_path), "--force"], "contains"),
    ):
        assert eval_main(*argv, "--no-progress") == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --out ") and f" {how} " in err[0], err
    assert {p: tree(p) for p in before} == before
    assert not (run_dir / "last" / "ev").exists() and not (tmp_path / "lift.zarr/ev").exists()
    from sim.evaluate import check_report_out, checkpoint_inputs

    check_report_out(str(run_dir / "eval"), checkpoint_inputs(str(run_dir)), force=False)


def test_eval_force_keeps_the_old_report_until_the_new_one_is_complete(
    tmp_path, capsys, monkeypatch
):
    """--force over an earlier report: a bad checkpoint, or a failure while the new files are
    written, leaves the old report folder exactly as it was and nothing beside it."""
    import sim.report

    store = lift_store(tmp_path / "lift.zarr")
    ev = tmp_path / "ev"
    assert replay_eval(store.path, ev) == 0
    assert sorted(os.listdir(ev)) == ["report.json", "summary.png"]
    before = tree(ev)
    bad = tmp_path / "bad_ckpt"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    (bad / "model.safetensors").write_bytes(b"")
    argv = ["--checkpoint", str(bad), "--task", "lift", "--episodes", "1", "--out", str(ev)]
    assert eval_main(*argv, "--force", "--no-progress") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bad}"), err
    assert tree(ev) == before

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sim.report, "write_summary_png", disk_full)
    with pytest.raises(OSError, match="No space left"):
        replay_eval(store.path, ev, "--force", "--seed", "3")
    assert tree(ev) == before
    assert sorted(os.listdir(tmp_path)) == ["bad_ckpt", "ev", "lift.zarr"]
    monkeypatch.undo()
    assert replay_eval(store.path, ev, "--force", "--seed", "3") == 0
    assert json.loads((ev / "report.json").read_text())["seeds"] == [3]


def test_eval_force_into_a_folder_with_other_files_keeps_them(tmp_path, capsys):
    """A folder holding more than a report (a run's eval/ with the trainer's step_* reports, a
    user's notes) gets only the report files replaced, and an old report's video that the new
    run does not make is removed rather than left beside the new report."""
    store = lift_store(tmp_path / "lift.zarr")
    ev = tmp_path / "eval"
    (ev / "step_0000010").mkdir(parents=True)
    (ev / "step_0000010" / "report.json").write_text("{}")
    (ev / "notes.txt").write_text("mine")
    (ev / "rollouts.mp4").write_bytes(b"old video")
    assert replay_eval(store.path, ev) == 2  # a report file is there: --force is needed
    assert "pass --force" in capsys.readouterr().err
    assert replay_eval(store.path, ev, "--force") == 0
    assert sorted(os.listdir(ev)) == ["notes.txt", "report.json", "step_0000010", "summary.png"]
    assert (ev / "notes.txt").read_text() == "mine"
    assert (ev / "step_0000010" / "report.json").read_text() == "{}"
    (tmp_path / "afile").write_text("x")
    assert replay_eval(store.path, tmp_path / "afile", "--force") == 2
    assert "is a file" in capsys.readouterr().err and (tmp_path / "afile").read_text() == "x"


@pytest.mark.skipif(bool(os.environ.get("DISPLAY")), reason="glfw can open a window here")
def test_eval_video_with_a_gl_backend_that_cannot_open(tmp_path):
    """handoff-eval --out with a video and MUJOCO_GL=glfw on a headless machine: one line, no
    episode run, nothing written."""
    lift_store(tmp_path / "lift.zarr")
    before = tree(tmp_path / "lift.zarr")
    refused_under_glfw(
        ["handoff-eval", "--replay", f"{tmp_path}/lift.zarr:0", "--out", str(tmp_path / "ev")]
        + ["--video-episodes", "1", "--max-steps", "5"]
    )
    assert sorted(os.listdir(tmp_path)) == ["lift.zarr"] and tree(tmp_path / "lift.zarr") == before


def test_delete_episodes_keeps_the_store_when_the_rewrite_fails(small_store, monkeypatch):
    """delete_episodes swaps in a complete copy: a failure midway leaves every episode, and an
    index out of range is refused by name instead of wrapping around onto another episode."""
    path = Path(small_store.path)
    before = tree(path)
    with pytest.raises(UserError, match="episode 7 out of range"):
        small_store.delete_episodes([7])
    disk_dies_at_episode(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="disk died"):
        DemoStore.open(path, "a").delete_episodes([0])
    assert tree(path) == before and sorted(os.listdir(path.parent)) == ["small.zarr"]
    monkeypatch.undo()
    store = DemoStore.open(path, "a")
    store.delete_episodes([-1])
    assert [DemoStore.open(path).episode_meta(i)["seed"] for i in range(3)] == [0, 1, 2]
    assert sorted(os.listdir(path.parent)) == ["small.zarr"]


def test_closed_loop_out_is_checked_before_the_run(tmp_path, capsys):
    """python -m handoff_ros.closed_loop --out: refused before any node starts when it lies
    inside the checkpoint or exists without --force (the run takes minutes)."""
    from handoff_ros.closed_loop import main

    run_dir = fake_run(tmp_path / "run")
    before = tree(run_dir)
    (tmp_path / "ros.json").write_text("old")
    for out, message in (
        (run_dir / "last" / "config.json", "error: --out "),
        (tmp_path / "ros.json", "pass --force"),
    ):
        with pytest.raises(SystemExit) as e:
            main(["--checkpoint", str(run_dir), "--episodes", "1", "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and message in err[0], err
    assert tree(run_dir) == before and (tmp_path / "ros.json").read_text() == "old"


def test_demo_fresh_deletes_nothing_up_front(tmp_path, monkeypatch, capsys):
    """make demo DEMO_ARGS=--fresh into a folder that holds other things: every stage is redone
    with --force (each output replaced when its new one is complete), nothing else is touched."""
    import handoff_ros.closed_loop
    import handoff_ros.demo as demo

    out = tmp_path / "demo"
    (out / "lift.zarr").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    commands = []

    def run(cmd):
        assert (out / "notes.txt").exists() and (out / "lift.zarr").exists()  # nothing removed
        commands.append([Path(cmd[0]).name, *cmd[1:]])
        if commands[-1][0] == "handoff-eval":
            report = {"successes": 0, "n_episodes": 1, "success_rate": 0.0}
            report |= {"success_ci95": [0.0, 1.0], "latency_ms": {"p50": 1.0, "p99": 2.0}}
            (out / "act" / "eval").mkdir(parents=True)
            (out / "act" / "eval" / "report.json").write_text(json.dumps(report))

    ros = {"successes": 0, "episodes": 1, "inference_ms": {"p50": 1.0, "p99": 2.0}}
    monkeypatch.setattr(demo, "run", run)
    monkeypatch.setattr(demo, "launched_closed_loop", lambda *a, **k: ros)
    monkeypatch.setattr(handoff_ros.closed_loop, "run_closed_loop", lambda *a, **k: ros)
    demo.demo("act", out, demo.QUICK, fresh=True, workers=1)
    assert [c[0] for c in commands] == ["handoff-collect", "handoff-train", "handoff-eval"]
    assert all("--force" in c for c in commands), commands
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(bool(os.environ.get("DISPLAY")), reason="glfw can open a window here")
def test_sim_arm_node_with_a_gl_backend_that_cannot_open(tmp_path, monkeypatch):
    """The sim_arm node with cameras and MUJOCO_GL=glfw, headless: exit 2 with one error line
    naming the back-ends that work, not a traceback from its render thread."""
    pytest.importorskip("rclpy")
    from handoff_ros.processes import NodeProcess, fresh_domain_id

    monkeypatch.delenv("HANDOFF_GL", raising=False)
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)
    monkeypatch.setenv("MUJOCO_GL", "glfw")
    node = NodeProcess("sim_arm", fresh_domain_id(), {"cameras": "agentview"}, tmp_path)
    assert node.proc.wait(timeout=120) == 2
    node.stop()
    lines = [ln for ln in node.log().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and "MUJOCO_GL=glfw cannot render" in errors[0], lines
    assert not any("Traceback" in ln for ln in lines), lines
