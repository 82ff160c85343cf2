"""What a fresh process pays before it scores: a cold ``patchbank predict MODEL IMAGE`` (one
image: start Python, import, load the model, build the backbone, score, write), and the import
times of torch and timm in fresh interpreters.  Every ``patchbank`` command, a service's start,
each Ray actor and each Ray fitting task pays this once.

    python benchmarks/bench_start.py MODEL IMAGE --repeats 5 -o benchmarks/results/start/now.json

Run it at two commits (``git worktree add /tmp/old COMMIT``, then ``PYTHONPATH=/tmp/old/src``)
to compare them on the same machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def wall(cmd: list[str]) -> float:
    """Seconds of one command, which must succeed."""
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("image")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    py = sys.executable
    out = tempfile.mkdtemp()
    cmds = {
        "python": [py, "-c", "pass"],
        "import_torch": [py, "-c", "import torch"],
        "import_torch_timm": [py, "-c", "import torch, timm"],
        "predict_one_image": [py, "-m", "patchbank.cli", "predict", args.model, args.image, "-o", out,
                              "-q", "--overwrite", "--threads", "2"],
    }
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(args.repeats):   # interleaved: the VM's speed drifts
        for name, cmd in cmds.items():
            times[name].append(wall(cmd))
    res = {"machine": f"{os.cpu_count()} CPUs, load {os.getloadavg()}", "repeats": args.repeats,
           "seconds": times, "median_s": {k: float(np.median(v)) for k, v in times.items()}}
    res["median_s"]["timm_import_alone"] = res["median_s"]["import_torch_timm"] - res["median_s"]["import_torch"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res["median_s"], indent=1))


if __name__ == "__main__":
    main()
