"""Readers for anomaly-detection benchmark layouts: MVTec AD, MPDD, BTAD, VisA, generic folders.

Every reader returns :class:`Category` records: the training images (normal only), the test
images with their labels (0 good, 1 defective), the ground-truth mask of each test image (``None``
for good images) and the defect type of each test image (``"good"`` for normal ones).

Layouts
-------
* **MVTec AD / MPDD**: ``<category>/train/good/*``, ``<category>/test/<defect>/*`` (``good`` is the
  normal test folder), masks ``<category>/ground_truth/<defect>/<stem>_mask.png`` (``<stem>.png``
  is accepted too).  ``root`` may be one category folder or a folder holding several.
* **BTAD**: ``NN/train/ok/*``, ``NN/test/ok/*``, ``NN/test/ko/*``, masks
  ``NN/ground_truth/ko/<stem>.png`` (or ``.bmp``; ``<stem>_mask.*`` is accepted too).
* **VisA**: ``<root>/split_csv/1cls.csv`` with columns ``object,split,label,image,mask`` (paths
  relative to ``root``; label ``normal`` / ``anomaly``).
* **generic**: :func:`read_generic` with explicit folders.

Image folders are listed with :func:`~patchbank.io.images.image_files`: files that are not
images are skipped with a ``UserWarning`` naming them, never silently.  In an MVTec-like
``test/`` folder, hidden sub-folders (``.ipynb_checkpoints``) are not defect types and are
skipped with a warning naming them; a sub-folder without images is named in a warning too.

Problems are reported as one-line :class:`~patchbank.errors.PatchbankError`: a defective image
without a mask (named), a missing or empty training folder, an unknown category (the available
ones are listed).

Masks
-----
:func:`load_mask` reads a mask when evaluating.  A pixel is defective when its value is **> 0**
(the MVTec AD convention): 0 / 255, 0 / 1 and anti-aliased or JPEG-noisy masks all work, and any
nonzero value counts, however small.  Grayscale, bilevel, 16-bit and float masks are read by
their values; colour and palette masks by their colours (a pixel is defective when any colour
channel is > 0; alpha is ignored).  Refused with a one-line error naming the mask: a mask of a
defective image with no defect pixel at all (a defect without pixels cannot be scored: fix the
mask or move the image to the good folder), NaN values in a float mask, and a mask whose size is
not its image's.  An all-defective mask is accepted (a defect may cover the whole image).
"""
from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from patchbank.errors import PatchbankError
from patchbank.io.images import IMAGE_EXTENSIONS, decoded_image, image_files, open_image

KINDS = ("auto", "mvtec", "btad", "visa", "mpdd")
_MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg", ".webp", ".gif")


@dataclass
class Category:
    """One category (object / product) of a dataset.

    ``test``, ``labels``, ``masks`` and ``defect_types`` are aligned, one entry per test image.
    """

    name: str
    train: list[Path]
    test: list[Path]
    labels: list[int]                 # 0 good, 1 defective
    masks: list[Path | None]          # None for good images (and where no masks exist at all)
    defect_types: list[str] = field(default_factory=list)  # "good" for normal test images

    @property
    def defects(self) -> list[str]:
        """The distinct defect types, sorted (``good`` excluded)."""
        return sorted({d for d, y in zip(self.defect_types, self.labels) if y == 1})

    @property
    def has_masks(self) -> bool:
        """True when every defective test image has a mask (pixel metrics can be computed)."""
        return all(m is not None for m, y in zip(self.masks, self.labels) if y == 1)

    @property
    def n_defective(self) -> int:
        """The number of defective test images."""
        return int(sum(self.labels))


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def _images_in(folder: Path) -> list[Path]:
    """Sorted image files directly inside ``folder`` (no error when there are none; other files
    are skipped with a ``UserWarning`` naming them)."""
    if not folder.is_dir():
        return []
    return image_files(folder)


def _train_images(folder: Path, category: str) -> list[Path]:
    if not folder.is_dir():
        raise PatchbankError(f"category {category!r}: training folder not found: {folder}")
    images = _images_in(folder)
    if not images:
        raise PatchbankError(f"category {category!r}: training folder {folder} holds no images "
                             f"({', '.join(IMAGE_EXTENSIONS)})")
    return images


def _find_mask(folder: Path, stem: str, suffixes: Sequence[str]) -> Path | None:
    """``folder/<stem><suffix><ext>`` for the first suffix and extension that exists."""
    if not folder.is_dir():
        return None
    for suffix in suffixes:
        for ext in _MASK_EXTENSIONS:
            p = folder / f"{stem}{suffix}{ext}"
            if p.is_file():
                return p
    return None


def _missing_mask(image: Path, where: Path) -> PatchbankError:
    return PatchbankError(f"no ground-truth mask for defective image {image} "
                          f"(looked for {image.stem}_mask.png or {image.stem}.png in {where})")


def _folder_category(cat_dir: Path, name: str, good: str, mask_suffixes: Sequence[str]) -> Category:
    """MVTec-like category: train/<good>, test/<defect>, ground_truth/<defect>/<stem><suffix>.*"""
    train = _train_images(cat_dir / "train" / good, name)
    test_dir = cat_dir / "test"
    if not test_dir.is_dir():
        raise PatchbankError(f"category {name!r}: test folder not found: {test_dir}")
    test, labels, masks, types = [], [], [], []
    folders = sorted(d for d in test_dir.iterdir() if d.is_dir())
    subdirs = [d for d in folders if not d.name.startswith(".")]
    subdirs.sort(key=lambda d: d.name != good)  # normal images first, then defects by name
    hidden = [d.name for d in folders if d.name.startswith(".")]
    if hidden:   # .ipynb_checkpoints and the like: not a defect type
        warnings.warn(f"category {name!r}: skipped hidden folder(s) in {test_dir}: {', '.join(hidden)}")
    for d in subdirs:
        images = _images_in(d)
        if not images:
            warnings.warn(f"category {name!r}: {d} holds no images; it adds no test image")
        is_good = d.name == good
        gt_dir = cat_dir / "ground_truth" / d.name
        for img in images:
            mask = None
            if not is_good:
                mask = _find_mask(gt_dir, img.stem, mask_suffixes)
                if mask is None:
                    raise _missing_mask(img, gt_dir)
            test.append(img)
            labels.append(0 if is_good else 1)
            masks.append(mask)
            types.append("good" if is_good else d.name)
    if not test:
        raise PatchbankError(f"category {name!r}: no test images in {test_dir}")
    return Category(name, train, test, labels, masks, types)


def _select(cats: dict[str, Path] | list[Category], wanted: Iterable[str] | None, root: Path):
    """Keep the categories named in ``wanted`` (in that order); error on unknown names."""
    names = list(cats) if isinstance(cats, dict) else [c.name for c in cats]
    if wanted is None:
        return list(cats.values()) if isinstance(cats, dict) else list(cats)
    wanted = [w.strip() for w in wanted if w.strip()] if not isinstance(wanted, str) else \
        [w.strip() for w in wanted.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise PatchbankError(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                             f"{', '.join(map(repr, unknown))} in {root}; available: {', '.join(names) or 'none'}")
    if isinstance(cats, dict):
        return [cats[w] for w in dict.fromkeys(wanted)]
    by_name = {c.name: c for c in cats}
    return [by_name[w] for w in dict.fromkeys(wanted)]


def _category_dirs(root: Path, good: str) -> dict[str, Path]:
    """``{name: folder}``: ``root`` itself when it is a category, else its category sub-folders."""
    if (root / "train").is_dir() or (root / "test").is_dir():
        return {root.resolve().name: root}
    cats = {d.name: d for d in sorted(root.iterdir())
            if d.is_dir() and ((d / "train").is_dir() or (d / "test").is_dir())}
    if not cats:
        raise PatchbankError(f"no categories found in {root}: expected train/{good} and test/ "
                             f"in {root} or in its sub-folders")
    return cats


# ------------------------------------------------------------------------------------------------
# readers
# ------------------------------------------------------------------------------------------------

def read_mvtec(root: str | os.PathLike, categories: Iterable[str] | None = None) -> list[Category]:
    """MVTec AD (and MPDD): one category folder or a root of several."""
    root = _check_root(root)
    dirs = _select(_category_dirs(root, "good"), categories, root)
    return [_folder_category(d, name, "good", ("_mask", ""))
            for name, d in ((_dir_name(root, d), d) for d in dirs)]


read_mpdd = read_mvtec


def read_btad(root: str | os.PathLike, categories: Iterable[str] | None = None) -> list[Category]:
    """BTAD: ``NN/train/ok``, ``NN/test/{ok,ko}``, ``NN/ground_truth/ko/<stem>.png|bmp``."""
    root = _check_root(root)
    dirs = _select(_category_dirs(root, "ok"), categories, root)
    return [_folder_category(d, name, "ok", ("", "_mask"))
            for name, d in ((_dir_name(root, d), d) for d in dirs)]


def _dir_name(root: Path, d: Path) -> str:
    return root.resolve().name if d == root else d.name


def read_visa(root: str | os.PathLike, categories: Iterable[str] | None = None,
              split_csv: str | os.PathLike | None = None) -> list[Category]:
    """VisA from its ``split_csv/1cls.csv`` (``object,split,label,image,mask``; paths relative
    to ``root``).  Train rows must be normal; test rows labelled ``anomaly`` need a mask."""
    root = _check_root(root)
    csv_path = Path(split_csv) if split_csv is not None else root / "split_csv" / "1cls.csv"
    if not csv_path.is_file():
        raise PatchbankError(f"VisA split file not found: {csv_path}")
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        need = {"object", "split", "label", "image", "mask"}
        have = {c.strip() for c in (reader.fieldnames or [])}
        if not need <= have:
            raise PatchbankError(f"{csv_path}: expected columns {', '.join(sorted(need))}, "
                                 f"missing {', '.join(sorted(need - have))}")
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    cats: dict[str, Category] = {}
    for line, row in enumerate(rows, start=2):
        obj = row["object"]
        cat = cats.setdefault(obj, Category(obj, [], [], [], [], []))
        label = row["label"].lower()
        if label not in ("normal", "anomaly"):
            raise PatchbankError(f"{csv_path} line {line}: label must be normal or anomaly, got {row['label']!r}")
        image = root / row["image"]
        split = row["split"].lower()
        if split == "train":
            if label == "normal":
                cat.train.append(image)
        elif split == "test":
            y = 1 if label == "anomaly" else 0
            mask = root / row["mask"] if row["mask"] else None
            if y == 1 and mask is None:
                raise PatchbankError(f"no ground-truth mask for defective image {image} "
                                     f"({csv_path} line {line} has an empty mask column)")
            if y == 0:
                mask = None
            cat.test.append(image)
            cat.labels.append(y)
            cat.masks.append(mask)
            cat.defect_types.append("anomaly" if y else "good")
        else:
            raise PatchbankError(f"{csv_path} line {line}: split must be train or test, got {row['split']!r}")
    if not cats:
        raise PatchbankError(f"{csv_path} lists no images")
    selected = _select(list(cats.values()), categories, root)
    for cat in selected:
        if not cat.train:
            raise PatchbankError(f"category {cat.name!r}: no normal training images in {csv_path}")
        if not cat.test:
            raise PatchbankError(f"category {cat.name!r}: no test images in {csv_path}")
        for p in cat.train + cat.test + [m for m in cat.masks if m is not None]:
            if not p.is_file():
                raise PatchbankError(f"file listed in {csv_path} not found: {p}")
    return selected


def read_generic(good_dir: str | os.PathLike, defect_dirs: str | os.PathLike | Sequence[str | os.PathLike],
                 mask_dir: str | os.PathLike | None = None, *, train_dir: str | os.PathLike,
                 name: str | None = None) -> Category:
    """One category from explicit folders.

    ``good_dir``: normal test images; ``defect_dirs``: one or more folders of defective test
    images (the folder name is the defect type); ``mask_dir``: masks named ``<stem>_mask.*`` or
    ``<stem>.*``, looked up in ``mask_dir/<defect folder name>/`` and then ``mask_dir/``.  Without
    ``mask_dir`` the masks are ``None`` (image metrics only).
    """
    train_dir = Path(train_dir)
    name = name or train_dir.resolve().parent.name or "generic"
    train = _train_images(train_dir, name)
    if isinstance(defect_dirs, (str, os.PathLike)):
        defect_dirs = [defect_dirs]
    good_dir = Path(good_dir)
    if not good_dir.is_dir():
        raise PatchbankError(f"category {name!r}: folder of good test images not found: {good_dir}")
    test, labels, masks, types = [], [], [], []
    for img in _images_in(good_dir):
        test.append(img), labels.append(0), masks.append(None), types.append("good")
    mask_root = Path(mask_dir) if mask_dir is not None else None
    if mask_root is not None and not mask_root.is_dir():
        raise PatchbankError(f"category {name!r}: mask folder not found: {mask_root}")
    for d in map(Path, defect_dirs):
        if not d.is_dir():
            raise PatchbankError(f"category {name!r}: folder of defective images not found: {d}")
        for img in _images_in(d):
            mask = None
            if mask_root is not None:
                mask = (_find_mask(mask_root / d.name, img.stem, ("_mask", ""))
                        or _find_mask(mask_root, img.stem, ("_mask", "")))
                if mask is None:
                    raise _missing_mask(img, mask_root)
            test.append(img), labels.append(1), masks.append(mask), types.append(d.name)
    if not test:
        raise PatchbankError(f"category {name!r}: no test images in {good_dir} or the defect folders")
    return Category(name, train, test, labels, masks, types)


# ------------------------------------------------------------------------------------------------
# dispatch
# ------------------------------------------------------------------------------------------------

def _check_root(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.exists():
        raise PatchbankError(f"dataset root not found: {root}")
    if not root.is_dir():
        raise PatchbankError(f"dataset root is not a folder: {root}")
    return root


def detect_kind(root: str | os.PathLike) -> str:
    """``"visa"``, ``"btad"`` or ``"mvtec"`` from the folder layout (MPDD reads as mvtec)."""
    root = _check_root(root)
    if (root / "split_csv" / "1cls.csv").is_file():
        return "visa"
    candidates = [root] + [d for d in sorted(root.iterdir()) if d.is_dir()]
    for d in candidates:
        if (d / "train" / "ok").is_dir() or (d / "test" / "ko").is_dir():
            return "btad"
    for d in candidates:
        if (d / "train" / "good").is_dir() or (d / "test" / "good").is_dir():
            return "mvtec"
    raise PatchbankError(f"cannot tell the dataset layout of {root}: expected MVTec/MPDD "
                         f"(<category>/train/good), BTAD (NN/train/ok) or VisA (split_csv/1cls.csv)")


def read_dataset(root: str | os.PathLike, kind: str = "auto",
                 categories: Iterable[str] | None = None) -> list[Category]:
    """Read a benchmark dataset; ``kind`` is one of :data:`KINDS` (``auto`` detects the layout)."""
    if kind not in KINDS:
        raise PatchbankError(f"unknown dataset kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "auto":
        kind = detect_kind(root)
    reader = {"mvtec": read_mvtec, "mpdd": read_mpdd, "btad": read_btad, "visa": read_visa}[kind]
    return reader(root, categories)


# ------------------------------------------------------------------------------------------------
# masks
# ------------------------------------------------------------------------------------------------

def _mask_pixels(im: Image.Image, name: str) -> np.ndarray:
    """bool [H, W]: value > 0 (grayscale, bilevel, 16-bit, float), any colour channel > 0 else."""
    if im.mode in ("1", "L", "I", "F") or im.mode.startswith("I;16"):
        arr = np.asarray(im)
    else:
        try:
            arr = np.asarray(im.convert("RGB"))
        except ValueError:
            raise PatchbankError(f"{name}: masks of mode {im.mode} are not supported (save it as "
                                 f"8-bit grayscale, 0 / 255)") from None
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise PatchbankError(f"{name}: the mask has NaN or infinite values")
    arr = arr > 0
    return arr if arr.ndim == 2 else arr.any(axis=2)


def load_mask(mask: str | os.PathLike, image: str | os.PathLike | None = None, *,
              defective: bool = True) -> np.ndarray:
    """A ground-truth mask as bool [H, W] (value > 0 = defective, see the module docstring).

    With ``image`` given, checks that both have the same size.  ``defective`` (the default: a
    mask belongs to a defective image) refuses a mask without any defect pixel.
    """
    mask = Path(mask)
    with decoded_image(mask, "mask") as im:
        arr = _mask_pixels(im, f"mask {mask}")
    if image is not None:
        with open_image(image, "image") as im:
            w, h = im.size
        if arr.shape != (h, w):
            raise PatchbankError(f"mask {mask} is {arr.shape[1]}x{arr.shape[0]} (WxH) but its image "
                                 f"{image} is {w}x{h}")
    if defective and not arr.any():
        of = f" of defective image {image}" if image is not None else ""
        raise PatchbankError(f"mask {mask}{of} has no defect pixel (all zero): a defect without pixels "
                             f"cannot be scored; fix the mask or move the image to the good images")
    return arr
