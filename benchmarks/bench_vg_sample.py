"""How far VG-Fusion's statistics from a sample of the training images are from the full set's.

A fit could fuse and project every patch while streaming (and so never hold raw rows: memory
would grow only by the bank) if VG-Fusion's per-channel statistics (LMF-Core Sec. 4.3, Eq. 1)
were taken from a first sample of images instead of all of them.  This measures what that would
change: for each sample size, ``--draws`` seeded random samples of training images, and for
each, how many channels per layer the top-kappa selection keeps differently from the full set
and the largest change of a layer weight w_l.

    python benchmarks/bench_vg_sample.py ../shared/data/mtd ../shared/data/ksdd --out benchmarks/results/vg_sample.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from patchbank.studies.speed import machine
from patchbank.config import Config
from patchbank.detector import Detector
from patchbank.pipeline.fusion import VGFusion
from patchbank.io.images import list_images
from patchbank.runtime.threads import set_threads


class _Pooled:
    """Per-channel mean / population variance of a set of images from per-image sums."""

    def __init__(self, sums, sqsums, counts, ids):
        n = float(sum(counts[i] for i in ids))
        self._mean = [sum(s[i] for i in ids) / n for s in sums]
        self._sq = [sum(q[i] for i in ids) / n for q in sqsums]

    def mean(self):
        return self._mean

    def var(self):
        return [(q - m * m).clamp_min(0.0) for m, q in zip(self._mean, self._sq)]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("roots", type=Path, nargs="+")
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    cfg = Config.preset("lmf-core")
    rows = []
    for root in args.roots:
        det = Detector(cfg, progress=False)
        sums, sqsums, counts = None, None, []
        with torch.inference_mode():
            for x, _ in det.stream(list_images(root / "train" / "good"), 16):
                layers, grid = det.extractor(x)
                per = grid[0] * grid[1]
                if sums is None:
                    sums, sqsums = [[] for _ in layers], [[] for _ in layers]
                for j in range(x.shape[0]):
                    for li, layer in enumerate(layers):
                        v = layer[j * per:(j + 1) * per].double()
                        sums[li].append(v.sum(0))
                        sqsums[li].append((v * v).sum(0))
                    counts.append(per)
        n = len(counts)
        full = VGFusion(cfg.kappa).fit(_Pooled(sums, sqsums, counts, range(n)))
        rng = np.random.default_rng(0)
        for size in args.sizes:
            for draw in range(args.draws):
                ids = rng.choice(n, size=min(size, n), replace=False)
                f = VGFusion(cfg.kappa).fit(_Pooled(sums, sqsums, counts, ids))
                rows.append({"data": root.name, "train_images": n, "sample_images": int(len(ids)), "draw": draw,
                             "kept_channels": [int(k.numel()) for k in full.keep_],
                             "channels_swapped": [len(set(a.tolist()) ^ set(b.tolist())) // 2
                                                  for a, b in zip(f.keep_, full.keep_)],
                             "max_layer_weight_change": max(abs(a - b) for a, b in
                                                            zip(f.layer_weights_, full.layer_weights_))})
                print(json.dumps(rows[-1]), flush=True)
    out = {"config": "lmf-core (efficientnet_lite2, kappa %.2f)" % cfg.kappa, "rows": rows,
           "machine": machine(), "command": "python benchmarks/bench_vg_sample.py " + " ".join(argv or [])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
