"""Benchmark the greedy k-center coreset sampler (patchbank.sampling.greedy) on real or synthetic features.

    python benchmarks/bench_greedy.py --features mtd --check-steps 300      # MTD patches, 1% and 10%
    python benchmarks/bench_greedy.py                                       # synthetic, N=600k, D=128
    python benchmarks/bench_greedy.py --data gaussian --ratio 0.01 --naive-steps 200
    python benchmarks/bench_greedy.py --n-points 100000 --check-steps 100000   # full brute-force check

Features:
  mtd        the patch features the ``--preset`` (default ``patchcore``) fit hands to its
             greedy sampler for the training images of ``--root`` (default ../shared/data/mtd),
             taken from a real ``Detector.fit`` stopped there (the map's columns with context
             taps), then the sampler's own random projection to ``greedy_proxy_dim`` (128) and
             its seeded start row.  Extracted once and cached (float32 .npy + .json with the start row) under
             ``--cache-dir`` (default /tmp); the timings below never include the extraction.
  synthetic  generated, float32, already at proxy dimension (no projection timed):
    clustered  mixture of --clusters Gaussians whose means spread over a 32-d subspace, each
               with a random rank-8 covariance plus isotropic noise, log-normal sizes.
    gaussian   i.i.d. N(0, I): all pairwise distances concentrate (the hardest case for bounds).

For each ratio: selection time (rotation + batches + update passes, i.e. everything
``greedy_fast`` does), the process's peak RSS (resource.getrusage) and, with ``--check-steps K``,
whether the first K selected rows equal the brute force's (``greedy_reference``, timed per step,
which also gives its extrapolated full time), and a sha256 of the selected row indices (run an
older sampler with ``PYTHONPATH=<its checkout>/src`` to compare selections and times).  Results go to ``--out`` as JSON with the machine.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import resource
import time
from pathlib import Path

import numpy as np
import torch

from patchbank.sampling import greedy as greedy_module
from patchbank.sampling.greedy import GreedySampler, coreset_size, greedy_fast, greedy_reference

REPO = Path(__file__).resolve().parents[1]


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


class _Handed(Exception):
    """Raised by the capturing sampler with what the fit handed it (stops the fit there)."""


def preset_features(root: Path, preset: str, cache_dir: Path, progress: bool) -> tuple[torch.Tensor, int, dict]:
    """The rows ``preset``'s greedy sampler sees when fitting on ``root``/train/good, already in
    its proxy space, and its start row; cached as .npy + .json in ``cache_dir``.

    Taken from a real ``Detector.fit`` (its sampler's ``run`` replaced, for this one fit, by one
    that keeps the sampler's own projection and start row and stops the fit): the same stream,
    input shape (``aspect="auto"``), fusion and columns (the map's, with context taps) as a fit."""
    from unittest import mock

    from patchbank.detector import Detector
    from patchbank.io.images import list_images

    det = Detector.from_preset(preset, progress=progress)
    cfg = det.config
    if cfg.sampler != "greedy":
        raise SystemExit(f"error: preset {preset!r} does not use the greedy sampler")
    items = list_images(root / "train" / "good")
    key = (f"patchbank-greedy-fit-{root.name}-{preset}-{cfg.backbone}-{cfg.image_size}-{cfg.crop_size}"
           f"-p{cfg.patch_size}-{cfg.fusion}-proj{cfg.projection_dim}-ctx{cfg.context_taps}"
           f"-proxy{cfg.greedy_proxy_dim}-s{cfg.seed}-n{len(items)}"
           ).replace(" ", "").replace("(", "").replace(")", "").replace(",", "x")
    npy, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if npy.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        return torch.from_numpy(np.load(npy)), meta["start"], meta
    t0 = time.perf_counter()

    def handed(sampler, features):
        raise _Handed(*sampler.prepare(features), features.shape[1])

    try:
        with mock.patch.object(GreedySampler, "run", handed):
            det.fit(items)
        raise SystemExit("error: the fit did not call its greedy sampler")
    except _Handed as got:
        proxy, _n, start, dim_fused = got.args
    meta = {"root": str(root), "preset": preset, "images": len(items), "N": proxy.shape[0],
            "dim_fused": dim_fused, "dim_proxy": proxy.shape[1], "start": start,
            "config": cfg.to_dict() if hasattr(cfg, "to_dict") else None,
            "extract_seconds": round(time.perf_counter() - t0, 1)}
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(npy, proxy.numpy())
    meta_path.write_text(json.dumps(meta, indent=1, default=str))
    return proxy, start, meta


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", choices=["synthetic", "mtd"], default="synthetic")
    ap.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data" / "mtd",
                    help="MVTec-layout category for --features mtd")
    ap.add_argument("--preset", default="patchcore", help="preset whose features and proxy space are used")
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp"))
    ap.add_argument("--n-points", type=int, default=600_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--ratio", type=float, nargs="+", default=[0.01, 0.1])
    ap.add_argument("--data", choices=["clustered", "gaussian", "both"], default="clustered")
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--naive-steps", type=int, default=30, help="brute-force steps to time (0: skip)")
    ap.add_argument("--check-steps", type=int, default=0,
                    help="compare the first K selected rows with the brute force (K steps of it)")
    ap.add_argument("--pool", type=int, default=None, help="candidate pool rows (default: greedy_fast's)")
    ap.add_argument("--low-dim", type=int, default=32)
    ap.add_argument("--freeze", type=float, default=0.9,
                    help="lazy-update factor beta of greedy_fast (0: no lazy updates)")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--out", type=Path, default=None, help="JSON result file")
    args = ap.parse_args()
    if args.threads:
        from patchbank.runtime.threads import set_threads

        set_threads(args.threads)
    runs = []
    if args.features == "mtd":
        x, start, meta = preset_features(args.root, args.preset, args.cache_dir, args.progress)
        print(f"[{args.preset} features of {meta['images']} images of {args.root}] N={x.shape[0]}, "
              f"D={x.shape[1]} (projected from {meta['dim_fused']}), start row {start}")
        datasets = [("mtd", x, start, meta)]
    else:
        kinds = ["clustered", "gaussian"] if args.data == "both" else [args.data]
        datasets = []
        for kind in kinds:
            x = (make_clustered(args.n_points, args.dim, args.clusters, args.seed) if kind == "clustered"
                 else make_gaussian(args.n_points, args.dim, args.seed))
            datasets.append((kind, x, 0, {"N": args.n_points, "dim_proxy": args.dim}))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for kind, x, start, meta in datasets:
        N, D = x.shape
        base_rss = peak_rss_mb()
        print(f"\n[{kind}] N={N}, D={D}; peak RSS so far {base_rss:.0f} MB (features {x.numel() * 4 / 2**20:.0f} MB)")
        per = math.nan
        if args.naive_steps:
            k = min(args.naive_steps, N)
            per = math.inf
            prev = torch.get_num_threads()
            for th in sorted({1, prev}):  # the brute force at its better thread count
                torch.set_num_threads(th)
                t0 = time.perf_counter()
                greedy_reference(x, k, start)
                p = (time.perf_counter() - t0) / k
                print(f"  brute force, {th} thread(s): {p * 1e3:.1f} ms/step ({k} steps timed)")
                per = min(per, p)
            torch.set_num_threads(prev)
        for ratio in args.ratio:
            n = coreset_size(N, ratio)
            t0 = time.perf_counter()
            sel = greedy_fast(x, n, start, progress=args.progress, pool=args.pool, low_dim=args.low_dim,
                              freeze=args.freeze or None)
            dt = time.perf_counter() - t0
            rss = peak_rss_mb()
            run = {"features": kind, "N": N, "D": D, "ratio": ratio, "freeze": args.freeze or None, "n": n, "seconds": round(dt, 2),
                   "ms_per_centre": round(dt / n * 1e3, 3), "peak_rss_mb": round(rss),
                   "peak_rss_before_mb": round(base_rss), "brute_force_extrapolated_s": round(per * n, 1),
                   # two runs (two versions of the sampler) selected the same rows iff these match
                   "selection_sha256": hashlib.sha256(sel.numpy().tobytes()).hexdigest(),
                   "sampler": str(Path(greedy_module.__file__).resolve())}
            print(f"  ratio {ratio:g}: {n} centres in {dt:.1f} s ({dt / n * 1e3:.2f} ms/centre); "
                  f"peak RSS {rss:.0f} MB; brute force extrapolated {per * n:.0f} s -> x{per * n / dt:.1f}",
                  flush=True)
            if args.check_steps:
                k = min(args.check_steps, n)
                t0 = time.perf_counter()
                ref = greedy_reference(x, k, start)
                same = bool(torch.equal(ref, sel[:k]))
                run.update(check_steps=k, identical_prefix=same, check_seconds=round(time.perf_counter() - t0, 1))
                print(f"    brute force, first {k} steps ({time.perf_counter() - t0:.1f} s): identical: {same}")
            runs.append(run)
    if args.out:
        from patchbank.studies.speed import machine

        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": "python benchmarks/bench_greedy.py " + " ".join(
            a for a in __import__("sys").argv[1:]), "machine": machine(), "features": datasets[0][3],
            "runs": runs}, indent=1, default=str))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
