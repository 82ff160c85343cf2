"""Tests that kill surviving mutants of patchbank.pipeline.calibration (docs/testing.md).

Oracles are hand computations and numpy, never the module's own output."""
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from patchbank.config import FIELD_SPECS
from patchbank.errors import PatchbankError
from patchbank.pipeline.calibration import (CALIBRATION_MIN_SUBSET, NormalStats,
                                            calibration_images, check_training_images,
                                            enough_calibration_images)


CALIBRATION_MAX_MB = FIELD_SPECS["calibration_max_mb"].default


def _cfg(**kw):
    base = dict(target_fpr=0.1, seed=0, calibration_max_mb=CALIBRATION_MAX_MB)
    base.update(kw)
    return SimpleNamespace(**base)


def test_ten_calibration_images_do_not_warn_nine_do():
    # every training image is scored (leave-one-image-out): 10 is the documented limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_training_images(10, _cfg())
    with pytest.warns(UserWarning, match=r"only 9 normal training images \(each scored without its "
                                         r"own patches\); use 10 or more .* at target_fpr 0.1$"):
        check_training_images(9, _cfg())


def test_the_warning_limit_is_one_over_target_fpr_when_larger():
    assert enough_calibration_images(0.1) == 10
    assert enough_calibration_images(0.25) == 10
    assert enough_calibration_images(0.01) == 100          # 1 / 0.01, not 101 from rounding
    assert enough_calibration_images(0.03) == 34
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_training_images(100, _cfg(target_fpr=0.01))
    with pytest.warns(UserWarning, match="only 99 normal training images .*use 100 or more"):
        check_training_images(99, _cfg(target_fpr=0.01))


@pytest.mark.parametrize("n", [0, 1, 4])
def test_fewer_than_five_images_are_refused(n):
    with pytest.raises(PatchbankError, match=f"need at least 5 training images .*got {n}$"):
        check_training_images(n, _cfg())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_training_images(5, _cfg())                  # five is enough (warned only)


def test_every_image_exactly_at_the_budget_one_byte_over_is_a_subset():
    budget = int(CALIBRATION_MAX_MB * 2**20)
    assert calibration_images(200, budget // 200, _cfg()).size == 200
    over = calibration_images(200, budget // 200 + 1, _cfg())
    assert over.size == max(budget // (budget // 200 + 1), CALIBRATION_MIN_SUBSET) == 199
    assert np.all(np.diff(over) > 0) and over.min() >= 0 and over.max() < 200
    # the subset is the seeded draw (seed + 1)
    expected = np.sort(np.random.default_rng(1).choice(200, size=199, replace=False))
    assert np.array_equal(over, expected)


def test_normal_stats_of_two_scores_use_the_sample_std():
    st = NormalStats().fit(np.array([1.0, 3.0]), target_fpr=0.5)
    assert st.mean_ == 2.0 and st.std_ == pytest.approx(np.sqrt(2.0))   # ddof=1
    assert st.n_ == 2
    # normalised scores (-1/sqrt2, 1/sqrt2): the conformal rank ceil(3 * 0.5) = 2 is the larger
    assert st.threshold_ == pytest.approx(1 / np.sqrt(2.0), rel=1e-12)
    # the interpolated quantile (old model files) is their median
    old = NormalStats().fit(np.array([1.0, 3.0]), target_fpr=0.5, rule="quantile")
    assert old.threshold_ == pytest.approx(0.0, abs=1e-12)


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
    out = cal.image_scores(np.array([4.0, 4.0 + 1e-9, 3.0, np.nan]), phi[:4], np.zeros(4), np.zeros(4))
    assert out.anomalous.tolist() == [False, True, False, True]     # anomalous unless a <= threshold
