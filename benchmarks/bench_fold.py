"""Backbone forward with batch norm folded into the convolutions (patchbank.backbones.batchnorm_folding) vs unfolded.

Builds the backbone twice (folded: what ``create_backbone`` returns; unfolded: the same weights
with folding switched off), checks their outputs agree, and times the CPU forward the detector
uses (channels-last, micro-batches of ``CPU_MICRO_BATCH``) on random 224 x 224 batches of 16,
interleaved ``--repeats`` times; reports the fastest and median ms per image of each.

    python benchmarks/bench_fold.py --out benchmarks/results/fold_lite2.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="efficientnet_lite2")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    import patchbank.backbones.registry as registry
    from patchbank.backbones import create_backbone
    from patchbank.studies.speed import machine
    from patchbank.pipeline.features import CPU_MICRO_BATCH
    from patchbank.runtime.threads import set_threads

    set_threads(args.threads)
    folded = create_backbone(args.backbone)
    real = registry.fold_batchnorm       # create_backbone folds through this name
    registry.fold_batchnorm = lambda module, probe: (module, 0)
    try:
        plain = create_backbone(args.backbone)
    finally:
        registry.fold_batchnorm = real
    models = {"folded": folded.to(memory_format=torch.channels_last),
              "unfolded": plain.to(memory_format=torch.channels_last)}
    x = torch.rand(16, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=torch.channels_last)
    times = {k: [] for k in models}
    with torch.inference_mode():
        diffs = [float((a - b).abs().max() / b.abs().max())
                 for a, b in zip(folded(x[:4]), plain(x[:4]))]
        for m in models.values():                                    # warm-up
            [m(c) for c in x.split(CPU_MICRO_BATCH)]
        for _ in range(args.repeats):
            for name, m in models.items():
                t0 = time.perf_counter()
                [m(c) for c in x.split(CPU_MICRO_BATCH)]
                times[name].append((time.perf_counter() - t0) / x.shape[0] * 1000)
    result = {"backbone": args.backbone, "folded_batchnorms": folded.folded_batchnorms,
              "max_relative_output_difference": max(diffs), "repeats": args.repeats,
              "ms_per_image": {k: {"fastest": min(v), "median": statistics.median(v), "all": v}
                               for k, v in times.items()},
              "machine": machine(), "command": "python benchmarks/bench_fold.py " + " ".join(argv or [])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for k, v in result["ms_per_image"].items():
        print(f"{k}: fastest {v['fastest']:.2f} ms/img, median {v['median']:.2f}")
    print(f"{result['folded_batchnorms']} batch norms folded; max relative output difference {max(diffs):.1e}")
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
