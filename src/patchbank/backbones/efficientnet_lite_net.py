"""The EfficientNet-Lite network in plain torch: timm's ``tf_efficientnet_lite{0,2}`` without
importing timm.

Importing timm costs about 2 s (it imports torchvision and torch._dynamo), paid by every
process that builds the default backbone: a ``patchbank`` command, a service's start, each Ray
actor and fitting task.  This module defines the same network with the same parameter names in
the same order (so the same state dicts load, by name or paired in order), and the same
computation: TensorFlow "SAME" padding (asymmetric, computed from the input size, for the
stride-2 convolutions; symmetric ``k // 2`` for stride 1; a strided inverted residual pads its
narrow input rather than its expanded map, with the same result), batch norm with eps 1e-3, ReLU6, no
squeeze-excite (Tan & Le, *EfficientNet*, 2019; the Lite variants of the TensorFlow
EfficientNet-Lite release: ReLU6, no SE, stem and head not scaled).
``tests/test_efficientnet_lite_net.py`` checks names, shapes and outputs against timm.

Each stage is ``(block kind, repeats, kernel, first stride, expansion, output channels)``;
``ds`` is the depthwise-separable block, ``ir`` the inverted residual (MobileNetV2).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

BN_EPS = 1e-3   # TensorFlow's batch-norm epsilon


class Stage(NamedTuple):
    kind: str        # "ds" or "ir"
    repeats: int
    kernel: int
    stride: int      # of the stage's first block
    expansion: int
    channels: int    # output channels


ARCHS: dict[str, tuple[int, tuple[Stage, ...], int]] = {
    # name: (stem channels, stages, head channels), as timm builds them (channel multiplier,
    # depth multiplier and rounding already applied)
    "tf_efficientnet_lite0": (32, (Stage("ds", 1, 3, 1, 1, 16), Stage("ir", 2, 3, 2, 6, 24),
                                   Stage("ir", 2, 5, 2, 6, 40), Stage("ir", 3, 3, 2, 6, 80),
                                   Stage("ir", 3, 5, 1, 6, 112), Stage("ir", 4, 5, 2, 6, 192),
                                   Stage("ir", 1, 3, 1, 6, 320)), 1280),
    "tf_efficientnet_lite2": (32, (Stage("ds", 1, 3, 1, 1, 16), Stage("ir", 3, 3, 2, 6, 24),
                                   Stage("ir", 3, 5, 2, 6, 48), Stage("ir", 4, 3, 2, 6, 88),
                                   Stage("ir", 4, 5, 1, 6, 120), Stage("ir", 5, 5, 2, 6, 208),
                                   Stage("ir", 1, 3, 1, 6, 352)), 1280),
}


def same_padding(size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]) -> list[int]:
    """TensorFlow's "SAME" padding of an input of spatial ``size`` (H, W), as ``F.pad`` takes it
    (left, right, top, bottom): output size ceil(input / stride); the total padding
    ``max((ceil(i / s) - 1) s + k - i, 0)`` is split with the extra pixel at the bottom / right."""
    pads = []
    for n, k, s in zip(reversed(size), reversed(kernel), reversed(stride)):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return pads


class SameConv2d(nn.Conv2d):
    """A convolution with TensorFlow's "SAME" padding (:func:`same_padding`).  Stride 1 with an
    odd kernel is plain symmetric padding ``k // 2``; a stride-2 one pads its input first
    (``dynamic``), unless :meth:`unpadded` is called on an input padded already."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        self.dynamic = stride > 1
        super().__init__(cin, cout, kernel, stride, padding=0 if self.dynamic else kernel // 2,
                         groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.dynamic:
            x = F.pad(x, same_padding(x.shape[-2:], self.kernel_size, self.stride))
        return super().forward(x)

    def unpadded(self, x: Tensor) -> Tensor:
        """The convolution of ``x`` as given: for an input that already holds the padding."""
        return super().forward(x)


def _norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class DepthwiseSeparable(nn.Module):
    """depthwise k x k conv -> BN -> ReLU6 -> 1 x 1 conv -> BN (+ input where shapes allow)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int):
        super().__init__()
        self.conv_dw = SameConv2d(cin, cin, kernel, stride, groups=cin)
        self.bn1 = _norm(cin)
        self.act = nn.ReLU6(inplace=True)
        self.conv_pw = SameConv2d(cin, cout, 1)
        self.bn2 = _norm(cout)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv_pw(self.act(self.bn1(self.conv_dw(x)))))
        return y + x if self.has_skip else y


class InvertedResidual(nn.Module):
    """1 x 1 expand -> BN -> ReLU6 -> depthwise k x k -> BN -> ReLU6 -> 1 x 1 project -> BN
    (+ input where shapes allow)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        mid = cin * expansion
        self.conv_pw = SameConv2d(cin, mid, 1)
        self.bn1 = _norm(mid)
        self.act1 = nn.ReLU6(inplace=True)
        self.conv_dw = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self.bn2 = _norm(mid)
        self.act2 = nn.ReLU6(inplace=True)
        self.conv_pwl = SameConv2d(mid, cout, 1)
        self.bn3 = _norm(cout)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        if self.conv_dw.dynamic:
            y = self.padded_expansion(x)
            y = self.act2(self.bn2(self.conv_dw.unpadded(y)))
        else:
            y = self.act1(self.bn1(self.conv_pw(x)))
            y = self.act2(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(y))
        return y + x if self.has_skip else y

    def padded_expansion(self, x: Tensor) -> Tensor:
        """The expansion (1 x 1 conv -> BN -> ReLU6) of ``x`` with the strided depthwise conv's
        SAME padding around it, padded before the expansion: ``x`` has ``expansion`` times fewer
        channels, so that copy is that much smaller.  The expansion of a zero pixel is ReLU6 of
        the bias, not zero, so the padding band is set back to zero afterwards: the result is
        that of padding the expanded map, bit for bit in the channels-last layout the feature
        extractor runs (the 1 x 1 conv computes each pixel alone there), up to float rounding in
        NCHW (whose CPU 1 x 1 conv rounds differently with the map's size)."""
        left, right, top, bottom = same_padding(x.shape[-2:], self.conv_dw.kernel_size, self.conv_dw.stride)
        y = self.act1(self.bn1(self.conv_pw(F.pad(x, [left, right, top, bottom]))))
        for dim, before, after in ((2, top, bottom), (3, left, right)):
            if before:
                y.narrow(dim, 0, before).zero_()
            if after:
                y.narrow(dim, y.shape[dim] - after, after).zero_()
        return y


class EfficientNetLite(nn.Module):
    """The whole network (stem, ``blocks`` of stages, head, classifier) with timm's parameter
    names; ``stem`` is ``conv_stem -> bn1 -> ReLU6``.  Only the stem and blocks are used for
    features; the head and classifier exist so that a whole-model state dict loads."""

    def __init__(self, arch: str):
        super().__init__()
        stem, stages, head = ARCHS[arch]
        self.conv_stem = SameConv2d(3, stem, 3, 2)
        self.bn1 = _norm(stem)
        self.blocks = nn.Sequential()
        cin = stem
        for st in stages:
            stage = nn.Sequential()
            for i in range(st.repeats):
                stride = st.stride if i == 0 else 1
                stage.append(DepthwiseSeparable(cin, st.channels, st.kernel, stride) if st.kind == "ds"
                             else InvertedResidual(cin, st.channels, st.kernel, stride, st.expansion))
                cin = st.channels
            self.blocks.append(stage)
        self.conv_head = SameConv2d(cin, head, 1)
        self.bn2 = _norm(head)
        self.classifier = nn.Linear(head, 1000)

    def stem(self) -> nn.Sequential:
        """conv_stem -> bn1 -> ReLU6, sharing this network's modules."""
        return nn.Sequential(self.conv_stem, self.bn1, nn.ReLU6(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        """ImageNet logits (the features path is :meth:`stem` and ``blocks``)."""
        x = self.blocks(self.stem()(x))
        x = F.relu6(self.bn2(self.conv_head(x)))
        return self.classifier(x.mean((2, 3)))
