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


# ------------------------------------------------------------------ masks: the > 0 rule and bad masks

def _save_mask(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path)
    return path


def test_all_zero_mask_of_a_defective_image_is_refused(tmp_path):
    image = img(tmp_path / "a.png")
    zero = _save_mask(tmp_path / "a_mask.png", np.zeros((16, 16), np.uint8))
    with pytest.raises(PatchbankError, match=r"^mask .*a_mask\.png of defective image .*a\.png has no "
                                             r"defect pixel \(all zero\)") as info:
        load_mask(zero, image)
    assert "\n" not in str(info.value)
    with pytest.raises(PatchbankError, match=r"mask .*a_mask\.png has no defect pixel"):
        load_mask(zero)
    assert not load_mask(zero, image, defective=False).any()


def test_all_zero_mask_is_refused_when_evaluating_a_category(tmp_path):
    from patchbank.config import Config
    from patchbank.evaluation.scoring import category_masks

    root = mvtec_category(tmp_path / "bottle", defects=("crack",))
    _save_mask(root / "ground_truth" / "crack" / "000_mask.png", np.zeros((16, 16), np.uint8))
    (cat,) = read_mvtec(root)
    with pytest.raises(PatchbankError, match=r"crack/000_mask\.png of defective image .*has no defect pixel"):
        list(category_masks(cat, Config(image_size=16, crop_size=None)))


@pytest.mark.parametrize("arr, mode, expected", [
    # the > 0 rule: 0 / 1 masks, several levels, JPEG-like noise all count where nonzero
    (np.array([[0, 1, 1, 0]], np.uint8), "L", [0, 1, 1, 0]),
    (np.array([[0, 128, 255, 3]], np.uint8), "L", [0, 1, 1, 1]),
    (np.array([[0, 1, 300, 65535]], np.uint16), None, [0, 1, 1, 1]),            # 16-bit mask
    (np.array([[0, 0.5, 1.0, 0.01]], np.float32), None, [0, 1, 1, 1]),           # float mask (0.5 was lost)
    (np.array([[[0, 0, 0], [0, 0, 1], [255, 0, 0], [0, 0, 0]]], np.uint8), "RGB", [0, 1, 1, 0]),  # any channel
    (np.array([[[0, 0, 0, 255], [9, 9, 9, 0], [0, 0, 0, 0], [0, 0, 0, 255]]], np.uint8), "RGBA",
     [0, 1, 0, 0]),                                                               # alpha ignored
    (np.array([[255, 255, 255, 255]], np.uint8), "L", [1, 1, 1, 1]),             # all defective: kept
])
def test_mask_pixels_are_defective_when_greater_than_zero(tmp_path, arr, mode, expected):
    path = _save_mask(tmp_path / ("m.tif" if arr.dtype != np.uint8 else "m.png"), arr, mode)
    np.testing.assert_array_equal(load_mask(path)[0], np.array(expected, bool))


def test_palette_and_bilevel_masks(tmp_path):
    p = Image.new("P", (3, 1))
    p.putpalette([0, 0, 0, 255, 255, 255, 0, 0, 0] + [0] * 759)   # index 2 is black too
    p.putdata([0, 1, 2])
    p.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "p.png")[0], [False, True, False])
    b = Image.new("1", (3, 1))
    b.putdata([0, 1, 0])
    b.save(tmp_path / "b.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "b.png")[0], [False, True, False])


def test_bad_mask_files_give_one_line_errors(tmp_path):
    image = img(tmp_path / "a.png")
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not a mask")
    good = mask(tmp_path / "good.png")
    (tmp_path / "trunc.png").write_bytes(good.read_bytes()[:60])
    nan = _save_mask(tmp_path / "nan.tif", np.array([[0, np.nan]], np.float32))
    for path, match in [(tmp_path / "missing.png", r"mask not found: .*missing\.png"),
                        (tmp_path / "zero.png", r"cannot read mask .*zero\.png: the file is empty"),
                        (tmp_path / "text.png", r"cannot read mask .*text\.png: not an image format"),
                        (tmp_path / "trunc.png", r"cannot read mask .*trunc\.png"),
                        (nan, r"mask .*nan\.tif: the mask has NaN or infinite values")]:
        with pytest.raises(PatchbankError, match=match) as info:
            load_mask(path, image)
        assert "\n" not in str(info.value)
    (tmp_path / "bad_image.png").write_bytes(b"")
    with pytest.raises(PatchbankError, match=r"cannot read image .*bad_image\.png: the file is empty"):
        load_mask(good, tmp_path / "bad_image.png")


# ------------------------------------------------------------------ folders with other files

def test_non_image_files_in_dataset_folders_are_named_in_a_warning(tmp_path):
    root = mvtec_category(tmp_path / "bottle", defects=("crack",))
    (root / "train" / "good" / "Thumbs.db").write_bytes(b"\x00")
    (root / "test" / "crack" / "notes.txt").write_text("x")
    with pytest.warns(UserWarning) as record:
        (cat,) = read_mvtec(root)
    messages = [str(w.message) for w in record]
    assert any("good: skipped 1 entry that is not an image: Thumbs.db" in m for m in messages)
    assert any("crack: skipped 1 entry that is not an image: notes.txt" in m for m in messages)
    assert len(cat.train) == 3 and cat.labels == [0, 0, 1]


def test_hidden_and_empty_test_folders_are_named_in_a_warning(tmp_path):
    # Jupyter's .ipynb_checkpoints in test/ used to become a defect type (its copies of defect
    # images then had no masks); an empty defect folder added nothing, unsaid
    root = mvtec_category(tmp_path / "bottle", defects=("crack",))
    img(root / "test" / ".ipynb_checkpoints" / "000-checkpoint.png")
    (root / "test" / "scratch").mkdir()
    with pytest.warns(UserWarning) as record:
        (cat,) = read_mvtec(root)
    messages = [str(w.message) for w in record]
    assert any("skipped hidden folder(s)" in m and ".ipynb_checkpoints" in m for m in messages), messages
    assert any("scratch holds no images" in m for m in messages), messages
    assert cat.defect_types == ["good", "good", "crack"] and cat.labels == [0, 0, 1]


def test_gif_training_images_are_used(tmp_path):
    root = mvtec_category(tmp_path / "bottle", defects=("crack",))
    Image.fromarray(np.full((16, 16), 50, np.uint8)).save(root / "train" / "good" / "003.gif")
    (cat,) = read_mvtec(root)
    assert [p.name for p in cat.train] == ["000.png", "001.png", "002.png", "003.gif"]


def test_train_folder_of_only_other_files_is_an_error(tmp_path):
    root = mvtec_category(tmp_path / "bottle", n_train=0)
    (root / "train" / "good").mkdir(parents=True)
    (root / "train" / "good" / "Thumbs.db").write_bytes(b"\x00")
    with pytest.warns(UserWarning, match="Thumbs.db"), pytest.raises(PatchbankError, match="holds no images"):
        read_mvtec(root)
