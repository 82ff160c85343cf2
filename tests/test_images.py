"""Resize + centre crop of images and masks (io/images.py): offsets pinned against hand-computed
numpy slices (even and odd excess, ``keep_aspect``), and image / mask alignment (issue 19)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from patchbank.config import Config
from types import SimpleNamespace

from patchbank.io.image_coords import view_window
from patchbank.io.images import crop_mask, prepare_view


def _centre_crop(arr: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """The centre crop window that preprocessing takes (view_window's offset, no resize)."""
    h, w = arr.shape[:2]
    cfg = SimpleNamespace(image_size=(h, w), keep_aspect=False, crop_size=tuple(crop), input_size=tuple(crop))
    win = view_window((h, w), cfg)
    assert win.resized == (h, w)
    (top, left), (ch, cw) = win.offset, win.size
    return arr[top:top + ch, left:left + cw]


def _grid(h: int, w: int) -> np.ndarray:
    """Every pixel different, so a slice is identified by its values."""
    return np.arange(h * w, dtype=np.int64).reshape(h, w)


# (size, crop, offset): the offset is round(excess / 2) with round-half-to-even, as torchvision's
# CenterCrop computes it: excess 3 -> 2 (1.5), 5 -> 2 (2.5), 7 -> 4 (3.5)
@pytest.mark.parametrize("h, ch, top", [(8, 4, 2), (7, 4, 2), (9, 4, 2), (11, 4, 4), (6, 6, 0), (5, 1, 2)])
@pytest.mark.parametrize("w, cw, left", [(10, 4, 3), (9, 4, 2), (12, 5, 4), (4, 4, 0)])
def test_centre_crop_offsets(h, ch, top, w, cw, left):
    arr = _grid(h, w)
    got = _centre_crop(arr, (ch, cw))
    np.testing.assert_array_equal(got, arr[top:top + ch, left:left + cw])
    # the same window as torchvision's CenterCrop
    tv = pytest.importorskip("torchvision.transforms.functional")
    np.testing.assert_array_equal(got, tv.center_crop(torch.from_numpy(arr)[None], [ch, cw])[0].numpy())


def test_centre_crop_keeps_channels():
    arr = np.stack([_grid(7, 9)] * 3, axis=-1)
    np.testing.assert_array_equal(_centre_crop(arr, (4, 4)), arr[2:6, 2:6, :])


def _mask(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w)) > 0.5


def _up2(m: np.ndarray) -> np.ndarray:
    """Nearest-neighbour 2x upscale: every pixel becomes a 2 x 2 block."""
    return np.repeat(np.repeat(m, 2, axis=0), 2, axis=1)


@pytest.mark.parametrize("config, expected", [
    # no resize (image_size = mask size), crop only: excess (3, 4) -> offsets (2, 2)
    (Config(image_size=(9, 10), crop_size=(6, 6)), lambda m: m[2:8, 2:8]),
    # no crop_size: the resize alone
    (Config(image_size=(9, 10), crop_size=None), lambda m: m),
    # 2x nearest resize to (18, 20), crop (13, 13): excess (5, 7) -> offsets (2, 4)
    (Config(image_size=(18, 20), crop_size=(13, 13)), lambda m: _up2(m)[2:15, 4:17]),
])
def test_crop_mask_without_keep_aspect(config, expected):
    m = _mask(9, 10)
    got = crop_mask(m.astype(np.uint8) * 255, config)
    assert got.dtype == bool
    np.testing.assert_array_equal(got, expected(m))


@pytest.mark.parametrize("shape, config, expected", [
    # wide 4 x 8 to cover (8, 8): scale max(8/4, 8/8) = 2 -> 8 x 16; centre (8, 8): left 4;
    # crop (5, 5): excess 3 -> offset 2
    ((4, 8), Config(image_size=(8, 8), crop_size=(5, 5), keep_aspect=True),
     lambda m: _up2(m)[:, 4:12][2:7, 2:7]),
    # to cover (8, 9): scale max(2, 9/8) = 2 -> 8 x 16; centre (8, 9): excess 7 -> left 4;
    # crop (5, 6): excess (3, 3) -> offsets (2, 2)
    ((4, 8), Config(image_size=(8, 9), crop_size=(5, 6), keep_aspect=True),
     lambda m: _up2(m)[:, 4:13][2:7, 2:8]),
    # tall 8 x 4 to cover (8, 8): 16 x 8; centre (8, 8): top 4; no crop_size
    ((8, 4), Config(image_size=(8, 8), crop_size=None, keep_aspect=True), lambda m: _up2(m)[4:12, :]),
    # scale 1 (already covers): no resize, centre crop of the width only: excess 5 -> left 2
    ((6, 11), Config(image_size=(6, 6), crop_size=None, keep_aspect=True), lambda m: m[:, 2:8]),
])
def test_crop_mask_with_keep_aspect(shape, config, expected):
    m = _mask(*shape, seed=1)
    np.testing.assert_array_equal(crop_mask(m, config), expected(m))


def test_crop_mask_stretches_without_keep_aspect():
    m = _mask(4, 8, seed=2)
    # (4, 8) -> (8, 8) stretched: rows doubled, columns kept
    got = crop_mask(m, Config(image_size=(8, 8), crop_size=None))
    np.testing.assert_array_equal(got, np.repeat(m, 2, axis=0))


@pytest.mark.parametrize("keep_aspect", [False, True])
def test_prepare_view_without_resize_is_a_slice(keep_aspect):
    """At scale 1 the view is a plain slice of the image (bilinear resize is skipped)."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, size=(9, 13, 3), dtype=np.uint8)
    if keep_aspect:   # covers (9, 9) at scale 1: centre (9, 9) of 13 columns -> left 2, then crop
        config = Config(image_size=(9, 9), crop_size=(4, 6), keep_aspect=True)
        expected = img[:, 2:11][2:6, 2:8]        # excess (5, 3) -> offsets (2, 2)
    else:
        config = Config(image_size=(9, 13), crop_size=(4, 6))
        expected = img[2:6, 4:10]                # excess (5, 7) -> offsets (2, 4)
    np.testing.assert_array_equal(prepare_view(img, config), expected)


def _square(shape: tuple[int, int], rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
    img = np.full(shape + (3,), 20, np.uint8)
    img[rows, cols] = 235
    mask = np.zeros(shape, np.uint8)
    mask[rows, cols] = 255
    return img, mask


def _box(a: np.ndarray) -> tuple[int, ...]:
    idx = np.argwhere(a)
    return (*idx.min(0), *idx.max(0))


@pytest.mark.parametrize("shape, config", [
    ((128, 128), Config(image_size=256, crop_size=224)),                    # the default 256 -> 224
    ((128, 192), Config(image_size=256, crop_size=224, keep_aspect=True)),  # wide, cropped sides
    ((192, 128), Config(image_size=256, crop_size=224, keep_aspect=True)),  # tall
    ((64, 96), Config(image_size=(128, 192), crop_size=(99, 151))),         # H x W, odd excess
])
def test_image_and_mask_stay_aligned(shape, config):
    """A bright square lands exactly where the mask's square lands (integer scales)."""
    img, mask = _square(shape, slice(40, 62), slice(30, 61))
    view = prepare_view(img, config)
    cropped = crop_mask(mask, config)
    assert view.shape[:2] == cropped.shape == config.input_size
    bright = view[..., 0] > 127
    assert cropped.any()
    np.testing.assert_array_equal(bright, cropped)


def test_image_and_mask_align_to_a_pixel_at_non_integer_scales():
    """100 -> 256 and a keep_aspect 120 x 90 image: bilinear and nearest may disagree at the
    square's corners only; the squares' bounding boxes are the same."""
    for shape, config in (((100, 100), Config(image_size=256, crop_size=224)),
                          ((120, 90), Config(image_size=256, crop_size=224, keep_aspect=True))):
        img, mask = _square(shape, slice(40, 70), slice(50, 81))
        bright = prepare_view(img, config)[..., 0] > 127
        cropped = crop_mask(mask, config)
        assert _box(bright) == _box(cropped)
        assert (bright != cropped).sum() <= 4


def test_sixteen_bit_view_equals_the_eight_bit_view(tmp_path):
    """A 16-bit copy (value x 257) of an 8-bit image gives the same resized view (issue 15)."""
    from PIL import Image

    gray = np.random.default_rng(4).integers(0, 256, size=(30, 40), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g8.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    config = Config(image_size=(24, 32), crop_size=(20, 30))
    view8 = prepare_view(tmp_path / "g8.png", config)
    np.testing.assert_array_equal(prepare_view(tmp_path / "g16.png", config), view8)
    np.testing.assert_array_equal(prepare_view(str(tmp_path / "g8.png"), config),
                                  _resize_like_before(tmp_path / "g8.png", config))


def _resize_like_before(path, config):
    from PIL import Image

    im = Image.open(path).convert("RGB").resize(config.image_size[::-1], Image.BILINEAR)
    return _centre_crop(np.asarray(im), config.crop_size)


def test_decoding_does_not_import_torch(tmp_path):
    """Preparing a view (what a Ray decoding task does) needs PIL and numpy only: a fresh
    interpreter decodes an image without importing torch (~1 s and ~300 MB per process)."""
    import subprocess
    import sys

    from PIL import Image

    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "a.png")
    code = ("import sys; from patchbank.config import Config; "
            "from patchbank.distributed.scoring import decode_batch; "
            f"out = decode_batch({{'path': [{str(tmp_path / 'a.png')!r}]}}, Config(image_size=32, crop_size=None)); "
            "assert out['image'][0].shape == (32, 32, 3), out['image'][0].shape; "
            "print('torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"
