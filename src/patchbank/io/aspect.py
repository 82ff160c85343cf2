"""The input shape that follows the training images' aspect ratio (``Config.aspect = "auto"``).

A fixed square input squashes elongated images (a strip 2.5 times as tall as wide loses 2.5x of
its height, and thin defects across that axis with it).  With ``aspect="auto"`` the fit measures the
training images' aspect ratios a = H / W (their headers only) and, when they share one, reshapes
the configured resize and crop to that ratio at the same pixel count:

* **shared**: at least :data:`SHARE` of the images lie within :data:`TOLERANCE` (relative) of the
  median ratio.  Images of mixed shapes have no one shape that fits them, so the configured
  shape is kept;
* **kept** also when the shared ratio lies within :data:`TOLERANCE` of the configured input's
  (square images and a square input: nothing to change);
* **reshaped**: otherwise the crop (or, without one, the resize) becomes
  ``(sqrt(A a), sqrt(A / a))`` for its pixel count A, each side rounded to a multiple of the
  backbone's largest stride (at least one stride), and the resize keeps the configured crop
  fraction of each side.  With ``crop_at="features"`` each margin (half of resize minus crop) is
  rounded to whole cells of the finest tap, so the crop can be cut from the feature maps.

The fitted detector's ``config`` holds the resolved sizes (how it reads images from then on) and
still says ``aspect="auto"`` (what was asked); the measured ratio is the detector's ``aspect_``.
A prediction flags images whose shape differs from it, or whose size from the training images'
(:mod:`patchbank.io.train_shape`).
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

from patchbank.io.images import open_image

SHARE = 0.8
TOLERANCE = 0.10


def image_hw(item: Any) -> tuple[int, int]:
    """(H, W) of one input (path: read from its header; PIL image; array) without decoding it."""
    if isinstance(item, np.ndarray):
        return int(item.shape[0]), int(item.shape[1])
    if isinstance(item, Image.Image):
        return int(item.height), int(item.width)
    with open_image(os.fspath(item)) as im:
        return int(im.height), int(im.width)


def shared_aspect(sizes: Sequence[tuple[int, int]], share: float = SHARE,
                  tolerance: float = TOLERANCE) -> float | None:
    """The median H / W of ``sizes`` when at least ``share`` of them lie within ``tolerance``
    (relative) of it; None when they do not share an aspect ratio."""
    if not sizes:
        return None
    ratios = np.array([h / w for h, w in sizes], dtype=np.float64)
    median = float(np.median(ratios))
    close = np.abs(ratios / median - 1.0) <= tolerance
    return median if close.mean() >= share else None


def aspect_range(sizes: Sequence[tuple[int, int]], share: float = SHARE) -> tuple[float, float]:
    """The H / W range of the middle ``share`` of ``sizes`` (the 10th to 90th percentile at 0.8):
    how far images of mixed shapes spread."""
    ratios = np.array([h / w for h, w in sizes], dtype=np.float64)
    tail = (1.0 - share) / 2
    return float(np.quantile(ratios, tail)), float(np.quantile(ratios, 1.0 - tail))


def _round_to(x: float, step: int) -> int:
    return max(step, int(round(x / step)) * step)


def _resized_side(crop: int, configured: tuple[int, int], cell: int, features: bool) -> int:
    """The resize of one side whose crop is ``crop``, keeping the configured (resize, crop)
    fraction; with ``features`` (``crop_at="features"``) each margin in whole ``cell``s."""
    resize, was = configured
    if not features:
        return max(crop, int(round(crop * resize / was)))
    return crop + 2 * cell * max(0, int(round((crop * resize / was - crop) / (2 * cell))))


def reshaped(config, aspect: float, step: int, cell: int = 1):
    """``config`` with its resize and crop reshaped to H / W = ``aspect`` at the same pixel count
    (see the module docstring); sides are multiples of ``step``, and with ``crop_at="features"``
    the crop's margins multiples of ``cell`` (the finest tap's stride)."""
    (rh, rw), crop = config.image_size, config.crop_size
    base = crop or (rh, rw)
    area = base[0] * base[1]
    h, w = _round_to(math.sqrt(area * aspect), step), _round_to(math.sqrt(area / aspect), step)
    if crop is None:
        return config.replace(image_size=(h, w))
    features = config.crop_at == "features"
    resize = (_resized_side(h, (rh, crop[0]), cell, features), _resized_side(w, (rw, crop[1]), cell, features))
    return config.replace(image_size=resize, crop_size=(h, w))


def input_config(config, items: Sequence[Any], step: int, cell: int = 1) -> tuple[Any, float | None]:
    """(the configuration a fit on ``items`` reads them with, the images' shared H / W or None):
    ``config`` itself unless its ``aspect`` is "auto" and the images share a ratio, then
    :func:`reshaped` to it (``step``: the backbone's largest stride; ``cell``: its finest)."""
    if config.aspect != "auto":
        return config, None
    aspect = shared_aspect([image_hw(item) for item in items])
    h, w = config.input_size
    if aspect is None or abs(aspect / (h / w) - 1.0) <= TOLERANCE:   # nothing to reshape
        return config, aspect
    return reshaped(config, aspect, step, cell), aspect
