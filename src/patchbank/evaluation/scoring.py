"""Metrics of one category's predictions: the one loop that pairs anomaly maps with masks.

:func:`score_category` is what every evaluation uses (``evaluate``, the structure and routing
studies, ``benchmarks/bench_core.py``): image metrics of the image scores against the test
labels, and pixel metrics (:class:`~patchbank.evaluation.metrics.PixelMetrics`) of the anomaly
maps against the ground-truth masks, each mask loaded with
:func:`~patchbank.io.datasets.load_mask` and resized and cropped like its image with
:func:`~patchbank.io.images.crop_mask`; good images (no mask) count with all-zero masks of the
map size ``config.input_size``.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from patchbank.config import Config
from patchbank.errors import PatchbankError
from patchbank.evaluation.metrics import PixelMetrics, image_metrics
from patchbank.io.datasets import Category, load_mask
from patchbank.io.images import crop_mask, open_image

IMAGE_KEYS = ("image_auroc", "image_ap", "image_f1_max")
PIXEL_KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")


def check_test_set(category: Category) -> None:
    """Raise :class:`PatchbankError` unless the test set can be scored: both good and defective
    images (the metrics need both) and :func:`check_mask_sizes`.  Every study runs it on every
    category before its first fit."""
    if len(set(category.labels)) < 2:
        raise PatchbankError(f"category {category.name!r}: the test set needs both good and "
                             f"defective images to compute the metrics")
    check_mask_sizes(category)


def check_mask_sizes(category: Category) -> None:
    """Raise :class:`PatchbankError` unless every mask has its image's size and at least one
    defect pixel (run before a long fit)."""
    for img, mask in zip(category.test, category.masks):
        if mask is None:
            continue
        sizes = []
        for p, what in ((mask, "mask"), (img, "image")):
            with open_image(p, what) as im:      # its header only
                sizes.append(im.size)
        if sizes[0] != sizes[1]:
            (mw, mh), (iw, ih) = sizes
            raise PatchbankError(f"mask {mask} is {mw}x{mh} (WxH) but its image {img} is {iw}x{ih}")
        load_mask(mask, img)     # refuses, before any fit, a mask without a defect pixel


def category_masks(category: Category, config: Config) -> Iterator[np.ndarray]:
    """The ground truth of each test image at anomaly-map resolution (bool ``config.input_size``):
    the mask resized and cropped like the image, all zeros for an image without a mask."""
    for img, mask_path in zip(category.test, category.masks):
        if mask_path is None:
            yield np.zeros(tuple(config.input_size), dtype=bool)
        else:
            yield crop_mask(load_mask(mask_path, img), config)


def pixel_scores(category: Category, anomaly_maps: Sequence[np.ndarray], config: Config) -> dict[str, float]:
    """``{"pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"}`` of the maps (one per test image,
    at ``config.input_size``) against :func:`category_masks`."""
    if len(anomaly_maps) != len(category.test):
        raise PatchbankError(f"category {category.name!r}: {len(anomaly_maps)} anomaly maps for "
                             f"{len(category.test)} test images")
    with PixelMetrics() as pm:
        for amap, mask, path in zip(anomaly_maps, category_masks(category, config), category.masks):
            if mask.shape != amap.shape:
                raise PatchbankError(f"mask {path} maps to {mask.shape}, anomaly map is {amap.shape}")
            pm.update(amap, mask)
        return {k: float(v) for k, v in pm.compute().items()}


def score_category(category: Category, predictions: Sequence[Any], config: Config) -> dict[str, float | None]:
    """Image and pixel metrics of a fitted detector's predictions on ``category.test``.

    Args:
        category: the test images, their labels (0 good, 1 defective) and masks.
        predictions: one :class:`~patchbank.detector.Prediction` per test image, in order
            (``score`` and ``anomaly_map`` are read).
        config: the detector's config (map size and the resize / crop applied to the masks).

    Returns:
        ``{"image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap",
        "pixel_f1_max", "aupro"}`` as floats; the pixel metrics are None when the category has no
        masks (``category.has_masks`` false).  Raises :class:`PatchbankError` when the test set
        lacks good or defective images.
    """
    if len(predictions) != len(category.test):
        raise PatchbankError(f"category {category.name!r}: {len(predictions)} predictions for "
                             f"{len(category.test)} test images")
    out: dict[str, float | None] = dict.fromkeys(IMAGE_KEYS + PIXEL_KEYS)
    out.update({k: float(v) for k, v in image_metrics(category.labels, [p.score for p in predictions]).items()})
    if category.has_masks:
        out.update(pixel_scores(category, [p.anomaly_map for p in predictions], config))
    return out
