"""The timm-free EfficientNet-Lite network against timm's, forward time: the default backbone
as ``create_backbone`` builds it (batch norms folded, taps 2 and 4) and the same backbone built
on timm's ``tf_efficientnet_lite2`` with the same weights, folded the same way.  Interleaved
repeats on the same input (this VM's speed drifts); medians.

    python benchmarks/bench_lite_net.py --batch 16 --size 288 --threads 2 -o benchmarks/results/start/lite_net_forward.json
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def timm_backbone(name: str) -> nn.Module:
    """``create_backbone(name)``'s construction with timm's network in place of ours."""
    import timm

    from patchbank.backbones import efficientnet_lite
    from patchbank.backbones import weights as weight_files
    from patchbank.backbones.base import CnnBackbone
    from patchbank.backbones.batchnorm_folding import fold_batchnorm

    path = efficientnet_lite.packaged_lite_file(name)
    model = weight_files.instantiate(lambda: timm.create_model(efficientnet_lite.LITE[name].arch),
                                     weight_files.read_state_dict(path), path, name,
                                     efficientnet_lite.pair_lite_keys).eval()
    backbone = CnnBackbone(nn.Sequential(model.conv_stem, model.bn1), model.blocks,
                           efficientnet_lite.DEFAULT_TAPS).eval()
    return fold_batchnorm(backbone, torch.randn(1, 3, 64, 64))[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=288)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from patchbank.backbones import create_backbone

    nets = {"patchbank": create_backbone("efficientnet_lite2").eval(), "timm": timm_backbone("efficientnet_lite2")}
    x = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    times: dict[str, list[float]] = {k: [] for k in nets}
    with torch.inference_mode():
        outs = {k: net(x) for k, net in nets.items()}   # warm, and the outputs compared
        for a, b in zip(outs["patchbank"], outs["timm"]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))
        for _ in range(args.repeats):
            for k, net in nets.items():
                t0 = time.perf_counter()
                net(x)
                times[k].append(1000 * (time.perf_counter() - t0) / args.batch)
    res = {"machine": f"{os.cpu_count()} CPUs, load {os.getloadavg()}", "batch": args.batch, "size": args.size,
           "threads": args.threads, "ms_per_image": times,
           "median_ms_per_image": {k: float(np.median(v)) for k, v in times.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res["median_ms_per_image"], indent=1))


if __name__ == "__main__":
    main()
