"""Benchmark the greedy k-center coreset sampler (patchbank.greedy).

    python benchmarks/bench_greedy.py                       # N=600k, D=128, 1% and 10%, clustered
    python benchmarks/bench_greedy.py --data gaussian --ratio 0.01 --naive-steps 200
    python benchmarks/bench_greedy.py --n-points 100000 --check   # also compare with brute force

Data (generated, float32, already "proxy" dimension, so no projection is timed):
  clustered  mixture of --clusters Gaussians whose means spread over a 32-d subspace (typical
             distance between means ~11), each with a random rank-8 covariance (axis scales
             0.2-1) plus isotropic noise 0.03 per dimension (norm ~0.34), log-normal component
             sizes -- a stand-in for CNN patch features, which are far from isotropic.
  gaussian   i.i.d. N(0, I): the worst case for triangle-inequality pruning (all pairwise
             distances concentrate around the same value in 128 dimensions).
The brute-force loop is timed for --naive-steps steps and extrapolated linearly (its cost per
step does not depend on the step).
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from patchbank.greedy import _BallTree, coreset_size, greedy_fast, greedy_reference


def make_clustered(
    n: int, d: int, clusters: int, seed: int, rank: int = 8, sub: int = 32, spread: float = 8.0, noise: float = 0.03
) -> torch.Tensor:
    """Gaussian mixture: means N(0, spread^2) in a random ``sub``-dim subspace, each component
    a random rank-``rank`` covariance (axis scales U(0.2, 1)) plus N(0, noise^2) in all ``d``
    dimensions; log-normal component sizes; rows shuffled."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.exp(torch.randn(clusters, generator=g))
    sizes = (sizes / sizes.sum() * n).floor().long()
    sizes[: n - int(sizes.sum())] += 1
    basis = torch.linalg.qr(torch.randn(d, sub, generator=g))[0]
    means = (torch.randn(clusters, sub, generator=g) * (spread / math.sqrt(sub))) @ basis.T
    out = torch.empty(n, d)
    row = 0
    for k in range(clusters):
        s = int(sizes[k])
        if s == 0:
            continue
        axes = torch.randn(rank, d, generator=g) / math.sqrt(d)  # near-orthonormal directions
        axes *= 0.2 + 0.8 * torch.rand(rank, 1, generator=g)
        blk = out[row : row + s]
        torch.randn(s, d, generator=g, out=blk)
        blk.mul_(noise).add_(means[k]).addmm_(torch.randn(s, rank, generator=g), axes)
        row += s
    return out[torch.randperm(n, generator=g)]


def make_gaussian(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-points", type=int, default=600_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--ratio", type=float, nargs="+", default=[0.01, 0.1])
    ap.add_argument("--data", choices=["clustered", "gaussian", "both"], default="clustered")
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--naive-steps", type=int, default=100, help="brute-force steps to time (0: skip)")
    ap.add_argument("--leaf-size", type=int, default=48)
    ap.add_argument("--fanout-bits", type=int, default=3)
    ap.add_argument("--check", action="store_true", help="run the brute force too and compare (slow)")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kinds = ["clustered", "gaussian"] if args.data == "both" else [args.data]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, N={args.n_points}, D={args.dim}")
    for kind in kinds:
        t0 = time.perf_counter()
        if kind == "clustered":
            x = make_clustered(args.n_points, args.dim, args.clusters, args.seed)
        else:
            x = make_gaussian(args.n_points, args.dim, args.seed)
        print(f"\n[{kind}] generated in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        _BallTree(x, leaf_size=args.leaf_size, fanout_bits=args.fanout_bits)
        print(f"  tree build alone (part of every run below): {time.perf_counter() - t0:.2f} s")
        if args.naive_steps:
            k = min(args.naive_steps, args.n_points)
            per = math.inf
            prev = torch.get_num_threads()
            for th in sorted({1, prev}):  # the brute force at its better thread count
                torch.set_num_threads(th)
                t0 = time.perf_counter()
                greedy_reference(x, k, 0)
                p = (time.perf_counter() - t0) / k
                print(f"  brute force, {th} thread(s): {p * 1e3:.1f} ms/step ({k} steps timed)")
                per = min(per, p)
            torch.set_num_threads(prev)
        else:
            per = math.nan
        for ratio in args.ratio:
            n = coreset_size(args.n_points, ratio)
            t0 = time.perf_counter()
            sel = greedy_fast(x, n, 0, progress=args.progress, leaf_size=args.leaf_size, fanout_bits=args.fanout_bits)
            dt = time.perf_counter() - t0
            msg = (f"  ratio {ratio:g}: {n} centres in {dt:.1f} s ({dt / n * 1e3:.2f} ms/centre, incl. tree); "
                   f"brute force extrapolated {per * n:.0f} s -> x{per * n / dt:.1f}")
            print(msg, flush=True)
            if args.check:
                t0 = time.perf_counter()
                ref = greedy_reference(x, n, 0)
                print(f"    brute force actual {time.perf_counter() - t0:.1f} s, identical: {torch.equal(ref, sel)}")


if __name__ == "__main__":
    main()
