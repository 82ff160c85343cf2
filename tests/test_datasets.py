"""Dataset readers: MVTec AD / MPDD, BTAD, VisA, generic folders; auto-detection; errors."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from patchbank.io.datasets import (Category, detect_kind, load_mask, read_btad, read_dataset,
                                read_generic, read_mvtec, read_visa)
from patchbank.errors import PatchbankError


def img(path, size=(16, 16), mode="RGB", ext=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3) if mode == "RGB" else (size[1], size[0]), 128, np.uint8)
    Image.fromarray(arr, mode).save(path)
    return path


def mask(path, size=(16, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), np.uint8)
    arr[4:8, 4:8] = 255
    Image.fromarray(arr, "L").save(path)
    return path


def mvtec_category(root, n_train=3, defects=("crack", "hole"), grayscale=False):
    mode = "L" if grayscale else "RGB"
    for i in range(n_train):
        img(root / "train" / "good" / f"{i:03d}.png", mode=mode)
    img(root / "test" / "good" / "000.png", mode=mode)
    img(root / "test" / "good" / "001.jpg", mode=mode)
    for d in defects:
        img(root / "test" / d / "000.png", mode=mode)
        mask(root / "ground_truth" / d / "000_mask.png")
    return root


# ------------------------------------------------------------------ MVTec / MPDD

def test_mvtec_single_category(tmp_path):
    root = mvtec_category(tmp_path / "bottle")
    (cat,) = read_mvtec(root)
    assert isinstance(cat, Category)
    assert cat.name == "bottle"
    assert [p.name for p in cat.train] == ["000.png", "001.png", "002.png"]
    assert len(cat.test) == len(cat.labels) == len(cat.masks) == len(cat.defect_types) == 4
    assert cat.labels == [0, 0, 1, 1]
    assert cat.defect_types == ["good", "good", "crack", "hole"]
    assert cat.masks[:2] == [None, None]
    assert cat.masks[2] == root / "ground_truth" / "crack" / "000_mask.png"
    assert cat.defects == ["crack", "hole"] and cat.has_masks and cat.n_defective == 2


def test_mvtec_multi_category_root_and_selection(tmp_path):
    mvtec_category(tmp_path / "bottle")
    mvtec_category(tmp_path / "cable", defects=("bent",))
    (tmp_path / "license.txt").write_text("x")
    (tmp_path / "notes").mkdir()
    cats = read_mvtec(tmp_path)
    assert [c.name for c in cats] == ["bottle", "cable"]
    assert [c.name for c in read_dataset(tmp_path, categories=["cable"])] == ["cable"]
    assert [c.name for c in read_dataset(tmp_path, "mpdd", categories="cable,bottle")] == ["cable", "bottle"]


def test_mvtec_mask_without_suffix_and_grayscale(tmp_path):
    root = mvtec_category(tmp_path / "screw", defects=(), grayscale=True)
    img(root / "test" / "scratch" / "007.png", mode="L")
    mask(root / "ground_truth" / "scratch" / "007.png")
    (cat,) = read_dataset(root)
    assert cat.masks[-1].name == "007.png" and cat.labels == [0, 0, 1]


def test_unknown_category_lists_available(tmp_path):
    mvtec_category(tmp_path / "bottle")
    mvtec_category(tmp_path / "cable")
    with pytest.raises(PatchbankError, match=r"unknown category 'nut'.*available: bottle, cable"):
        read_dataset(tmp_path, categories=["nut"])


def test_missing_mask_names_the_image(tmp_path):
    root = mvtec_category(tmp_path / "bottle")
    img(root / "test" / "crack" / "005.png")
    with pytest.raises(PatchbankError, match=r"no ground-truth mask for defective image .*005\.png"):
        read_mvtec(root)


@pytest.mark.parametrize("empty", [True, False])
def test_missing_or_empty_train_folder(tmp_path, empty):
    root = mvtec_category(tmp_path / "bottle", n_train=0)
    if empty:
        (root / "train" / "good").mkdir(parents=True)
        match = "holds no images"
    else:
        match = "training folder not found"
    with pytest.raises(PatchbankError, match=match):
        read_dataset(root, "mvtec")


# ------------------------------------------------------------------ BTAD

def btad_category(root):
    for i in range(3):
        img(root / "train" / "ok" / f"{i:04d}.bmp")
    img(root / "test" / "ok" / "0000.bmp")
    img(root / "test" / "ko" / "0000.bmp")
    img(root / "test" / "ko" / "0001.png")
    mask(root / "ground_truth" / "ko" / "0000.png")
    mask(root / "ground_truth" / "ko" / "0001.bmp")
    return root


def test_btad_root_and_single(tmp_path):
    btad_category(tmp_path / "01")
    btad_category(tmp_path / "03")
    assert detect_kind(tmp_path) == "btad"
    cats = read_dataset(tmp_path)
    assert [c.name for c in cats] == ["01", "03"]
    c = cats[0]
    assert c.labels == [0, 1, 1] and c.defect_types == ["good", "ko", "ko"]
    assert [m.name if m else None for m in c.masks] == [None, "0000.png", "0001.bmp"]
    (single,) = read_btad(tmp_path / "03")
    assert single.name == "03" and len(single.train) == 3


# ------------------------------------------------------------------ VisA

def test_visa_csv(tmp_path):
    lines = ["object,split,label,image,mask"]
    for obj in ("candle", "pcb1"):
        for i in range(3):
            img(tmp_path / obj / "Data/Images/Normal" / f"{i}.JPG")
            lines.append(f"{obj},train,normal,{obj}/Data/Images/Normal/{i}.JPG,")
        img(tmp_path / obj / "Data/Images/Normal" / "9.JPG")
        lines.append(f"{obj},test,normal,{obj}/Data/Images/Normal/9.JPG,")
        img(tmp_path / obj / "Data/Images/Anomaly" / "0.JPG")
        mask(tmp_path / obj / "Data/Masks/Anomaly" / "0.png")
        lines.append(f"{obj},test,anomaly,{obj}/Data/Images/Anomaly/0.JPG,{obj}/Data/Masks/Anomaly/0.png")
    (tmp_path / "split_csv").mkdir()
    (tmp_path / "split_csv" / "1cls.csv").write_text("\n".join(lines) + "\n")
    assert detect_kind(tmp_path) == "visa"
    cats = read_dataset(tmp_path)
    assert [c.name for c in cats] == ["candle", "pcb1"]
    c = cats[1]
    assert len(c.train) == 3 and c.labels == [0, 1] and c.masks[0] is None
    assert c.masks[1] == tmp_path / "pcb1/Data/Masks/Anomaly/0.png"
    assert [c.name for c in read_visa(tmp_path, ["pcb1"])] == ["pcb1"]
    with pytest.raises(PatchbankError, match="available: candle, pcb1"):
        read_visa(tmp_path, ["pcb9"])
    # an anomaly row without a mask names the image
    (tmp_path / "split_csv" / "1cls.csv").write_text(
        "\n".join(lines + ["pcb1,test,anomaly,pcb1/Data/Images/Anomaly/0.JPG,"]) + "\n")
    with pytest.raises(PatchbankError, match=r"defective image .*Anomaly/0\.JPG"):
        read_visa(tmp_path)


# ------------------------------------------------------------------ generic

def test_generic(tmp_path):
    for i in range(2):
        img(tmp_path / "train" / f"{i}.png")
    img(tmp_path / "good" / "g.png")
    img(tmp_path / "dents" / "a.png")
    img(tmp_path / "rust" / "b.png")
    mask(tmp_path / "masks" / "dents" / "a_mask.png")
    mask(tmp_path / "masks" / "b.png")
    cat = read_generic(tmp_path / "good", [tmp_path / "dents", tmp_path / "rust"], tmp_path / "masks",
                       train_dir=tmp_path / "train", name="part")
    assert cat.name == "part" and cat.labels == [0, 1, 1]
    assert cat.defect_types == ["good", "dents", "rust"]
    assert [m.name if m else None for m in cat.masks] == [None, "a_mask.png", "b.png"]
    no_masks = read_generic(tmp_path / "good", tmp_path / "dents", train_dir=tmp_path / "train")
    assert no_masks.masks == [None, None] and not no_masks.has_masks
    img(tmp_path / "rust" / "c.png")
    with pytest.raises(PatchbankError, match=r"defective image .*c\.png"):
        read_generic(tmp_path / "good", [tmp_path / "rust"], tmp_path / "masks", train_dir=tmp_path / "train")
    with pytest.raises(PatchbankError, match="training folder not found"):
        read_generic(tmp_path / "good", [], train_dir=tmp_path / "nope")


# ------------------------------------------------------------------ detection, roots, masks

def test_auto_detection(tmp_path):
    mvtec_category(tmp_path / "m" / "bottle")
    assert detect_kind(tmp_path / "m") == "mvtec"
    assert detect_kind(tmp_path / "m" / "bottle") == "mvtec"
    (tmp_path / "empty").mkdir()
    with pytest.raises(PatchbankError, match="cannot tell the dataset layout"):
        read_dataset(tmp_path / "empty")
    with pytest.raises(PatchbankError, match="dataset root not found"):
        read_dataset(tmp_path / "missing")
    with pytest.raises(PatchbankError, match="unknown dataset kind"):
        read_dataset(tmp_path / "m", kind="coco")


def test_load_mask_size_check(tmp_path):
    image = img(tmp_path / "a.png", size=(16, 12))
    good = mask(tmp_path / "a_mask.png", size=(16, 12))
    m = load_mask(good, image)
    assert m.dtype == bool and m.shape == (12, 16) and m.sum() == 16
    bad = mask(tmp_path / "b_mask.png", size=(20, 10))
    with pytest.raises(PatchbankError, match=r"b_mask\.png is 20x10 .*a\.png is 16x12"):
        load_mask(bad, image)
