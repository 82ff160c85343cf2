"""Images unlike the training images in shape or size: what a fit records of its training images'
shapes, and the per-image flag (``other_shape``) and one-line warning a prediction gives.

A model reads every image at one input size.  An image whose shape or size its training images
never had is stretched or scaled to that input, so its features describe a view the bank has no
normal examples of, and its score says little.  Two checks, each skipped where the model does not
know what its training images were (a model file written before the field existed):

* **aspect**: the image's H / W lies more than :data:`~patchbank.io.aspect.TOLERANCE` (relative)
  from the training images' shared one (``train_aspect``, known only when they share one,
  :func:`patchbank.io.aspect.shared_aspect`);
* **size**: the image's size s = sqrt(H x W) lies outside the training images' range
  ``train_scale`` = [min s, max s] widened by :data:`SIZE_FACTOR` on each side
  (s < min / 2 or s > 2 max): it is magnified or reduced at least twice as much as any training
  image, so its texture reaches the network at another scale (a thumbnail, a camera zoomed in).

Both are notes, not errors: the prediction is made, flagged, and a call that predicts several
images warns once (:meth:`TrainShape.note`).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

from patchbank.io.aspect import TOLERANCE, shared_aspect

SIZE_FACTOR = 2.0


def image_scale(size: tuple[int, int]) -> float:
    """The size s = sqrt(H x W) in pixels of an image of ``size`` (H, W)."""
    h, w = size
    return math.sqrt(h * w)


def scale_range(sizes: Sequence[tuple[int, int]]) -> tuple[float, float] | None:
    """[smallest, largest] :func:`image_scale` of ``sizes`` (H, W); None when there are none."""
    scales = [image_scale(s) for s in sizes]
    return (min(scales), max(scales)) if scales else None


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def check_scale_range(value: Any) -> str | None:
    """What is wrong with a recorded ``train_scale`` (None when it is null or a valid
    [low, high] pair of positive finite numbers with low <= high)."""
    if value is None:
        return None
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(_positive(v) for v in value) and value[0] <= value[1])
    return None if ok else f"must be null or [low, high], two positive numbers with low <= high, got {value!r}"


def header_problem(meta: dict[str, Any]) -> tuple[str, str] | None:
    """(field, what is wrong) for a bad ``train_aspect`` (a positive number or null) or
    ``train_scale`` (:func:`check_scale_range`) of a model header or export sidecar; None when
    both are valid or absent (files written before them)."""
    aspect = meta.get("train_aspect")
    if aspect is not None and not _positive(aspect):
        return "train_aspect", f"must be a positive number or null, got {aspect!r}"
    problem = check_scale_range(meta.get("train_scale"))
    return ("train_scale", problem) if problem else None


def unlike_note(shapes: Sequence["TrainShape"], sizes: Sequence[tuple[int, int]]) -> str | None:
    """One line on the images that their own training images' shapes flag (``shapes[i]``
    judges ``sizes[i]``: a multi-category model's images, each against its category's), None
    when none is flagged (:meth:`TrainShape.describe` of the first)."""
    odd = [i for i, (shape, size) in enumerate(zip(shapes, sizes, strict=True)) if shape.is_other(size)]
    return shapes[odd[0]].describe(len(odd), len(sizes), sizes[odd[0]]) if odd else None


@dataclass(frozen=True)
class TrainShape:
    """The training images' shared H / W (``aspect``, None when they do not share one) and the
    range of their sizes sqrt(H x W) (``scale``, None for a model written before it was kept)."""

    aspect: float | None = None
    scale: tuple[float, float] | None = None

    @classmethod
    def of_sizes(cls, sizes: Sequence[tuple[int, int]]) -> "TrainShape":
        """What a fit records of its training images' ``sizes`` (H, W): their shared H / W
        (:func:`~patchbank.io.aspect.shared_aspect`) and :func:`scale_range`, whatever the
        configuration's ``aspect`` (a model read at a fixed shape, a multi-category model's
        categories included, still flags images of another shape)."""
        return cls(shared_aspect(sizes), scale_range(sizes))

    @classmethod
    def from_header(cls, meta: dict[str, Any]) -> "TrainShape":
        """From a model header's or export sidecar's ``train_aspect`` and ``train_scale``
        (either absent in files written before it; checked where the file is read)."""
        scale = meta.get("train_scale")
        return cls(meta.get("train_aspect"), None if scale is None else (float(scale[0]), float(scale[1])))

    def header(self) -> dict[str, Any]:
        """The header fields :meth:`from_header` reads back."""
        return {"train_aspect": self.aspect,
                "train_scale": None if self.scale is None else [float(self.scale[0]), float(self.scale[1])]}

    def other_aspect(self, size: tuple[int, int]) -> bool:
        """Whether H / W of ``size`` lies more than TOLERANCE (relative) from ``aspect``."""
        if self.aspect is None:
            return False
        h, w = size
        return abs((h / w) / self.aspect - 1.0) > TOLERANCE

    def other_size(self, size: tuple[int, int]) -> bool:
        """Whether sqrt(H x W) of ``size`` lies below min / SIZE_FACTOR or above max x SIZE_FACTOR
        of ``scale``."""
        if self.scale is None:
            return False
        s = image_scale(size)
        return s < self.scale[0] / SIZE_FACTOR or s > self.scale[1] * SIZE_FACTOR

    def is_other(self, size: tuple[int, int]) -> bool:
        """Whether an image of ``size`` (H, W) is unlike the training images in shape or size:
        the ``other_shape`` flag of its prediction."""
        return self.other_aspect(size) or self.other_size(size)

    def others(self, sizes: Sequence[tuple[int, int]]) -> list[int]:
        """Indices of the ``sizes`` that :meth:`is_other` flags."""
        return [i for i, size in enumerate(sizes) if self.is_other(size)]

    def note(self, sizes: Sequence[tuple[int, int]]) -> str | None:
        """One line on the images :meth:`others` finds among ``sizes`` (None when there are none)."""
        return unlike_note([self] * len(sizes), sizes)

    def describe(self, count: int, total: int, first: tuple[int, int]) -> str:
        """The line for ``count`` of ``total`` images flagged by :meth:`is_other`, the first of
        size ``first`` (H, W): what makes it unlike the training images."""
        h, w = first
        why = []
        if self.other_aspect(first):
            why.append(f"H / W {h / w:.2f} against {self.aspect:.2f}")
        if self.other_size(first):
            why.append(f"size sqrt(H x W) {image_scale(first):.0f} px against "
                       f"{self.scale[0]:.0f}-{self.scale[1]:.0f}")
        return (f"{count} of {total} images are unlike the training images in shape or size (the "
                f"first, {h} x {w} px: {', '.join(why)}); they are stretched or scaled to the "
                f"model's input, so their maps and scores are not like the training images'")

    def warn(self, sizes: Sequence[tuple[int, int]]) -> None:
        """Warn (one line, :class:`UserWarning`) when :meth:`note` has something to say."""
        note = self.note(sizes)
        if note is not None:
            warnings.warn(note, UserWarning, stacklevel=3)
