"""What the input alone shows: each image's blurriness (the focus check's statistic), mean grey
level and share of clipped pixels, on the training images, the test images and the camera faults
of ``camera_faults.py``.  A measurement, not a lever: no bank is fitted and nothing is chosen on a
test split.

    python benchmarks/input_statistics.py ../shared/data/mtd -o benchmarks/results/input_s28/input_statistics_mtd.json

Two questions it answers (docs/reliability.md):

* **Could an exposure statistic catch an overexposed frame** that the score, the map mean and the
  focus check pass?  Per image: the mean grey level of the original image (0-255, the mean of
  its three channels) and the share of its pixels at or above 250 (clipped highlights) and at
  or below 5 (crushed shadows).  Such a frame is caught by a range check only if it lies outside
  the training images' range.
* **Would a margin above the largest training blurriness cut false alarms without missing
  blur?**  The focus check flags an image blurrier than every training image (rank N of N).  A
  threshold higher by ``--margin`` (default ln 2: half the Laplacian energy of the blurriest
  training image, fixed before looking) keeps the 1 / (N + 1) bound; the report gives each
  group's share above the plain threshold and above the raised one.

Blurriness is :func:`patchbank.pipeline.focus.blurriness` on the network input of the default
preset's input shape (``aspect="auto"`` resolved on the training images as a fit does), so its
values are the model file's ``training_blurriness``.
"""
from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from patchbank.config import DEFAULT_PRESET
from patchbank.detector import Detector
from patchbank.io.datasets import read_dataset
from patchbank.io.images import list_images, prepare_input, to_tensor
from patchbank.pipeline.focus import blurriness
from patchbank.studies.speed import machine, write_json

from camera_faults import FAULTS

CLIP_HIGH, CLIP_LOW = 250, 5


def exposure(image: np.ndarray) -> tuple[float, float, float]:
    """(mean grey level, share >= CLIP_HIGH, share <= CLIP_LOW) of an 8-bit RGB image."""
    grey = np.asarray(image, dtype=np.float64).mean(axis=2)
    return float(grey.mean()), float((grey >= CLIP_HIGH).mean()), float((grey <= CLIP_LOW).mean())


def statistics(items: list, det: Detector, config) -> dict[str, list[float]]:
    """Every item's blurriness (network input) and exposure (original pixels)."""
    blur, mean, high, low = [], [], [], []
    bb = det.backbone
    for start in range(0, len(items), 32):
        chunk = items[start:start + 32]
        x = to_tensor([prepare_input(it, config) for it in chunk], bb.mean, bb.std)
        blur.extend(blurriness(x).tolist())
        for it in chunk:
            rgb = np.asarray(it if isinstance(it, (np.ndarray, Image.Image)) else
                             Image.open(it).convert("RGB"))
            m, h, lo = exposure(rgb)
            mean.append(m), high.append(h), low.append(lo)
    return {"blurriness": blur, "mean_grey": mean, "clipped_high": high, "clipped_low": low}


def summary(values: dict[str, list[float]], blur_max: float, margin: float) -> dict[str, float]:
    b = np.asarray(values["blurriness"])
    return {"n": int(b.size),
            **{f"{k}_min": float(np.min(v)) for k, v in values.items()},
            **{f"{k}_max": float(np.max(v)) for k, v in values.items()},
            "share_above_blur_threshold": float(np.mean(~(b <= blur_max))),
            "share_above_blur_threshold_plus_margin": float(np.mean(~(b <= blur_max + margin)))}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="an MVTec-layout category folder")
    ap.add_argument("--preset", default=DEFAULT_PRESET)
    ap.add_argument("--images", type=int, default=8, help="good test images altered per fault")
    ap.add_argument("--margin", type=float, default=math.log(2.0))
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args(argv)
    category, = read_dataset(args.data)
    det = Detector.from_preset(args.preset, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        config, _ = det.input_config(category.train)
        test = list(zip(category.test, category.labels))
        groups = {"train": statistics(category.train, det, config),
                  "test good": statistics([p for p, y in test if not y], det, config),
                  "test defective": statistics([p for p, y in test if y], det, config)}
        good = [Image.open(p).convert("RGB") for p in list_images(args.data / "test" / "good")[:args.images]]
        for name, fault in FAULTS.items():
            if name != "none":
                groups[name] = statistics([fault(img, i) for i, img in enumerate(good)], det, config)
    blur_max = max(groups["train"]["blurriness"])
    rows = {name: summary(v, blur_max, args.margin) for name, v in groups.items()}
    print(f"{'group':40s} {'n':>4s}  blurriness        mean grey      clipped >= {CLIP_HIGH}  "
          f"above max / max + {args.margin:.3f}")
    for name, r in rows.items():
        print(f"{name:40s} {r['n']:4d}  {r['blurriness_min']:6.3f}-{r['blurriness_max']:6.3f}  "
              f"{r['mean_grey_min']:6.1f}-{r['mean_grey_max']:6.1f}  {r['clipped_high_min']:.4f}-"
              f"{r['clipped_high_max']:.4f}  {r['share_above_blur_threshold']:.3f} / "
              f"{r['share_above_blur_threshold_plus_margin']:.3f}")
    out = {"data": str(args.data), "preset": args.preset, "network_size": list(config.network_size),
           "blur_threshold": blur_max, "margin": args.margin, "summary": rows, "values": groups,
           "machine": machine(), "command": " ".join(sys.argv)}
    write_json(out, args.out)
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
