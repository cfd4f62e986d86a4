"""The hostile-input suite: every command over generated bad inputs (tests/hostile.py).

For every (input, command) cell the command ends in one of two ways: exit 0 with data that is
exactly the input's committed data, or a refusal - exit 2, no traceback, one ``error:`` line
that is the last line on stderr (``validate`` may exit 1 with its problems listed instead).
Either way it finishes within its timeout and a memory bound, leaves every input file
byte-identical, and writes nothing but its own output (a refusal writes nothing at all).

The commands run as the venv's console scripts in subprocesses, HOSTILE_JOBS at a time
(default 2), before the first test of the session asserts; each cell is its own test id.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.hostile import CELLS, Outcome, allowed, build_inputs, run_cell

JOBS = int(os.environ.get("HOSTILE_JOBS", "2"))


@pytest.fixture(scope="session")
def outcomes(request, tmp_path_factory) -> dict[tuple[str, str], Outcome]:
    """Build the inputs the selected tests need, then run their commands in parallel."""
    cells = [
        item.callspec.params["cell"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_hostile_input"
    ]
    root = tmp_path_factory.mktemp("hostile")
    inputs = build_inputs(root / "inputs", {case for case, _ in cells})
    with ThreadPoolExecutor(JOBS) as pool:
        done = pool.map(lambda c: run_cell(*c, inputs, root / "runs"), cells)
        return {cell: (outcome, inputs.truth[cell[0]]) for cell, outcome in zip(cells, done)}


def stderr_lines(o: Outcome) -> list[str]:
    # tqdm redraws with \r; only what is left on each line counts
    return [
        ln.split("\r")[-1].strip() for ln in o.stderr.splitlines() if ln.split("\r")[-1].strip()
    ]


def judge_exit(o: Outcome, ok: set[int]) -> list[str]:
    if o.timed_out:
        return [f"hung: killed after {o.timeout_s} s"]
    problems = []
    if "Traceback" in o.stderr:
        problems.append("traceback on stderr")
    if o.rc not in ok:
        problems.append(f"exit {o.rc}, expected {sorted(ok)}")
    lines = stderr_lines(o)
    errors = [ln for ln in lines if ln.startswith("error:")]
    if o.rc == 2 and (len(errors) != 1 or lines[-1] != errors[0]):
        problems.append(f"exit 2 needs one 'error:' line, last on stderr ({len(errors)} found)")
    elif o.rc == 2 and str(o.input_dir) not in errors[0]:
        problems.append("the error does not name the input file")
    if o.rc == 1 and not o.stdout.strip():
        problems.append("validate exit 1 lists no problem")
    if o.max_rss_mb > o.max_rss_limit:
        problems.append(f"peak memory {o.max_rss_mb:.0f} MB > {o.max_rss_limit} MB")
    return problems


def judge_files(o: Outcome) -> list[str]:
    problems = []
    if o.input_changed:
        problems.append(f"input changed: {o.input_changed[:3]}")
    if o.stray:
        problems.append(f"wrote outside its output: {o.stray[:3]}")
    if o.rc != 0 and o.output is not None and o.output.exists():
        problems.append(f"refused but left {o.output.name} behind")
    return problems


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray], where: str) -> None:
    for key, value in want.items():
        assert key in got, f"{where}: key {key!r} missing"
        a, b = np.asarray(got[key]), np.asarray(value)
        assert a.shape == b.shape, f"{where}/{key}: shape {a.shape}, expected {b.shape}"
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), f"{where}/{key}: values"


def check_exact(command: str, o: Outcome, truth) -> list[str]:
    """An exit 0 must have produced the input's committed data exactly (or its run/report)."""
    try:
        if command in ("merge", "to-handoff"):
            from data.store import DemoStore

            store = DemoStore.open(o.output)
            assert store.n_episodes == len(truth), f"{store.n_episodes} episodes, not {len(truth)}"
            for i, want in enumerate(truth):
                assert_same(store.episode(i, list(want)), want, f"episode {i}")
        elif command == "to-lerobot":
            import pyarrow.parquet as pq

            files = sorted((o.output / "data").rglob("*.parquet"))
            got = np.concatenate(
                [np.stack(pq.read_table(f)["action"].to_pylist()) for f in files]
            ).astype(np.float32)
            assert_same(
                {"action": got}, {"action": np.concatenate([t["action"] for t in truth])}, ""
            )
        elif command == "train":
            assert (o.output / "last/model.safetensors").is_file(), "no last/ checkpoint"
        elif command == "eval":
            json.loads(o.stdout.strip().splitlines()[-1])
    except Exception as e:  # an unreadable output counts as inexact too
        return [f"exit 0 but the output is not exact: {type(e).__name__}: {e}"]
    return []


@pytest.mark.parametrize("cell", CELLS, ids=[f"{case}-{command}" for case, command in CELLS])
def test_hostile_input(cell, outcomes):
    case, command = cell
    o, truth = outcomes[cell]
    print(o.summary())  # shown with -rA: what every cell did, failed or not
    problems = judge_exit(o, allowed(case, command)) + judge_files(o)
    if not problems and o.rc == 0:
        problems += check_exact(command, o, truth)
    if case == "bag_nan_velocity" and o.rc == 0 and "nan" not in o.stdout.lower():
        problems.append("NaN velocities converted without a note in the report")
    assert not problems, f"{'; '.join(problems)} || {o.summary()}"
