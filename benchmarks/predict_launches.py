"""Where a batch-1 prediction's host work goes on a GPU: kernel launches, copies and other ops per
image, and the Python call sites of the copies, indexing and top-k (``torch.profiler`` with
stacks).

    python benchmarks/predict_launches.py DATA --device cuda -o launches.txt

DATA is an MVTec-layout category folder: the preset is fitted on its training images, 20 test
images warm the path, and the next ``--images`` are profiled one at a time.  The output lists,
for each op named in ``TRACED``, its count per image and its call stack (innermost first),
then every op with its count per image.  At batch 1 on a GPU the host's launches, not the GPU's
arithmetic, set the pace (docs/performance.md), so fewer launches and copies is the aim.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from patchbank.config import DEFAULT_PRESET
from patchbank.detector import Detector

TRACED = ("cudaMemcpyAsync", "aten::copy_", "aten::_local_scalar_dense", "aten::index",
          "aten::nonzero", "aten::topk")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default=DEFAULT_PRESET)
    ap.add_argument("--images", type=int, default=10, help="test images profiled (after 20 warm-up)")
    ap.add_argument("-o", "--out", type=Path, help="write the report here too")
    args = ap.parse_args()
    train = sorted((args.data / "train" / "good").iterdir())
    test = sorted(p for c in sorted((args.data / "test").iterdir()) for p in c.iterdir())
    n = args.images
    if len(test) < 20 + n:
        sys.exit(f"error: {args.data} has {len(test)} test images; this needs {20 + n}")
    det = Detector.from_preset(args.preset, device=args.device, progress=False).fit(train)
    sync = torch.cuda.synchronize if det.device.type == "cuda" else (lambda: None)
    det.predict(test[:20], batch_size=1)
    sync()
    verbose = torch._C._profiler._ExperimentalConfig(verbose=True)   # keeps the Python stacks
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True,
                 experimental_config=verbose) as prof:
        det.predict(test[20:20 + n], batch_size=1)
        sync()
    lines = []
    for e in prof.key_averages(group_by_stack_n=10):
        if e.key in TRACED:
            lines.append(f"== {e.key} {e.count / n} per image")
            lines += [f"    {s}" for s in e.stack]
    lines.append("== all ops by count")
    lines += [f"{e.count / n:8.1f} {e.key}" for e in sorted(prof.key_averages(), key=lambda e: -e.count)]
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
