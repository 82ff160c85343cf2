"""A whole-image statistic beside the image score, measured before it is built: the mean of each
image's anomaly map, calibrated like the score on the training images (leave-one-image-out, the
conformal threshold at ``target_fpr``), and what it, the score's decision and the union of the
two flag among the test images and the camera faults of ``camera_faults.py``.

    python benchmarks/whole_image_check.py ../shared/data/ksdd -o benchmarks/results/whole_image_check_ksdd.json

One fit of the default preset on every training image (seed 0).  The calibration's
leave-one-image-out patch-score grids are read as the fit makes them (this script wraps
``patchbank.pipeline.calibration.leave_one_out_scores``; the model is not changed) and turned
into maps by the fitted scorer, as prediction draws them; a map's mean is over its whole grid.
The union's false-positive rate is not held to ``target_fpr`` (two thresholds at it each): the
test-good rates below show what it gives.  Nothing is fitted or chosen on a test split.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

import patchbank.pipeline.calibration as calibration
from patchbank.config import DEFAULT_PRESET
from patchbank.detector import Detector
from patchbank.io.datasets import read_mvtec
from patchbank.io.images import list_images
from patchbank.pipeline.calibration import conformal_threshold
from patchbank.studies.speed import machine, write_json

from camera_faults import FAULTS   # benchmarks/, beside this script


def fit_with_map_means(preset: str, train: list) -> tuple[Detector, np.ndarray]:
    """(the fitted detector, the leave-one-image-out map mean of each calibration image)."""
    captured = []
    plain = calibration.leave_one_out_scores

    def keep_maps(scorer, rows, bank_source, progress=False):
        base, grids = plain(scorer, rows, bank_source, progress)
        captured.extend(float(m) for g in grids for m in scorer.anomaly_map(g)[0].mean(dim=(1, 2)))
        return base, grids

    calibration.leave_one_out_scores = keep_maps
    try:
        det = Detector.from_preset(preset, progress=False).fit(train)
    finally:
        calibration.leave_one_out_scores = plain
    return det, np.array(captured)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="an MVTec-layout category folder")
    ap.add_argument("--preset", default=DEFAULT_PRESET)
    ap.add_argument("--images", type=int, default=8, help="good test images altered by each fault")
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    (category,) = read_mvtec(args.data.parent, [args.data.name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        det, means = fit_with_map_means(args.preset, category.train)
    mu, sd = float(means.mean()), float(means.std(ddof=1))
    t = conformal_threshold((means - mu) / sd, det.config.target_fpr)

    def flags(preds) -> dict[str, np.ndarray]:
        z = (np.array([float(np.mean(p.anomaly_map)) for p in preds]) - mu) / sd
        score = np.array([bool(p.is_anomalous) for p in preds])
        return {"score": score, "map_mean": z > t, "either": score | (z > t)}

    test = flags(det.predict(category.test))
    labels = np.asarray(category.labels)
    rows = {"test good": {k: float(v[labels == 0].mean()) for k, v in test.items()},
            "test defective": {k: float(v[labels == 1].mean()) for k, v in test.items()}}
    good = [Image.open(p).convert("RGB") for p in list_images(args.data / "test" / "good")[:args.images]]
    for name, fault in FAULTS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            f = flags(det.predict([fault(img, i) for i, img in enumerate(good)]))
        rows[name] = {k: float(v.mean()) for k, v in f.items()}
    for name, r in rows.items():
        print(f"{name:40s} flagged by the score {r['score']:.3f}, by the map mean {r['map_mean']:.3f}, "
              f"by either {r['either']:.3f}")
    out = {"data": str(args.data), "preset": args.preset, "target_fpr": det.config.target_fpr,
           "train_map_means": {"min": float(means.min()), "median": float(np.median(means)),
                               "max": float(means.max()), "mean": mu, "std": sd, "n": int(means.size)},
           "map_mean_threshold_z": float(t), "map_mean_threshold": mu + float(t) * sd,
           "shares_flagged": rows, "machine": machine(), "command": " ".join(sys.argv)}
    write_json(out, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
