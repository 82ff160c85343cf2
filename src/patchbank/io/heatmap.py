"""Anomaly maps as colour images: a jet colormap in numpy and overlays on the input view.

The map and the image must have the same height and width: either the view the detector saw
(``patchbank.io.images.prepare_view``, size ``config.input_size``) with the map as predicted, or
-- what a person should be shown -- the original image with the map mapped back onto it
(:func:`patchbank.io.image_coords.to_original`).  NaN map values mark pixels that were not
inspected (cut off by the crop): overlays draw them as the image in dimmed grey, not as a
colour, and :func:`heatmap_rgba` makes them transparent.

Colours are on an absolute scale given by ``vmin``/``vmax`` (values at or below ``vmin`` are
dark blue, at or above ``vmax`` dark red), so overlays drawn with the same range are
comparable across images.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from patchbank.errors import PatchbankError

__all__ = ["colorize", "overlay", "save_overlay", "jet", "heatmap_rgba", "png_bytes"]


def jet(x: np.ndarray) -> np.ndarray:
    """The classic jet colormap: values in [0, 1] (clipped) -> float RGB in [0, 1], shape (..., 3).

    0 -> dark blue (0, 0, 0.5), 0.125 -> blue, 0.375 -> cyan, 0.625 -> yellow, 0.875 -> red,
    1 -> dark red (0.5, 0, 0).
    """
    x = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0)
    four = 4.0 * x
    r = np.clip(1.5 - np.abs(four - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(four - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(four - 1.0), 0.0, 1.0)
    return np.stack([r, g, b], axis=-1)


def _check_range(vmin: float, vmax: float) -> tuple[float, float]:
    try:
        vmin, vmax = float(vmin), float(vmax)
    except (TypeError, ValueError):
        raise PatchbankError(f"heatmap range must be numbers, got vmin={vmin!r}, vmax={vmax!r}") from None
    if not (math.isfinite(vmin) and math.isfinite(vmax)) or vmax < vmin:
        raise PatchbankError(f"heatmap range must be finite with vmin <= vmax, got vmin={vmin}, vmax={vmax}")
    return vmin, vmax


def _as_map(anomaly_map: Any) -> np.ndarray:
    m = np.asarray(anomaly_map, dtype=np.float32)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise PatchbankError(f"anomaly map must be 2-D [H, W], got shape {tuple(m.shape)}")
    return m


def colorize(anomaly_map: Any, vmin: float, vmax: float) -> np.ndarray:
    """Map values to jet colours: ``vmin`` and below -> dark blue, ``vmax`` and above -> dark red.

    Returns uint8 [H, W, 3].  NaN is drawn as ``vmin``.  With ``vmin == vmax`` every value above
    it is drawn as the top colour and every other value as the bottom one.
    """
    m = _as_map(anomaly_map)
    vmin, vmax = _check_range(vmin, vmax)
    span = vmax - vmin
    if span > 0:
        x = (m - vmin) / span
    else:
        x = (m > vmax).astype(np.float32)
    x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0)
    return np.rint(jet(x) * 255.0).astype(np.uint8)


def _as_image(image: Any) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if img.ndim != 3 or img.shape[2] != 3:
        raise PatchbankError(f"image must be [H, W, 3] RGB, got shape {tuple(img.shape)}")
    if img.dtype != np.uint8:
        raise PatchbankError(f"image must be uint8, got {img.dtype}")
    return img


def overlay(image: Any, anomaly_map: Any, vmin: float, vmax: float, alpha: float = 0.5) -> np.ndarray:
    """Blend the colorized map over ``image`` (uint8 [H, W, 3] or a PIL image): ``(1-alpha)*image
    + alpha*colours``.  The image and map must have the same height and width."""
    img = _as_image(image)
    m = _as_map(anomaly_map)
    if img.shape[:2] != m.shape:
        raise PatchbankError(
            f"image shape {tuple(img.shape)} does not match anomaly map shape {tuple(m.shape)}; "
            "use the view the map was computed on (patchbank.io.images.prepare_view)")
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise PatchbankError(f"alpha must be a number in [0, 1], got {alpha!r}") from None
    if not 0.0 <= alpha <= 1.0:
        raise PatchbankError(f"alpha must be in [0, 1], got {alpha}")
    colours = colorize(m, vmin, vmax).astype(np.float32)
    out = (1.0 - alpha) * img.astype(np.float32) + alpha * colours
    skipped = np.isnan(m)
    if skipped.any():   # not inspected: the image in dimmed grey
        grey = img.astype(np.float32).mean(axis=2, keepdims=True) * 0.45 + 40.0
        out = np.where(skipped[..., None], grey, out)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def heatmap_rgba(anomaly_map: Any, vmin: float, vmax: float) -> np.ndarray:
    """The colorized map as uint8 RGBA [H, W, 4]: opaque jet colours, transparent (alpha 0)
    where the map is NaN (not inspected)."""
    m = _as_map(anomaly_map)
    alpha = np.where(np.isnan(m), 0, 255).astype(np.uint8)
    return np.concatenate([colorize(m, vmin, vmax), alpha[..., None]], axis=2)


def png_bytes(array: Any) -> bytes:
    """A uint8 image array ([H, W] grey or binary, [H, W, 3] RGB, [H, W, 4] RGBA; bool is
    written as 0 / 255) encoded as PNG."""
    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise PatchbankError(f"png_bytes needs uint8 [H, W], [H, W, 3] or [H, W, 4], got "
                             f"{arr.dtype} {tuple(arr.shape)}")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def save_overlay(path: str | Path, image: Any, anomaly_map: Any, vmin: float, vmax: float,
                 overwrite: bool = False, alpha: float = 0.5) -> Path:
    """Write :func:`overlay` as an image file (format from the suffix, PNG recommended).

    Creates missing parent folders.  Raises :class:`PatchbankError` if ``path`` exists and
    ``overwrite`` is False.  Returns the path written.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise PatchbankError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")
    if path.exists() and path.is_dir():
        raise PatchbankError(f"{path} is a folder, not an image file")
    rgb = overlay(image, anomaly_map, vmin, vmax, alpha=alpha)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb, "RGB").save(path)
    except (OSError, ValueError) as exc:  # unknown suffix, unwritable folder, ...
        raise PatchbankError(f"cannot write {path}: {exc}") from None
    return path
