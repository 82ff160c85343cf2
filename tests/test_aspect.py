"""``Config.aspect = "auto"``: the input reshaped to the training images' shared aspect ratio at
the same pixel count (patchbank.io.aspect), resolved once at fit and kept in the model file.

Oracles: hand computations of the median / share rule and of the reshaped sizes; the maps,
masks and model files of a detector fitted on tall images against their own shapes."""
from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from conftest import FAST
from patchbank.config import Config
from patchbank.detector import Detector
from patchbank.errors import PatchbankError
from patchbank.io.aspect import image_hw, input_config, reshaped, shared_aspect
from patchbank.io.model_file import save_model
from patchbank.io.synthetic import make_dataset

TALL = (240, 96)     # (H, W) of the tall images below: H / W = 2.5


def _fit(images, preset="patchbank", **overrides) -> Detector:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # few training images
        return Detector.from_preset(preset, progress=False, **{**FAST, **overrides}).fit(images)


def _reshape_folder(folder, size_hw, resample=Image.BILINEAR):
    for path in sorted(folder.rglob("*.png")):
        with Image.open(path) as im:
            im.resize((size_hw[1], size_hw[0]), resample).save(path)


@pytest.fixture(scope="module")
def tall_root(tmp_path_factory):
    """The synthetic product with every image and mask resized to 240 x 96 (H x W)."""
    root = make_dataset(tmp_path_factory.mktemp("tall"), n_train=12, n_test_good=4,
                        n_test_defect=3, size=96, seed=0)
    for sub in ("train", "test"):
        _reshape_folder(root / sub, TALL)
    _reshape_folder(root / "ground_truth", TALL, Image.NEAREST)
    return root


# ---------------------------------------------------------------------------- the rule
def test_shared_aspect_is_the_median_when_most_images_lie_near_it():
    tall = [(250, 100)] * 8 + [(260, 100), (100, 100)]     # ratios 2.5 x8, 2.6, 1.0
    assert shared_aspect(tall) == pytest.approx(2.5)       # 9 of 10 within 10% of the median
    assert shared_aspect([(250, 100)] * 8 + [(100, 100)] * 2) == pytest.approx(2.5)   # 80%: enough
    assert shared_aspect([(250, 100)] * 7 + [(100, 100)] * 3) is None                 # 70%: mixed
    assert shared_aspect([(100, 100), (200, 100), (100, 200), (150, 100)]) is None
    assert shared_aspect([]) is None


def test_reshaped_sizes_by_hand():
    # resize 320 x 320, crop 288 x 288, the crop cut from the image (with crop_at features the
    # margins are whole cells instead: tests/test_crop_at.py)
    cfg = Config.preset("patchbank", crop_at="image")
    out = reshaped(cfg, 2.52, 32)
    # crop: sqrt(288^2 * 2.52) = 457.2 -> 448, sqrt(288^2 / 2.52) = 181.4 -> 192 (multiples of 32);
    # resize keeps 320 / 288 of each side: 448 * 320 / 288 = 497.8 -> 498, 192 * 320 / 288 = 213.3 -> 213
    assert out.crop_size == (448, 192) and out.image_size == (498, 213)
    assert out.aspect == "auto" and out.replace(image_size=(320, 320), crop_size=(288, 288)) == cfg
    no_crop = reshaped(Config(image_size=(224, 224), crop_size=None), 0.5, 14)
    # sqrt(224^2 * 0.5) = 158.4 -> 154 (11 x 14), sqrt(224^2 / 0.5) = 316.8 -> 322 (23 x 14)
    assert no_crop.image_size == (154, 322) and no_crop.crop_size is None
    assert reshaped(cfg, 1000.0, 32).crop_size[1] == 32     # never below one stride


def test_input_config_keeps_the_configured_shape_unless_the_images_share_another(tmp_path):
    cfg = Config.preset("patchbank")
    square = [np.zeros((90, 100, 3), np.uint8)] * 3        # 0.9: within 10% of the square input
    assert input_config(cfg, square, 32) == (cfg, pytest.approx(0.9))
    mixed = [np.zeros((100, 100, 3), np.uint8), np.zeros((200, 100, 3), np.uint8)]
    assert input_config(cfg, mixed, 32) == (cfg, None)
    fixed = cfg.replace(aspect="fixed")
    assert input_config(fixed, [np.zeros((250, 100, 3), np.uint8)], 32) == (fixed, None)


def test_image_hw_reads_headers_and_names_a_bad_file(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (70, 30)).save(path)
    assert image_hw(path) == (30, 70)
    assert image_hw(Image.new("L", (5, 9))) == (9, 5)
    assert image_hw(np.zeros((4, 6), np.uint8)) == (4, 6)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(PatchbankError, match="bad.png") as exc:
        input_config(Config.preset("patchbank"), [path, bad], 32)
    assert "\n" not in str(exc.value)


# ---------------------------------------------------------------------------- the detector
@pytest.fixture(scope="module")
def tall(tall_root):
    return _fit(tall_root / "train" / "good")


def test_fit_reshapes_the_input_to_tall_images(tall, tall_root):
    assert tall.aspect_ == pytest.approx(2.5)
    # FAST: resize 96 x 96, no crop; sqrt(9216 * 2.5) = 151.8 -> 160, sqrt(9216 / 2.5) = 60.7 -> 64
    assert tall.config.image_size == (160, 64) and tall.config.crop_size is None
    assert tall.requested_config.image_size == (96, 96)
    assert tall.config.preset_name() == tall.requested_config.preset_name()
    grid = tall.grid_
    assert grid[0] > grid[1]                                # the patch grid is tall too
    path = sorted((tall_root / "test" / "good").glob("*.png"))[0]
    p = tall.predict([path])[0]
    assert p.anomaly_map.shape == (160, 64)
    assert p.image_map.shape == TALL and not np.isnan(p.image_map).any()


def test_square_images_keep_the_configured_input(synthetic_root):
    det = _fit(synthetic_root / "train" / "good")
    assert det.aspect_ == pytest.approx(1.0)
    assert det.config == det.requested_config


def test_refit_resolves_again_and_a_loaded_model_keeps_its_shape(tall, tall_root, synthetic_root, tmp_path):
    path = tmp_path / "tall.patchbank"
    tall.save(path)
    loaded = Detector.load(path, progress=False)
    assert loaded.config == tall.config and loaded.aspect_ == pytest.approx(2.5)
    items = sorted((tall_root / "test").rglob("*.png"))
    for a, b in zip(loaded.predict(items), tall.predict(items)):
        assert a.score == pytest.approx(b.score, rel=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        loaded.fit(synthetic_root / "train" / "good")      # square images: the file's shape stays
    assert loaded.config.image_size == (160, 64)
    det = Detector.from_preset("patchbank", progress=False, **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        det.fit(tall_root / "train" / "good")
        assert det.config.image_size == (160, 64)
        det.fit(synthetic_root / "train" / "good")       # a new fit resolves from the request
    assert det.config.image_size == (96, 96) and det.aspect_ == pytest.approx(1.0)


@pytest.mark.parametrize("value", [-2.0, 0, "tall", float("nan")])
def test_bad_train_aspect_in_a_model_file_is_one_line(tall, tmp_path, value):
    meta = dict(tall.info(), train_aspect=value)
    bad = tmp_path / "bad.patchbank"
    save_model(bad, tall.state_tensors(), meta)
    with pytest.raises(PatchbankError, match="train_aspect") as exc:
        Detector.load(bad, progress=False)
    assert "\n" not in str(exc.value)


def test_multi_category_model_keeps_one_configured_shape(tall_root, synthetic_root):
    from patchbank.multi import MultiDetector

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        multi = MultiDetector.from_preset("patchbank", progress=False, n_prototypes=4, **FAST).fit(
            {"tall": tall_root / "train" / "good", "square": synthetic_root / "train" / "good"})
    assert multi.config.aspect == "auto"
    assert {d.config.image_size for d in multi.detectors_.values()} == {(96, 96)}


def test_evaluation_masks_follow_the_fitted_shape(tall_root):
    from patchbank.evaluation.runner import run_category
    from patchbank.io.datasets import read_mvtec

    (category,) = read_mvtec(tall_root.parent, [tall_root.name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = run_category(category, Config.preset("patchbank", **FAST), progress=False)
    assert result["metrics"]["pixel_auroc"] is not None and 0.0 <= result["metrics"]["aupro"] <= 1.0
    side = (240 * 96) ** 0.5                  # every training image's size sqrt(H x W)
    assert result["input"] == {"image_size": [160, 64], "crop_size": None,
                               "train_aspect": pytest.approx(2.5), "train_scale": [side, side]}


def test_fit_command_says_how_it_shaped_the_input(tall_root, tmp_path):
    from conftest import invoke_cli

    small = ["--backbone", "efficientnet_lite0", "--image-size", "96", "--crop-size", "none"]
    r = invoke_cli("fit", tall_root / "train" / "good", "-o", tmp_path / "m.patchbank", "--quiet", *small)
    assert r.exit_code == 0, r.output
    assert ("input: resize 160x64, no crop (H x W); aspect auto: the training images share "
            "H / W = 2.50, reshaped to it") in r.stdout, r.stdout
    r = invoke_cli("fit", tall_root / "train" / "good", "-o", tmp_path / "f.patchbank", "--quiet",
                   "--aspect", "fixed", *small)
    assert "input: resize 96x96, no crop (H x W)\n" in r.stdout, r.stdout
    square = tall_root.parent / "square"
    square.mkdir()
    for i in range(2):
        Image.new("RGB", (96, 96), (120, 120, 120)).save(square / f"{i}.png")
    tall_image = sorted((tall_root / "test" / "good").glob("*.png"))[0]
    out = subprocess.run([sys.executable, "-m", "patchbank.cli", "predict", str(tmp_path / "m.patchbank"),
                          str(square), str(tall_image), "-o", str(tmp_path / "out"), "--quiet",
                          "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [
        "warning: 2 of 3 images are unlike the training images in shape or size (the first, "
        "96 x 96 px: H / W 1.00 against 2.50); they are stretched or scaled to the model's "
        "input, so their maps and scores are not like the training images'"], out.stderr
    import csv

    with open(tmp_path / "out" / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["path"].rsplit("/", 1)[-1]: r["other_shape"] for r in rows} == {
        "0.png": "1", "1.png": "1", tall_image.name: "0"}


def test_benchmark_floor_reads_the_images_as_the_fit_does(tall_root, monkeypatch):
    # the floor (read + resize + backbone) must see the fitted input shape, before the first fit too
    from patchbank.studies import speed

    seen, floor = [], speed.floor_seconds

    def recording(det, items, batch_size=None):
        seen.append(tuple(det.config.input_size))
        return floor(det, items, batch_size)

    monkeypatch.setattr(speed, "floor_seconds", recording)
    r = speed.run_benchmark(tall_root, overrides=FAST, batch_sizes=[4], repeats=1, max_test=4)
    assert r["input_size"] == [160, 64]
    assert len(seen) >= 4 and set(seen) == {(160, 64)}


def test_preset_comparisons_leave_out_the_sizes_a_fit_resolved():
    from patchbank.cli.info import closest_preset

    resolved = reshaped(Config.preset("patchbank"), 2.52, 32)
    assert resolved.replace(seed=3).preset_name() == "patchbank"     # whatever the seed
    assert resolved.preset_name() == "patchbank"
    assert closest_preset(resolved.to_dict()) == ("patchbank", [])
    fixed = resolved.replace(aspect="fixed")          # sizes given by hand: an override
    assert fixed.preset_name() is None
    assert closest_preset(fixed.to_dict()) == ("patchbank", ["image_size", "crop_size", "aspect"])
    # session 31: sizes given by hand with aspect auto were left out too ("patchbank, unchanged"
    # after `fit --image-size 96 --crop-size 64`); a reshape keeps the pixel count, they do not
    small = Config.preset("patchbank", image_size=96, crop_size=64)
    for cfg in (small, reshaped(small, 2.52, 32)):
        assert cfg.preset_name() is None
        assert closest_preset(cfg.to_dict()) == ("patchbank", ["image_size", "crop_size"])
    assert Config.preset("patchbank", image_size=400).preset_name() is None
    assert reshaped(Config.preset("patchbank"), 0.2, 32).preset_name() == "patchbank"   # a wide strip


def test_other_shapes_by_hand():
    from patchbank.io.train_shape import TrainShape

    sizes = [(250, 100), (270, 100), (100, 100), (280, 100)]    # 2.5, 2.7 (+8%), 1.0, 2.8 (+12%)
    assert TrainShape(2.5).others(sizes) == [2, 3]
    assert TrainShape(None).others(sizes) == [] and TrainShape(None).note(sizes) is None
    assert TrainShape(2.5).note(sizes) == (
        "2 of 4 images are unlike the training images in shape or size (the first, 100 x 100 px: "
        "H / W 1.00 against 2.50); they are stretched or scaled to the model's input, so their "
        "maps and scores are not like the training images'")


def test_predict_warns_once_about_images_of_another_shape(tall, tall_root, synthetic_root):
    tall_items = sorted((tall_root / "test" / "good").glob("*.png"))[:2]
    square = sorted((synthetic_root / "test" / "good").glob("*.png"))[:3]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tall.predict(tall_items)
        assert not caught                                    # the training images' shape
        preds = tall.predict(tall_items + square)
    assert len(preds) == 5
    (w,) = caught
    assert "3 of 5 images are unlike the training images" in str(w.message) and "\n" not in str(w.message)


def test_export_keeps_the_shape_and_warns_like_the_library(tall, tall_root, synthetic_root, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from patchbank.export.exporter import export_model
    from patchbank.export.runtimes import ExportedModel

    data = export_model(tall, tmp_path / "ex", ["onnx"])
    assert data["train_aspect"] == pytest.approx(2.5) and data["input_size"] == [160, 64]
    side = (240 * 96) ** 0.5
    assert data["train_scale"] == [side, side]                 # the training images' sizes too
    exported = ExportedModel(tmp_path / "ex", "onnx", progress=False)
    assert exported.aspect_ == pytest.approx(2.5) and exported.train_shape_ == tall.train_shape_
    square = sorted((synthetic_root / "test" / "good").glob("*.png"))[:2]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        preds = exported.predict(square)
    assert [p.image_map.shape for p in preds] == [(96, 96)] * 2
    assert len(caught) == 1 and "2 of 2 images are unlike the training images" in str(caught[0].message)
    # a tall image of the training images' H / W at a tenth of their size: flagged for its size
    tiny = tmp_path / "tiny.png"
    Image.open(sorted((tall_root / "test" / "good").glob("*.png"))[0]).resize((10, 25)).save(tiny)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exported.predict([tiny])
    assert len(caught) == 1 and str(caught[0].message).startswith(
        "1 of 1 images are unlike the training images in shape or size (the first, 25 x 10 px: "
        "size sqrt(H x W) 16 px against 152-152)")


def test_aspect_range_by_hand_and_the_fit_line_for_mixed_shapes(tmp_path):
    from conftest import invoke_cli
    from patchbank.io.aspect import aspect_range

    # H / W 1, 2, 0.5, 1.5, 3 -> sorted 0.5 1 1.5 2 3; 10th percentile at 0.4 of the first step
    # (0.5 + 0.4 * 0.5 = 0.7), 90th at 0.6 of the last (2 + 0.6 * 1 = 2.6)
    sizes = [(100, 100), (200, 100), (50, 100), (150, 100), (300, 100)]
    assert aspect_range(sizes) == pytest.approx((0.7, 2.6))
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes * 2):
        Image.fromarray((rng.random((h, w, 3)) * 60 + 90).astype(np.uint8)).save(tmp_path / f"{i}.png")
    r = invoke_cli("fit", tmp_path, "-o", tmp_path / "m.patchbank", "--quiet", "--backbone",
                   "efficientnet_lite0", "--image-size", "96", "--crop-size", "none")
    assert r.exit_code == 0, r.output
    # each shape twice: sorted 0.5 0.5 1 1 ... 3 3, the 10th percentile at 0.9 of the first step
    # (0.5), the 90th at 0.1 of the last (3.0)
    assert ("input: resize 96x96, no crop (H x W); aspect auto: the training images' shapes differ "
            "(H / W 0.50-3.00 for the middle 80%), kept as configured") in r.stdout, r.stdout


def test_tolerance_edges_and_non_square_inputs(monkeypatch):
    import patchbank.io.aspect as aspect_module
    import patchbank.io.train_shape as train_shape_module

    # exactly at the tolerance counts as the same shape (0.5: exact in binary; 3 / 2 - 1 = 0.5)
    assert shared_aspect([(200, 100), (200, 100), (300, 100)], share=1.0, tolerance=0.5) == 2.0
    monkeypatch.setattr(train_shape_module, "TOLERANCE", 0.5)
    assert train_shape_module.TrainShape(2.0).others([(300, 100), (301, 100)]) == [1]
    # a configured crop that is not square: 224 x 288, reshaped to H / W 2 at 224 * 288 pixels:
    # sqrt(64512 * 2) = 359.2 -> 352, sqrt(64512 / 2) = 179.6 -> 192 (multiples of 32); the
    # resize keeps 256 / 224 and 320 / 288: 352 * 256 / 224 = 402.3 -> 402, 192 * 320 / 288 = 213.3
    cfg = Config.preset("patchbank", image_size=(256, 320), crop_size=(224, 288), crop_at="image")
    out = reshaped(cfg, 2.0, 32)
    assert out.crop_size == (352, 192) and out.image_size == (402, 213)
    # within 10% of the configured input's own ratio: kept, even where step 1 would reshape it
    wide = Config.preset("patchbank", image_size=(100, 200), crop_size=None)     # H / W 0.5
    assert input_config(wide, [np.zeros((52, 100, 3), np.uint8)], 1) == (wide, pytest.approx(0.52))
    square = Config.preset("patchbank")
    assert input_config(square, [np.zeros((108, 100, 3), np.uint8)], 1)[0] == square
    # 1.2 is not: sqrt(82944 * 1.2) = 315.5 -> 315, sqrt(82944 / 1.2) = 262.9 -> 263
    assert input_config(square, [np.zeros((120, 100, 3), np.uint8)], 1)[0].crop_size == (315, 263)
    monkeypatch.setattr(aspect_module, "TOLERANCE", 0.5)       # exactly at it: still kept
    assert input_config(square, [np.zeros((150, 100, 3), np.uint8)], 1)[0] == square


def test_a_fit_cuts_the_reshaped_crops_margins_in_the_finest_taps_cells(tall_root):
    """aspect auto with crop_at features, through a fit: the sides are multiples of the largest
    stride (32) and the margins whole cells of the finest tap (stride 8).  Tall 2.5: the 96 x 96
    crop becomes 160 x 64 (151.8 -> 160, 60.7 -> 64); the resize keeps 112 / 96, so the margins
    are (160 * 112 / 96 - 160) / 2 = 13.3 px -> 2 cells (16 px) and 5.3 px -> 1 cell (8 px):
    192 x 80.  With the largest stride as the cell they would round to none (160 x 64)."""
    det = _fit(tall_root / "train" / "good", image_size=112, crop_size=96, crop_at="features")
    assert min(det.backbone.strides) == 8 and max(det.backbone.strides) == 32
    assert det.config.crop_size == (160, 64)
    assert det.config.image_size == (192, 80)
    assert det.grid_ == (160 // 8, 64 // 8)
