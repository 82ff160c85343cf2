"""Reading images and turning them into normalised backbone input, in streamed batches.

Preprocessing follows the PatchCore / LMF-Core protocol: resize to ``config.image_size`` (bilinear,
antialiased), centre-crop to ``config.crop_size``, scale to [0, 1], normalise with the backbone's
mean and std.  Grayscale and palette images are converted to RGB; a file that cannot be decoded
raises :class:`PatchbankError` naming it.  Decoding runs in a small thread pool one batch ahead
of the consumer (PIL releases the GIL while decoding and resizing).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from patchbank.errors import PatchbankError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Sorted image files directly inside ``folder``; an error if it is missing or holds none."""
    folder = Path(folder)
    if not folder.exists():
        raise PatchbankError(f"folder not found: {folder}")
    if not folder.is_dir():
        raise PatchbankError(f"not a folder: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise PatchbankError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {folder}")
    return files


def as_items(images: Any) -> list[Any]:
    """Normalise the user's ``images`` argument to a list of paths / PIL images / arrays.

    Accepts a folder, a single file, a PIL image, an HxW(x3) array, or a sequence of those
    (folders inside a sequence are expanded).
    """
    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        if path.is_dir():
            return list(list_images(path))
        if not path.exists():
            raise PatchbankError(f"file or folder not found: {path}")
        return [path]
    if isinstance(images, (Image.Image, np.ndarray)):
        return [images]
    items: list[Any] = []
    for item in images:
        if isinstance(item, (str, os.PathLike)):
            items.extend(as_items(item))
        elif isinstance(item, (Image.Image, np.ndarray)):
            items.append(item)
        else:
            raise PatchbankError(f"unsupported image input of type {type(item).__name__}")
    if not items:
        raise PatchbankError("no images given")
    return items


def item_name(item: Any) -> str | None:
    """The name an input is reported under: its path as a string, None for in-memory images."""
    return str(item) if isinstance(item, (str, os.PathLike)) else None


def open_rgb(item: Any, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode one input to an RGB PIL image; grayscale is converted, failures name the file."""
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, np.ndarray):
        arr = item
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise PatchbankError(f"image array must be HxW or HxWx3, got shape {item.shape}")
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        if arr.dtype != np.uint8:
            raise PatchbankError(f"image array must be uint8, got {arr.dtype}")
        return Image.fromarray(arr[..., :3])
    path = Path(item)
    try:
        with Image.open(path) as im:
            if draft_size is not None and im.format == "JPEG":
                # JPEG can decode at 1/2, 1/4, 1/8 scale: never below the requested size.
                im.draft("RGB", (draft_size[1], draft_size[0]))
            return im.convert("RGB")
    except FileNotFoundError:
        raise PatchbankError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise PatchbankError(f"cannot read image {path}: {exc}") from None


def _centre_crop(arr: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """The centred ``crop`` (H, W) window of ``arr`` (a view; ``arr`` itself when the sizes are
    equal).  The top / left offset is ``round((h - ch) / 2)`` with Python's round-half-to-even,
    so an odd excess of 3 starts at 2 but one of 5 starts at 2 as well (not 3)."""
    h, w = arr.shape[:2]
    ch, cw = crop
    if (ch, cw) == (h, w):
        return arr
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return arr[top:top + ch, left:left + cw]


def _resize_crop(im: Image.Image, config, resample=Image.BILINEAR) -> np.ndarray:
    """Resize to ``config.image_size`` (H, W) (stretching, or with ``config.keep_aspect`` scaling
    by ``max(H / height, W / width)`` to cover it and centre-cropping the excess, like
    torchvision's Resize(int) + CenterCrop), then centre-crop to ``config.crop_size`` if set."""
    h, w = config.image_size
    target = (w, h)
    if config.keep_aspect:
        scale = max(h / im.height, w / im.width)
        target = (max(w, round(im.width * scale)), max(h, round(im.height * scale)))
    if im.size != target:
        im = im.resize(target, resample)
    arr = _centre_crop(np.asarray(im), (h, w))
    return _centre_crop(arr, config.crop_size) if config.crop_size is not None else arr


def prepare_view(item: Any, config) -> np.ndarray:
    """The resized and centre-cropped RGB view (uint8, HxWx3) that an anomaly map aligns with."""
    return _resize_crop(open_rgb(item, config.image_size), config)


def crop_mask(mask: np.ndarray, config) -> np.ndarray:
    """Apply the same resize (nearest) and crops to a binary mask; returns bool HxW."""
    im = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255)
    return _resize_crop(im, config, Image.NEAREST) > 127


def to_tensor(batch: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 HxWx3 arrays -> float32 [B, 3, H, W] normalised with ``mean``/``std``."""
    x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return x.sub_(m).div_(s)


class ImageStream:
    """Iterate over inputs as normalised tensor batches, decoding the next batch in the background.

    Yields ``(tensor [B,3,H,W], names list)``; only two batches are in memory at any time.
    """

    def __init__(self, items: Sequence[Any], config, mean: Sequence[float], std: Sequence[float],
                 batch_size: int | None = None, workers: int = 2, pin: bool = False):
        self.items = list(items)
        self.config = config
        self.mean, self.std = mean, std
        self.batch_size = batch_size or config.batch_size
        self.workers = max(1, workers)
        self.pin = pin

    def __len__(self) -> int:
        """The number of batches."""
        return (len(self.items) + self.batch_size - 1) // self.batch_size

    def _load(self, chunk: Sequence[Any], pool: ThreadPoolExecutor) -> torch.Tensor:
        arrays = list(pool.map(lambda it: prepare_view(it, self.config), chunk))
        batch = to_tensor(arrays, self.mean, self.std)
        return batch.pin_memory() if self.pin else batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[str | None]]]:
        """``(batch [B, 3, H, W], names)`` in input order; decoding errors surface here."""
        chunks = [self.items[i:i + self.batch_size] for i in range(0, len(self.items), self.batch_size)]
        if not chunks:
            return
        with ThreadPoolExecutor(self.workers) as pool, ThreadPoolExecutor(1) as ahead:
            future = ahead.submit(self._load, chunks[0], pool)
            for i, chunk in enumerate(chunks):
                batch = future.result()
                if i + 1 < len(chunks):
                    future = ahead.submit(self._load, chunks[i + 1], pool)
                yield batch, [item_name(it) for it in chunk]
