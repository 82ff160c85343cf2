"""The calibration's leave-one-image-out search, one call per image against the way
``ExactSearch.groups_apart`` picks per block, timed alternately on one fit.

Fits the default preset on DATA/train/good; where the fit calibrates, it first runs
:func:`patchbank.pipeline.calibration.leave_one_out_scores` REPEATS times each way, in
alternating order (ABBA...), with every block searched apart (``GROUP_BLOCK_ELEMENTS = 0``: the
code before session 21) and as the search picks (the default), checks that both give the same
base scores and patch-score grids bit for bit, and writes every time to OUT (JSON).

    python benchmarks/calibration_calls.py ../shared/data/mtd --repeats 3 -o benchmarks/results/leave_out_s21/calibration_calls_mtd.json
"""
from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import torch

import patchbank.detector as detector_module
import patchbank.search.exact as exact
from patchbank.detector import Detector
from patchbank.pipeline.calibration import leave_one_out_scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="an MVTec-layout category folder")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(2)
    default = exact.GROUP_BLOCK_ELEMENTS
    times: dict[str, list[float]] = {"apart": [], "chosen": []}
    same = []
    real = detector_module.calibrate

    def timed_calibrate(scorer, rows, source, blurriness, progress=False):
        found = {}
        for r in range(args.repeats):
            for mode in (("apart", "chosen") if r % 2 == 0 else ("chosen", "apart")):
                exact.GROUP_BLOCK_ELEMENTS = 0 if mode == "apart" else default
                t = time.perf_counter()
                base, grids = leave_one_out_scores(scorer, rows, source)
                times[mode].append(time.perf_counter() - t)
                print(f"repeat {r}, {mode}: {times[mode][-1]:.2f} s", flush=True)
                if mode in found:
                    continue
                found[mode] = (torch.from_numpy(base), torch.cat(grids))
        exact.GROUP_BLOCK_ELEMENTS = default
        same.append(all(torch.equal(a, b) for a, b in zip(found["apart"], found["chosen"])))
        return real(scorer, rows, source, blurriness, progress)

    detector_module.calibrate = timed_calibrate
    det = Detector(progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det.fit(sorted((args.data / "train" / "good").iterdir()))
    out = {"data": str(args.data), "images": det.n_train_images_, "seconds": times,
           "fastest": {k: min(v) for k, v in times.items()}, "same_bits": same[0],
           "threads": torch.get_num_threads(),
           "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__}}
    print(json.dumps({k: out[k] for k in ("fastest", "same_bits")}))
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
