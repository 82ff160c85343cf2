"""What the default model decides on images a camera fault would give: good test images blurred
(out of focus), darkened, brightened, rotated, overlaid with sensor noise, pure noise, blank
frames, and another product's images.  A diagnostic of what the image score can and cannot
see, not a lever: nothing here is fitted on a test split.

    python benchmarks/camera_faults.py ../shared/data/ksdd -o benchmarks/results/camera_faults_ksdd.json

One fit of the preset on every training image (seed 0); the first ``--images`` good test images
are altered by each fault (``FAULTS``, fixed before looking; "another product" reads the good
test images of ``--other``).  Reported per fault: each image's normalised score and decision, the
share flagged, and each image's map mean (the mean of its anomaly map on the network's grid,
against the unaltered images' map means: a whole-image shift moves every patch a little, which
the top-5% pooling may not see).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from patchbank.config import DEFAULT_PRESET
from patchbank.detector import Detector
from patchbank.io.images import list_images
from patchbank.studies.speed import machine, write_json


def _noise(img: Image.Image, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((img.height, img.width, 3)) * 255).astype(np.uint8)


def _noisy(img: Image.Image, seed: int, sigma: float) -> np.ndarray:
    a = np.asarray(img, dtype=np.float64)
    return np.clip(a + np.random.default_rng(seed).normal(0, sigma, a.shape), 0, 255).astype(np.uint8)


def _scaled(img: Image.Image, factor: float) -> np.ndarray:
    return np.clip(np.asarray(img, dtype=np.float64) * factor, 0, 255).astype(np.uint8)


FAULTS = {
    "none": lambda img, i: np.asarray(img),
    "out of focus (Gaussian blur radius 3)": lambda img, i: np.asarray(img.filter(ImageFilter.GaussianBlur(3))),
    "out of focus (Gaussian blur radius 8)": lambda img, i: np.asarray(img.filter(ImageFilter.GaussianBlur(8))),
    "underexposed (x 0.3)": lambda img, i: _scaled(img, 0.3),
    "overexposed (x 2, clipped)": lambda img, i: _scaled(img, 2.0),
    "rotated 90 degrees": lambda img, i: np.asarray(img.rotate(90, expand=True)),
    "sensor noise (sigma 25 grey levels)": lambda img, i: _noisy(img, i, 25.0),
    "pure noise": lambda img, i: _noise(img, i),
    "black frame": lambda img, i: np.zeros((img.height, img.width, 3), np.uint8),
    "grey frame": lambda img, i: np.full((img.height, img.width, 3), 128, np.uint8),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="an MVTec-layout category folder")
    ap.add_argument("--other", type=Path, default=None, help="another product's category folder")
    ap.add_argument("--preset", default=DEFAULT_PRESET)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        det = Detector.from_preset(args.preset, progress=False).fit(list_images(args.data / "train" / "good"))
    good = [Image.open(p).convert("RGB") for p in list_images(args.data / "test" / "good")[:args.images]]
    cases = {name: [fault(img, i) for i, img in enumerate(good)] for name, fault in FAULTS.items()}
    if args.other is not None:
        cases["another product"] = [np.asarray(Image.open(p).convert("RGB"))
                                    for p in list_images(args.other / "test" / "good")[:args.images]]
    rows = []
    for name, images in cases.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)     # other shapes (rotated, another product)
            preds = det.predict(images)
        rows.append({"fault": name, "normalized_scores": [float(p.normalized_score) for p in preds],
                     "flagged": [bool(p.is_anomalous) for p in preds],
                     "share_flagged": float(np.mean([p.is_anomalous for p in preds])),
                     "map_means": [float(np.mean(p.anomaly_map)) for p in preds]})
        print(f"{name:40s} flagged {sum(rows[-1]['flagged'])}/{len(preds)}; normalised scores "
              + " ".join(f"{s:6.2f}" for s in rows[-1]["normalized_scores"])
              + f"; map means {min(rows[-1]['map_means']):.2f}-{max(rows[-1]['map_means']):.2f}")
    out = {"data": str(args.data), "other": None if args.other is None else str(args.other),
           "preset": args.preset, "threshold": float(det.threshold_), "n_train": det.n_train_images_,
           "rows": rows, "machine": machine(), "command": " ".join(sys.argv)}
    write_json(out, args.out)
    print(f"threshold {det.threshold_:.3f} (normalised score); wrote {args.out}")


if __name__ == "__main__":
    main()
