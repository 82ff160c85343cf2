"""A small synthetic product in the MVTec AD folder layout, for demos and tests.

``make_dataset(root)`` writes::

    root/train/good/000.png ...               defect-free images
    root/test/good/000.png ...
    root/test/scratch/000.png ...             thin bright or dark scratches
    root/test/spot/000.png ...                dark stain blobs
    root/ground_truth/scratch/000_mask.png    0/255 masks, same size as the image
    root/ground_truth/spot/000_mask.png

The surface is a woven metal mesh (two crossing families of threads with an over/under pattern)
on top of brushed-metal streaks.  Every image gets its own small random shift of the
weave, brightness/contrast jitter, a slight colour cast and sensor noise, so a detector has to
model normal variation rather than memorise one picture.  Defects are painted with hard
edges: a pixel differs from the defect-free surface exactly where its mask is 255, so the
masks are exact.  Defects lie within the central 70% of the image (each side), which the
presets' centre crops (224/256, 392/448) keep.

Everything is deterministic: image *i* of a split depends only on ``seed``, the split and *i*
(not on how many images the other splits have), and PNG is lossless.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from patchbank.errors import PatchbankError

DEFECT_TYPES: tuple[str, ...] = ("scratch", "spot")

_SPLIT_CODES = {"train": 1, "test/good": 2, "test/scratch": 3, "test/spot": 4}


def _box_blur_1d(a: np.ndarray, length: int, axis: int) -> np.ndarray:
    """Box filter of odd ``length`` along ``axis`` with wrap-around padding."""
    if length <= 1:
        return a
    half = length // 2
    pad = [(0, 0)] * a.ndim
    pad[axis] = (half + 1, half)
    c = np.cumsum(np.pad(a, pad, mode="wrap"), axis=axis)
    n = a.shape[axis]
    hi = np.take(c, np.arange(length, length + n), axis=axis)
    lo = np.take(c, np.arange(0, n), axis=axis)
    return (hi - lo) / length


def _surface(rng: np.random.Generator, size: int) -> np.ndarray:
    """A defect-free woven-mesh / brushed-metal surface, float32 RGB in [0, 1]."""
    period = size / 16.0                      # 16 threads across the image
    dy, dx = rng.uniform(0.0, 0.3 * period, size=2)  # small per-image shift of the weave
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    u = (xx + dx) / period
    v = (yy + dy) / period
    # Thread profiles: bright ridge in the middle of each thread, dark gap between threads.
    ridge_x = np.sin(np.pi * (u % 1.0)) ** 2   # vertical threads
    ridge_y = np.sin(np.pi * (v % 1.0)) ** 2   # horizontal threads
    # Over/under weave: in alternate cells the vertical or the horizontal thread is on top.
    on_top = ((np.floor(u) + np.floor(v)) % 2).astype(bool)
    weave = np.where(on_top, 0.35 + 0.65 * ridge_x, 0.35 + 0.65 * ridge_y)
    weave *= 0.75 + 0.25 * np.maximum(ridge_x, ridge_y)

    # Brushed-metal streaks: noise smeared along x.
    streak_len = max(3, (size // 6) | 1)
    streaks = _box_blur_1d(rng.standard_normal((size, size)), streak_len, axis=1)
    streaks = _box_blur_1d(streaks, 3, axis=0)
    streaks /= streaks.std() + 1e-8

    brightness = rng.uniform(0.92, 1.08)
    contrast = rng.uniform(0.9, 1.1)
    base = 0.5 + contrast * 0.38 * (weave - 0.62) + 0.035 * streaks
    base = base * brightness
    tint = np.array([0.94, 0.97, 1.0]) + rng.uniform(-0.02, 0.02, size=3)
    rgb = base[..., None] * tint + rng.normal(0.0, 0.012, size=(size, size, 3))
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


def _centre_point(rng: np.random.Generator, size: int) -> tuple[float, float]:
    lo, hi = 0.3 * size, 0.7 * size
    return float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))


def _scratch_mask(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A thin polyline scratch; returns (mask bool [H, W], colour RGB)."""
    s = size / 128.0
    x, y = _centre_point(rng, size)
    angle = rng.uniform(0, np.pi)
    length = rng.uniform(0.28, 0.45) * size
    n_seg = int(rng.integers(2, 4))
    pts = []
    # Walk from one end to the other, bending slightly at each joint, centred on (x, y).
    start_x = x - 0.5 * length * np.cos(angle)
    start_y = y - 0.5 * length * np.sin(angle)
    pts.append((start_x, start_y))
    for _ in range(n_seg):
        a = angle + rng.uniform(-0.35, 0.35)
        start_x += length / n_seg * np.cos(a)
        start_y += length / n_seg * np.sin(a)
        pts.append((start_x, start_y))
    lo, hi = 0.15 * size, 0.85 * size
    pts = [(float(np.clip(px, lo, hi)), float(np.clip(py, lo, hi))) for px, py in pts]
    width = max(2, int(round(rng.uniform(2.0, 3.5) * s)))
    img = Image.new("L", (size, size), 0)
    ImageDraw.Draw(img).line(pts, fill=255, width=width, joint="curve")
    mask = np.asarray(img) > 0
    if rng.random() < 0.5:
        colour = np.array([0.97, 0.97, 0.95]) + rng.uniform(-0.02, 0.02, 3)   # bright scratch
    else:
        colour = np.array([0.08, 0.07, 0.07]) + rng.uniform(0.0, 0.04, 3)     # dark scratch
    return mask, colour


def _spot_mask(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An irregular stain: a union of overlapping ellipses; returns (mask, colour)."""
    x, y = _centre_point(rng, size)
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    r0 = rng.uniform(0.05, 0.085) * size
    for i in range(int(rng.integers(2, 5))):
        ox, oy = (0.0, 0.0) if i == 0 else rng.normal(0.0, 0.45 * r0, 2)
        rx, ry = r0 * rng.uniform(0.6, 1.0, 2)
        draw.ellipse([x + ox - rx, y + oy - ry, x + ox + rx, y + oy + ry], fill=255)
    mask = np.asarray(img) > 0
    colour = np.array([0.36, 0.22, 0.12]) + rng.uniform(-0.04, 0.04, 3)      # rust-brown stain
    return mask, colour


def _paint(rng: np.random.Generator, surface: np.ndarray, mask: np.ndarray,
           colour: np.ndarray) -> np.ndarray:
    """Replace the surface inside ``mask`` by ``colour`` with a little texture and noise."""
    out = surface.copy()
    lum = surface.mean(axis=2, keepdims=True)
    painted = colour * (0.85 + 0.3 * lum) + rng.normal(0.0, 0.015, surface.shape)
    out[mask] = np.clip(painted[mask], 0.0, 1.0)
    return out


def _to_uint8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)


def render(kind: str, index: int, *, size: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """One image of the synthetic product, without writing anything.

    ``kind`` is ``"train"``, ``"test/good"`` or ``"test/<defect>"`` with a defect from
    :data:`DEFECT_TYPES`.  Returns ``(image uint8 [size, size, 3], mask bool [size, size])``;
    the mask is ``None`` for good images.
    """
    _, image, mask = render_parts(kind, index, size=size, seed=seed)
    return image, mask


def render_parts(kind: str, index: int, *, size: int = 128,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(defect-free surface, image, mask)`` for one image; see :func:`render`.

    A defective image differs from its defect-free surface exactly at the mask's pixels
    (``np.any(image != surface, axis=2) == mask``); for good images ``image is surface``.
    """
    if kind not in _SPLIT_CODES:
        raise PatchbankError(f"unknown synthetic split {kind!r}; choose one of {', '.join(_SPLIT_CODES)}")
    rng = np.random.default_rng([int(seed), _SPLIT_CODES[kind], int(index)])
    surface = _surface(rng, size)
    surf8 = _to_uint8(surface)
    if kind in ("train", "test/good"):
        return surf8, surf8, None
    defect = kind.split("/", 1)[1]
    mask, colour = (_scratch_mask if defect == "scratch" else _spot_mask)(rng, size)
    img8 = _to_uint8(_paint(rng, surface, mask, colour))
    # Quantisation could in principle map a painted pixel back onto the surface value; nudge it
    # so "pixel changed" and "mask set" stay the same set.
    same = mask & np.all(img8 == surf8, axis=2)
    if same.any():
        img8[same] = np.where(surf8[same] < 128, surf8[same] + 40, surf8[same] - 40).astype(np.uint8)
    return surf8, img8, mask


def make_dataset(root: str | Path, *, n_train: int = 30, n_test_good: int = 8,
                 n_test_defect: int = 8, size: int = 128, seed: int = 0) -> Path:
    """Write the synthetic product under ``root`` in the MVTec AD layout and return ``root``.

    ``n_test_defect`` images are written *per defect type* (so ``2 * n_test_defect`` defective
    test images in all).  Existing files with the same names are overwritten (the content is
    a pure function of the arguments); nothing else under ``root`` is touched.
    """
    for name, value, minimum in (("n_train", n_train, 1), ("n_test_good", n_test_good, 0),
                                 ("n_test_defect", n_test_defect, 0), ("size", size, 32)):
        if int(value) != value or value < minimum:
            raise PatchbankError(f"make_dataset: {name} must be an integer >= {minimum}, got {value!r}")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise PatchbankError(f"make_dataset: {root} exists and is not a folder")

    _write_split(root, "train", "train/good", n_train, size, seed)
    _write_split(root, "test/good", "test/good", n_test_good, size, seed)
    for defect in DEFECT_TYPES:
        _write_split(root, f"test/{defect}", f"test/{defect}", n_test_defect, size, seed)
    return root


def dataset_files(*, n_train: int = 30, n_test_good: int = 8, n_test_defect: int = 8) -> list[str]:
    """The files :func:`make_dataset` writes, as paths relative to its root (POSIX)."""
    names = [f"train/good/{i:03d}.png" for i in range(n_train)]
    names += [f"test/good/{i:03d}.png" for i in range(n_test_good)]
    for defect in DEFECT_TYPES:
        names += [f"test/{defect}/{i:03d}.png" for i in range(n_test_defect)]
        names += [f"ground_truth/{defect}/{i:03d}_mask.png" for i in range(n_test_defect)]
    return names


def _write_split(root: Path, kind: str, folder_name: str, count: int, size: int, seed: int) -> None:
    folder = root / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    gt = None
    if kind.startswith("test/") and kind != "test/good":
        gt = root / "ground_truth" / kind.split("/", 1)[1]
        gt.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, mask = render(kind, i, size=size, seed=seed)
        Image.fromarray(image, "RGB").save(folder / f"{i:03d}.png")
        if mask is not None and gt is not None:
            Image.fromarray(mask.astype(np.uint8) * 255, "L").save(gt / f"{i:03d}_mask.png")
