"""Compare two `patchbank evaluate` output folders run by run: every accuracy metric (and the
bank size) of every (category, seed) must agree within --tol; timings are ignored.

    python benchmarks/compare_runs.py BEFORE_DIR AFTER_DIR [--tol 1e-6]

Prints one line per run with the largest absolute difference and exits 1 if any exceeds --tol
or the two folders hold different runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

IGNORED = {"fit_s", "ms_per_img"}


def load_runs(folder: Path) -> dict[str, dict]:
    runs = {p.name: json.loads(p.read_text())["metrics"] for p in sorted((folder / "runs").glob("*.json"))}
    if not runs:
        raise SystemExit(f"error: no runs/*.json under {folder}")
    return runs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--tol", type=float, default=1e-6)
    args = ap.parse_args(argv)
    a, b = load_runs(args.before), load_runs(args.after)
    if set(a) != set(b):
        print(f"error: different runs: {sorted(set(a) ^ set(b))}")
        return 1
    worst = 0.0
    for name in sorted(a):
        keys = sorted(set(a[name]) - IGNORED)
        if keys != sorted(set(b[name]) - IGNORED):
            print(f"{name}: different metrics")
            return 1
        diffs = {k: abs(a[name][k] - b[name][k]) for k in keys}
        key = max(diffs, key=diffs.get)
        worst = max(worst, diffs[key])
        print(f"{name}: {len(keys)} metrics, max |diff| {diffs[key]:.3g} ({key})")
    ok = worst <= args.tol
    print(f"{len(a)} runs, max |diff| {worst:.3g}: {'within' if ok else 'OUTSIDE'} {args.tol:g}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
