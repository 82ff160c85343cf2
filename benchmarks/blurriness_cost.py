"""The focus check's statistic on the prediction path: its cost per image, and that the in-place
form of :func:`patchbank.pipeline.focus.blurriness` gives the plain expression's values bit for
bit (the plain form is written out here as the reference).

    python benchmarks/blurriness_cost.py --threads 2 -o benchmarks/results/focus_s27/blurriness_cost.json

Inputs: random normalised batches of 1 and 16 images at 320 x 320 (the default preset's MTD
input), contiguous as the image stream hands them to the inference module (the extractor makes
its own channels-last copy) and channels-last; the two forms alternate, fastest of ``--repeats``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from patchbank.pipeline.focus import EPS, blurriness
from patchbank.runtime.threads import set_threads
from patchbank.studies.speed import machine, write_json


def plain(x: torch.Tensor) -> torch.Tensor:
    """The first form (session 27's first commit): a float64 copy, then the expression."""
    g = x.double().mean(dim=1)
    lap = (g[:, :-2, 1:-1] + g[:, 2:, 1:-1] + g[:, 1:-1, :-2] + g[:, 1:-1, 2:]
           - 4.0 * g[:, 1:-1, 1:-1])
    centred = lap - lap.mean(dim=(1, 2), keepdim=True)
    return -torch.log(centred.pow(2).mean(dim=(1, 2)) + EPS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    set_threads(args.threads)
    rows = []
    for batch in (1, 16):
        for layout in ("channels_last", "contiguous"):
            x = torch.randn(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(batch))
            if layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            same = torch.equal(plain(x), blurriness(x))
            times = {"plain": [], "in_place": []}
            for r in range(args.repeats):
                for name, f in ((("plain", plain), ("in_place", blurriness)) if r % 2 == 0
                                else (("in_place", blurriness), ("plain", plain))):
                    t = time.perf_counter()
                    f(x)
                    times[name].append(time.perf_counter() - t)
            row = {"batch": batch, "layout": layout, "same_bits": same,
                   **{f"{k}_ms_per_image": 1000 * min(v) / batch for k, v in times.items()}}
            rows.append(row)
            print(row, flush=True)
    write_json({"rows": rows, "machine": machine(), "threads": args.threads, "size": args.size}, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
