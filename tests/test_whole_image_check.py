"""The whole-image check (``Config.whole_image_check``): the anomaly map's mean as a second
statistic, its threshold and the score's set together by one conformal rank so that at most
``target_fpr`` of the calibration images exceed either, and an image anomalous when either
statistic is above its threshold, in every path that decides (library, model file, export,
CLI outputs, service)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFilter

from patchbank.config import Config
from patchbank.detector import Detector
from patchbank.errors import ConfigError, PatchbankError
from patchbank.io.model_file import load_model, save_model
from patchbank.pipeline.calibration import map_means
from patchbank.pipeline.conformal import (conformal_rank, conformal_rate, conformal_threshold,
                                          joint_conformal_thresholds)

from conftest import FAST, invoke_cli

WHOLE = dict(FAST, whole_image_check=True)


# ------------------------------------------------------------------ the joint threshold, by hand
def test_two_opposite_columns_by_hand():
    """a = 1..20, b = 20..1: image i's ranks are i and 21 - i, its larger rank max(i, 21 - i)
    (11, 11, 12, 12, ..., 20, 20 sorted).  At target 0.2 the conformal rank is ceil(21 x 0.8) =
    17, the 17th smallest larger rank is 19, so each threshold is its column's 19th smallest
    value, 19: images 1 (b = 20) and 20 (a = 20) are flagged, 2 <= n - 17."""
    a = np.arange(1.0, 21.0)
    t = joint_conformal_thresholds(np.stack([a, a[::-1]], axis=1), 0.2)
    assert t.tolist() == [19.0, 19.0]
    flagged = (a > t[0]) | (a[::-1] > t[1])
    assert np.flatnonzero(flagged).tolist() == [0, 19]
    # at 0.1 the rank is 19, the 19th smallest larger rank 20: nothing flagged
    assert joint_conformal_thresholds(np.stack([a, a[::-1]], axis=1), 0.1).tolist() == [20.0, 20.0]


def test_two_identical_columns_give_the_single_thresholds():
    """Two equal columns rank every image alike: each threshold is the single conformal one
    (ceil(11 x 0.75) = 9: the 9th smallest)."""
    x = np.array([3.0, 1.0, 2.0, 5.0, 4.0, 9.0, 0.5, 7.0, 6.0, 8.0])
    assert joint_conformal_thresholds(np.stack([x, x], axis=1), 0.25).tolist() == \
        [conformal_threshold(x, 0.25)] * 2 == [8.0, 8.0]


def test_the_rate_on_new_images_is_held_for_two_independent_statistics():
    """Monte Carlo (fixed seed): n = 100 calibration pairs of independent normals and one new
    pair, 20,000 times, target 0.05 (rank ceil(101 x 0.95) = 96).  The joined rule's rate is
    at most conformal_rate(100, 0.05, 2) = 6/101 (plus 4 standard errors): the single
    statistic's 5/101 and the tie of the larger rank's 1/101; independent statistics come
    near it (the bound is not loose by more than 1%)."""
    rng = np.random.default_rng(0)
    n, trials, fpr = 100, 20000, 0.05
    x = rng.normal(size=(trials, n + 1, 2))
    hits = 0
    for t in range(trials):
        ta, tb = joint_conformal_thresholds(x[t, :n], fpr)
        hits += bool(x[t, n, 0] > ta or x[t, n, 1] > tb)
    rate, bound = hits / trials, conformal_rate(n, fpr, 2)
    assert bound == pytest.approx(6 / 101) and conformal_rate(n, fpr) == pytest.approx(5 / 101)
    assert bound - 0.01 <= rate <= bound + 4 * np.sqrt(bound * (1 - bound) / trials)


_columns = st.integers(5, 60).flatmap(lambda n: st.tuples(
    st.lists(st.integers(-3, 3).map(float), min_size=n, max_size=n),     # ties on purpose
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=n, max_size=n)))


@settings(max_examples=150, deadline=None)
@given(_columns, st.sampled_from([0.01, 0.05, 0.1, 0.3]))
def test_the_union_is_held_at_the_conformal_count_and_one_column_is_conformal(cols, fpr):
    a, b = (np.array(c) for c in cols)
    n = a.size
    assert joint_conformal_thresholds(a[:, None], fpr)[0] == conformal_threshold(a, fpr)
    ta, tb = joint_conformal_thresholds(np.stack([a, b], axis=1), fpr)
    flagged = int(((a > ta) | (b > tb)).sum())
    assert flagged <= n - conformal_rank(n, fpr)
    # no looser than it must be: each threshold is a value of its column, at or above its own
    # single-column threshold (the union needs both rules stricter)
    assert ta in a and tb in b
    assert ta >= conformal_threshold(a, fpr) and tb >= conformal_threshold(b, fpr)


def test_the_calibration_names_images_above_either_threshold_by_hand():
    """Base scores 1..20 and map means 20..1 at target 0.2 (the hand example above): image 19
    is above the score's threshold and image 0 above the map mean's; both are named, highest
    normalised score first."""
    from patchbank.pipeline.calibration import ScoreCalibration

    cfg = Config(whole_image_check=True, threshold_rule="conformal", target_fpr=0.2)
    base = np.arange(1.0, 21.0)
    cal = ScoreCalibration(cfg).fit(base, np.ones((20, 3)), np.arange(20), base[::-1].copy())
    z = (base - base.mean()) / base.std(ddof=1)
    assert cal.threshold_ == pytest.approx(z[18]) and cal.map_threshold_ == 19.0
    assert [(i, pytest.approx(v)) for i, v in cal.above_threshold()] == [(19, z[19]), (0, z[0])]


def test_map_means_are_float64_means_of_each_map():
    maps = torch.arange(24, dtype=torch.float32).view(2, 3, 4)
    got = map_means(maps)
    assert got.dtype == torch.float64 and got.tolist() == [5.5, 17.5]


# ------------------------------------------------------------------ configuration
def test_the_default_preset_has_the_check_and_the_paper_presets_do_not():
    assert Config.preset("patchbank").whole_image_check is True
    for name in ("lmf-core", "patchcore", "structcore"):
        assert Config.preset(name).whole_image_check is False
    assert Config().whole_image_check is False       # model files written before the field


def test_the_check_needs_the_conformal_rule():
    with pytest.raises(ConfigError, match="whole_image_check.*needs threshold_rule conformal"):
        Config(whole_image_check=True, threshold_rule="quantile")


# ------------------------------------------------------------------ a fitted detector
@pytest.fixture(scope="module")
def whole(synthetic_root):
    with pytest.warns(UserWarning, match="calibrated on only"):
        return Detector.from_preset("lmf-core", progress=False, **WHOLE).fit(synthetic_root / "train" / "good")


def _blurred(root, radius=6):
    return [Image.open(p).convert("RGB").filter(ImageFilter.GaussianBlur(radius))
            for p in sorted((root / "test" / "good").glob("*.png"))]


def test_the_calibration_holds_the_union_and_records_the_means(whole):
    cal = whole.calibration_
    n = cal.scores_.size
    assert cal.map_means_.shape == (n,) and np.isfinite(cal.map_means_).all()
    z = cal.stats_.normalize(cal.scores_)
    flagged = (z > cal.stats_.threshold_) | (cal.map_means_ > cal.map_threshold_)
    assert int(flagged.sum()) <= n - conformal_rank(n, whole.config.target_fpr)
    assert len(cal.above_threshold()) == int(flagged.sum())
    t = joint_conformal_thresholds(np.stack([z, cal.map_means_], axis=1), whole.config.target_fpr)
    assert (whole.threshold_, cal.map_threshold_) == tuple(t)


def test_a_blurred_frame_is_flagged_by_the_map_mean_and_a_good_one_is_not(whole, synthetic_root):
    good = whole.predict(sorted((synthetic_root / "test" / "good").glob("*.png")))
    for p in good:
        assert p.map_mean == pytest.approx(float(p.anomaly_map.astype(np.float64).mean()), rel=1e-9)
        assert p.whole_image_anomalous == (p.map_mean > whole.calibration_.map_threshold_)
        assert p.is_anomalous == (p.normalized_score > whole.threshold_ or p.whole_image_anomalous)
    blurred = whole.predict(_blurred(synthetic_root))
    assert all(p.whole_image_anomalous and p.is_anomalous for p in blurred)
    # a threshold moved far up moves the score's rule only: the blurred frames stay anomalous
    whole.set_threshold(1e9)
    try:
        assert all(p.is_anomalous for p in whole.predict(_blurred(synthetic_root)))
        assert not any(p.is_anomalous for p in whole.predict(sorted((synthetic_root / "test" / "good").glob("*.png")))
                       if not p.whole_image_anomalous)
    finally:
        whole.set_threshold(None)


def test_a_nan_map_mean_is_anomalous_and_no_check_never_flags(whole, fitted):
    at = whole.calibration_.map_threshold_          # a mean exactly at the threshold is normal
    means = torch.tensor([float("nan"), -1e9, 1e9, at, np.nextafter(at, np.inf)], dtype=torch.float64)
    blur = torch.zeros(5, dtype=torch.float64)
    assert whole.calibration_.check_flags(means, blur)[0].tolist() == [True, False, True, False, True]
    assert fitted.calibration_.map_threshold_ is None
    assert fitted.calibration_.check_flags(means, blur)[0].tolist() == [False] * 5


def test_without_the_check_the_decision_is_the_scores_alone(fitted, synthetic_root):
    preds = fitted.predict(_blurred(synthetic_root, 3) + sorted((synthetic_root / "test" / "good").glob("*.png")))
    for p in preds:
        assert not p.whole_image_anomalous and np.isfinite(p.map_mean)
        assert p.is_anomalous == (not p.normalized_score <= fitted.threshold_)


# ------------------------------------------------------------------ model file
def test_save_load_keeps_the_check_and_refuses_a_file_without_its_means(whole, synthetic_root, tmp_path):
    path = tmp_path / "m.patchbank"
    whole.save(path)
    back = Detector.load(path, progress=False)
    assert back.calibration_.map_threshold_ == whole.calibration_.map_threshold_
    assert back.threshold_ == whole.threshold_ and back.info()["map_threshold"] == whole.calibration_.map_threshold_
    items = _blurred(synthetic_root)[:2]
    assert [p.is_anomalous for p in back.predict(items)] == [p.is_anomalous for p in whole.predict(items)]
    tensors, meta = load_model(path)
    tensors.pop("calibration_map_means")
    save_model(tmp_path / "no_means.patchbank", tensors, meta)
    with pytest.raises(PatchbankError, match="calibration_map_means.*missing.*whole_image_check") as e:
        Detector.load(tmp_path / "no_means.patchbank", progress=False)
    assert "\n" not in str(e.value)


def test_a_file_with_means_but_no_check_is_refused(whole, tmp_path):
    path = tmp_path / "m.patchbank"
    whole.save(path)
    tensors, meta = load_model(path)
    meta["config"]["whole_image_check"] = False
    save_model(tmp_path / "off.patchbank", tensors, meta)
    with pytest.raises(PatchbankError, match="calibration_map_means.*present but config.whole_image_check is false"):
        Detector.load(tmp_path / "off.patchbank", progress=False)


# ------------------------------------------------------------------ CLI outputs and export
def test_predict_csv_and_json_carry_the_map_mean_and_the_flag(whole, synthetic_root, tmp_path):
    model = tmp_path / "m.patchbank"
    whole.save(model)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, img in enumerate(_blurred(synthetic_root)[:2]):
        img.save(folder / f"blur{i}.png")
    res = invoke_cli("predict", model, folder, "-o", tmp_path / "out", "--quiet")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv", encoding="utf-8")))
    assert [r["whole_image_anomalous"] for r in rows] == ["1", "1"] and all(r["is_anomalous"] == "1" for r in rows)
    info = invoke_cli("info", model)
    row = next(line for line in info.output.splitlines() if line.startswith("whole-image check"))
    assert f"map's mean is above {whole.calibration_.map_threshold_:.4g}" in row, row
    summary = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert summary["map_threshold"] == whole.calibration_.map_threshold_
    records = summary["predictions"]
    ref = whole.predict(sorted(folder.glob("*.png")))
    assert [r["map_mean"] for r in records] == pytest.approx([p.map_mean for p in ref], rel=1e-6)


# ------------------------------------------------------------------ a multi-category model
def test_a_multi_category_model_checks_each_image_against_its_own_categorys_map_means(synthetic_root, tmp_path):
    """Each category calibrates its own map-mean threshold; a blurred frame of either product is
    flagged by its own category's, and the file keeps both."""
    from patchbank.multi import MultiDetector

    from conftest import stripes_images

    stripes = stripes_images(tmp_path / "stripes", 12, seed=1)
    with pytest.warns(UserWarning, match="calibrated on only"):
        multi = MultiDetector.from_preset("lmf-core", progress=False, n_prototypes=16, **WHOLE).fit(
            {"part": synthetic_root / "train" / "good", "stripes": stripes})
    thresholds = {c: multi.detectors_[c].calibration_.map_threshold_ for c in ("part", "stripes")}
    assert all(t is not None for t in thresholds.values()) and thresholds["part"] != thresholds["stripes"]
    blurred_stripes = [Image.open(p).convert("RGB").filter(ImageFilter.GaussianBlur(6))
                       for p in stripes_images(tmp_path / "stripes_test", 2, seed=2)]
    for category, images in (("part", _blurred(synthetic_root)[:2]), ("stripes", blurred_stripes)):
        for p in multi.predict(images, category=category):
            assert p.category == category and p.whole_image_anomalous and p.is_anomalous
            assert p.map_mean > thresholds[category]
    multi.save(tmp_path / "line.patchbank")
    back = MultiDetector.load(tmp_path / "line.patchbank", progress=False)
    assert {c: back.detectors_[c].calibration_.map_threshold_ for c in thresholds} == thresholds


def test_the_fit_report_gives_the_bound_of_both_rules(whole, fitted):
    """16 training images at 1%: the rank is capped at n = 16, so one statistic's rate is 1/17
    and the two rules' bound 2/17 (12%), both above the target."""
    from patchbank.cli.fit_report import threshold_line

    line = threshold_line(whole.calibration_, whole.config, None)
    assert "above it or the whole-image check's" in line
    assert "at most 12% (both rules), above the target 1%: too few training images" in line, line
    alone = threshold_line(fitted.calibration_, fitted.config, None)
    assert "above it (" in alone and "new normal images 5.9%, above" in alone, alone


def test_a_prediction_made_without_the_check_fields_is_not_flagged_by_it():
    """A Prediction built without them (an older caller) has no map mean and no whole-image flag."""
    from patchbank.pipeline.inference import Prediction

    p = Prediction(None, 1.0, 0.0, False, np.zeros((2, 2), np.float32))
    assert p.whole_image_anomalous is False and np.isnan(p.map_mean)
