"""The exact search's two CPU kernels, timed on one bank shape: torch's and FAISS's.

    python benchmarks/exact_kernel.py --entries 9863 --width 376 --map-dim 168 -o results/exact_kernel_mtd.json

``ExactSearch(kernel="torch")`` finds its candidates with torch's float32 product (MKL on the
CPU); ``ExactSearch()`` (``kernel="faiss"``, the default since session 18) hands calls of enough
queries to FAISS's ``knn_L2sqr`` (OpenBLAS), see ``patchbank.search.faiss_kernel``; both then
refine the candidates from their differences (``patchbank.search.exact.refine``; before
session 18 there was no refinement and only the calibration used FAISS).  Timed interleaved, the
median of ``--repeats`` runs each, on random rows of the given shape (the arithmetic does not
depend on the values): the map's search of one image (``grid`` queries against the first
``map-dim`` columns, a column view as with context taps), the same for a batch of 16, the context
taps' search of the top 5% patches (every column), one image's leave-one-image-out call (its own
rows masked), the bare float32 product of one image's queries against the bank in torch and in
numpy (the BLAS each kernel uses), for the map's and the context taps' shapes, and FAISS's kernel
asked for 1 and for 2 rows (what the refinement's spare candidate costs).  Neighbours are compared
first: the same rows for every query (and ``same_bits_across_kernels``: the same distances too).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from patchbank.search import ExactSearch
from patchbank.search import faiss_kernel
from patchbank.studies.speed import machine


def _times_ms(fn, repeats: int) -> list[float]:
    """Milliseconds of ``repeats`` calls of ``fn``, one after the other."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(1e3 * (time.perf_counter() - t0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=9863, help="bank rows (MTD's default bank: 9863)")
    ap.add_argument("--width", type=int, default=376, help="whole row width (map + context columns)")
    ap.add_argument("--map-dim", type=int, default=168, help="the map's columns")
    ap.add_argument("--grid", type=int, default=1296, help="patches per image (36 x 36)")
    ap.add_argument("--images", type=int, default=761, help="training images (rows masked per image)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--output", type=Path)
    args = ap.parse_args()
    if not faiss_kernel.available():
        raise SystemExit("FAISS is not installed: pip install faiss-cpu")
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(args.entries, args.width, generator=g)
    owner = torch.randint(args.images, (args.entries,), generator=g)
    view = rows[:, :args.map_dim]
    top = max(1, round(0.05 * args.grid))
    q1 = torch.randn(args.grid, args.map_dim, generator=g)
    q16 = torch.randn(16 * args.grid, args.map_dim, generator=g)
    qc = torch.randn(top, args.width, generator=g)
    kernels = {name: (ExactSearch(view, kernel=name), ExactSearch(rows, kernel=name)) for name in ("torch", "faiss")}
    calls = {
        "map, 1 image": lambda s, c: s.search(q1, 1),
        "map, 16 images": lambda s, c: s.search(q16, 1),
        "context taps, 1 image": lambda s, c: c.search(qc, 1),
        "leave-one-image-out, 1 image": lambda s, c: s.subset(owner != 0).search(q1, 1),
    }
    same_bits = {}
    for name, call in calls.items():
        (d_t, i_t), (d_a, i_a) = (call(*kernels["torch"]), call(*kernels["faiss"]))
        if not torch.equal(i_t, i_a):
            raise SystemExit(f"{name}: the kernels found different rows for "
                             f"{int((i_t != i_a).any(1).sum())} queries")
        same_bits[name] = bool(torch.equal(d_t, d_a))
    # does a query's distance depend on the other queries of its call?  one image's queries as
    # one call, and the same queries from the 101st on as a call of their own
    invariant = {}
    for kernel, (search, _) in kernels.items():
        whole, part = search.search(q1, 1)[0], search.search(q1[100:].contiguous(), 1)[0]
        invariant[kernel] = bool(torch.equal(whole[100:], part))
    times: dict[str, dict[str, list[float]]] = {name: {"torch": [], "faiss": []} for name in calls}
    # what the refinement's spare candidate costs FAISS: one image's map call asking for 1 and 2
    kernel_rows = kernels["faiss"][0].kernel_rows
    spare = {f"knn_L2sqr k={k}": statistics.median(_times_ms(
        lambda k=k: faiss_kernel.knn(q1, kernel_rows, kernels["faiss"][0].bank_sqnorm, k), args.repeats))
        for k in (1, 2)}
    a, b = q1.numpy(), np.ascontiguousarray(view.numpy())
    ac, bc = qc.numpy(), rows.numpy()
    products = {"torch mm": lambda: q1 @ view.T, "numpy matmul": lambda: a @ b.T,
                "context: torch mm": lambda: qc @ rows.T, "context: numpy matmul": lambda: ac @ bc.T}
    prod_times = {k: [] for k in products}
    for rep in range(args.repeats):
        order = ("torch", "faiss") if rep % 2 == 0 else ("faiss", "torch")   # neither always first
        for name, call in calls.items():
            for kernel in order:
                times[name][kernel] += _times_ms(lambda: call(*kernels[kernel]), 1)
    # the bare products last: numpy's OpenBLAS threads keep spinning after a product and would
    # slow whatever torch runs next
    for k, fn in products.items():      # torch's first, numpy's after (not interleaved)
        prod_times[k] += _times_ms(fn, args.repeats)
    flops = {k: 2.0 * args.entries * (top * args.width if k.startswith("context") else args.grid * args.map_dim)
             for k in products}
    result = {
        "command": "python benchmarks/exact_kernel.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "output"),
        "machine": machine(),
        "shape": {"entries": args.entries, "width": args.width, "map_dim": args.map_dim, "grid": args.grid},
        "faiss_used": {name: faiss_kernel.usable(q) for name, q in
                       (("map, 1 image", q1), ("map, 16 images", q16), ("context taps, 1 image", qc))},
        "same_bits_in_a_shifted_call": invariant,
        "same_bits_across_kernels": same_bits,
        "median_ms": {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()},
        "all_ms": times,
        "product_times_ms": {k: statistics.median(v) for k, v in prod_times.items()},
        "product_gflops": {k: flops[k] / statistics.median(v) / 1e6 for k, v in prod_times.items()},
        "faiss_knn_ms": spare,
    }
    for name, t in result["median_ms"].items():
        print(f"{name:30s} torch {t['torch']:8.2f} ms   faiss {t['faiss']:8.2f} ms   x{t['torch'] / t['faiss']:.2f}")
    print("a query's distance bit for bit the same when its call starts 100 queries later:",
          ", ".join(f"{k} {v}" for k, v in invariant.items()))
    print("the two kernels' distances bit for bit the same:", ", ".join(f"{k}: {v}" for k, v in same_bits.items()))
    for k, v in result["product_gflops"].items():
        print(f"float32 product {k:24s} {result['product_times_ms'][k]:8.2f} ms  {v:6.1f} GFLOP/s")
    print("FAISS's kernel, one image's map call:", ", ".join(f"{k} {v:.2f} ms" for k, v in spare.items()))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
