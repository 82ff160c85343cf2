"""Why a calibrated threshold flags fewer test-good images than ``target_fpr``: the normalised
scores of the training images (each scored without its own bank rows, the calibration) against
those of the test-good images, with quantiles and the share of each above the threshold.

    python benchmarks/threshold_gap.py ../shared/data/mtd --seed 0 -o benchmarks/results/threshold_gap_mtd.json
"""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

from patchbank.config import Config
from patchbank.detector import Detector
from patchbank.io.images import list_images

QUANTILES = (0.5, 0.9, 0.95, 0.99, 1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, help="one MVTec-layout category folder")
    ap.add_argument("--preset", default="patchbank")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    train = list_images(args.root / "train" / "good")
    good = list_images(args.root / "test" / "good")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = Detector(Config.preset(args.preset, seed=args.seed), progress=False).fit(train)
    cal = det.calibration_
    train_norm = np.asarray(cal.stats_.normalize(cal.scores_))
    test_norm = np.array([p.normalized_score for p in det.predict(good)])
    t = det.threshold_
    out = {"root": str(args.root), "preset": args.preset, "seed": args.seed,
           "target_fpr": det.config.target_fpr, "threshold": t,
           "n_train": len(train_norm), "n_test_good": len(test_norm),
           "train_quantiles": {str(q): float(np.quantile(train_norm, q)) for q in QUANTILES},
           "test_good_quantiles": {str(q): float(np.quantile(test_norm, q)) for q in QUANTILES},
           "train_share_above": float(np.mean(train_norm > t)),
           "test_good_share_above": float(np.mean(test_norm > t))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
