"""The greedy filters' comparison-and-collect step, torch against NumPy, on tiles of the shapes the
update passes use (``patchbank.sampling.greedy``: ``cells = 2**18`` values per tile, ``B = cells / m``
rows for ``m`` centres) and a pass rate like filter 1's on MTD (a few percent).

    python benchmarks/greedy_comparisons.py -o benchmarks/results/greedy_s22/comparisons.json

For each tile: ``torch.nonzero(w < t)`` (the code before session 22) and
:func:`patchbank.sampling.greedy.pairs_below` (NumPy), checked equal first, then timed in one
thread and in two threads at once (the sampler's two update workers), interleaved; medians in ns
per tile value.  Should a later torch compare as fast, the NumPy route can go.
"""
from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import torch

from patchbank.sampling.greedy import pairs_below

CELLS = 1 << 18


def torch_pairs(w: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pr = torch.nonzero(w < t)
    return pr[:, 0], pr[:, 1]


def timed(fn, w, t, threads: int, repeats: int) -> float:
    """Seconds per call of ``fn(w, t)`` with ``threads`` Python threads calling it at once."""
    def loop():
        for _ in range(repeats):
            fn(w, t)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    t0 = time.perf_counter()
    for th in workers:
        th.start()
    for th in workers:
        th.join()
    return (time.perf_counter() - t0) / (repeats * threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--centres", default="59,500,2000,5000", help="m values (comma-separated)")
    ap.add_argument("--pass-rate", type=float, default=0.025)
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)            # as in the update passes: single-threaded ops per worker
    g = torch.Generator().manual_seed(0)
    rows = []
    for m in (int(v) for v in args.centres.split(",")):
        b = max(32, min(8192, CELLS // m))
        w = torch.randn(b, m, generator=g)
        t = torch.full((b, 1), float(np.quantile(w.numpy(), args.pass_rate)))
        a, n = torch_pairs(w, t), pairs_below(w, t)
        assert torch.equal(a[0], n[0]) and torch.equal(a[1], n[1])
        res = {"centres": m, "rows": b, "pairs_passing": int(a[0].numel())}
        for threads in (1, 2):
            times = {"torch": [], "numpy": []}
            for _ in range(args.rounds):
                times["torch"].append(timed(torch_pairs, w, t, threads, args.repeats))
                times["numpy"].append(timed(pairs_below, w, t, threads, args.repeats))
            for k, v in times.items():
                res[f"{k}_ns_per_value_{threads}_threads"] = round(float(np.median(v)) / (b * m) * 1e9, 3)
        rows.append(res)
        print(res, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": f"{os.cpu_count()} CPUs, load {os.getloadavg()}",
                                    "torch": torch.__version__, "numpy": np.__version__,
                                    "pass_rate": args.pass_rate, "tiles": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
