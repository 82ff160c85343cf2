"""Memory of the IVF-Flat index over a bank: FAISS's plain ``add`` against lists sized up front.

Each row builds ``FaissSearch(bank, "ivf")`` (4 sqrt(n) lists, the product's settings) over a
synthetic float32 bank of ``n`` x 128 in a fresh process, and reports the RSS growth (after
``trim_malloc``, so freed temporaries do not count) against the bank's own bytes; ``plain`` swaps
in FAISS's entry-by-entry ``add`` (what ``FaissSearch`` did before session 5) for comparison.
The build time of each is reported as context.

    python benchmarks/bench_index_memory.py --sizes 65536 235200 784000 --out benchmarks/results/index_memory.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

_ONE = r'''
import json, sys, time
import numpy as np, torch
from patchbank.runtime.malloc import trim_malloc
from patchbank.search import FaissSearch
from patchbank.runtime.threads import set_threads
n, mode = int(sys.argv[1]), sys.argv[2]
set_threads(2)
if mode == "plain":
    FaissSearch._add_exact_lists = lambda self, chunks: [self.index.add(x) for x in chunks]
def rss():
    trim_malloc()
    return int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) / 1024
bank = torch.from_numpy(np.random.default_rng(0).standard_normal((n, 128), dtype=np.float32))
FaissSearch(bank[:4000], "ivf", nlist=100)                   # warm up FAISS / BLAS
before = rss()
t0 = time.perf_counter()
s = FaissSearch(bank, "ivf")
t = time.perf_counter() - t0
grown = rss() - before
print(json.dumps({"bank_rows": n, "mode": mode, "bank_mb": n * 128 * 4 / 2**20, "index_rss_mb": round(grown, 1),
                  "index_over_bank": round(grown / (n * 128 * 4 / 2**20), 3), "build_s": round(t, 3),
                  "nlist": s.index.nlist}))
'''


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[65536, 235200, 784000])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    rows = []
    for n in args.sizes:
        for mode in ("plain", "exact"):
            out = subprocess.run([sys.executable, "-c", _ONE, str(n), mode], capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{n} {mode} failed:\n{out.stderr}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        from patchbank.studies.speed import machine

        args.out.write_text(json.dumps({"rows": rows, "machine": machine(),
                                        "command": "python benchmarks/bench_index_memory.py " + " ".join(argv or sys.argv[1:])},
                                       indent=2) + "\n")


if __name__ == "__main__":
    main()
