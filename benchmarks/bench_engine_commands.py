"""Issue #18's overhead, command against command: ``patchbank predict`` on the local engine and
with ``--engine ray`` on the same images, as a user runs them.

``bench_distributed.py`` compares the library calls (a warm local ``Detector.predict`` that
writes nothing against a cold ``distributed.predict`` that starts its actors and writes its
files).  This compares what a user types: each run is a fresh ``patchbank predict`` process that
loads the model, scores every image and writes predictions.csv/.json (and .parquet for Ray).
The Ray runs join a Ray started once beforehand (``ray start --head``, as on a cluster, where
Ray is already up), so they pay the driver's connection, the actors' start and Ray Data's
scheduling, not the start of Ray itself.  Runs are interleaved (local, Ray configurations,
local, ...) because this VM's speed drifts; each Ray run is compared with the mean of the local
runs just before and after it.  Machine-wide CPU per run comes from /proc/stat.

    python benchmarks/bench_engine_commands.py MODEL INPUT --repeats 3 --batch-size 16 \\
        -o benchmarks/results/engine_commands/run1.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_distributed import busy_cpu_s


def run(cmd: list[str]) -> dict:
    """Wall seconds and machine-wide busy CPU-seconds of one command (which must succeed)."""
    t0, c0 = time.perf_counter(), busy_cpu_s()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "cpu_s": None if c0 is None else busy_cpu_s() - c0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("input", help="a folder, glob or list file of images")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="cores: local threads = actors x threads")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--configs", default="1x2,2x1", help="Ray actors x threads, comma-separated")
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    cli = [sys.executable, "-m", "patchbank.cli", "predict", args.model, args.input, "-q", "--overwrite",
           "--batch-size", str(args.batch_size)]
    tmp = Path(tempfile.mkdtemp())
    ray_bin = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray_bin, "start", "--head", f"--num-cpus={args.threads}", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    res = {"machine": f"{os.cpu_count()} CPUs, load {os.getloadavg()}", "batch_size": args.batch_size,
           "input": args.input, "model": args.model, "runs": []}
    try:
        n = None
        for rep in range(args.repeats):
            for actors, threads in [(0, args.threads)] + configs:
                out = tmp / ("local" if actors == 0 else f"ray{actors}x{threads}")
                extra = (["--threads", str(threads)] if actors == 0 else
                         ["--engine", "ray", "--address", "auto", "--actors", str(actors), "--threads", str(threads)])
                rec = {"engine": "local" if actors == 0 else f"ray {actors}x{threads}", "repeat": rep,
                       **run(cli + ["-o", str(out)] + extra)}
                got = json.loads((out / "predictions.json").read_text())
                n = len(got["predictions"])
                rec["n_images"] = n
                rec["scores"] = [p["score"] for p in got["predictions"]]
                res["runs"].append(rec)
                print(f"{rec['engine']:>10} repeat {rep}: {n / rec['wall_s']:.1f} img/s, "
                      f"{rec['wall_s']:.1f} s" + ("" if rec["cpu_s"] is None else
                                                   f", {1000 * rec['cpu_s'] / n:.1f} CPU ms/img"), flush=True)
        res["local_run_after"] = run(cli + ["-o", str(tmp / "local"), "--threads", str(args.threads)])
        res["summary"] = summarise(res["runs"], res["local_run_after"], n)
    finally:
        subprocess.run([ray_bin, "stop", "--force"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(tmp, ignore_errors=True)
    for r in res["runs"]:
        r.pop("scores")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res["summary"], indent=1))


def summarise(runs: list[dict], local_after: dict, n: int) -> dict:
    """Per Ray configuration: the overhead of each run (1 - its images/s / the mean images/s of
    the local runs just before and after it), its CPU per image, and whether every score equals
    the first local run's."""
    timeline = runs + [{"engine": "local", **local_after}]
    local_scores = next(r["scores"] for r in runs if r["engine"] == "local")
    out: dict = {}
    for i, r in enumerate(runs):
        if r["engine"] == "local":
            continue
        before = next(t for t in reversed(timeline[:i]) if t["engine"] == "local")
        after = next(t for t in timeline[i + 1:] if t["engine"] == "local")
        local_img_s = np.mean([n / before["wall_s"], n / after["wall_s"]])
        e = out.setdefault(r["engine"], {"overhead": [], "img_s": [], "local_img_s_around": [],
                                         "cpu_ms_per_img": [], "equal_scores_as_local": True})
        e["overhead"].append(1 - (n / r["wall_s"]) / local_img_s)
        e["img_s"].append(n / r["wall_s"])
        e["local_img_s_around"].append(local_img_s)
        if r["cpu_s"] is not None:
            e["cpu_ms_per_img"].append(1000 * r["cpu_s"] / n)
        e["equal_scores_as_local"] &= r["scores"] == local_scores
    locals_ = [r for r in timeline if r["engine"] == "local"]
    out["local"] = {"img_s": [n / r["wall_s"] for r in locals_],
                    "cpu_ms_per_img": [1000 * r["cpu_s"] / n for r in locals_ if r["cpu_s"] is not None]}
    return out


if __name__ == "__main__":
    main()
