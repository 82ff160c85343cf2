"""Bad fit / predict settings give one-line errors before work is wasted (issue 15 items 3, 4, 10
and 12): too few training images, a threshold calibrated on few images (warned), batch sizes,
k larger than the bank, patch sizes larger than the feature map, out-of-budget input sizes,
unsupported devices, non-finite features."""
import warnings

import numpy as np
import pytest
import torch

from conftest import FAST
from patchbank.config import MAX_INPUT_PIXELS, Config
from patchbank.detector import Detector
from patchbank.errors import ConfigError, PatchbankError
from patchbank.pipeline.calibration import FEW_CALIBRATION_IMAGES, MIN_TRAIN_IMAGES


def _train(root, n=None):
    return sorted((root / "train" / "good").glob("*.png"))[:n]


@pytest.mark.parametrize("n", [1, 2, MIN_TRAIN_IMAGES - 1])
def test_too_few_training_images(synthetic_root, n):
    det = Detector.from_preset("lmf-core", progress=False, **FAST)
    with pytest.raises(PatchbankError, match=f"need at least {MIN_TRAIN_IMAGES} training images .*got {n}$"):
        det.fit(_train(synthetic_root, n))


def test_few_calibration_images_warn(synthetic_root):
    # every training image is a calibration image (leave-one-image-out): 8 < 10 warns
    det = Detector.from_preset("lmf-core", progress=False, **{**FAST, "target_fpr": 0.25})
    with pytest.warns(UserWarning, match="calibrated on only 8 normal training images .*use 10 or more"):
        det.fit(_train(synthetic_root, 8))
    assert det.calibration_.scores_.size == 8 < FEW_CALIBRATION_IMAGES


def test_few_images_for_the_target_fpr_warn(synthetic_root):
    # 16 images at target_fpr 0.01: fewer than 1 / 0.01 = 100 calibration scores
    det = Detector.from_preset("lmf-core", progress=False, **FAST)
    with pytest.warns(UserWarning, match="calibrated on only 16 normal training images .*use 100 or "
                                         "more .* at target_fpr 0.01"):
        det.fit(_train(synthetic_root))


def test_enough_calibration_images_do_not_warn(synthetic_root):
    cfg = dict(FAST, target_fpr=0.1)                # 16 images >= max(10, 1 / 0.1)
    det = Detector.from_preset("lmf-core", progress=False, **cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        det.fit(_train(synthetic_root))
    assert det.calibration_.scores_.size == 16 >= FEW_CALIBRATION_IMAGES


def test_a_repeated_training_image_is_fitted_once(synthetic_root, tmp_path):
    """A training folder holding a link to one of its images and a byte-identical copy of
    another, or a list naming a file twice or an array twice (session 31; was: all fitted, so
    each repeat was scored against its own copy when left out, which lowered the threshold):
    each image is fitted once, with one warning, and the model equals the fit on the distinct
    images."""
    import os
    import shutil

    from PIL import Image

    train = _train(synthetic_root)[:10]
    folder = tmp_path / "train"
    folder.mkdir()
    for p in train:
        shutil.copy(p, folder / p.name)
    os.symlink(folder / train[3].name, folder / "zz_link.png")
    shutil.copy(folder / train[5].name, folder / "zz_copy.png")
    cfg = dict(FAST, target_fpr=0.1)
    want = Detector.from_preset("lmf-core", progress=False, **cfg).fit(train)
    with pytest.warns(UserWarning, match=r"2 of 12 training images repeat an image given already .*"
                                         r"first: .*zz_copy.png = .*" + train[5].name):
        got = Detector.from_preset("lmf-core", progress=False, **cfg).fit(folder)
    assert got.n_train_images_ == 10 and got.calibration_.scores_.size == 10
    assert got.threshold_ == pytest.approx(want.threshold_, rel=1e-6)
    np.testing.assert_allclose(np.sort(got.calibration_.scores_), np.sort(want.calibration_.scores_), rtol=1e-5)
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in train]
    with pytest.warns(UserWarning, match=r"2 of 12 training images .*image input #10 = image input #0"):
        again = Detector.from_preset("lmf-core", progress=False, **cfg).fit(arrays + [arrays[0].copy(), arrays[2]])
    assert again.n_train_images_ == 10


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, "4", True])
def test_predict_batch_size(fitted, synthetic_root, batch_size):
    with pytest.raises(PatchbankError, match="batch_size must be an integer >= 1"):
        fitted.predict(_train(synthetic_root, 2), batch_size=batch_size)


def test_predict_batch_size_one_and_none_agree(fitted, synthetic_root):
    items = _train(synthetic_root, 3)
    a = [p.score for p in fitted.predict(items, batch_size=1)]
    b = [p.score for p in fitted.predict(items)]
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_k_larger_than_the_bank(synthetic_root):
    det = Detector.from_preset("lmf-core", progress=False, **{**FAST, "k": 100000})
    with pytest.raises(PatchbankError, match=r"k = 100000 nearest neighbours, but the bank has only \d+ entries"):
        det.fit(_train(synthetic_root))


def test_patch_size_larger_than_the_feature_map(synthetic_root):
    det = Detector.from_preset("lmf-core", progress=False, **{**FAST, "patch_size": 15})
    with pytest.raises(PatchbankError, match="patch_size 15 is larger than the backbone's feature map"):
        det.fit(_train(synthetic_root))


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18", "dinov2_vits14"])
def test_the_fits_early_map_check_predicts_the_backbones_map(name):
    # FeatureExtractor.check_input computes the finest map as ceil(size / stride) before any image
    # is read; it must be the map the backbone then gives, odd sizes included
    from patchbank.backbones import create_backbone
    from patchbank.pipeline.features import FeatureExtractor

    bb = create_backbone(name, weights="random")
    ext = FeatureExtractor(bb, 3, "cpu")
    stride = bb.strides[0]
    sizes = [(14, 28), (42, 70)] if name.startswith("dinov2") else [(7, 9), (17, 31), (33, 64), (65, 100)]
    for h, w in sizes:
        with torch.inference_mode():
            got = tuple(ext.maps(torch.zeros(1, 3, h, w))[0].shape[-2:])
        assert got == (-(-h // stride), -(-w // stride)), (name, h, w)
        too_small = min(got) < 3
        if too_small:
            with pytest.raises(PatchbankError, match=f"feature map \\({got[0]} x {got[1]} for a {h} x {w} input\\)"):
                ext.check_input((h, w))
        else:
            ext.check_input((h, w))


@pytest.mark.parametrize("field,value,message", [
    ("patch_size", 1000, "patch_size: must be in [1, 15], got 1000"),
    ("projection_dim", 100000, "projection_dim: must be in [1, 4096] or None, got 100000"),
    ("greedy_proxy_dim", 5000, "greedy_proxy_dim: must be in [1, 4096] or None, got 5000"),
])
def test_config_bounds(field, value, message):
    with pytest.raises(ConfigError) as info:
        Config(**{field: value})
    assert str(info.value) == message and info.value.field == field


def test_input_pixel_budget():
    with pytest.raises(ConfigError, match="image_size: 100000x100000 is over the input budget"):
        Config(image_size=100000, crop_size=None)
    side = int(MAX_INPUT_PIXELS ** 0.5)
    assert Config(image_size=side, crop_size=None).image_size == (side, side)
    with pytest.raises(ConfigError):
        Config(image_size=(side + 1, side), crop_size=None)


@pytest.mark.parametrize("device", ["mps", "xla", "meta", "nonsense"])
def test_unsupported_devices(device):
    with pytest.raises(PatchbankError, match="not supported|unknown device"):
        Detector(device=device)


def test_non_finite_features_are_refused(synthetic_root, monkeypatch):
    from patchbank.pipeline.features import FeatureExtractor

    real = FeatureExtractor.maps

    def nan_maps(self, x):
        return [m * float("nan") for m in real(self, x)]

    monkeypatch.setattr(FeatureExtractor, "maps", nan_maps)
    det = Detector.from_preset("lmf-core", progress=False, **FAST)
    with pytest.raises(PatchbankError, match="non-finite"):
        det.fit(_train(synthetic_root))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_one_non_finite_feature_value_is_refused(synthetic_root, monkeypatch, value):
    # a single bad value in one image's map, not a whole tensor of them
    from patchbank.pipeline.features import FeatureExtractor

    real, calls = FeatureExtractor.maps, []

    def one_bad_value(self, x):
        maps = real(self, x)
        calls.append(1)
        if len(calls) == 2:
            maps[0] = maps[0].clone()
            maps[0][-1, -1, 1, 2] = value
        return maps

    monkeypatch.setattr(FeatureExtractor, "maps", one_bad_value)
    det = Detector.from_preset("patchbank", progress=False, **FAST)
    with pytest.raises(PatchbankError, match="non-finite"):
        det.fit(_train(synthetic_root))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_all_finite_against_isfinite(dtype):
    from patchbank.linalg import all_finite

    x = torch.randn(64, 9, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert all_finite(x) and all_finite(x[:0]) and all_finite(x[:, 2:5])
    for value in (float("nan"), float("inf"), -float("inf")):
        for at in ((0, 0), (63, 8), (31, 4)):
            y = x.clone()
            y[at] = value
            assert all_finite(y) is bool(torch.isfinite(y).all()) is False
    assert all_finite(torch.full((3,), torch.finfo(dtype).max, dtype=dtype))


def test_nan_scores_are_anomalous_end_to_end(fitted, synthetic_root, monkeypatch):
    # a NaN image score (whatever its cause) never passes as normal
    from patchbank.pipeline.scoring import PatchScorer

    real = PatchScorer.score

    def nan_score(self, emb, search=None, context=None):
        base, scores = real(self, emb, search, context)
        return base * np.nan, scores

    monkeypatch.setattr(PatchScorer, "score", nan_score)
    preds = fitted.predict(_train(synthetic_root, 2))
    assert all(np.isnan(p.score) and p.is_anomalous for p in preds)
