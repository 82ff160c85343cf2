"""Anomaly maps back in the original image's coordinates: the inverse of the resize and crops.

The detector sees a view of each image (:func:`patchbank.io.images.prepare_view`): the image is
resized to ``config.image_size`` (stretched, or with ``keep_aspect`` scaled to cover it and
centre-cropped), then centre-cropped to ``config.crop_size``.  Its anomaly map lies on that
view's grid, ``config.input_size``.  What a person or a line receives must lie on the original
image instead, so this module maps the map back:

* :func:`view_window` -- where the view lies in the original image, in original pixels;
* :func:`to_original` -- the map resampled onto every original pixel (bilinear, pixel centres
  aligned as the resize aligned them); pixels whose centre lies outside the view (cut off by a
  crop) were not inspected and are NaN;
* :func:`region_mask` / :func:`region_polygons` -- the anomalous region (map above a level) as a
  mask and as outline polygons in original pixel coordinates.

Coordinates: pixel ``(row, col)`` of an image of height ``H`` covers the continuous interval
``[row, row + 1)``; a resize from ``H`` to ``H'`` maps the continuous coordinate ``y`` to
``y * H' / H`` (PIL's and torchvision's convention for centre-aligned resampling), so pixel
centres map as ``(row + 0.5) * H' / H - 0.5``.  Polygons are given as ``[x, y]`` = ``[col, row]``
in the original image's index space (``[0, 0]`` is the centre of the top-left pixel).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from patchbank.config import MAX_INPUT_PIXELS
from patchbank.errors import PatchbankError

#: The most pixels a resize before the crop may have (``keep_aspect`` scales an image to cover the
#: input, so a thin strip would otherwise ask for an unbounded one): four network inputs' worth.
MAX_RESIZED_PIXELS = 4 * MAX_INPUT_PIXELS

__all__ = ["Window", "view_window", "network_window", "crop_offset", "to_original", "inspected",
           "region_mask", "region_polygons"]


@dataclass(frozen=True)
class Window:
    """The view inside the original image.

    ``resized`` is the (H, W) the image was resized to before cropping, ``offset`` the (top, left)
    of the view in that resized image (both crops together), ``size`` the view's (H, W) =
    ``config.input_size``, ``original`` the original image's (H, W).
    """

    original: tuple[int, int]
    resized: tuple[int, int]
    offset: tuple[int, int]
    size: tuple[int, int]

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(top, left, height, width) of the view in original pixels (continuous coordinates)."""
        sy, sx = (self.original[0] / self.resized[0], self.original[1] / self.resized[1])
        return (self.offset[0] * sy, self.offset[1] * sx, self.size[0] * sy, self.size[1] * sx)

    def axis(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """For each original pixel along ``dim`` (0 rows, 1 columns): its centre's coordinate on
        the view's grid (index space) and whether that centre lies inside the view."""
        n, m = self.original[dim], self.resized[dim]
        resized = (np.arange(n, dtype=np.float64) + 0.5) * (m / n)       # continuous, resized image
        inside = (resized >= self.offset[dim]) & (resized < self.offset[dim] + self.size[dim])
        return resized - 0.5 - self.offset[dim], inside

    def map_back(self, anomaly_map: np.ndarray) -> np.ndarray:
        """The map [H, W] on the view's grid (``size``) resampled onto the original image:
        float32 [H0, W0], bilinear between the view's pixel centres, NaN where the crop cut
        the image off (not inspected)."""
        m = np.asarray(anomaly_map, dtype=np.float32)
        if m.ndim != 2 or tuple(m.shape) != tuple(self.size):
            raise PatchbankError(f"anomaly map must be [H, W] = {tuple(self.size)} (the model's "
                                 f"input size), got shape {tuple(m.shape)}")
        rows, row_in = self.axis(0)
        cols, col_in = self.axis(1)
        out = _interp_axis(_interp_axis(m, rows, 0), cols, 1).astype(np.float32)
        out[~row_in, :] = np.nan
        out[:, ~col_in] = np.nan
        return out


def _centre_offset(have: int, want: int) -> int:
    """The top / left offset of a centred crop (as :func:`patchbank.io.images._resize_crop`
    crops: Python's round-half-to-even of the half excess)."""
    return int(round((have - want) / 2.0))


def view_window(original_hw: tuple[int, int], config) -> Window:
    """Where the view of an ``original_hw`` (H, W) image lies, for ``config``'s resize and crops."""
    oh, ow = (int(v) for v in original_hw)
    if oh <= 0 or ow <= 0:
        raise PatchbankError(f"original image size must be positive (H, W), got {original_hw}")
    h, w = config.image_size
    if config.keep_aspect:
        scale = max(h / oh, w / ow)
        rh, rw = max(h, round(oh * scale)), max(w, round(ow * scale))
        if rh * rw > MAX_RESIZED_PIXELS:   # a thin strip covering image_size: an unbounded resize
            raise PatchbankError(f"an image of {oh} x {ow} px (H x W) would be resized to {rh} x {rw} to "
                                 f"cover {h} x {w} with keep_aspect, over {MAX_RESIZED_PIXELS:,} pixels: "
                                 f"its shape is too far from the model's input (crop it first)")
    else:
        rh, rw = h, w
    top, left = _centre_offset(rh, h), _centre_offset(rw, w)
    ch, cw = config.input_size
    if config.crop_size is not None:
        top, left = top + _centre_offset(h, ch), left + _centre_offset(w, cw)
    return Window((oh, ow), (rh, rw), (top, left), (ch, cw))


def crop_offset(config) -> tuple[int, int]:
    """(top, left) of the view inside the tensor the backbone reads: (0, 0), or with
    ``crop_at="features"`` the centre crop's offset in the resize (the backbone reads the whole
    resize, :attr:`Config.network_size <patchbank.config.Config.network_size>`)."""
    if config.crop_at != "features" or config.crop_size is None:
        return 0, 0
    (h, w), (ch, cw) = config.image_size, config.crop_size
    return _centre_offset(h, ch), _centre_offset(w, cw)


def network_window(original_hw: tuple[int, int], config) -> Window:
    """Where the tensor the backbone reads lies in an ``original_hw`` image: :func:`view_window`,
    widened to the whole resize with ``crop_at="features"``."""
    win = view_window(original_hw, config)
    top, left = crop_offset(config)
    return Window(win.original, win.resized, (win.offset[0] - top, win.offset[1] - left),
                  tuple(config.network_size))


def _interp_axis(values: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``values`` along ``axis`` at ``coords`` (index space; clamped
    to the first and last sample, as a half-pixel border is)."""
    n = values.shape[axis]
    c = np.clip(coords, 0.0, n - 1.0)
    lo = np.floor(c).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    t = (c - lo).astype(np.float32)
    a, b = np.take(values, lo, axis=axis), np.take(values, hi, axis=axis)
    shape = [1, 1]
    shape[axis] = -1
    t = t.reshape(shape)
    return a * (1.0 - t) + b * t


def to_original(anomaly_map: np.ndarray, original_hw: tuple[int, int], config) -> np.ndarray:
    """The map [H, W] on ``config.input_size`` resampled onto an ``original_hw`` image
    (:meth:`Window.map_back` of its :func:`view_window`)."""
    return view_window(original_hw, config).map_back(anomaly_map)


def inspected(original_hw: tuple[int, int], config) -> np.ndarray:
    """bool [H0, W0]: True where the original pixel's centre lies inside the view."""
    win = view_window(original_hw, config)
    return win.axis(0)[1][:, None] & win.axis(1)[1][None, :]


def region_mask(original_map: np.ndarray, level: float) -> np.ndarray:
    """bool [H0, W0]: the anomalous region, pixels whose map value is above ``level`` (a pixel
    not inspected, NaN, is never in it)."""
    m = np.asarray(original_map, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(m, nan=-np.inf) > float(level)


def _area(polygon: np.ndarray) -> float:
    """The area of a closed polygon of (row, col) points (shoelace)."""
    y, x = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def region_polygons(mask: np.ndarray, max_regions: int = 100,
                    tolerance: float = 0.5) -> list[list[list[float]]]:
    """The outline of each connected region of ``mask`` (8-connected, holes filled), largest
    first, at most ``max_regions``: each a closed polygon ``[[x, y], ...]`` (first point repeated
    last) in the mask's index space, tracing the 0.5 level between region and background and
    simplified to ``tolerance`` pixels (not where that would take half its area: a region of a
    few pixels keeps its traced outline).  Needs scikit-image (``pip install patchbank[serve]``)."""
    try:
        from scipy import ndimage
        from skimage import measure
    except ImportError:
        raise PatchbankError("region polygons need scikit-image: pip install 'patchbank[serve]'") from None
    mask = np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return []
    areas = np.bincount(labels.ravel())[1:]
    boxes = ndimage.find_objects(labels)
    out = []
    for lab in np.argsort(-areas, kind="stable")[:max_regions] + 1:
        sl = boxes[lab - 1]
        comp = ndimage.binary_fill_holes(labels[sl] == lab)
        padded = np.pad(comp, 1).astype(np.float32)
        # the region is 8-connected: so is its outline ("high"), or a part touching at a corner is lost
        traced = max(measure.find_contours(padded, 0.5, fully_connected="high"), key=len)
        contour = measure.approximate_polygon(traced, tolerance)
        if _area(contour) < 0.5 * _area(traced):   # a region of a few pixels: simplified to a line
            contour = traced
        ys = contour[:, 0] - 1 + sl[0].start
        xs = contour[:, 1] - 1 + sl[1].start
        out.append([[float(x), float(y)] for x, y in zip(xs, ys)])
    return out
