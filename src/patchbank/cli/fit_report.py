"""The lines ``patchbank fit`` (local or Ray) prints about a fitted category: the input shape it
chose, and its threshold (which training images lie above it, and what false-positive rate it
promises new normal images)."""
from __future__ import annotations

SHOW_ABOVE = 5   # training images above the threshold named, highest first


def threshold_line(cal, cfg, names: list | None) -> str:
    """What a calibrated threshold promises: the training images above it (the first
    ``SHOW_ABOVE`` named, from ``names``, the training images' file names in the fit's order,
    as a model records them: worth a look for defects) and, for the conformal rule, the
    false-positive rate it gives new normal images like them.  ``cal``: the model's
    :class:`~patchbank.pipeline.calibration.ScoreCalibration`; ``cfg``: its config."""
    from patchbank.pipeline.conformal import conformal_rate
    from patchbank.pipeline.focus import FOCUS_FPR

    n = int(cal.scores_.size)
    above = cal.above_threshold()
    which = "it" if cal.map_threshold_ is None else "it or the whole-image check's"
    line = f"threshold: {len(above)} of {n} training images above {which} (each scored without its own bank rows)"
    if above:
        name = lambda i: (names[i] if names is not None and names[i] is not None  # noqa: E731
                          else f"training image #{i}")
        shown = ", ".join(f"{name(i)} ({z:.2f})" for i, z in above[:SHOW_ABOVE])
        line += f": {shown}" + (", ..." if len(above) > SHOW_ABOVE else "")
    if cfg.threshold_rule != "conformal":
        return line
    joined = cal.map_threshold_ is not None     # the whole-image check: a bound, ties included
    rate = conformal_rate(n, cfg.target_fpr, 2 if joined else 1)
    rules = 2 if joined else 1
    if cal.blur_threshold_ is not None:         # the focus check: rank n_train of n_train
        rate += conformal_rate(cal.training_blurriness_.size, FOCUS_FPR)
        rules += 1
    line += (f"; expected false-positive rate on new normal images {'at most ' if rules > 1 else ''}"
             f"{100 * rate:.2g}%" + {1: "", 2: " (both rules)", 3: " (all three rules)"}[rules])
    if conformal_rate(n, cfg.target_fpr) > cfg.target_fpr:
        line += f", above the target {100 * cfg.target_fpr:g}%: too few training images"
    return line


def fit_lines(det, images: list, prefix: str = "") -> list[str]:
    """What ``patchbank fit`` prints about ``det`` fitted on ``images``: :func:`input_line` and
    :func:`threshold_line`, each after ``prefix`` (a category's ``"[name] "``)."""
    return [prefix + input_line(det, images),
            prefix + threshold_line(det.calibration_, det.config, det.train_names_)]


def input_line(det, images: list) -> str:
    """The input shape a fit on ``images`` chose: resize and crop (H x W; where the crop is cut
    when the backbone reads the whole resize), and with ``aspect`` auto why (for images of
    mixed shapes, how far their H / W spread)."""
    from patchbank.io.aspect import SHARE, aspect_range, image_hw

    cfg = det.config
    crop = "no crop" if cfg.crop_size is None else f"crop {cfg.crop_size[0]}x{cfg.crop_size[1]}"
    if cfg.crop_size is not None and cfg.crop_at == "features":
        crop += " cut from the features"
    text = f"input: resize {cfg.image_size[0]}x{cfg.image_size[1]}, {crop} (H x W)"
    if cfg.aspect != "auto":
        return text
    if det.aspect_ is None:
        low, high = aspect_range([image_hw(p) for p in images])
        return (text + f"; aspect auto: the training images' shapes differ (H / W {low:.2f}-{high:.2f} "
                f"for the middle {100 * SHARE:.0f}%), kept as configured")
    verb = "kept" if cfg == det.requested_config else "reshaped to it"
    return text + f"; aspect auto: the training images share H / W = {det.aspect_:.2f}, {verb}"
