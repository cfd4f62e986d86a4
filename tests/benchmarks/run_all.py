"""`make bench`: run every tests/benchmarks/bench_*.py and print one table against targets.

Each benchmark prints one JSON line of figures. A benchmark may carry its own targets as
``"targets": {"metric": ">= 3"}``; the table below adds the targets the issues set for the
others. ``--quick`` passes ``--quick`` to every benchmark (smaller sizes, a smoke run).

    python tests/benchmarks/run_all.py [--quick] [--only store,sim] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import operator
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if k in ("bench", "targets"):
            continue
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flatten(v, f"{key}.")
        else:
            out[key] = v
    return out


def check(value: object, target: str) -> str:
    op, _, bound = target.partition(" ")
    if not isinstance(value, int | float) or op not in OPS:
        return "?"
    return "yes" if OPS[op](value, float(bound)) else "NO"


def run_one(script: Path, quick: bool) -> tuple[dict | None, float, str]:
    cmd = [sys.executable, str(script)] + (["--quick"] if quick else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line), elapsed, ""
            except json.JSONDecodeError:
                break
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return None, elapsed, f"exit {proc.returncode}: {tail[0]}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    p.add_argument("--only", default="", help="comma-separated names (store,sim,...)")
    p.add_argument("--json-out", help="also write every benchmark's JSON to this file")
    args = p.parse_args()
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    scripts = [
        s
        for s in sorted(HERE.glob("bench_*.py"))
        if not only or s.stem.removeprefix("bench_") in only
    ]
    results, failed = {}, []
    rows = []
    for script in scripts:
        name = script.stem.removeprefix("bench_")
        print(f"running {script.name} ...", file=sys.stderr, flush=True)
        data, elapsed, err = run_one(script, args.quick)
        if data is None:
            failed.append(name)
            rows.append((name, "(failed)", err, "", ""))
            continue
        results[name] = data
        targets = data.get("targets", {})
        for metric, value in flatten(data).items():
            target = targets.get(metric, "")
            if isinstance(value, float):
                value = round(value, 3)
            rows.append((name, metric, value, target, check(value, target) if target else ""))
        rows.append((name, "(wall seconds)", round(elapsed, 1), "", ""))
    widths = [
        max(len(str(r[i])) for r in rows + [("bench", "metric", "value", "target", "met")])
        for i in range(5)
    ]
    header = ("bench", "metric", "value", "target", "met")
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
