"""Is a column view of the bank as fast to search as a contiguous copy?

    python benchmarks/strided_bank.py --entries 9863 --width 376 --map-dim 168 --queries 1296

With context taps the map searches the first ``map-dim`` columns of rows ``width`` wide.  This
times the exact search's distance product (``patchbank.linalg.sq_dists``: one ``addmm``) over a
column view of the whole rows and over a contiguous copy of those columns, interleaved, and
checks that both give bitwise the same distances.  Prints the median ms per product.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from patchbank.linalg import sq_dists, sq_norms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=9863)
    ap.add_argument("--width", type=int, default=376)
    ap.add_argument("--map-dim", type=int, default=168)
    ap.add_argument("--queries", type=int, default=1296)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(args.entries, args.width, generator=g)
    view = rows[:, :args.map_dim]
    copy = view.contiguous()
    q = torch.randn(args.queries, args.map_dim, generator=g)
    norms = sq_norms(copy)
    assert torch.equal(sq_dists(q, view, norms), sq_dists(q, copy, norms)), "distances differ"
    times = {"view": [], "copy": []}
    for _ in range(args.repeats):
        for name, bank in (("view", view), ("copy", copy)):
            t0 = time.perf_counter()
            sq_dists(q, bank, norms)
            times[name].append(1e3 * (time.perf_counter() - t0))
    print(f"[{args.queries} x {args.map_dim}] x [{args.map_dim} x {args.entries}], {args.threads} threads, "
          f"bitwise equal: " + ", ".join(f"{k} {statistics.median(v):.2f} ms" for k, v in times.items()))


if __name__ == "__main__":
    main()
