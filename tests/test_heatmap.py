"""Colormap, overlays and overlay files."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from patchbank.errors import PatchbankError
from patchbank.io.heatmap import colorize, jet, overlay, save_overlay


def test_colormap_endpoints_and_middle():
    m = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    c = colorize(m, 0.0, 1.0)
    assert c.dtype == np.uint8 and c.shape == (1, 3, 3)
    assert c[0, 0].tolist() == [0, 0, 128]      # dark blue
    assert c[0, 1].tolist() == [128, 255, 128]  # green-ish middle
    assert c[0, 2].tolist() == [128, 0, 0]      # dark red


def test_colormap_clips_and_uses_absolute_range():
    m = np.array([[-5.0, 2.0, 4.0, 100.0, np.nan]], dtype=np.float32)
    c = colorize(m, 2.0, 4.0)
    assert c[0, 0].tolist() == c[0, 1].tolist() == [0, 0, 128]
    assert c[0, 2].tolist() == c[0, 3].tolist() == [128, 0, 0]
    assert c[0, 4].tolist() == [0, 0, 128]  # NaN drawn as vmin
    # same value, same colour, whatever else is in the map
    assert colorize(np.full((2, 2), 3.0), 2.0, 4.0)[0, 0].tolist() == colorize(m[:, 1:3] * 0 + 3.0, 2.0, 4.0)[0, 0].tolist()


def test_colormap_hot_end_is_red_cold_end_is_blue():
    x = np.linspace(0, 1, 101)
    rgb = jet(x)
    assert rgb.shape == (101, 3)
    assert rgb[:20, 2].min() > rgb[:20, 0].max()   # cold: blue dominates
    assert rgb[-20:, 0].min() > rgb[-20:, 2].max()  # hot: red dominates


def test_degenerate_and_bad_range():
    c = colorize(np.array([[1.0, 2.0]]), 1.0, 1.0)
    assert c[0, 0].tolist() == [0, 0, 128] and c[0, 1].tolist() == [128, 0, 0]
    with pytest.raises(PatchbankError, match="vmin <= vmax"):
        colorize(np.zeros((2, 2)), 1.0, 0.0)
    with pytest.raises(PatchbankError, match="2-D"):
        colorize(np.zeros((2, 2, 2)), 0.0, 1.0)


def test_overlay_blend_and_shapes():
    img = np.full((4, 5, 3), 200, dtype=np.uint8)
    amap = np.zeros((4, 5), dtype=np.float32)
    out = overlay(img, amap, 0.0, 1.0, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == (4, 5, 3)
    assert out[0, 0].tolist() == [100, 100, 164]
    assert np.array_equal(overlay(img, amap, 0.0, 1.0, alpha=0.0), img)
    assert np.array_equal(overlay(img, amap, 0.0, 1.0, alpha=1.0), colorize(amap, 0.0, 1.0))
    # PIL and grayscale images are accepted
    assert overlay(Image.fromarray(img), amap, 0, 1).shape == (4, 5, 3)
    assert overlay(img[..., 0], amap, 0, 1).shape == (4, 5, 3)


def test_overlay_shape_mismatch_names_both_shapes():
    img = np.zeros((4, 5, 3), dtype=np.uint8)
    with pytest.raises(PatchbankError) as info:
        overlay(img, np.zeros((5, 4), dtype=np.float32), 0.0, 1.0)
    msg = str(info.value)
    assert "(4, 5, 3)" in msg and "(5, 4)" in msg
    with pytest.raises(PatchbankError, match="uint8"):
        overlay(img.astype(np.float32), np.zeros((4, 5)), 0, 1)
    with pytest.raises(PatchbankError, match="alpha"):
        overlay(img, np.zeros((4, 5)), 0, 1, alpha=1.5)


def test_save_overlay_and_overwrite(tmp_path):
    img = np.zeros((6, 7, 3), dtype=np.uint8)
    amap = np.linspace(0, 1, 42, dtype=np.float32).reshape(6, 7)
    path = tmp_path / "sub" / "x.png"
    assert save_overlay(path, img, amap, 0.0, 1.0) == path
    with Image.open(path) as im:
        assert im.size == (7, 6) and im.mode == "RGB"
        assert np.array_equal(np.asarray(im), overlay(img, amap, 0.0, 1.0))
    before = path.read_bytes()
    with pytest.raises(PatchbankError, match="already exists"):
        save_overlay(path, img, amap * 0, 0.0, 1.0)
    assert path.read_bytes() == before
    save_overlay(path, img, amap * 0, 0.0, 1.0, overwrite=True)
    assert path.read_bytes() != before
