"""Images unlike the training images in size (``patchbank.io.train_shape``): the fit records the
range of the training images' sizes sqrt(H x W) (``train_scale``), and every prediction path
flags (``other_shape``) and warns once about images more than twice outside it.

Oracles: hand-computed sizes and edges (exact in binary); the range a fit records against the
images it was given; the flags of the library, the CLI's CSV, the exported runtime and a
multi-category model against those hand computations."""
from __future__ import annotations

import csv
import dataclasses
import warnings

import numpy as np
import pytest
from PIL import Image

from conftest import FAST, invoke_cli
from patchbank.detector import Detector
from patchbank.errors import PatchbankError
from patchbank.io.model_file import save_model
from patchbank.io.train_shape import SIZE_FACTOR, TrainShape, check_scale_range, image_scale, scale_range


def _save(folder, sizes, seed=0):
    """Textured grey images of ``sizes`` (H, W) into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, (h, w) in enumerate(sizes):
        path = folder / f"{i:02d}_{h}x{w}.png"
        Image.fromarray((rng.random((h, w, 3)) * 40 + 100).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def sized(tmp_path_factory):
    """A detector fitted on square images of 80 and 120 px (sizes 80-120), and its folder."""
    root = tmp_path_factory.mktemp("sized")
    _save(root / "train", [(80, 80), (120, 120)] * 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)      # few training images
        det = Detector.from_preset("patchbank", progress=False, **FAST).fit(root / "train")
    return det, root


def test_sizes_and_edges_by_hand():
    assert image_scale((50, 200)) == 100.0 and scale_range([(80, 80), (60, 240), (120, 120)]) == (80.0, 120.0)
    assert scale_range([]) is None
    assert SIZE_FACTOR == 2.0
    shape = TrainShape(None, (100.0, 200.0))
    # exactly at min / 2 = 50 and max x 2 = 400 is still like the training images
    assert [shape.is_other(s) for s in [(50, 50), (49, 50), (400, 400), (401, 400), (25, 100)]] == [
        False, True, False, True, False]                         # (25, 100): sqrt = 50
    assert TrainShape(None, None).others([(1, 1), (9999, 9999)]) == []   # a file written before it
    both = TrainShape(1.0, (100.0, 200.0))
    assert both.others([(100, 100), (30, 10), (300, 300)]) == [1]      # aspect 3 and size 17
    assert both.note([(100, 100), (30, 10)]) == (
        "1 of 2 images are unlike the training images in shape or size (the first, 30 x 10 px: "
        "H / W 3.00 against 1.00, size sqrt(H x W) 17 px against 100-200); they are stretched or "
        "scaled to the model's input, so their maps and scores are not like the training images'")
    assert both.note([(100, 100)]) is None
    with pytest.raises(dataclasses.FrozenInstanceError):    # a fitted value: never changed in place
        both.scale = (1.0, 2.0)


@pytest.mark.parametrize("value", [[2, 1], [0, 1], [1], "80-120", [float("nan"), 1.0], [True, 2],
                                   [1, float("inf")], {"low": 1}])
def test_bad_recorded_ranges_are_named(value):
    problem = check_scale_range(value)
    assert problem is not None and repr(value) in problem
    assert check_scale_range(None) is None and check_scale_range([1, 1]) is None
    assert check_scale_range([80.0, 120.5]) is None


def test_a_fit_records_the_range_and_a_loaded_model_keeps_it(sized, tmp_path):
    det, root = sized
    assert det.train_shape_.scale == (80.0, 120.0)
    assert det.train_shape_.aspect == pytest.approx(1.0) == det.aspect_
    assert det.info()["train_scale"] == [80.0, 120.0]
    path = tmp_path / "m.patchbank"
    det.save(path)
    loaded = Detector.load(path, progress=False)
    assert loaded.train_shape_ == det.train_shape_
    # a file written before the field: loads, and flags no image for its size
    old = dict(det.info())
    del old["train_scale"]
    save_model(tmp_path / "old.patchbank", det.state_tensors(), old)
    assert Detector.load(tmp_path / "old.patchbank", progress=False).train_shape_.scale is None


@pytest.mark.parametrize("value", [[120.0, 80.0], [-1, 80], "big"])
def test_an_edited_range_in_a_model_file_is_one_line(sized, tmp_path, value):
    det, _ = sized
    bad = tmp_path / "bad.patchbank"
    save_model(bad, det.state_tensors(), dict(det.info(), train_scale=value))
    with pytest.raises(PatchbankError, match="train_scale") as exc:
        Detector.load(bad, progress=False)
    assert "\n" not in str(exc.value)


def test_predict_flags_images_far_outside_the_training_sizes(sized, tmp_path):
    det, _ = sized
    # sizes 40 (= 80 / 2: like them), 39 (below), 240 (= 2 x 120: like them), 241 (above), 100
    paths = _save(tmp_path / "test", [(40, 40), (39, 39), (240, 240), (241, 241), (100, 100)], seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        preds = det.predict(paths)
    assert [det.train_shape_.is_other(p.image_size) for p in preds] == [False, True, False, True, False]
    (w,) = caught
    assert str(w.message).startswith("2 of 5 images are unlike the training images in shape or size "
                                     "(the first, 39 x 39 px: size sqrt(H x W) 39 px against 80-120)")
    # the CLI writes the flag per image and the warning once
    model = tmp_path / "m.patchbank"
    det.save(model)
    r = invoke_cli("predict", model, tmp_path / "test", "-o", tmp_path / "out", "--quiet")
    assert r.exit_code == 0, r.output
    with open(tmp_path / "out" / "predictions.csv", newline="") as fh:
        flags = {row["path"].rsplit("/", 1)[-1][:2]: row["other_shape"] for row in csv.DictReader(fh)}
    assert flags == {"00": "0", "01": "1", "02": "0", "03": "1", "04": "0"}


def test_a_multi_category_model_flags_each_image_against_its_own_category(tmp_path):
    from patchbank.multi import MultiDetector

    small = _save(tmp_path / "small", [(64, 64)] * 6, seed=3)          # sizes 64
    large = _save(tmp_path / "large", [(192, 192)] * 6, seed=4)        # sizes 192
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        multi = MultiDetector.from_preset("patchbank", progress=False, n_prototypes=4, **FAST).fit(
            {"small": small, "large": large})
    assert multi.detectors_["small"].train_shape_.scale == (64.0, 64.0)
    assert multi.detectors_["large"].train_shape_.scale == (192.0, 192.0)
    tiny = _save(tmp_path / "tiny", [(90, 90)], seed=5)     # 90: too small for large (96), not small (128)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        preds = multi.predict(tiny * 2 + [small[0]], category="large")
        again = multi.predict(tiny, category="small")
    assert [p.category for p in preds] == ["large"] * 3 and again[0].category == "small"
    (w,) = caught
    assert str(w.message).startswith("3 of 3 images are unlike the training images in shape or size "
                                     "(the first, 90 x 90 px: size sqrt(H x W) 90 px against 192-192)")


def test_info_shows_the_training_images_shapes(sized, tmp_path):
    det, _ = sized
    model = tmp_path / "m.patchbank"
    det.save(model)
    r = invoke_cli("info", model)
    assert r.exit_code == 0, r.output
    assert ("train images       8 (H / W 1.00, sizes sqrt(H x W) 80-120 px; a prediction flags "
            "images of another H / W or a size more than twice outside theirs)") in r.stdout.splitlines()
    old = dict(det.info(), train_aspect=None)       # images of mixed shapes; a file before the range
    del old["train_scale"]
    save_model(tmp_path / "old.patchbank", det.state_tensors(), old)
    r = invoke_cli("info", tmp_path / "old.patchbank")
    assert "train images       8" in r.stdout.splitlines() and "train scale" not in r.stdout


def test_a_fixed_shape_and_a_multi_category_model_flag_another_aspect(tmp_path):
    """A model read at a fixed shape records its training images' shared H / W too (it did not:
    ``aspect="fixed"`` and every multi-category model, whose categories share one input shape,
    recorded none, so a camera turned by 90 degrees was never flagged)."""
    from patchbank.multi import MultiDetector

    wide = _save(tmp_path / "wide", [(64, 128)] * 6, seed=6)           # H / W 0.5
    square = _save(tmp_path / "square", [(96, 96)] * 6, seed=7)
    turned = _save(tmp_path / "turned", [(128, 64)], seed=8)           # H / W 2.0, size 90.5: in range
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        det = Detector.from_preset("patchbank", progress=False, aspect="fixed", **FAST).fit(wide)
        multi = MultiDetector.from_preset("patchbank", progress=False, n_prototypes=4, **FAST).fit(
            {"wide": wide, "square": square})
    assert det.config.image_size == (96, 96)            # read at the fixed shape, not reshaped
    assert det.train_shape_.aspect == pytest.approx(0.5) and det.info()["train_aspect"] == pytest.approx(0.5)
    assert multi.detectors_["wide"].train_shape_.aspect == pytest.approx(0.5)
    assert multi.detectors_["square"].train_shape_.aspect == pytest.approx(1.0)
    path = tmp_path / "multi.patchbank"
    multi.save(path)
    loaded = MultiDetector.load(path, progress=False)
    assert loaded.detectors_["wide"].train_shape_ == multi.detectors_["wide"].train_shape_
    for model, kwargs in ((det, {}), (loaded, {"category": "wide"})):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.predict(turned + [wide[0]], **kwargs)
        (w,) = caught
        assert str(w.message).startswith("1 of 2 images are unlike the training images in shape or size "
                                         "(the first, 128 x 64 px: H / W 2.00 against 0.50)")
    # the CLI's table of a multi-category model flags it per image
    r = invoke_cli("predict", path, tmp_path / "turned", "-o", tmp_path / "out", "--category", "wide", "--quiet")
    assert r.exit_code == 0, r.output
    with open(tmp_path / "out" / "predictions.csv", newline="") as fh:
        assert [row["other_shape"] for row in csv.DictReader(fh)] == ["1"]
