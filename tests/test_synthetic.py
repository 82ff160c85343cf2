"""The synthetic MVTec-layout dataset: layout, determinism, exact masks."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from patchbank.errors import PatchbankError
from patchbank.io.synthetic import DEFECT_TYPES, make_dataset, render, render_parts


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_layout(tmp_path):
    root = make_dataset(tmp_path / "prod", n_train=4, n_test_good=2, n_test_defect=3, size=64)
    assert root == tmp_path / "prod"
    assert sorted(p.name for p in (root / "train" / "good").iterdir()) == [f"{i:03d}.png" for i in range(4)]
    assert sorted(p.name for p in (root / "test" / "good").iterdir()) == ["000.png", "001.png"]
    assert set(DEFECT_TYPES) == {"scratch", "spot"}
    assert sorted(p.name for p in (root / "test").iterdir()) == ["good", "scratch", "spot"]
    assert sorted(p.name for p in (root / "ground_truth").iterdir()) == ["scratch", "spot"]
    for defect in DEFECT_TYPES:
        images = sorted((root / "test" / defect).iterdir())
        masks = sorted((root / "ground_truth" / defect).iterdir())
        assert [p.name for p in images] == ["000.png", "001.png", "002.png"]
        assert [p.name for p in masks] == ["000_mask.png", "001_mask.png", "002_mask.png"]
        for img_path, mask_path in zip(images, masks):
            with Image.open(img_path) as im, Image.open(mask_path) as mk:
                assert im.mode == "RGB" and im.size == (64, 64)
                assert mk.mode == "L" and mk.size == (64, 64)
                values = set(np.unique(np.asarray(mk)).tolist())
                assert values == {0, 255}


def test_deterministic_by_seed(tmp_path):
    kw = dict(n_train=3, n_test_good=1, n_test_defect=2, size=48)
    a = _digest(make_dataset(tmp_path / "a", seed=7, **kw))
    b = _digest(make_dataset(tmp_path / "b", seed=7, **kw))
    c = _digest(make_dataset(tmp_path / "c", seed=8, **kw))
    assert a == b
    assert a != c
    # image i of a split does not depend on how many images the other splits have
    img_small, _ = render("train", 1, size=48, seed=7)
    with Image.open(tmp_path / "a" / "train" / "good" / "001.png") as im:
        assert np.array_equal(np.asarray(im), img_small)


def test_images_vary_within_split():
    a, _ = render("train", 0, size=64)
    b, _ = render("train", 1, size=64)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("defect", DEFECT_TYPES)
def test_masks_exact_and_inside_crop(defect):
    size = 128
    for i in range(12):
        surface, image, mask = render_parts(f"test/{defect}", i, size=size, seed=3)
        assert mask.dtype == bool and mask.shape == (size, size)
        assert mask.sum() >= 20
        # the drawn defect is exactly the mask: every changed pixel is in it and vice versa
        assert np.array_equal(np.any(image != surface, axis=2), mask)
        # clearly visible: the mean absolute change inside the mask is large
        diff = np.abs(image.astype(int) - surface.astype(int)).mean(axis=2)
        assert diff[mask].mean() > 40
        # inside the 224/256 centre crop the presets use
        ys, xs = np.nonzero(mask)
        lo, hi = size * 16 / 256, size * (1 - 16 / 256)
        assert ys.min() >= lo and xs.min() >= lo and ys.max() < hi and xs.max() < hi


def test_written_mask_matches_render(tmp_path):
    root = make_dataset(tmp_path, n_train=1, n_test_good=0, n_test_defect=2, size=64, seed=5)
    for defect in DEFECT_TYPES:
        for i in range(2):
            image, mask = render(f"test/{defect}", i, size=64, seed=5)
            with Image.open(root / "test" / defect / f"{i:03d}.png") as im:
                assert np.array_equal(np.asarray(im), image)
            with Image.open(root / "ground_truth" / defect / f"{i:03d}_mask.png") as mk:
                assert np.array_equal(np.asarray(mk) == 255, mask)


def test_simple_pixel_statistic_separates_defects():
    """Loose sanity check: out-of-range luminance / chroma pixels are far more common in defects."""
    train = np.stack([render("train", i)[0] for i in range(20)]).astype(float)
    lum, chroma = train.mean(-1), train.max(-1) - train.min(-1)
    lo, hi = np.quantile(lum, [0.0005, 0.9995])
    cmax = np.quantile(chroma, 0.9999)

    def stat(img):
        img = img.astype(float)
        l, c = img.mean(-1), img.max(-1) - img.min(-1)
        return int(((l < lo) | (l > hi) | (c > cmax)).sum())

    good = [stat(render("test/good", i)[0]) for i in range(8)]
    bad = [stat(render(f"test/{d}", i)[0]) for d in DEFECT_TYPES for i in range(8)]
    assert min(bad) > np.median(good)
    assert np.mean(bad) > 5 * np.mean(good)


def test_bad_arguments(tmp_path):
    with pytest.raises(PatchbankError, match="n_train"):
        make_dataset(tmp_path, n_train=0)
    with pytest.raises(PatchbankError, match="size"):
        make_dataset(tmp_path, size=8)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(PatchbankError, match="not a folder"):
        make_dataset(f)
    with pytest.raises(PatchbankError, match="unknown synthetic split"):
        render("test/crack", 0)
