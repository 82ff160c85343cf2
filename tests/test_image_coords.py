"""Maps back in the original image's coordinates (io/image_coords.py), heatmap PNGs, and the
operating point (Detector.set_threshold / map_level / heatmap_range, saved and loaded).

The inverse mapping is checked three ways: against torch's bilinear ``F.interpolate``
(``align_corners=False``, an independent implementation) where there is no crop; exactly, on a
map that is linear in the view's coordinates (bilinear interpolation reproduces it, so every
offset and scale shows); and end to end, a bright spot in an original image found again at its
place after the view is taken and mapped back.
"""
from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from patchbank.config import Config
from patchbank.detector import Detector
from patchbank.errors import PatchbankError
from patchbank.io.heatmap import heatmap_rgba, overlay, png_bytes
from patchbank.io.image_coords import inspected, region_mask, region_polygons, to_original, view_window
from patchbank.io.images import prepare_input, prepare_view


def _cfg(image_size, crop_size=None, keep_aspect=False):
    return SimpleNamespace(image_size=image_size, crop_size=crop_size, keep_aspect=keep_aspect,
                           input_size=crop_size or image_size)


@pytest.mark.parametrize("original", [(37, 53), (200, 120), (64, 64)])
def test_without_crop_equals_torch_bilinear(original):
    cfg = _cfg((32, 48))
    m = np.random.default_rng(0).random((32, 48)).astype(np.float32)
    want = F.interpolate(torch.from_numpy(m)[None, None], size=original, mode="bilinear",
                         align_corners=False)[0, 0].numpy()
    got = to_original(m, original, cfg)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert inspected(original, cfg).all()


@pytest.mark.parametrize("keep_aspect", [False, True])
@pytest.mark.parametrize("original, image_size, crop", [((90, 130), (40, 40), (32, 30)),
                                                         ((75, 41), (33, 20), (25, 17)),
                                                         ((60, 60), (30, 30), None)])
def test_linear_map_comes_back_exactly(original, image_size, crop, keep_aspect):
    cfg = _cfg(image_size, crop, keep_aspect)
    win = view_window(original, cfg)
    h, w = cfg.input_size
    rows = np.arange(h, dtype=np.float32)[:, None].repeat(w, 1)
    cols = np.arange(w, dtype=np.float32)[None, :].repeat(h, 0)
    for m, dim in ((rows, 0), (cols, 1)):
        back = to_original(m, original, cfg)
        n, size = original[dim], win.resized[dim]
        centre = (np.arange(n) + 0.5) * size / n       # continuous coordinate in the resized image
        expect = np.clip(centre - 0.5 - win.offset[dim], 0, cfg.input_size[dim] - 1)
        inside = (centre >= win.offset[dim]) & (centre < win.offset[dim] + cfg.input_size[dim])
        line = back[:, np.argmax(inspected(original, cfg).any(0))] if dim == 0 else \
            back[np.argmax(inspected(original, cfg).any(1)), :]
        np.testing.assert_allclose(line[inside], expect[inside], atol=1e-4)
        assert np.isnan(line[~inside]).all()
    # the not-inspected band is the part the crop cut off: as wide as the box says (+- 1 pixel)
    top, left, bh, bw = win.box
    ins = inspected(original, cfg)
    assert abs(ins.any(1).sum() - bh) <= 1 and abs(ins.any(0).sum() - bw) <= 1
    assert abs(np.argmax(ins.any(1)) - top) <= 1 and abs(np.argmax(ins.any(0)) - left) <= 1


def test_window_matches_the_preprocessing_offsets(tmp_path):
    """A view taken by prepare_view is the original's box, resized: an image whose pixel value
    encodes its column shows the box's first column in the view's first column."""
    cfg = Config(image_size=(64, 96), crop_size=(48, 64), keep_aspect=True)
    W, H = 300, 150
    arr = np.repeat(np.repeat((np.arange(W) * 255 // (W - 1)).astype(np.uint8)[None, :, None], H, 0), 3, 2)
    view = prepare_view(arr, cfg)
    top, left, bh, bw = view_window((H, W), cfg).box
    expect_first = left * 255 / (W - 1)
    assert abs(float(view[:, 0, 0].mean()) - expect_first) < 3.0
    assert abs(float(view[:, -1, 0].mean()) - (left + bw) * 255 / (W - 1)) < 3.0


def test_a_spot_is_found_at_its_place_in_the_original():
    cfg = Config(image_size=(80, 80), crop_size=(64, 64))
    H, W = 240, 360
    img = np.zeros((H, W, 3), np.uint8)
    img[150:170, 200:220] = 255                      # a bright spot inside the inspected box
    view = prepare_view(img, cfg).astype(np.float32).mean(2)
    back = to_original(view, (H, W), cfg)
    y, x = np.unravel_index(np.nanargmax(back), back.shape)
    assert 145 <= y <= 175 and 195 <= x <= 225
    mask = region_mask(back, 128.0)
    ys, xs = np.nonzero(mask)
    assert 145 <= ys.min() and ys.max() <= 175 and 195 <= xs.min() and xs.max() <= 225


def test_region_mask_never_includes_uninspected_pixels():
    m = np.array([[np.nan, 5.0], [1.0, np.inf]], np.float32)
    np.testing.assert_array_equal(region_mask(m, 0.5), [[False, True], [True, True]])


def test_polygons_outline_each_region_largest_first():
    mask = np.zeros((40, 50), bool)
    mask[5:15, 10:30] = True         # 200 px
    mask[8:12, 15:20] = False        # a hole: filled in the outline
    mask[25:30, 40:45] = True        # 25 px
    polys = region_polygons(mask)
    assert len(polys) == 2
    big, small = (np.array(p) for p in polys)
    assert big[0].tolist() == big[-1].tolist()                 # closed
    # the outline runs half a pixel outside the region's pixel centres (within the 0.5 tolerance)
    assert 9.5 <= big[:, 0].min() <= 10 and 29 <= big[:, 0].max() <= 29.5
    assert 4.5 <= big[:, 1].min() <= 5 and 14 <= big[:, 1].max() <= 14.5
    assert 39.5 <= small[:, 0].min() <= 40 and 29 <= small[:, 1].max() <= 29.5
    from matplotlib.path import Path as PolyPath    # every region pixel inside, no other pixel
    ys, xs = np.mgrid[0:40, 0:50]
    pts = np.c_[xs.ravel(), ys.ravel()]
    inside = PolyPath(big).contains_points(pts) | PolyPath(small).contains_points(pts)
    filled = mask.copy()
    filled[8:12, 15:20] = True
    np.testing.assert_array_equal(inside.reshape(40, 50), filled)
    assert region_polygons(np.zeros((4, 4), bool)) == []
    # session 30: a one-pixel region was simplified to a line of zero area
    one = np.zeros((5, 5), bool)
    one[2, 2] = True
    (poly,) = region_polygons(one)
    xs, ys = np.array(poly).T
    assert poly[0] == poly[-1] and 0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) == 0.5
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (1.5, 2.5, 1.5, 2.5)
    assert len(region_polygons(mask, max_regions=1)) == 1


def test_a_region_touching_itself_at_a_corner_is_outlined_whole():
    """Regions are 8-connected; their outline was traced 4-connected, and of a region's outlines
    only the longest was kept, so a part touching the rest at one corner had none (session 31: a
    10 x 10 and a 6 x 6 square meeting at a corner gave a polygon of 100 of the 136 pixels; one
    of 150 smooth maps lost a 228-px part).  Every region pixel lies inside its region's polygon
    and no other pixel does, on the squares and on smooth random maps mapped back to an image."""
    from types import SimpleNamespace

    from matplotlib.path import Path as PolyPath
    from scipy import ndimage

    def covered(polys, shape):
        ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
        pts = np.c_[xs.ravel(), ys.ravel()]
        inside = np.zeros(len(pts), bool)
        for p in polys:
            inside |= PolyPath(np.array(p)).contains_points(pts)
        return inside.reshape(shape)

    mask = np.zeros((40, 40), bool)
    mask[5:15, 5:15] = True
    mask[15:21, 15:21] = True
    polys = region_polygons(mask)
    assert len(polys) == 1
    np.testing.assert_array_equal(covered(polys, mask.shape), mask)
    cfg = SimpleNamespace(image_size=(96, 96), crop_size=(64, 64), keep_aspect=False, input_size=(64, 64))
    rng = np.random.default_rng(0)
    for _ in range(60):
        m = ndimage.gaussian_filter(rng.normal(size=(64, 64)), 4).astype(np.float32)
        back = to_original(m, (150, 205), cfg)
        mask = region_mask(back, float(np.nanquantile(back, rng.uniform(0.8, 0.97))))
        filled = np.zeros_like(mask)
        labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
        for k in range(1, n + 1):
            filled |= ndimage.binary_fill_holes(labels == k)
        polys = [np.array(p) for p in region_polygons(mask, max_regions=1000)]
        inside = covered(polys, mask.shape)
        assert (inside == filled).mean() > 0.995
        # a region pixel outside every polygon lies on an outline, shaved off by its simplification
        # (0.5 px at most; 1.1 px before, where a part had no outline)
        out = np.argwhere(mask & ~inside)[:, ::-1].astype(float)[:, None]
        if len(out):
            a, b = np.concatenate([p[:-1] for p in polys])[None], np.concatenate([p[1:] for p in polys])[None]
            t = np.clip(((out - a) * (b - a)).sum(2) / np.maximum(((b - a) ** 2).sum(2), 1e-12), 0, 1)
            assert np.sqrt(((a + t[..., None] * (b - a) - out) ** 2).sum(2)).min(1).max() <= 0.5


def test_region_edges_one_region_and_the_level_itself():
    """A pixel exactly at the level is not in the region; one region gives one outline."""
    np.testing.assert_array_equal(region_mask(np.array([[1.0, 2.0]], np.float32), 1.0), [[False, True]])
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:7] = True
    (poly,) = region_polygons(mask)
    poly = np.array(poly)
    assert 2.5 <= poly[:, 0].min() <= 3 and 6 <= poly[:, 0].max() <= 6.5


def test_a_pixel_centre_on_the_views_edge_is_inside_at_the_top_and_outside_at_the_bottom():
    """Half-open intervals: original pixels of a 2 x 2 image resized to 4 x 4 have their centres
    at 1 and 3 in the resized image; a view from 1 to 3 holds the first and not the second."""
    from patchbank.io.image_coords import Window

    rows, inside = Window((2, 2), (4, 4), (1, 1), (2, 2)).axis(0)
    np.testing.assert_array_equal(inside, [True, False])
    np.testing.assert_allclose(rows, [-0.5, 1.5])


@pytest.mark.parametrize("hw", [(0, 10), (10, 0), (0, 0), (-1, 10)])
def test_an_image_without_pixels_has_no_window(hw):
    with pytest.raises(PatchbankError, match="original image size must be positive"):
        view_window(hw, _cfg((8, 8)))
    assert view_window((1, 1), _cfg((8, 8))).original == (1, 1)


def test_map_of_the_wrong_size_is_refused():
    with pytest.raises(PatchbankError, match="input size"):
        to_original(np.zeros((10, 10)), (50, 50), _cfg((12, 12)))


def test_heatmap_png_is_transparent_where_not_inspected():
    m = np.array([[0.0, 1.0], [np.nan, 0.5]], np.float32)
    rgba = heatmap_rgba(m, 0.0, 1.0)
    assert rgba.shape == (2, 2, 4) and rgba[1, 0, 3] == 0 and (rgba[0, :, 3] == 255).all()
    back = np.asarray(Image.open(io.BytesIO(png_bytes(rgba))))
    np.testing.assert_array_equal(back, rgba)
    mask = np.asarray(Image.open(io.BytesIO(png_bytes(np.array([[True, False]])))))
    np.testing.assert_array_equal(mask, [[255, 0]])
    img = np.full((2, 2, 3), 200, np.uint8)
    ov = overlay(img, m, 0.0, 1.0)
    assert (ov[1, 0] == ov[1, 0, 0]).all()          # grey where not inspected
    assert not (ov[0, 1] == ov[0, 1, 0]).all()      # coloured elsewhere


# ------------------------------------------------------------------------------ operating point
def test_set_threshold_moves_decisions_and_survives_save_and_load(fitted, synthetic_root, tmp_path):
    det = Detector.load(_saved(fitted, tmp_path / "a.patchbank"), progress=False)
    images = sorted((synthetic_root / "test" / "good").glob("*.png"))[:3]
    calibrated = det.calibrated_threshold_
    assert det.threshold_ == calibrated and det.info()["threshold_override"] is None
    norm = [p.normalized_score for p in det.predict(images)]
    det.set_threshold(min(norm) - 1.0)
    assert all(p.is_anomalous for p in det.predict(images))
    det.set_threshold(max(norm) + 1.0)
    assert not any(p.is_anomalous for p in det.predict(images))
    assert det.calibrated_threshold_ == calibrated
    det.save(tmp_path / "b.patchbank")
    again = Detector.load(tmp_path / "b.patchbank", progress=False)
    assert again.threshold_ == max(norm) + 1.0 and again.calibrated_threshold_ == calibrated
    again.set_threshold(None)
    assert again.threshold_ == calibrated and again.info()["threshold_override"] is None
    for bad in (float("nan"), float("inf"), "1", True):
        with pytest.raises(PatchbankError, match="threshold must be a finite number"):
            det.set_threshold(bad)


def test_map_level_rises_with_the_threshold_and_sets_the_colour_range(fitted):
    cal = fitted.calibration_
    norm = cal.stats_.normalize(cal.scores_)
    top1 = cal.descriptors_[:, 1]
    levels = [fitted.map_level(t) for t in (norm.min() - 1, np.median(norm), norm.max() + 1)]
    assert levels[0] == pytest.approx(top1.min()) and levels[2] == pytest.approx(top1.max())
    assert levels[0] <= levels[1] <= levels[2]
    q = np.mean(norm <= np.median(norm))
    assert levels[1] == pytest.approx(np.quantile(top1, q))
    lo, hi = fitted.heatmap_range()
    assert lo == 0.0 and hi == pytest.approx(2 * fitted.map_level(fitted.calibrated_threshold_))


def test_a_model_file_with_a_bad_threshold_override_is_refused(fitted, tmp_path):
    from patchbank.io.model_file import load_model, save_model

    tensors, meta = load_model(_saved(fitted, tmp_path / "c.patchbank"))
    save_model(tmp_path / "d.patchbank", tensors, {**meta, "threshold_override": "0; import os"})
    with pytest.raises(PatchbankError, match="threshold_override"):
        Detector.load(tmp_path / "d.patchbank")


def _saved(det, path):
    det.save(path)
    return path


def test_predict_heatmaps_lie_on_the_original_images(synthetic_root, tmp_path):
    """``predict --heatmaps`` with a centre crop: each overlay has its own image's size, the band
    the crop cut off is grey (not inspected), the rest coloured; the hot spot of a defect is
    drawn where the defect is in the original."""
    from click.testing import CliRunner

    from patchbank.cli import cli

    det = Detector.from_preset("lmf-core", progress=False, backbone="efficientnet_lite0",
                               image_size=(96, 96), crop_size=(64, 64))
    det.fit(synthetic_root / "train" / "good")
    model = tmp_path / "m.patchbank"
    det.save(model)
    big = tmp_path / "in" / "wide.png"          # a 96-px test image enlarged to 192 x 288
    big.parent.mkdir()
    src = sorted((synthetic_root / "test" / "spot").glob("*.png"))[0]
    Image.open(src).convert("RGB").resize((288, 192), Image.BILINEAR).save(big)
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["predict", str(model), str(big), "-o", str(out), "--heatmaps", "--quiet"])
    assert r.exit_code == 0, r.output
    png = np.asarray(Image.open(out / "heatmaps" / "wide.png").convert("RGB")).astype(int)
    assert png.shape == (192, 288, 3)
    ins = inspected((192, 288), det.config)
    grey = (png[..., 0] == png[..., 1]) & (png[..., 1] == png[..., 2])
    assert grey[~ins].all() and not grey[ins].all()
    assert 0.3 < ins.mean() < 0.7            # a 64/96 crop keeps (2/3)^2 of the area


def test_heatmap_colours_are_the_models_fixed_range_in_every_run(fitted, synthetic_root, tmp_path):
    """Two predict runs over different images colour their overlays on the same range, the
    model's (Detector.heatmap_range), recorded in predictions.json."""
    import json

    from click.testing import CliRunner

    from patchbank.cli import cli

    model = tmp_path / "m.patchbank"
    fitted.save(model)
    docs = []
    for i, folder in enumerate(("good", "spot")):
        out = tmp_path / f"out{i}"
        r = CliRunner().invoke(cli, ["predict", str(model), str(synthetic_root / "test" / folder), "-o",
                                     str(out), "--heatmaps", "--quiet"])
        assert r.exit_code == 0, r.output
        docs.append(json.loads((out / "predictions.json").read_text())["heatmaps"])
    lo, hi = fitted.heatmap_range()
    assert [(d["vmin"], d["vmax"]) for d in docs] == [(lo, hi), (lo, hi)]
    assert "fixed range" in docs[0]["range"]


def test_api_predictions_carry_their_map_on_the_original_image(synthetic_root, tmp_path):
    """``Detector.predict`` (paths, arrays, PIL images, a JPEG decoded at a reduced scale) and
    ``MultiDetector.predict``: each prediction knows its original size, and ``image_map`` is
    ``anomaly_map`` mapped back onto it (NaN exactly where the crop cut it off); a defect's hot
    spot lies where the defect is in the original.  ``predict_views`` has no original image."""
    from patchbank.multi import MultiDetector

    kw = dict(progress=False, backbone="efficientnet_lite0", image_size=(96, 96), crop_size=(64, 64))
    det = Detector.from_preset("lmf-core", **kw).fit(synthetic_root / "train" / "good")
    src = sorted((synthetic_root / "test" / "spot").glob("*.png"))[0]
    wide = Image.open(src).convert("RGB").resize((288, 192), Image.BILINEAR)
    jpeg = tmp_path / "big.jpg"   # 4x the model's size: decoded at a reduced scale (JPEG draft)
    Image.open(src).convert("RGB").resize((384, 384), Image.BILINEAR).save(jpeg, quality=95)
    items = [src, np.asarray(wide), wide, jpeg]
    sizes = [(96, 96), (192, 288), (192, 288), (384, 384)]
    for pred, size in zip(det.predict(items), sizes):
        assert pred.image_size == size and pred.image_map.shape == size
        np.testing.assert_array_equal(pred.image_map, to_original(pred.anomaly_map, size, det.config))
        np.testing.assert_array_equal(np.isnan(pred.image_map), ~inspected(size, det.config))
    spot = det.predict([src])[0].image_map
    r, c = np.unravel_index(np.nanargmax(spot), spot.shape)
    hot = det.predict([wide])[0].image_map
    r2, c2 = np.unravel_index(np.nanargmax(hot), hot.shape)
    assert abs(r2 / 2 - r) <= 6 and abs(c2 / 3 - c) <= 6      # the same place, in each image's pixels
    multi = MultiDetector.from_preset("lmf-core", n_prototypes=8, **kw).fit(
        {"a": synthetic_root / "train" / "good"})
    (m,) = multi.predict([wide])
    assert m.image_size == (192, 288) and m.image_map.shape == (192, 288)
    (v,) = det.predict_views([prepare_input(src, det.config)])
    assert v.window is None and v.image_map is None and v.image_size is None


@pytest.mark.parametrize("size", [(130, 143), (333, 1001)])
def test_a_jpeg_decoded_at_a_reduced_scale_is_cut_where_its_window_says_with_keep_aspect(tmp_path, size):
    """With ``keep_aspect`` the covering resize rounds from the size it starts at.  A JPEG file is
    decoded at a reduced scale, yet its window -- what maps are mapped back with -- is the full
    size's; the view is now cut from the full size's window too (session 29: the decoded size's
    rounding shifted it by up to one resized pixel, so the heatmap and its grey band lay beside
    what was scored).  A black / white edge in the middle: the white columns of the file's view
    and of the fully decoded image's view agree within the two decoders' blur of the edge
    (0.24-0.31 columns here; the shifted cut was 0.75 apart)."""
    from patchbank.io.images import read_input

    h, w = size
    cfg = Config(image_size=64, crop_size=48, keep_aspect=True, aspect="fixed", crop_at="image")
    edge = np.zeros((h, w, 3), np.uint8)
    edge[:, w // 2:] = 255
    path = tmp_path / "edge.jpg"
    Image.fromarray(edge).save(path, quality=100)
    im = Image.open(path)
    im.draft("RGB", (64, 64))
    assert im.size[0] < w                                    # the file is read at a reduced scale
    got, win = read_input(path, cfg)
    want, want_win = read_input(Image.open(path).convert("RGB"), cfg)   # full scale, in memory
    assert win == want_win
    white = lambda view: view[..., 0].mean() / 255 * view.shape[1]   # noqa: E731
    assert abs(white(got) - white(want)) < 0.5, (white(got), white(want))


@pytest.mark.parametrize("size", [(777, 1001), (1543, 2049)])
def test_a_jpeg_decoded_at_a_reduced_scale_keeps_its_far_corner_in_place(tmp_path, size):
    """libjpeg decodes a side of n pixels at 1 / s to ceil(n / s) pixels: a 1001-px side at 1/8 to
    126, which covers 1,008 px of the original.  The resize now reads the box that holds the
    image (``DRAFT_BOX``); it stretched the rounded-up pixels too (session 31: a square near the
    far corner lay 0.74-0.85 network pixels, ~7 original pixels, up and left of where the
    window that maps the map back puts it).  The square's centre in the file's view and in the
    fully decoded image's view agree within 0.06 network pixels."""
    from patchbank.io.images import DRAFT_BOX, read_input

    h, w = size
    cfg = Config(backbone="efficientnet_lite0", image_size=(96, 96), crop_size=None, aspect="fixed",
                 crop_at="image")
    img = np.zeros((h, w, 3), np.uint8)
    img[h - 40:h - 16, w - 40:w - 16] = 255
    path = tmp_path / "corner.jpg"
    Image.fromarray(img).save(path, quality=100, subsampling=0)
    with Image.open(path) as im:
        im.draft("RGB", (96, 96))
        assert im.size[0] * 8 > w and im.size[0] < w       # decoded at 1/8, rounded up
    got, win = read_input(path, cfg)
    want, want_win = read_input(Image.open(path).convert("RGB"), cfg)   # full scale, in memory
    assert win == want_win

    def centre(view):
        v = np.where(view.mean(2) > 20, view.mean(2), 0.0)
        rows, cols = np.mgrid[0:v.shape[0], 0:v.shape[1]]
        return (v * rows).sum() / v.sum(), (v * cols).sum() / v.sum()
    assert np.allclose(centre(got), centre(want), atol=0.06), (centre(got), centre(want))
    from patchbank.io.images import decoded_image
    with decoded_image(path, "image", cfg.image_size) as im:
        assert im.info[DRAFT_BOX] == (0, 0, w / 8, h / 8)
