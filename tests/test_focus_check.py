"""The focus check (``Config.focus_check``, :mod:`patchbank.pipeline.focus`): the input's
blurriness (-log of the variance of its grey Laplacian), every training image's kept by the fit,
and an image blurrier than all of them anomalous, in every path that decides (library, model
file, multi-category model, CLI outputs, service: tests/test_serve.py; export:
tests/test_export.py::test_an_export_decides_with_the_whole_image_check_as_the_detector_does)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from scipy import ndimage

from patchbank.config import Config
from patchbank.detector import Detector
from patchbank.errors import PatchbankError
from patchbank.io.model_file import load_model, save_model
from patchbank.pipeline.calibration import ScoreCalibration
from patchbank.pipeline.conformal import flags_above
from patchbank.pipeline.focus import EPS, blurriness, focus_threshold

from conftest import FAST, assert_one_line_error, invoke_cli

FOCUS = dict(FAST, focus_check=True)


# ------------------------------------------------------------------ the statistic, by hand
def test_blurriness_is_minus_log_of_the_laplacian_variance_by_scipy():
    """Against scipy's Laplacian of the channel mean, on the interior (no border rule needed)."""
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3, 17, 23)))
    got = blurriness(x.float())
    for i in range(2):
        grey = x[i].float().double().mean(0).numpy()
        lap = ndimage.laplace(grey)[1:-1, 1:-1]
        assert got[i].item() == pytest.approx(-np.log(lap.var() + EPS), rel=1e-12)
        assert got[i].item() == pytest.approx(-np.log(lap.var()), rel=1e-9)   # EPS is negligible
    assert got.dtype == torch.float64 and got.shape == (2,)


def test_blurriness_does_not_depend_on_the_batch():
    """An image's value is bit for bit the same alone and in any batch (element-wise slices and
    per-image float64 sums), so a fit's training values and a prediction's compare exactly."""
    x = torch.randn(5, 3, 40, 31)
    batch = blurriness(x)
    assert all(torch.equal(blurriness(x[i:i + 1])[0], batch[i]) for i in range(5))
    assert torch.equal(blurriness(x[[3, 1]]), batch[[3, 1]])


def test_a_blurred_image_is_blurrier_and_a_flat_one_the_blurriest():
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    as_x = lambda im: torch.from_numpy(np.asarray(im, np.float32) / 255).permute(2, 0, 1)[None]  # noqa: E731
    values = [blurriness(as_x(img.filter(ImageFilter.GaussianBlur(r)))).item() for r in (0.01, 1, 2, 4)]
    assert values == sorted(values) and len(set(values)) == 4
    flat = blurriness(torch.full((1, 3, 8, 8), 0.3)).item()
    assert flat == pytest.approx(-np.log(EPS)) and flat > values[-1]


def test_the_threshold_is_the_largest_training_value_and_nan_is_flagged():
    t = focus_threshold(np.array([1.0, 3.5, 2.0]))
    assert t == 3.5
    flags = flags_above(torch.tensor([3.5, np.nextafter(3.5, np.inf), float("nan"), -1e9], dtype=torch.float64), t)
    assert flags.tolist() == [False, True, True, False]      # at the threshold is normal
    assert flags_above(torch.tensor([float("nan"), 1e9]), None).tolist() == [False, False]


def test_the_calibration_needs_the_blurriness_with_the_check_and_ignores_it_without():
    rng = np.random.default_rng(0)
    base, phi = rng.normal(5, 1, 20), np.abs(rng.normal(1, 0.1, (20, 3)))
    with pytest.raises(PatchbankError, match="focus_check needs the training images' blurriness"):
        ScoreCalibration(Config(focus_check=True)).fit(base, phi)
    off = ScoreCalibration(Config()).fit(base, phi, None, None, rng.normal(size=30))
    assert off.blur_threshold_ is None and off.training_blurriness_ is None
    on = ScoreCalibration(Config(focus_check=True)).fit(base, phi, None, None, np.array([1.0, 4.0, 2.0]))
    out = on.image_scores(np.array([5.0, 5.0, 5.0]), phi[:3], np.zeros(3), np.array([4.0, 4.5, np.nan]))
    assert out.out_of_focus.tolist() == [False, True, True]
    assert out.anomalous.tolist() == [bool(a) for a in (out.normalized > on.threshold_) | out.out_of_focus]
    assert out.whole_image.tolist() == [False] * 3          # the map mean's check is off


def test_the_default_preset_has_the_check_and_the_paper_presets_do_not():
    assert Config.preset("patchbank").focus_check
    assert not any(Config.preset(p).focus_check for p in ("lmf-core", "patchcore", "structcore"))
    assert not Config().focus_check      # files written before the field existed


# ------------------------------------------------------------------ the detector
@pytest.fixture(scope="module")
def focused(synthetic_root):
    with pytest.warns(UserWarning, match="calibrated on only"):
        return Detector.from_preset("lmf-core", progress=False, **FOCUS).fit(synthetic_root / "train" / "good")


def _blurred(root, radius):
    return [Image.open(p).convert("RGB").filter(ImageFilter.GaussianBlur(radius))
            for p in sorted((root / "test" / "good").glob("*.png"))]


def test_the_fit_keeps_every_training_images_blurriness(focused, synthetic_root):
    cal = focused.calibration_
    train = sorted((synthetic_root / "train" / "good").glob("*.png"))
    want = torch.cat([blurriness(x) for x, _ in focused.stream([str(p) for p in train])])
    assert cal.training_blurriness_.tolist() == want.tolist()
    assert cal.blur_threshold_ == float(want.max())
    # the training images themselves: none blurrier than the blurriest of them
    preds = focused.predict([str(p) for p in train], batch_size=3)
    assert [p.blurriness for p in preds] == want.tolist()
    assert not any(p.out_of_focus for p in preds)


def test_a_slightly_blurred_frame_is_out_of_focus_and_anomalous(focused, fitted, synthetic_root):
    """Blur radius 1.5: every frame blurrier than all training images, flagged whatever its score,
    and blurrier than its own sharp frame.  (Sharp test frames are not all inside the training
    range: with 16 training images 1 / 17 of new normal ones is expected above it, and the
    synthetic part's contrast jitter puts 2 of its 6 there: the bound's price on few images.)
    Without the check nothing is out of focus, and the blurriness is still reported."""
    slight = _blurred(synthetic_root, 1.5)
    preds = focused.predict(slight)
    assert all(p.out_of_focus and p.is_anomalous for p in preds)
    assert all(p.blurriness > focused.calibration_.blur_threshold_ for p in preds)
    sharp = focused.predict(sorted((synthetic_root / "test" / "good").glob("*.png")))
    assert all(b.blurriness > s.blurriness for b, s in zip(preds, sharp))
    assert [s.out_of_focus for s in sharp] == [s.blurriness > focused.calibration_.blur_threshold_ for s in sharp]
    focused.set_threshold(1e9)     # a moved score threshold leaves the focus check
    try:
        assert all(p.is_anomalous for p in focused.predict(slight[:2]))
    finally:
        focused.set_threshold(None)
    plain = fitted.predict(slight[:2])
    assert not any(p.out_of_focus for p in plain) and all(np.isfinite(p.blurriness) for p in plain)
    assert fitted.calibration_.blur_threshold_ is None and "training_blurriness" not in fitted.state_tensors()


# ------------------------------------------------------------------ the model file
def test_save_load_keeps_the_check(focused, synthetic_root, tmp_path):
    path = tmp_path / "m.patchbank"
    focused.save(path)
    back = Detector.load(path, progress=False)
    assert back.calibration_.blur_threshold_ == focused.calibration_.blur_threshold_
    assert back.info()["blur_threshold"] == focused.calibration_.blur_threshold_
    items = _blurred(synthetic_root, 1.5)[:2]
    assert [p.out_of_focus for p in back.predict(items)] == [True, True]


@pytest.mark.parametrize("edit, needle", [
    (lambda t, m: t.pop("training_blurriness"), "training_blurriness.*missing.*focus_check"),
    (lambda t, m: m["config"].update(focus_check=False), "training_blurriness.*present but config.focus_check is false"),
    (lambda t, m: t.update(training_blurriness=t["training_blurriness"][:-1]), "training_blurriness.*shape"),
    (lambda t, m: t.update(training_blurriness=t["training_blurriness"].float()), "training_blurriness.*float64"),
    (lambda t, m: t["training_blurriness"].__setitem__(0, float("nan")), "training_blurriness.*NaN"),
])
def test_an_edited_file_is_refused_in_one_line(focused, tmp_path, edit, needle):
    focused.save(tmp_path / "m.patchbank")
    tensors, meta = load_model(tmp_path / "m.patchbank")
    edit(tensors, meta)
    save_model(tmp_path / "bad.patchbank", tensors, meta)
    with pytest.raises(PatchbankError, match=needle) as e:
        Detector.load(tmp_path / "bad.patchbank", progress=False)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ outputs
def test_predict_csv_json_and_info_carry_the_check(focused, synthetic_root, tmp_path):
    model = tmp_path / "m.patchbank"
    focused.save(model)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, img in enumerate(_blurred(synthetic_root, 1.5)[:2]):
        img.save(folder / f"blur{i}.png")
    (folder / "sharp.png").write_bytes(sorted((synthetic_root / "train" / "good").glob("*.png"))[0].read_bytes())
    res = invoke_cli("predict", model, folder, "-o", tmp_path / "out", "--quiet")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv", encoding="utf-8")))
    assert [r["out_of_focus"] for r in rows] == ["1", "1", "0"]
    assert all(r["is_anomalous"] == "1" for r in rows[:2])
    ref = focused.predict(sorted(folder.glob("*.png")))
    assert [float(r["blurriness"]) for r in rows] == pytest.approx([p.blurriness for p in ref], rel=1e-5)
    summary = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert summary["blur_threshold"] == focused.calibration_.blur_threshold_
    assert [r["out_of_focus"] for r in summary["predictions"]] == [True, True, False]
    info = invoke_cli("info", model)
    row = next(line for line in info.output.splitlines() if line.startswith("focus check"))
    assert f"blurriness above {focused.calibration_.blur_threshold_:.4g}" in row, row


@pytest.mark.parametrize("value, needle", [("maybe", "expected true or false"),
                                           ("2", "expected true or false"), ("", "empty value")])
def test_a_bad_focus_check_value_is_one_line(synthetic_root, tmp_path, value, needle):
    res = invoke_cli("fit", synthetic_root / "train" / "good", "-o", tmp_path / "m.patchbank",
                     "--quiet", "--focus-check", value)
    assert_one_line_error(res.exit_code, res.stderr, "--focus-check", needle)
    assert not (tmp_path / "m.patchbank").exists()


def test_a_multi_category_model_checks_each_image_against_its_own_category(synthetic_root, tmp_path):
    """Each category keeps its own training images' blurriness; a routed batch hands each image
    its own value (the images of one category are picked out of the batch)."""
    from patchbank.multi import MultiDetector

    from conftest import stripes_images

    stripes = stripes_images(tmp_path / "stripes", 12, seed=1)
    with pytest.warns(UserWarning, match="calibrated on only"):
        multi = MultiDetector.from_preset("lmf-core", progress=False, n_prototypes=16, **FOCUS).fit(
            {"part": synthetic_root / "train" / "good", "stripes": stripes})
    thresholds = {c: multi.detectors_[c].calibration_.blur_threshold_ for c in ("part", "stripes")}
    assert thresholds["part"] != thresholds["stripes"]
    mixed = [_blurred(synthetic_root, 1.5)[0], stripes[0],      # training images: never out of focus
             Image.open(stripes[1]).convert("RGB").filter(ImageFilter.GaussianBlur(1.5)),
             sorted((synthetic_root / "train" / "good").glob("*.png"))[0]]
    preds = multi.predict(mixed)
    assert [p.category for p in preds] == ["part", "stripes", "stripes", "part"]
    assert [p.out_of_focus for p in preds] == [True, False, True, False]
    want = [blurriness(x)[0].item() for x, _ in (next(iter(multi.detectors_["part"].stream([m]))) for m in mixed)]
    assert [p.blurriness for p in preds] == want
    multi.save(tmp_path / "line.patchbank")
    back = MultiDetector.load(tmp_path / "line.patchbank", progress=False)
    assert {c: back.detectors_[c].calibration_.blur_threshold_ for c in thresholds} == thresholds
