"""Would a third whole-image statistic, the input's sharpness, catch the camera faults the
default preset's two statistics miss (KSDD's slight blur), and at what cost?  A measurement, not
a lever of the preset: nothing is built into the detector from it.

    python benchmarks/sharpness_check.py ../shared/data/ksdd --seeds 0 1 2 -o benchmarks/results/sharpness_s26/sharpness_ksdd.json

The statistic, fixed before looking: the focus measure of Pech-Pacheco et al. (2000), the
variance of the Laplacian of the grey view the anomaly map lies on (the resized, centre-cropped
network view, ``prepare_view``), taken as ``-log(variance)`` so that larger means blurrier, like
the other two statistics (larger = more anomalous).  It needs no leave-one-image-out pass: it is
a function of the image alone.

One fit of the default preset per seed on every training image.  Three rules from the same fit:
``two`` is the model's own decision (the normalised score and the map mean, thresholds set
together by ``joint_conformal_thresholds``); ``three`` joins the sharpness to them, the three
thresholds set together the same way on the training images' three columns; ``two + range``
keeps the model's two thresholds and also flags an image blurrier than every training image
(the sharpness's own conformal threshold at rank n, the largest training value: a new normal
image passes it with probability at most 1 / (n + 1), on top of the model's own bound).  The
third rule was added after the first run of the other two (KSDD seeds 0-2, MTD seed 0) showed the
joint rule's cost, and after the blurriness of the faults had been looked at.  Reported: the
share of good and defective test images each rule flags, and of each fault of
``camera_faults.py`` on the first ``--images`` good test images.  Nothing is fitted or chosen on
a test split.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage

from patchbank.detector import Detector
from patchbank.io.images import prepare_view
from patchbank.pipeline.conformal import joint_conformal_thresholds

from whole_image_check import run_main, shares_flagged

RULES = ("two", "three", "two + range")


def blurriness(item, config) -> float:
    """``-log`` of the variance of the Laplacian of the grey network view of ``item``."""
    grey = prepare_view(item, config).astype(np.float64).mean(axis=2)
    return float(-np.log(ndimage.laplace(grey).var() + 1e-12))


def decisions(det, thresholds: np.ndarray, blurriest: float, items) -> dict[str, np.ndarray]:
    """Each rule's decisions; ``thresholds``: the three-column joint rule's, ``blurriest``: the
    largest training value of :func:`blurriness`."""
    preds = det.predict(items)
    two = np.array([p.is_anomalous for p in preds])
    cols = np.array([[p.normalized_score, p.map_mean, blurriness(i, det.config)]
                     for p, i in zip(preds, items)])
    three = ~np.all(cols <= thresholds, axis=1)      # NaN in any column flags
    return {"two": two, "three": three, "two + range": two | ~(cols[:, 2] <= blurriest)}


def one_seed(args, category, seed: int, good: list) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        det = Detector.from_preset(args.preset, seed=seed, progress=False).fit(category.train)
    cal = det.calibration_
    if cal.map_means_ is None or cal.map_means_.size != len(category.train):
        raise SystemExit("the preset must calibrate the whole-image check on every training image")
    z = cal.stats_.normalize(cal.scores_)
    sharp = np.array([blurriness(p, det.config) for p in category.train])
    thresholds = joint_conformal_thresholds(np.stack([z, cal.map_means_, sharp], axis=1),
                                            det.config.target_fpr)
    rows = shares_flagged(lambda items: decisions(det, thresholds, float(sharp.max()), items), category, good)
    print(f"seed {seed}: two: score {det.threshold_:.3f}, map mean {cal.map_threshold_:.3f}; three: "
          f"{', '.join(f'{t:.3f}' for t in thresholds)}; training blurriness {sharp.min():.2f}-{sharp.max():.2f}; "
          + "; ".join(f"{r}: " + "/".join(f"{rows[r][k]:.3f}" for k in RULES)
                      for r in ("test good", "test defective")), flush=True)
    return {"seed": seed, "two": {"score": det.threshold_, "map_mean": cal.map_threshold_},
            "three": {"score": float(thresholds[0]), "map_mean": float(thresholds[1]),
                      "blurriness": float(thresholds[2])},
            "training_blurriness": [float(sharp.min()), float(np.median(sharp)), float(sharp.max())],
            "shares_flagged": rows}


if __name__ == "__main__":
    run_main(__doc__, one_seed, RULES, default_seeds=(0, 1, 2))
