"""Tests of patchbank.evaluation.metrics: image/pixel AUROC, AP, F1-max against scikit-learn, AUPRO by hand."""
import os

import numpy as np
import pytest
from scipy import ndimage

from patchbank.errors import PatchbankError
from patchbank.evaluation.metrics import (
    ImageMetrics,
    PixelMetrics,
    aupro,
    auroc,
    average_precision,
    f1_max,
    image_metrics,
    pixel_metrics,
)


class _SklearnMetrics:
    """scikit-learn's metrics, imported when a test first uses them: only the tests that compare
    against scikit-learn skip without it (naming it); the hand-computed ones always run."""

    def __getattr__(self, name):
        return getattr(pytest.importorskip("sklearn.metrics", reason="needs scikit-learn (pip install -e .[test])"), name)


sklearn_metrics = _SklearnMetrics()

TOL = dict(rel=1e-12, abs=1e-12)


def sk_f1_max(labels, scores):
    precision, recall, _ = sklearn_metrics.precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return float(np.nanmax(np.nan_to_num(f1, nan=0.0)))


def random_binary_case(rng, n, ties):
    labels = rng.random(n) < rng.uniform(0.2, 0.8)
    labels[0], labels[1] = True, False  # both classes
    rng.shuffle(labels)
    if ties:  # few distinct levels -> many ties, within and across classes
        scores = rng.integers(0, rng.integers(2, 6), n) / 4.0 + 0.3 * labels * rng.integers(0, 2, n)
    else:
        scores = rng.normal(size=n) + labels
    return labels, scores


# ---------------------------------------------------------------------------------------------
# Image level
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [True, False])
def test_image_metrics_match_sklearn(ties):
    rng = np.random.default_rng(0 if ties else 1)
    for _ in range(150):
        labels, scores = random_binary_case(rng, int(rng.integers(2, 40)), ties)
        assert auroc(labels, scores) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), **TOL)
        assert average_precision(labels, scores) == pytest.approx(
            sklearn_metrics.average_precision_score(labels, scores), **TOL
        )
        assert f1_max(labels, scores) == pytest.approx(sk_f1_max(labels, scores), **TOL)


def test_image_metrics_dict_and_accumulator():
    rng = np.random.default_rng(2)
    labels, scores = random_binary_case(rng, 30, ties=True)
    expected = {
        "image_auroc": auroc(labels, scores),
        "image_ap": average_precision(labels, scores),
        "image_f1_max": f1_max(labels, scores),
    }
    assert image_metrics(labels, scores) == expected
    acc = ImageMetrics()
    acc.update(labels[:10].astype(int), scores[:10])
    for y, s in zip(labels[10:], scores[10:]):
        acc.update(bool(y), float(s))
    assert len(acc) == 30
    assert acc.compute() == expected


def test_image_small_cases_by_hand():
    # All ties: the ROC is the diagonal, AP = prevalence, F1 = 2P/(N_total + P).
    assert auroc([0, 1, 0, 1], [0.5] * 4) == 0.5
    assert average_precision([0, 1, 0, 0], [0.5] * 4) == 0.25
    assert f1_max([0, 1, 0, 0], [0.5] * 4) == pytest.approx(2 / 5)
    # Perfect and inverted rankings.
    assert auroc([0, 0, 1], [0.1, 0.2, 0.3]) == 1.0
    assert auroc([0, 0, 1], [0.3, 0.2, 0.1]) == 0.0
    assert average_precision([True, True], [1.0, 2.0]) == 1.0  # only positives: AP defined (= 1)
    assert auroc([0, 1], [-0.0, 0.0]) == 0.5  # -0.0 and 0.0 tie


def test_image_undefined_and_bad_input():
    with pytest.raises(PatchbankError, match="AUROC is undefined"):
        auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(PatchbankError, match="AUROC is undefined"):
        auroc([0, 0], [0.1, 0.2])
    with pytest.raises(PatchbankError, match="undefined"):
        image_metrics([0, 0], [0.1, 0.2])
    with pytest.raises(PatchbankError, match="undefined"):
        average_precision([0, 0], [0.1, 0.2])
    with pytest.raises(PatchbankError, match="0/1"):
        auroc([0, 2], [0.1, 0.2])
    with pytest.raises(PatchbankError, match=r"\(3,\).*\(2,\)"):
        auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(PatchbankError, match="NaN"):
        auroc([0, 1], [0.1, np.nan])
    with pytest.raises(PatchbankError, match="empty"):
        auroc([], [])
    with pytest.raises(PatchbankError):
        ImageMetrics().compute()


# ---------------------------------------------------------------------------------------------
# Pixel level
# ---------------------------------------------------------------------------------------------


def random_pixel_case(rng, n_images=6, shape=(12, 10), levels=6):
    maps, masks = [], []
    for i in range(n_images):
        mask = np.zeros(shape, dtype=bool)
        if i % 3 != 2:  # every third image is good
            for _ in range(int(rng.integers(1, 4))):
                y, x = rng.integers(0, shape[0] - 3), rng.integers(0, shape[1] - 3)
                h, w = rng.integers(1, 4, size=2)
                mask[y : y + h, x : x + w] = True
            mask &= rng.random(shape) < 0.85  # ragged regions, some diagonal-only contacts
        amap = (rng.integers(0, levels, shape) + 2.0 * mask * rng.random(shape)).astype(np.float32)
        amap = np.round(amap * 2) / 2  # ties within and across images and classes
        maps.append(amap.astype(np.float32))
        masks.append(mask)
    return maps, masks


def reference_aupro(maps, masks, max_fpr=0.3):
    """Brute force: PRO and FPR at every distinct threshold, MVTec trapezoid with interpolation."""
    labeled = [ndimage.label(m, structure=np.ones((3, 3)))[0] for m in masks]
    regions = [(a, lab == k) for a, lab in zip(maps, labeled) for k in range(1, lab.max() + 1)]
    normal = np.concatenate([a[~m] for a, m in zip(maps, masks)])
    xs, ys = [0.0], [0.0]
    for t in np.unique(np.concatenate([a.ravel() for a in maps]))[::-1]:
        xs.append(np.mean(normal >= t))
        ys.append(np.mean([np.mean(a[r] >= t) for a, r in regions]))
    x, y = np.array(xs), np.array(ys)
    area, i = 0.0, 1
    while i < len(x) and x[i] <= max_fpr:
        area += (x[i] - x[i - 1]) * (y[i] + y[i - 1]) / 2
        i += 1
    if i < len(x) and x[i - 1] < max_fpr:
        y_at = y[i - 1] + (y[i] - y[i - 1]) * (max_fpr - x[i - 1]) / (x[i] - x[i - 1])
        area += (max_fpr - x[i - 1]) * (y[i - 1] + y_at) / 2
    return area / max_fpr


def test_pixel_metrics_equal_flattened_functions():
    rng = np.random.default_rng(3)
    for _ in range(5):
        maps, masks = random_pixel_case(rng)
        result = pixel_metrics(maps, masks)
        labels = np.concatenate([m.ravel() for m in masks])
        scores = np.concatenate([a.ravel() for a in maps])
        assert result["pixel_auroc"] == pytest.approx(auroc(labels, scores), **TOL)
        assert result["pixel_ap"] == pytest.approx(average_precision(labels, scores), **TOL)
        assert result["pixel_f1_max"] == pytest.approx(f1_max(labels, scores), **TOL)
        assert result["pixel_auroc"] == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), **TOL)
        assert result["pixel_ap"] == pytest.approx(sklearn_metrics.average_precision_score(labels, scores), **TOL)
        assert result["pixel_f1_max"] == pytest.approx(sk_f1_max(labels, scores), **TOL)


@pytest.mark.parametrize("max_fpr", [0.3, 0.05, 1.0])
def test_aupro_matches_brute_force(max_fpr):
    rng = np.random.default_rng(4)
    for levels in (3, 6, 1000):
        maps, masks = random_pixel_case(rng, levels=levels)
        assert aupro(maps, masks, max_fpr=max_fpr) == pytest.approx(reference_aupro(maps, masks, max_fpr), **TOL)


def hand_example():
    """Image A (3x3) with two regions of different sizes, image B (2x3) good.

    mask A        scores A           scores B (all normal)
    1 1 0         0.9 0.5 0.7        0.7 0.3 0.1
    0 0 0         0.5 0.1 0.1        0.1 0.1 0.1
    0 0 1         0.1 0.1 0.3
    R1 = {(0,0),(0,1)} (size 2, pixel weight 1/(2*2) = 1/4), R2 = {(2,2)} (size 1, weight 1/2).
    Normal pixels: 6 in A + 6 in B = 12; their scores: 0.7 x2, 0.5 x1, 0.3 x1, 0.1 x8.
    """
    mask_a = np.array([[1, 1, 0], [0, 0, 0], [0, 0, 1]], dtype=bool)
    map_a = np.array([[0.9, 0.5, 0.7], [0.5, 0.1, 0.1], [0.1, 0.1, 0.3]], dtype=np.float32)
    map_b = np.array([[0.7, 0.3, 0.1], [0.1, 0.1, 0.1]], dtype=np.float32)
    mask_b = np.zeros((2, 3), dtype=bool)
    return [map_a, map_b], [mask_a, mask_b]


def test_aupro_hand_computed():
    maps, masks = hand_example()
    # Threshold t (score >= t)  | PRO = mean over R1, R2            | FP | FPR
    # start                     | 0                                 |  0 | 0
    # 0.9                       | (1/2 + 0)/2   = 1/4               |  0 | 0
    # 0.7                       | 1/4                               |  2 | 1/6
    # 0.5 (R1 pixel ties normal)| (1 + 0)/2     = 1/2               |  3 | 1/4
    # 0.3                       | (1 + 1)/2     = 1                 |  4 | 1/3   (> 0.3)
    # 0.1                       | 1                                 | 12 | 1
    # Area up to FPR 0.3: (0,0)->(0,1/4): 0;  (0,1/4)->(1/6,1/4): 1/6 * 1/4 = 1/24;
    # (1/6,1/4)->(1/4,1/2): 1/12 * 3/8 = 1/32;  PRO at 0.3 = 1/2 + 1/2 * (0.05 / (1/12)) = 0.8,
    # (1/4,1/2)->(0.3,0.8): 0.05 * 0.65 = 13/400.  Sum = 253/2400; / 0.3 -> 253/720.
    assert aupro(maps, masks) == pytest.approx(253 / 720, rel=1e-13)
    # Without the good image the FPR counts only A's 6 normal pixels (0.7, 0.5, 0.1 x4):
    # (0,1/4) -> (1/6,1/4) [1/24] -> (1/3,1/2) crosses 0.3: PRO there = 1/4 + 1/4 * 0.8 = 0.45,
    # area (0.3 - 1/6) * (0.25 + 0.45)/2 = 7/150.  Sum = 53/600; / 0.3 -> 53/180.
    assert aupro(maps[:1], masks[:1]) == pytest.approx(53 / 180, rel=1e-13)
    assert aupro(maps, masks) == pytest.approx(reference_aupro(maps, masks), **TOL)
    # The other pixel metrics of the same example agree with scikit-learn.
    labels = np.concatenate([m.ravel() for m in masks])
    scores = np.concatenate([a.ravel() for a in maps])
    result = pixel_metrics(maps, masks)
    assert result["pixel_auroc"] == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), **TOL)
    assert result["pixel_ap"] == pytest.approx(sklearn_metrics.average_precision_score(labels, scores), **TOL)


def test_aupro_regions_are_8_connected():
    # The mask's three pixels touch only diagonally at (0,0)-(1,1): one 8-connected region of
    # size 3 (4-connectivity would give {(0,0)} and {(1,1),(2,1)}).
    mask = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0]], dtype=bool)
    amap = np.full((3, 3), 0.5, dtype=np.float32)
    amap[mask] = 0.1
    amap[0, 0] = 0.9
    # t=0.9: PRO 1/3 at FPR 0; t=0.5: FPR 1, PRO 1/3  ->  AUPRO = 1/3 (4-connected: 1/2).
    assert aupro([amap], [mask]) == pytest.approx(1 / 3, rel=1e-13)
    acc = PixelMetrics()
    acc.update(amap, mask)
    assert acc.n_regions == 1


def test_fpr_counts_good_images():
    maps, masks = hand_example()
    with_good = aupro(maps, masks)
    # Scaling the good image's normal pixels up changes the FPR axis, hence AUPRO.
    hotter = [maps[0], maps[1] + 1.0]
    assert aupro(hotter, masks) != pytest.approx(with_good)
    assert aupro(hotter, masks) == pytest.approx(reference_aupro(hotter, masks), **TOL)


def test_out_of_core_path_is_identical(tmp_path):
    rng = np.random.default_rng(5)
    maps, masks = random_pixel_case(rng, n_images=7, shape=(16, 12), levels=4)
    # A good image with one very frequent score: more copies of a key than the budget holds.
    maps.append(np.zeros((16, 12), dtype=np.float32))
    masks.append(np.zeros((16, 12), dtype=bool))
    maps[0][:2] = -0.0  # negative zero must tie with zero
    in_ram = PixelMetrics()
    for a, m in zip(maps, masks):
        in_ram.update(a, m)
    expected = in_ram.compute()
    assert not in_ram.on_disk
    for budget in (1, 400, 4_000, 40 * 500):  # -> buckets of 1, 10, 100, 500 keys
        acc = PixelMetrics(max_memory_bytes=budget, tmp_dir=tmp_path)
        for a, m in zip(maps, masks):
            acc.update(a, m)
        assert acc.on_disk
        assert acc.compute() == expected  # bit-identical
        assert acc.compute() == expected  # compute is repeatable
        acc.close()
        assert os.listdir(tmp_path) == []  # temporary file deleted
    # Spilling in the middle of the updates, then updating after a compute.
    acc = PixelMetrics(max_memory_bytes=40 * 800, tmp_dir=tmp_path)  # 4 images = 768 px
    for a, m in zip(maps[:4], masks[:4]):
        acc.update(a, m)
    assert not acc.on_disk
    acc.compute()
    for a, m in zip(maps[4:], masks[4:]):
        acc.update(a, m)
    assert acc.on_disk
    assert acc.compute() == expected
    acc.close()


def test_pixel_errors():
    acc = PixelMetrics()
    with pytest.raises(PatchbankError, match=r"\(4, 5\).*\(4, 6\)") as info:
        acc.update(np.zeros((4, 5)), np.zeros((4, 6), dtype=bool))
    assert "\n" not in str(info.value)
    with pytest.raises(PatchbankError, match="2-D"):
        acc.update(np.zeros((1, 4, 5)), np.zeros((1, 4, 5), dtype=bool))
    with pytest.raises(PatchbankError, match="NaN"):
        acc.update(np.full((2, 2), np.nan), np.zeros((2, 2), dtype=bool))
    with pytest.raises(PatchbankError, match="no pixels"):
        acc.compute()
    acc.update(np.random.default_rng(0).random((4, 4)), np.zeros((4, 4), dtype=bool))
    with pytest.raises(PatchbankError, match="undefined"):  # only anomaly-free pixels
        acc.compute()
    with pytest.raises(PatchbankError, match="undefined"):  # only anomalous pixels
        pixel_metrics([np.ones((2, 2))], [np.ones((2, 2), dtype=np.uint8) * 255])
    with pytest.raises(PatchbankError, match="2 anomaly maps but 1 masks"):
        pixel_metrics([np.ones((2, 2))] * 2, [np.ones((2, 2))])
    with pytest.raises(PatchbankError, match="max_fpr"):
        PixelMetrics(max_fpr=0.0)


def test_numeric_masks_and_perfect_detector():
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:4, 2:5] = 255  # MVTec PNG convention
    amap = mask / 255.0 + 0.01
    result = pixel_metrics([amap, np.zeros((8, 8))], [mask, np.zeros((8, 8))])
    assert result == {"pixel_auroc": 1.0, "pixel_ap": 1.0, "pixel_f1_max": 1.0, "aupro": 1.0}
