"""The wiring between the stages, pinned against independent computations: the detector's maps
are the patch scores upsampled and blurred at the configured sigma (scipy), PatchCore's
re-weighting uses the neighbourhood of the matched bank entry, a NaN score is never normal, and
fit/predict work under the default centre crop and keep_aspect."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from conftest import FAST, split_items
from patchbank.config import Config
from patchbank.detector import Detector
from patchbank.pipeline.calibration import ScoreCalibration
from patchbank.pipeline.scoring import reweighted_max
from patchbank.search import ExactSearch


@pytest.mark.parametrize("sigma", [4.0, 1.5])
def test_detector_maps_are_blurred_patch_scores(synthetic_root, sigma):
    det = Detector.from_preset("lmf-core", progress=False, **{**FAST, "blur_sigma": sigma})
    det.fit(synthetic_root / "train" / "good")
    items, _ = split_items(synthetic_root)
    item = items[-1]
    pred = det.predict([item])[0]
    x, _ = next(iter(det.stream([item])))
    with torch.inference_mode():
        emb = det.embed(det.extractor(x)[0])
        _, scores = det.scorer_.score(emb.view(1, -1, emb.shape[1]))
    grid = scores.view(1, 1, *det.grid_).float()
    up = F.interpolate(grid, size=det.config.input_size, mode="bilinear", align_corners=False)[0, 0]
    want = gaussian_filter(up.double().numpy(), sigma, mode="reflect", truncate=4.0)
    assert pred.anomaly_map.shape == det.config.input_size
    np.testing.assert_allclose(pred.anomaly_map, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
    assert not np.allclose(pred.anomaly_map, up.numpy(), atol=1e-3)     # the blur did something


@pytest.mark.parametrize("border,upsample", [("zero", "nearest"), ("valid", "nearest"), ("zero", "bilinear")])
def test_detector_follows_patch_border_and_map_upsample(synthetic_root, border, upsample):
    """The fitted detector's patch rows are the backbone maps averaged with the configured border
    rule (F.avg_pool2d directly) and its map is the configured upsampling, blurred (scipy)."""
    det = Detector.from_preset("lmf-core", progress=False,
                               **{**FAST, "patch_border": border, "map_upsample": upsample})
    det.fit(synthetic_root / "train" / "good")
    items, _ = split_items(synthetic_root)
    x, _ = next(iter(det.stream([items[-1]])))
    with torch.inference_mode():
        raw = det.extractor.maps(x)
        rows, _ = det.extractor(x)
    want = F.avg_pool2d(raw[0], 3, stride=1, padding=1, count_include_pad=border == "zero")
    torch.testing.assert_close(rows[0], want.permute(0, 2, 3, 1).reshape(-1, raw[0].shape[1]))
    pred = det.predict([items[-1]])[0]
    with torch.inference_mode():
        emb = det.embed(rows)
        _, scores = det.scorer_.score(emb.view(1, -1, emb.shape[1]))
    grid = scores.view(1, 1, *det.grid_).float()
    kw = {"mode": "nearest"} if upsample == "nearest" else {"mode": "bilinear", "align_corners": False}
    up = F.interpolate(grid, size=det.config.input_size, **kw)[0, 0]
    want_map = gaussian_filter(up.double().numpy(), det.config.blur_sigma, mode="reflect", truncate=4.0)
    np.testing.assert_allclose(pred.anomaly_map, want_map, rtol=1e-4, atol=1e-4 * float(np.abs(want_map).max()))


def test_reweighting_uses_the_matched_entrys_neighbourhood():
    # bank: A (0,0) is the test patch's nearest entry; A's 3 nearest entries are A, B, C, the
    # test patch's are A, D, B: Eq. 7 sums over N_b(m*) = {A, B, C}
    bank = torch.tensor([[0.0, 0.0], [-1.0, 0.0], [0.0, -1.0], [5.2, 0.0]])
    q = torch.tensor([[2.4, 0.0]])
    search = ExactSearch(bank)
    sq, idx = search.search(q, 1)
    assert idx.item() == 0
    s_star = math.sqrt(sq.item())
    d = np.array([2.4, 3.4, math.hypot(2.4, 1.0)])                  # ||q - A||, ||q - B||, ||q - C||
    want = (1 - np.exp(d[0]) / np.exp(d).sum()) * s_star
    got = reweighted_max(torch.tensor([[s_star]]), q.view(1, 1, 2), idx.view(1, 1), search, 3)
    assert got.item() == pytest.approx(want, rel=1e-6)
    wrong = np.array([2.4, 2.8, 3.4])                                # q's own neighbourhood
    assert abs((1 - np.exp(wrong[0]) / np.exp(wrong).sum()) * s_star - want) > 1e-3


def test_nan_score_is_anomalous():
    rng = np.random.default_rng(0)
    cal = ScoreCalibration(Config()).fit(rng.normal(5, 1, 20), np.abs(rng.normal(1, 0.1, (20, 3))))
    out = cal.image_scores(np.array([5.0, np.nan, 1e9]), np.ones((3, 3)), np.zeros(3), np.zeros(3))
    assert out.anomalous.tolist() == [False, True, True]
    assert out.whole_image.tolist() == [False, False, False]    # no whole-image check


@pytest.mark.parametrize("image_score, whole", [("max", False), ("hybrid", False), ("struct", False),
                                                ("max", True)])
def test_image_scores_stay_on_the_device_of_the_base_scores(image_score, whole):
    """The descriptor statistics live on the CPU; a batch scored on a GPU keeps its base scores
    there.  The 'meta' device stands in for a GPU (mixing it with CPU tensors raises, as cuda
    does); the descriptors stay on the CPU here because a meta tensor cannot be copied to it."""
    rng = np.random.default_rng(0)
    cfg = Config(image_score=image_score, whole_image_check=whole, threshold_rule="conformal")
    cal = ScoreCalibration(cfg).fit(rng.normal(5, 1, 20), np.abs(rng.normal(1, 0.1, (20, 3))), None,
                                    rng.normal(20, 1, 20))
    base = torch.tensor([5.0, 6.0], dtype=torch.float64)
    phi = torch.ones(2, 3, dtype=torch.float64)
    means = torch.tensor([19.0, 30.0], dtype=torch.float64)
    blur = torch.zeros(2, dtype=torch.float64)
    on_device = cal.score_tensors(base.to("meta"), phi, means.to("meta"), blur.to("meta"))
    assert all(t.device.type == "meta" for t in on_device)
    on_cpu = cal.score_tensors(base, phi, means, blur)
    assert on_cpu[7].tolist() == [False, whole]          # the whole-image flags
    assert [tuple(t.shape) for t in on_device] == [tuple(t.shape) for t in on_cpu]


@pytest.mark.parametrize("keep_aspect", [False, True])
def test_fit_predict_with_centre_crop(synthetic_root, keep_aspect):
    det = Detector.from_preset("lmf-core", progress=False, backbone="efficientnet_lite0",
                               image_size=(112, 128), crop_size=(96, 112), keep_aspect=keep_aspect,
                               batch_size=8)
    det.fit(synthetic_root / "train" / "good")
    items, labels = split_items(synthetic_root)
    preds = det.predict(items)
    assert all(p.anomaly_map.shape == (96, 112) for p in preds)
    good = [p.score for p, y in zip(preds, labels) if y == 0]
    bad = [p.score for p, y in zip(preds, labels) if y == 1]
    assert np.mean(bad) > np.mean(good)
    assert det.grid_[1] > det.grid_[0]              # the crop's aspect reaches the patch grid
