"""Tests that kill surviving mutants of patchbank.evaluation.metrics (docs/testing.md).

Oracles are hand computations, numpy and scikit-learn, never the module's own output."""
import numpy as np
import pytest

from patchbank.errors import PatchbankError
from patchbank.evaluation import metrics
from patchbank.evaluation.metrics import PixelMetrics


def test_auroc_of_more_than_two_billion_pixels_per_class_does_not_overflow():
    # 2^31 positives all scored above 2^31 negatives: AUROC = AP = F1-max = 1.  The exact integer
    # trapezoid would need N * 2P = 2^63 (> int64); the integrator must switch to float64.
    n = 2**31
    curve = metrics._CurveIntegrator(n, n)
    curve.feed(np.array([2.0, 1.0]), np.array([n, 0], dtype=np.int64), np.array([0, n], dtype=np.int64))
    out = curve.finish()
    assert out["auroc"] == 1.0 and out["ap"] == 1.0 and out["f1_max"] == 1.0
    # one tie group holding everything: the diagonal, 0.5
    curve = metrics._CurveIntegrator(n, n)
    curve.feed(np.array([1.0]), np.array([n], dtype=np.int64), np.array([n], dtype=np.int64))
    assert curve.finish()["auroc"] == 0.5
    # scores 3 / 2 / 1 holding n/2 positives / n/2 positives + n/2 negatives / n/2 negatives:
    # AUROC = 1/2 (top half beats all) + 1/4 (beats the lowest half) + 1/8 (ties) = 0.875;
    # AP = 1/2 * 1 + 1/2 * 2/3; F1-max = max(2/3, 2n / (n + n/2 + n) = 0.8, 2/3)
    h = n // 2
    curve = metrics._CurveIntegrator(n, n)
    curve.feed(np.array([3.0, 2.0, 1.0]), np.array([h, h, 0], dtype=np.int64),
               np.array([0, h, h], dtype=np.int64))
    out = curve.finish()
    assert out["auroc"] == pytest.approx(0.875, rel=1e-12)
    assert out["ap"] == pytest.approx(0.5 + 1.0 / 3.0, rel=1e-12)
    assert out["f1_max"] == pytest.approx(0.8, rel=1e-12)


def test_pixels_stay_in_ram_up_to_max_memory_bytes_over_40():
    # 4000 bytes -> 100 pixels in RAM (the documented 40 bytes a pixel); the 101st spills to disk
    rng = np.random.default_rng(0)
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:5, 3:6] = True
    with PixelMetrics(max_memory_bytes=4000) as acc:
        acc.update(rng.random((10, 10)), mask)
        assert not acc.on_disk and acc.n_pixels == 100
        acc.update(np.array([[0.5]]), np.array([[False]]))
        assert acc.on_disk and acc.n_pixels == 101


def test_region_ids_must_fit_the_low_32_bits_of_the_key():
    # region ids live in the low 32 bits of each pixel's sort key: at most 2^32 - 1 regions
    acc = PixelMetrics()
    acc._n_regions = 0xFFFFFFFF - 2
    mask = np.zeros((5, 5), dtype=bool)
    mask[0, 0] = mask[4, 4] = True                 # two regions: up to id 2^32 - 1, allowed
    acc.update(np.zeros((5, 5)), mask)
    assert acc.n_regions == 0xFFFFFFFF
    acc2 = PixelMetrics()
    acc2._n_regions = 0xFFFFFFFF - 1
    with pytest.raises(PatchbankError, match="ground-truth regions"):
        acc2.update(np.zeros((5, 5)), mask)        # would need id 2^32


def test_a_single_anomalous_pixel_gets_every_pixel_metric():
    # one anomalous pixel, scored highest: PRO reaches 1 at FPR 0, so AUPRO = 1; the anomalous
    # pixel scored 3rd of 9: FPR at its threshold = 2/8, PRO(FPR) is 0 before, 1 after ->
    # AUPRO = (0.3 - 0.25) / 0.3, AUROC = 6/8, AP = 1/3
    mask = np.zeros((3, 3), dtype=bool)
    mask[1, 1] = True
    top = np.arange(9, dtype=np.float64).reshape(3, 3)
    top[1, 1] = 100.0
    r = metrics.pixel_metrics([top], [mask])
    assert r["aupro"] == pytest.approx(1.0) and r["pixel_auroc"] == 1.0 and r["pixel_ap"] == 1.0
    third = np.array([[0.0, 1.0, 2.0], [3.0, 6.0, 4.0], [5.0, 7.0, 8.0]])
    r = metrics.pixel_metrics([third], [mask])
    assert r["aupro"] == pytest.approx(0.05 / 0.3, rel=1e-12)
    assert r["pixel_auroc"] == pytest.approx(6 / 8) and r["pixel_ap"] == pytest.approx(1 / 3)
    assert r["pixel_f1_max"] == pytest.approx(2 * 1 / (3 + 1))


def test_a_single_anomaly_free_pixel_gets_aupro():
    # 3 anomalous pixels (one 8-connected region) and 1 normal pixel scored lowest: FPR stays 0
    # until PRO = 1, AUPRO = 1; AUROC = 1
    mask = np.array([[True, True], [True, False]])
    r = metrics.pixel_metrics([np.array([[3.0, 2.0], [1.0, 0.0]])], [mask])
    assert r["aupro"] == pytest.approx(1.0) and r["pixel_auroc"] == 1.0


def test_pixel_metrics_order_negative_and_positive_scores_like_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    maps = [rng.normal(size=(12, 12)).astype(np.float32) * 3 for _ in range(3)]
    masks = [np.zeros((12, 12), dtype=bool) for _ in range(3)]
    masks[0][2:6, 3:8] = True
    masks[2][7:11, 1:4] = True
    for m, g in zip(maps, masks):
        m[g] += 1.5                     # anomalous pixels higher on average, signs mixed
    maps[1][0, :4] = [-0.0, 0.0, -1e-30, 1e-30]
    r = metrics.pixel_metrics(maps, masks)
    y = np.concatenate([g.ravel() for g in masks])
    s = np.concatenate([m.ravel() for m in maps]).astype(np.float64)
    assert r["pixel_auroc"] == pytest.approx(sk.roc_auc_score(y, s), rel=1e-12)
    assert r["pixel_ap"] == pytest.approx(sk.average_precision_score(y, s), rel=1e-12)


def test_scores_one_float32_ulp_apart_are_not_a_tie():
    one = np.float32(1.0)
    up = np.nextafter(one, np.float32(2.0))           # 1 + 2^-23, the next float32
    mask = np.array([[True, False]])
    r = metrics.pixel_metrics([np.array([[up, one]], dtype=np.float32)], [mask])
    assert r["pixel_auroc"] == 1.0                    # a tie would give 0.5
    r = metrics.pixel_metrics([np.array([[-one, -up]], dtype=np.float32)], [mask])
    assert r["pixel_auroc"] == 1.0


def _merged(runs, limit):
    """_merge_runs over sorted ``runs``; checks every piece against the memory bound and returns
    the concatenated (keys, counts)."""
    runs = [np.sort(np.asarray(r, dtype=np.uint64)) for r in runs]
    data = np.concatenate(runs) if runs else np.zeros(0, np.uint64)
    keys, counts = [], []
    for k, c in metrics._merge_runs(data, [r.size for r in runs], limit):
        assert k.dtype == np.uint64 and c.size == k.size
        # a piece holds at most ``limit`` keys, unless it is one key counted without loading
        assert int(c.sum()) <= limit or k.size == 1
        keys.append(k)
        counts.append(c)
    # no needlessly small pieces: each one (but the last) is at least half the budget, or could
    # not also hold the next lower key's copies (the code refines a candidate bound only when the
    # piece is under half full, so "the lowest v" of the docstring holds up to that factor)
    for i in range(len(keys) - 1):
        n = int(counts[i].sum())
        assert 2 * n >= limit or n + int(counts[i + 1][0]) > limit
    if not keys:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64), data
    return np.concatenate(keys), np.concatenate(counts), data


@pytest.mark.parametrize("case", range(8))
def test_merge_runs_yields_every_key_once_descending_with_its_count(case):
    rng = np.random.default_rng(100 + case)
    n_runs = [1, 3, 8, 20, 5, 2, 12, 4][case]
    max_len = [40, 60, 30, 25, 200, 300, 50, 80][case]
    key_range = [10, 2**40, 50, 5, 2**62, 2**20, 1000, 3][case]
    limit = [7, 16, 1, 10, 9, 64, 33, 5][case]
    runs = [rng.integers(0, key_range, size=rng.integers(0, max_len + 1), dtype=np.uint64)
            for _ in range(n_runs)]
    runs.insert(0, np.zeros(0, np.uint64))          # empty runs anywhere, runs of one key
    runs.insert(1, rng.integers(0, key_range, size=1, dtype=np.uint64))
    runs.append(rng.integers(0, key_range, size=1, dtype=np.uint64))
    runs.append(np.zeros(0, np.uint64))
    if case == 3:
        runs.append(np.full(50, 2, dtype=np.uint64))   # one key far more frequent than limit
    keys, counts, data = _merged(runs, limit)
    u, c = np.unique(data, return_counts=True)
    assert keys.tolist() == u[::-1].tolist()
    assert counts.tolist() == c[::-1].tolist()


def test_merge_runs_of_nothing_yields_nothing():
    keys, counts, _ = _merged([np.zeros(0, np.uint64)] * 3, 4)
    assert keys.size == 0 and counts.size == 0


def test_out_of_core_pixel_metrics_equal_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    maps, masks = [], []
    for i in range(6):
        m = np.round(rng.normal(size=(9, 11)), 1).astype(np.float32)   # many ties
        g = np.zeros((9, 11), dtype=bool)
        if i % 2:
            g[i:i + 3, 2:6] = True
            m[g] += 1.0
        maps.append(m)
        masks.append(g)
    with PixelMetrics(max_memory_bytes=40 * 37) as acc:               # 37 keys at once
        for m, g in zip(maps, masks):
            acc.update(m, g)
        assert acc.on_disk
        r = acc.compute()
    y = np.concatenate([g.ravel() for g in masks])
    s = np.concatenate([m.ravel() for m in maps]).astype(np.float64)
    assert r["pixel_auroc"] == pytest.approx(sk.roc_auc_score(y, s), rel=1e-12)
    assert r["pixel_ap"] == pytest.approx(sk.average_precision_score(y, s), rel=1e-12)


def test_pixel_metrics_counts_and_close():
    acc = PixelMetrics()
    mask = np.zeros((4, 5), dtype=bool)
    mask[0, 0] = mask[3, 4] = True
    acc.update(np.ones((4, 5)), mask)
    acc.update(np.ones((2, 3)), np.zeros((2, 3)))
    assert (acc.n_images, acc.n_pixels, acc.n_regions) == (2, 26, 2)
    acc.close()
    assert (acc.n_images, acc.n_pixels, acc.n_regions) == (0, 0, 0)
    assert PixelMetrics().n_images == 0


@pytest.mark.parametrize("max_fpr", [0.0, -0.1, 1.5, 2.0])
def test_max_fpr_outside_0_1_is_refused(max_fpr):
    with pytest.raises(PatchbankError, match="max_fpr"):
        PixelMetrics(max_fpr=max_fpr)


def test_a_tiny_memory_budget_still_holds_one_pixel():
    with PixelMetrics(max_memory_bytes=0) as acc:            # at least 1 key at once
        acc.update(np.array([[0.3]]), np.array([[True]]))
        assert not acc.on_disk
        acc.update(np.array([[0.1]]), np.array([[False]]))
        assert acc.on_disk
        assert acc.compute()["pixel_auroc"] == 1.0


def test_minus_zero_ties_with_zero_and_tiny_scores_are_not_rounded_away():
    mask = np.array([[True, False]])
    assert metrics.pixel_metrics([np.array([[0.0, -0.0]])], [mask])["pixel_auroc"] == 0.5
    assert metrics.pixel_metrics([np.array([[-0.0, 0.0]])], [mask])["pixel_auroc"] == 0.5
    assert metrics.pixel_metrics([np.array([[2e-8, 1e-8]])], [mask])["pixel_auroc"] == 1.0
