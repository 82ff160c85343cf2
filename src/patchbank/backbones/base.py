"""The :class:`Backbone` contract and the two wrappers every family builds on.

A backbone is an eval-mode, ``requires_grad=False`` module whose ``forward(x)`` maps a normalised
``[B, 3, H, W]`` batch to a list of feature maps ``[B, C_l, H / s_l, W / s_l]``, ordered shallow
to deep.  The forward stops after the deepest tapped block: deeper blocks are removed from the
module.  The caller normalises the input with ``backbone.mean`` / ``backbone.std`` and wraps the
call in ``torch.inference_mode()``.
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from patchbank.backbones.precision import full_float32_convolutions
from patchbank.errors import PatchbankError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_LITE_MEAN = (0.5, 0.5, 0.5)
TF_LITE_STD = (0.5, 0.5, 0.5)


class Backbone(nn.Module):
    """A frozen feature extractor; see the module docstring.

    Attributes: ``name``, ``kind`` ("cnn" or "vit"), ``layers`` (the resolved taps, shallow to
    deep), ``map_taps`` (how many of them, the first, draw the anomaly map; the rest are the image
    score's context taps, ``Config.context_taps``; set by :func:`patchbank.backbones.create_backbone`,
    which knows the context count whatever the builder), ``channels`` / ``strides`` (of each returned
    map), ``mean`` / ``std`` (the input normalisation the caller applies), ``weights_sha256`` (of the file loaded; None = random)
    and, for CNNs, ``folded_batchnorms`` (conv -> batch-norm pairs folded by
    :func:`patchbank.backbones.create_backbone`).
    """

    name: str
    kind: str
    layers: tuple
    map_taps: int
    channels: tuple[int, ...]
    strides: tuple[int, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_sha256: str | None
    folded_batchnorms: int

    def describe(self, name: str, kind: str, layers: tuple, mean: tuple, std: tuple,
                 weights_sha256: str | None, probe: int) -> None:
        """Set the metadata, freeze the module; channels and strides are read off a probe
        forward of a zero ``[1, 3, probe, probe]`` input."""
        self.name, self.kind, self.layers = name, kind, tuple(layers)
        self.mean, self.std, self.weights_sha256 = tuple(mean), tuple(std), weights_sha256
        self.eval().requires_grad_(False)
        with torch.inference_mode():
            maps = self(torch.zeros(1, 3, probe, probe))
        self.channels = tuple(int(m.shape[1]) for m in maps)
        self.strides = tuple(probe // int(m.shape[-1]) for m in maps)

    def __call__(self, x: Tensor) -> list[Tensor]:
        """``forward(x)``; on a GPU with full float32 convolutions for the call
        (:func:`patchbank.backbones.precision.full_float32_convolutions`)."""
        if not x.is_cuda:
            return super().__call__(x)
        with full_float32_convolutions():
            return super().__call__(x)

    def train(self, mode: bool = True) -> "Backbone":
        """Always stays in eval mode: the backbone is frozen (BatchNorm statistics included)."""
        return super().train(False)

    def extra_repr(self) -> str:
        """Name, taps, channels and strides, for ``print(backbone)``."""
        return f"name={self.name!r}, layers={self.layers}, channels={self.channels}, strides={self.strides}"


class CnnBackbone(Backbone):
    """stem -> stages[0] -> ... -> stages[-1]; returns the outputs of the tapped stages.

    Stages deeper than the deepest tap are not kept (never computed).
    """

    def __init__(self, stem: nn.Module, stages: Sequence[nn.Module], taps: Sequence[int]) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(list(stages)[:max(taps) + 1])  # nothing deeper is computed
        self._taps = frozenset(taps)

    def forward(self, x: Tensor) -> list[Tensor]:
        """The tapped stage outputs for the normalised batch ``x``, shallow to deep."""
        x = self.stem(x)
        out = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self._taps:
                out.append(x)
        return out


class VitBackbone(Backbone):
    """timm VisionTransformer truncated after the deepest tap; returns patch-token maps.

    Each tapped block's raw output (before the final LayerNorm, no L2 normalisation) keeps only
    the patch tokens (CLS and register tokens dropped), as ``[B, C, H / patch, W / patch]``;
    H and W must be multiples of the patch size (else :class:`PatchbankError`).
    """

    def __init__(self, model: nn.Module, taps: Sequence[int]) -> None:
        super().__init__()
        model.prune_intermediate_layers(list(taps), prune_norm=True, prune_head=True)
        self.model = model
        self.patch = int(model.patch_embed.patch_size[0])
        self._taps = list(taps)

    def forward(self, x: Tensor) -> list[Tensor]:
        """The tapped blocks' patch-token maps for the normalised batch ``x``, shallow to deep."""
        if x.shape[-2] % self.patch or x.shape[-1] % self.patch:
            raise PatchbankError(f"{self.name}: input size {tuple(x.shape[-2:])} is not a multiple "
                                 f"of the patch size {self.patch}")
        return self.model.forward_intermediates(x, indices=self._taps, norm=False, stop_early=True,
                                                output_fmt="NCHW", intermediates_only=True)


def block_taps(name: str, layers: Sequence[Any] | None, default: Sequence[int], n: int) -> list[int]:
    """Resolve block indices of a backbone with ``n`` blocks (negative = from the end; None =
    ``default``) to sorted absolute indices; anything else, or one block named twice (``2,2``,
    ``2,-5`` of 7), is a one-line error."""
    taps = set()
    for layer in default if layers is None else layers:
        try:   # an integer, or its text (the CLI's); never a float (2.5 would tap block 2)
            index = int(layer) if isinstance(layer, (numbers.Integral, str)) else n
        except ValueError:
            index = n  # out of range -> error below
        if isinstance(layer, bool) or not -n <= index < n:
            raise PatchbankError(f"layers: {layer!r} is not a block index of {name} (use {-n}..{n - 1})")
        if index % n in taps:
            raise PatchbankError(f"layers: block {index % n} of {name} is named twice ({layer!r})")
        taps.add(index % n)
    if not taps:
        raise PatchbankError(f"layers: empty for {name}")
    return sorted(taps)


def with_context(name: str, taps: list[int], context: int, depth: int) -> list[int]:
    """Sorted block indices ``taps`` of a backbone with ``depth`` blocks, followed by the
    ``context`` blocks right after the deepest one (``Config.context_taps``); a one-line error
    when there are not that many."""
    last = max(taps)
    if last + context >= depth:
        left = depth - 1 - last
        fix = "set context_taps 0" if left == 0 else f"use context_taps <= {left}"
        raise PatchbankError(f"context_taps: {name} has {left} block(s) after its deepest tap "
                             f"(block {last} of 0..{depth - 1}); {fix}")
    return taps + list(range(last + 1, last + 1 + context))
