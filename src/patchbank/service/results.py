"""Writing an infer response: one JSON object per image, in its own image's pixel coordinates.

Per image: ``name``, ``score`` (the raw image score), ``normalized_score``, ``is_anomalous``
(``not (normalized_score <= threshold)``, or ``whole_image_anomalous`` or ``out_of_focus``: a NaN
score is anomalous), ``threshold`` (the one the decision used: the request's, else the model's current one
for the image's category; a request's threshold moves the score's only), ``map_mean`` (the mean
of the image's anomaly map), ``blurriness`` (-log of the variance of the input's Laplacian: larger
is blurrier), ``whole_image_anomalous`` (that mean is above the model's whole-image threshold,
``Config.whole_image_check``: a blurred, dark or noisy frame; always false without the check),
``out_of_focus`` (the image is blurrier than every training image, ``Config.focus_check``; always
false without the check),
``category`` (routed or given; null for a single-category model), ``routed``, ``time_ms``
(from the request's arrival to its model call's return), ``width`` / ``height`` (the original
image's), ``other_shape`` (the image is unlike the training images in shape or size: its H / W
lies more than 10% from the one they shared, or its size sqrt(H x W) more than twice outside
theirs, so it was stretched or scaled to the model's input in a way they were not,
:meth:`patchbank.io.train_shape.TrainShape.is_other`), and on request:

* ``heatmap_png`` (base64 PNG, RGBA at the original size, transparent where the centre crop cut
  the image off: not inspected) and ``heatmap_range`` ``[vmin, vmax]`` (the model's fixed colour
  range, ``Detector.heatmap_range``);
* ``mask_png`` (base64 PNG, 0 / 255 at the original size) or ``polygons`` (``[[x, y], ...]``
  outlines in original pixels: one per 8-connected region, holes filled, simplified to half a
  pixel, the 100 largest, :func:`~patchbank.io.image_coords.region_polygons`): the region whose
  map value is above ``Detector.map_level`` at the threshold used.

JSON has no NaN: a non-finite number is written as null.
"""
from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np

from patchbank.io.heatmap import heatmap_rgba, png_bytes
from patchbank.io.image_coords import region_mask, region_polygons
from patchbank.pipeline.calibration import decide
from patchbank.service.codec import InferOptions
from patchbank.service.registry import Scored, Served

__all__ = ["image_result", "finite"]


def finite(value: float) -> float | None:
    """``value`` as a float, or None when it is NaN or infinite (JSON has no NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None


def image_result(served: Served, name: str, scored: Scored, options: InferOptions,
                 t0: float) -> dict[str, Any]:
    """The response entry of one image; ``t0`` is the request's arrival (``time.perf_counter()``).
    Its ``width`` and ``height`` are the uploaded image's own (the prediction's window: a JPEG
    decoded at a reduced scale keeps its full size there)."""
    p = scored.prediction
    if options.threshold is None:
        threshold, anomalous = scored.threshold, bool(p.is_anomalous)
    else:
        threshold = options.threshold
        anomalous = bool(decide(np.float64(p.normalized_score),
                                np.bool_(p.whole_image_anomalous or p.out_of_focus), threshold))
    h, w = p.image_size
    detector = served.detector(p.category)
    out: dict[str, Any] = {
        "name": name, "score": finite(p.score), "normalized_score": finite(p.normalized_score),
        "is_anomalous": anomalous, "threshold": finite(threshold), "map_mean": finite(p.map_mean),
        "blurriness": finite(p.blurriness), "whole_image_anomalous": bool(p.whole_image_anomalous),
        "out_of_focus": bool(p.out_of_focus), "category": p.category,
        "routed": served.multi and options.category is None,
        "time_ms": round((scored.done - t0) * 1000.0, 3), "width": int(w), "height": int(h),
        "other_shape": detector.train_shape_.is_other((h, w)),
    }
    if not options.heatmap and options.mask == "none":
        return out
    original = p.image_map            # the map on the uploaded image (its own coordinates)
    if options.heatmap:
        vmin, vmax = detector.heatmap_range()
        out["heatmap_png"] = _b64_png(heatmap_rgba(original, vmin, vmax))
        out["heatmap_range"] = [finite(vmin), finite(vmax)]
    if options.mask != "none":
        mask = region_mask(original, detector.map_level(threshold))
        if options.mask == "png":
            out["mask_png"] = _b64_png(mask)
        else:
            out["polygons"] = region_polygons(mask)
    return out


def _b64_png(array: np.ndarray) -> str:
    return base64.b64encode(png_bytes(array)).decode("ascii")
