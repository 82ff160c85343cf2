"""The whole-image check (``Config.whole_image_check``, on in the default preset) against the
score's threshold alone, on one MVTec-layout category, over seeds: the share of good and of
defective test images each rule flags, and of the camera faults of ``camera_faults.py``.

    python benchmarks/whole_image_check.py ../shared/data/mtd --seeds 0 1 2 3 4 -o benchmarks/results/whole_image_check_mtd.json

One fit of the preset per seed on every training image.  The two rules come from the same fit:
``joint`` is the model's decision (the score's and the map mean's thresholds set together, at
most ``target_fpr`` of the training images' leave-one-image-out results above either); ``score
alone`` is the normalised score against the conformal threshold of the same calibration scores,
what the preset without the check decides (the image score, so every threshold-free metric, is
the same in both).  Since session 27 the preset also has the focus check (``Config.focus_check``:
an image blurrier than every training image): ``focus`` is its flag alone and ``all`` the
model's decision with it (``joint`` stays the score's and the map mean's rule, session 25's
decision).  The faults alter the first ``--images`` good test images.  Nothing is fitted
or chosen on a test split.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from patchbank.config import DEFAULT_PRESET
from patchbank.detector import Detector
from patchbank.io.datasets import read_mvtec
from patchbank.io.images import list_images
from patchbank.pipeline.conformal import conformal_threshold
from patchbank.studies.speed import machine, write_json

from camera_faults import FAULTS   # benchmarks/, beside this script

RULES = ("score alone", "map mean", "joint", "focus", "all")


def flags(alone: float, threshold: float, preds) -> dict[str, np.ndarray]:
    """Each rule's decisions for ``preds``; ``alone``: the score-only threshold, ``threshold``:
    the model's (joint) one."""
    whole = np.array([p.whole_image_anomalous for p in preds])
    return {"score alone": np.array([not p.normalized_score <= alone for p in preds]),
            "map mean": whole,
            "joint": np.array([not p.normalized_score <= threshold for p in preds]) | whole,
            "focus": np.array([p.out_of_focus for p in preds]),
            "all": np.array([p.is_anomalous for p in preds])}


def shares_flagged(decide, category, good: list) -> dict[str, dict[str, float]]:
    """The share of the good and of the defective test images, and of each fault's altered
    ``good`` images, that each rule of ``decide(items) -> {rule: decisions}`` flags."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        test = decide(category.test)
        labels = np.asarray(category.labels)
        rows = {"test good": {k: float(v[labels == 0].mean()) for k, v in test.items()},
                "test defective": {k: float(v[labels == 1].mean()) for k, v in test.items()}}
        for name, fault in FAULTS.items():
            if name != "none":
                f = decide([fault(img, i) for i, img in enumerate(good)])
                rows[name] = {k: float(v.mean()) for k, v in f.items()}
    return rows


def one_seed(args, category, seed: int, good: list) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        det = Detector.from_preset(args.preset, seed=seed, progress=False).fit(category.train)
    if not det.config.whole_image_check:
        raise SystemExit(f"preset {args.preset!r} has no whole-image check")
    cal = det.calibration_
    alone = conformal_threshold(cal.stats_.normalize(cal.scores_), det.config.target_fpr)
    rows = shares_flagged(lambda items: flags(alone, det.threshold_, det.predict(items)), category, good)
    print(f"seed {seed}: thresholds score alone {alone:.3f}, joint {det.threshold_:.3f} and map mean "
          f"{cal.map_threshold_:.3f}; " + "; ".join(
              f"{r}: " + "/".join(f"{rows[r][k]:.3f}" for k in RULES) for r in ("test good", "test defective")),
          flush=True)
    return {"seed": seed, "threshold_score_alone": alone, "threshold_joint": det.threshold_,
            "map_threshold": cal.map_threshold_, "blur_threshold": cal.blur_threshold_,
            "n_calibration_images": int(cal.scores_.size),
            "shares_flagged": rows}


def run_main(doc: str, one_seed, rules, default_seeds=(0, 1, 2, 3, 4)) -> None:
    """The command line of this script and of ``sharpness_check.py``: ``one_seed(args,
    category, seed, good)`` per seed, the mean share each of ``rules`` flags, the JSON."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="an MVTec-layout category folder")
    ap.add_argument("--preset", default=DEFAULT_PRESET)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(default_seeds))
    ap.add_argument("--images", type=int, default=8, help="good test images altered by each fault")
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    (category,) = read_mvtec(args.data.parent, [args.data.name])
    good = [Image.open(p).convert("RGB") for p in list_images(args.data / "test" / "good")[:args.images]]
    runs = [one_seed(args, category, s, good) for s in args.seeds]
    mean = {row: {k: float(np.mean([r["shares_flagged"][row][k] for r in runs])) for k in rules}
            for row in runs[0]["shares_flagged"]}
    for row, m in mean.items():
        print(f"{row:40s} " + "  ".join(f"{k} {m[k]:.3f}" for k in rules))
    write_json({"data": str(args.data), "preset": args.preset, "seeds": args.seeds, "runs": runs,
                "mean_shares_flagged": mean, "machine": machine(), "command": " ".join(sys.argv)}, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_main(__doc__, one_seed, RULES)
