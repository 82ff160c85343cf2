"""Tests that kill surviving mutants of patchbank.pipeline.calibration (docs/testing.md).

Oracles are hand computations and numpy, never the module's own output."""
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from patchbank.pipeline.calibration import NormalStats, calibration_images


def _cfg(**kw):
    base = dict(calibration_fraction=0.1, calibration_max_images=100, seed=0)
    base.update(kw)
    return SimpleNamespace(**base)


def test_ten_held_out_images_do_not_warn_nine_do():
    # 100 images x 0.1 = exactly 10 held out: the documented limit, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        idx = calibration_images(100, _cfg())
    assert idx.size == 10
    # 90 images -> 9 held out: warns, and names the 100 images that would be enough (10 / 0.1)
    with pytest.warns(UserWarning, match=r"only 9 held-out normal images \(90 training images\); use 100 "):
        assert calibration_images(90, _cfg()).size == 9


@pytest.mark.parametrize("n, expected", [(5, 4), (6, 5), (7, 5), (60, 6), (200, 20)])
def test_held_out_count_by_hand(n, expected):
    # max(ceil(0.1 n), min(5, n - 1)), capped at 100 and at n - 1 (one image left for the bank)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idx = calibration_images(n, _cfg())
    assert idx.size == expected
    assert np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < n


def test_held_out_count_is_capped_at_n_minus_one_and_at_the_maximum():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert calibration_images(20, _cfg(calibration_fraction=1.0)).size == 19
        assert calibration_images(20, _cfg(calibration_fraction=1.0, calibration_max_images=7)).size == 7
        assert calibration_images(1000, _cfg(calibration_fraction=0.5)).size == 100


def test_normal_stats_of_two_scores_use_the_sample_std():
    st = NormalStats().fit(np.array([1.0, 3.0]), target_fpr=0.5)
    assert st.mean_ == 2.0 and st.std_ == pytest.approx(np.sqrt(2.0))   # ddof=1
    assert st.n_ == 2
    # median of the normalised scores (-1/sqrt2, 1/sqrt2)
    assert st.threshold_ == pytest.approx(0.0, abs=1e-12)


def test_normal_stats_of_one_score_use_the_tiny_floor():
    with warnings.catch_warnings():
        warnings.simplefilter("error")                # no "degrees of freedom <= 0" warning
        st = NormalStats().fit(np.array([5.0]), target_fpr=0.01)
    assert st.mean_ == 5.0 and st.std_ == pytest.approx(5e-6)
    assert st.normalize([5.0 + 1e-5]).tolist() == pytest.approx([2.0])


def test_normal_stats_of_constant_scores_use_the_tiny_floor():
    st = NormalStats().fit(np.full(6, 2.0), target_fpr=0.01)
    assert st.std_ == pytest.approx(2e-6)
    assert st.threshold_ == 0.0
    z = st.normalize([2.0, 2.0 + 4e-6])
    assert np.all(np.isfinite(z)) and z.tolist() == pytest.approx([0.0, 2.0])
    zero = NormalStats().fit(np.zeros(3), target_fpr=0.01)
    assert zero.std_ == 1e-12 and zero.normalize([1e-12]).tolist() == pytest.approx([1.0])


def test_a_score_exactly_at_the_threshold_is_normal():
    # held-out base scores 1..5, target fpr 0.25: the 0.75 quantile of the normalised scores sits
    # exactly on the 4th score (index 0.75 * 4 = 3), so a raw score of 4 is at the threshold
    from patchbank.config import Config
    from patchbank.pipeline.calibration import ScoreCalibration

    base = np.arange(1.0, 6.0)
    phi = np.random.default_rng(0).random((5, 3)) + 0.1
    cal = ScoreCalibration(Config(target_fpr=0.25)).fit(base, phi)
    z4 = (4.0 - 3.0) / np.std(base, ddof=1)
    assert cal.threshold_ == pytest.approx(z4, rel=1e-12)
    out = cal.image_scores(np.array([4.0, 4.0 + 1e-9, 3.0, np.nan]), phi[:4])
    assert out.anomalous.tolist() == [False, True, False, True]     # anomalous unless a <= threshold
