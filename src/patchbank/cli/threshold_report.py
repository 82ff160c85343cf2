"""The line ``patchbank fit`` prints about a fitted category's threshold: which training images
lie above it, and what false-positive rate it promises new normal images."""
from __future__ import annotations

from pathlib import Path

SHOW_ABOVE = 5   # training images above the threshold named, highest first


def threshold_line(det, images: list[Path]) -> str:
    """What the calibrated threshold of ``det`` (fitted on ``images``, in that order) promises:
    the training images above it (the first ``SHOW_ABOVE`` named: worth a look for defects) and,
    for the conformal rule, the false-positive rate it gives new normal images like them."""
    from patchbank.pipeline.calibration import conformal_rate

    cal, cfg = det.calibration_, det.config
    n = int(cal.scores_.size)
    above = cal.above_threshold()
    line = f"threshold: {len(above)} of {n} training images above it (each scored without its own bank rows)"
    if above:
        names = ", ".join(f"{images[i].name} ({z:.2f})" for i, z in above[:SHOW_ABOVE])
        line += f": {names}" + (", ..." if len(above) > SHOW_ABOVE else "")
    if cfg.threshold_rule != "conformal":
        return line
    rate = conformal_rate(n, cfg.target_fpr)
    line += f"; expected false-positive rate on new normal images {100 * rate:.2g}%"
    if rate > cfg.target_fpr:
        line += f", above the target {100 * cfg.target_fpr:g}%: too few training images"
    return line
