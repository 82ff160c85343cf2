"""The lines ``patchbank fit`` (local or Ray) prints about a fitted category: the input shape it
chose, and its threshold (which training images lie above it, and what false-positive rate it
promises new normal images)."""
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


def input_line(det) -> str:
    """The input shape a fit chose: resize and crop (H x W), and with ``aspect`` auto why."""
    cfg = det.config
    crop = "no crop" if cfg.crop_size is None else f"crop {cfg.crop_size[0]}x{cfg.crop_size[1]}"
    text = f"input: resize {cfg.image_size[0]}x{cfg.image_size[1]}, {crop} (H x W)"
    if cfg.aspect != "auto":
        return text
    if det.aspect_ is None:
        return text + "; aspect auto: the training images' shapes differ, kept as configured"
    verb = "kept" if cfg == det.requested_config else "reshaped to it"
    return text + f"; aspect auto: the training images share H / W = {det.aspect_:.2f}, {verb}"
