"""``Config.crop_at = "features"``: the backbone reads the whole resize and the crop is cut from its
feature maps (patchbank.pipeline.features.FeatureCrop), so the crop's edge cells see real pixels.

Oracles: a pooling "backbone" whose cells are the mean of their 8 x 8 pixel block, against the
view's own blocks; hand computations of the margins; the same detector's answers through its
model file, ``predict_views`` and an ONNX export; ``crop_at="image"`` where the two must agree."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import FAST, assert_runtime_matches_torch, split_items
from patchbank.config import Config
from patchbank.detector import Detector
from patchbank.errors import PatchbankError
from patchbank.io.aspect import reshaped
from patchbank.io.image_coords import crop_offset, network_window, view_window
from patchbank.io.images import prepare_input, prepare_view, to_tensor
from patchbank.pipeline.features import FeatureExtractor, feature_crop


class BlockMeans(nn.Module):
    """A stand-in backbone with one tap: each cell is the mean of its 8 x 8 pixel block."""

    kind = "vit"        # no CPU fast path (channels-last) for this module

    def forward(self, x):
        return [F.avg_pool2d(x, 8)]


def test_the_cut_cells_are_the_views_own_blocks():
    cfg = Config(image_size=(96, 112), crop_size=(64, 80), crop_at="features", patch_size=1)
    assert crop_offset(cfg) == (16, 16) and cfg.network_size == (96, 112) and cfg.input_size == (64, 80)
    img = np.random.default_rng(0).integers(0, 256, (150, 170, 3), dtype=np.uint8)
    whole, view = prepare_input(img, cfg), prepare_view(img, cfg)
    assert whole.shape == (96, 112, 3) and view.shape == (64, 80, 3)
    np.testing.assert_array_equal(whole[16:80, 16:96], view)         # the view is the middle of the input
    crop = feature_crop(cfg, 8)
    assert (crop.top, crop.left, crop.height, crop.width) == (2, 2, 8, 10)
    ext = FeatureExtractor(BlockMeans(), 1, torch.device("cpu"), crop=crop)
    (rows,), grid = ext(to_tensor([whole], (0, 0, 0), (1, 1, 1)))
    assert grid == (8, 10)
    blocks = F.avg_pool2d(to_tensor([view], (0, 0, 0), (1, 1, 1)), 8)   # [1, 3, 8, 10]
    torch.testing.assert_close(rows, blocks.permute(0, 2, 3, 1).reshape(-1, 3), rtol=0, atol=1e-6)
    # the map's window on the original image is the crop's, whichever way it is cut
    assert view_window((150, 170), cfg) == view_window((150, 170), cfg.replace(crop_at="image"))
    assert network_window((150, 170), cfg).size == (96, 112)


def test_the_3x3_average_at_the_crops_edge_reads_real_neighbours():
    """With the crop cut from the features, an edge cell's p x p average is the mean of its real
    3 x 3 neighbourhood in the whole input, not of padding."""
    cfg = Config(image_size=(96, 96), crop_size=(64, 64), crop_at="features", patch_size=3,
                 patch_border="zero")
    img = np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    x = to_tensor([prepare_input(img, cfg)], (0, 0, 0), (1, 1, 1))
    ext = FeatureExtractor(BlockMeans(), 3, torch.device("cpu"), "zero", feature_crop(cfg, 8))
    (rows,), grid = ext(x)
    cells = F.avg_pool2d(x, 8)[0]                                      # [3, 12, 12] of the whole input
    top_left = cells[:, 1:4, 1:4].mean(dim=(1, 2))                     # the crop's cell (0, 0) is (2, 2)
    torch.testing.assert_close(rows[0], top_left, rtol=0, atol=1e-6)
    assert grid == (8, 8)


@pytest.mark.parametrize("sizes", [((100, 100), (64, 64)), ((96, 96), (60, 60)), ((98, 96), (64, 64))])
def test_margins_that_are_not_whole_cells_are_one_line_errors(sizes):
    resize, crop = sizes
    cfg = Config(image_size=resize, crop_size=crop, crop_at="features")
    with pytest.raises(PatchbankError, match=r"crop_at features needs .* whole cells of 8 px") as err:
        feature_crop(cfg, 8)
    assert "\n" not in str(err.value)


def test_without_a_crop_or_with_crop_at_image_nothing_is_cut():
    assert feature_crop(Config(image_size=(100, 100), crop_size=None, crop_at="features"), 8) is None
    assert feature_crop(Config(image_size=(100, 100), crop_size=(60, 60)), 8) is None
    cfg = Config(image_size=(100, 100), crop_size=None, crop_at="features")
    assert cfg.network_size == cfg.input_size == (100, 100) and crop_offset(cfg) == (0, 0)


def test_reshaped_margins_are_whole_cells_with_crop_at_features():
    """The default's 320 / 288 reshaped to KSDD's H / W = 2.52: the crop is 448 x 192 either way;
    the margins (497.8 - 448) / 2 = 24.9 and (213.3 - 192) / 2 = 10.7 px round to whole 8 px
    cells, 24 and 8, with crop_at features, and the resize to the nearest pixel without."""
    features = reshaped(Config.preset("patchbank", crop_at="features"), 2.52, 32, 8)
    image = reshaped(Config.preset("patchbank", crop_at="image"), 2.52, 32, 8)
    assert features.crop_size == image.crop_size == (448, 192)
    assert image.image_size == (498, 213)
    assert features.image_size == (496, 208)
    assert feature_crop(features, 8) is not None


def _fit(root, **overrides) -> Detector:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # few training images
        return Detector.from_preset("patchbank", progress=False,
                                    **{**FAST, "image_size": 112, "crop_size": 96, **overrides}
                                    ).fit(root / "train" / "good")


@pytest.fixture(scope="module")
def cut(synthetic_root):
    return _fit(synthetic_root, crop_at="features")


def test_a_features_crop_model_predicts_on_the_crop_and_keeps_its_answers(cut, synthetic_root, tmp_path):
    items = [str(p) for p in split_items(synthetic_root)[0]]
    assert cut.config.network_size == (112, 112) and cut.grid_ == (12, 12)
    preds = cut.predict(items)
    plain = _fit(synthetic_root, crop_at="image")
    ref = plain.predict(items)
    for a, b in zip(preds, ref):
        assert a.anomaly_map.shape == b.anomaly_map.shape == (96, 96)
        np.testing.assert_array_equal(np.isnan(a.image_map), np.isnan(b.image_map))   # same window
        assert np.isnan(a.image_map).any()                           # the margin is not inspected
    assert [a.score for a in preds] != [b.score for b in ref]        # the edge cells changed
    cut.save(tmp_path / "m.patchbank")
    back = Detector.load(tmp_path / "m.patchbank", progress=False)
    assert back.config.crop_at == "features"
    assert [p.score for p in back.predict(items)] == [p.score for p in preds]
    views = back.predict_views([prepare_input(i, back.config) for i in items])
    assert [p.score for p in views] == [p.score for p in preds]
    with pytest.raises(PatchbankError, match=r"shape \(112, 112, 3\)"):
        back.predict_views([prepare_view(items[0], back.config)])  # the crop alone is not the input


def test_a_features_crop_model_exports_with_the_same_answers(cut, synthetic_root, tmp_path):
    pytest.importorskip("onnxruntime")
    from patchbank.export.exporter import export_model
    from patchbank.export.sidecar import read_sidecar

    items = [str(p) for p in split_items(synthetic_root)[0]]
    folder = tmp_path / "export"
    export_model(cut, folder, formats=["onnx"])
    side = read_sidecar(folder)
    assert side["input_size"] == [112, 112] and side["map_size"] == [96, 96]
    assert_runtime_matches_torch(cut, folder, "onnx", items)


def test_models_written_before_the_field_read_as_crop_at_image():
    d = Config.preset("patchcore").to_dict()
    del d["crop_at"]
    assert Config.from_dict(d).crop_at == "image"


def test_fit_says_where_the_crop_is_cut(cut, synthetic_root):
    from patchbank.cli.fit_report import input_line

    images = sorted((synthetic_root / "train" / "good").glob("*.png"))
    assert input_line(cut, images).startswith("input: resize 112x112, crop 96x96 cut from the features (H x W)")
    plain = Detector(cut.config.replace(crop_at="image", aspect="fixed"), progress=False)
    assert input_line(plain, images) == "input: resize 112x112, crop 96x96 (H x W)"


def test_fit_with_margins_that_are_not_whole_cells_is_a_one_line_cli_error(synthetic_root, tmp_path):
    from conftest import invoke_cli

    out = tmp_path / "m.patchbank"
    r = invoke_cli("fit", synthetic_root / "train" / "good", "-o", out, "-q", "--backbone",
                   "efficientnet_lite0", "--image-size", "100", "--crop-size", "64", "--crop-at", "features")
    assert r.exit_code == 2, r.output
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: crop_at features needs") and "resize 100x100, crop 64x64, margins 18, 18" in line
    assert not out.exists()


def test_keep_aspect_cuts_the_excess_from_the_image_and_the_crop_from_the_features():
    """keep_aspect first scales to cover the resize and cuts the excess (from the image); the
    backbone reads that resize, and the view is its centre crop."""
    cfg = Config(image_size=(96, 96), crop_size=(64, 64), keep_aspect=True, crop_at="features")
    img = np.random.default_rng(2).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    whole, view = prepare_input(img, cfg), prepare_view(img, cfg)
    plain = prepare_view(img, cfg.replace(crop_size=None))          # the keep-aspect resize alone
    np.testing.assert_array_equal(whole, plain)
    np.testing.assert_array_equal(view, whole[16:80, 16:80])
    win, net = view_window((120, 200), cfg), network_window((120, 200), cfg)
    assert net.resized == win.resized == (96, 160)
    assert net.offset == (0, 32) and net.size == (96, 96) and win.offset == (16, 48)


def test_a_patch_larger_than_the_grid_is_refused_one_equal_to_it_is_not():
    x = torch.zeros(1, 3, 24, 40)                                   # a 3 x 5 grid of 8 px cells
    FeatureExtractor(BlockMeans(), 3, torch.device("cpu"))(x)      # p = 3 = the grid's height
    with pytest.raises(PatchbankError, match=r"patch_size 5 is larger than the backbone's feature map \(3 x 5"):
        FeatureExtractor(BlockMeans(), 5, torch.device("cpu"))(x)


def test_a_multi_category_model_cuts_the_crop_as_a_single_model_does(cut, synthetic_root, tmp_path):
    """One backbone pass serves every category; each category's rows are cut like a
    single-category model's: the same scores and maps as the model fitted alone, also through
    ``predict_views`` with prepared inputs."""
    from conftest import stripes_images
    from patchbank.multi import MultiDetector

    cats = {"part": synthetic_root / "train" / "good",
            "stripes": stripes_images(tmp_path / "stripes", 12, seed=1)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        multi = MultiDetector.from_preset("patchbank", progress=False, n_prototypes=16,
                                          **{**FAST, "image_size": 112, "crop_size": 96,
                                             "crop_at": "features"}).fit(cats)
    items = [str(p) for p in split_items(synthetic_root)[0][:4]]
    got = multi.predict(items, category="part")
    views = multi.predict_views([prepare_input(i, multi.config) for i in items], category="part")
    for a, b, v in zip(got, cut.predict(items), views):
        assert a.score == pytest.approx(b.score, rel=1e-4) and v.score == pytest.approx(a.score, rel=1e-5)
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("change", [{"image_size": [100, 100]}, {"image_size": [120, 120]},
                                    {"crop_at": "sideways"}])
def test_an_edited_crop_in_a_model_file_is_a_one_line_error(cut, synthetic_root, tmp_path, change):
    """A model file whose header gives a crop that cannot be cut from the features (margins of
    2 or 12 px, not whole 8 px cells) or an unknown crop_at: refused in one line, at load or
    before the first prediction.  (An edit to crop_at "image" is a valid model of another
    configuration, like any edited setting: its grid is the same 12 x 12.)"""
    from patchbank.io.model_file import save_model

    meta = cut.info()
    meta = dict(meta, config={**meta["config"], **change})
    bad = tmp_path / "bad.patchbank"
    save_model(bad, cut.state_tensors(), meta)
    with pytest.raises(PatchbankError) as exc:
        Detector.load(bad, progress=False).predict([str(split_items(synthetic_root)[0][0])])
    assert "\n" not in str(exc.value)
