"""Fusion of per-layer patch features into one vector per patch.

* :class:`EqualFusion`  - PatchCore: plain concatenation, every layer and channel equal.
* :class:`VGFusion`     - LMF-Core Sec. 4.3, Eq. 1: keep the top-kappa channels of each layer by
  their std over normal patches, standardise each kept channel, weight layer l by
  w_l = (1/v_l) / sum_k (1/v_k), v_l = mean over the layer's channels of the across-patch
  variance of normal features (raw features, all channels of the layer, as Sec. 4.3 defines v_l
  before pruning), and concatenate.
* :class:`L2Fusion`     - StructCore Eq. 1: L2-normalise each layer's patch vector, concatenate.

Statistics come from normal (training) patches only and are accumulated in one streaming pass
(:class:`Moments`), so fitting never needs all patches in memory.  Every fusion is a
:class:`Fusion`: ``fit(moments)`` (``moments`` is None for those whose ``needs_moments`` is
False), ``transform(layers)``, ``state()`` / ``load_state(tensors)``; :func:`make_fusion` builds
the one registered under ``config.fusion`` (:func:`register_fusion`).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable

import torch
import torch.nn.functional as F

from patchbank.errors import PatchbankError


class Moments:
    """Streaming per-channel mean and variance of each layer from shifted sums: the first row
    seen is the shift (so the sums do not cancel), each batch's sums are taken in float32 (torch
    sums a batch's column in cascade, relative error ~1e-7: the precision of the float32
    features themselves) and accumulated across batches in float64 (docs/performance.md,
    "Fusion moments", for why not float64 throughout)."""

    def __init__(self) -> None:
        self.count = 0
        self.shift: list[torch.Tensor] = []
        self.sum: list[torch.Tensor] = []
        self.sumsq: list[torch.Tensor] = []

    def update(self, layers: list[torch.Tensor]) -> None:
        """Add a batch of per-layer rows [n, C_l]."""
        if not self.shift:
            self.shift = [x[0].float().clone() for x in layers]
            self.sum = [torch.zeros_like(s, dtype=torch.float64) for s in self.shift]
            self.sumsq = [torch.zeros_like(s, dtype=torch.float64) for s in self.shift]
        for i, x in enumerate(layers):
            d = x.float() - self.shift[i]
            self.sum[i] += d.sum(0).double()
            self.sumsq[i] += (d * d).sum(0).double()
        self.count += layers[0].shape[0]

    def mean(self) -> list[torch.Tensor]:
        """Per-channel mean of each layer, float64."""
        return [sh.double() + s / self.count for sh, s in zip(self.shift, self.sum)]

    def var(self) -> list[torch.Tensor]:
        """Population variance per channel (divides by the count)."""
        return [(q / self.count - (s / self.count) ** 2).clamp_min(0.0)
                for s, q in zip(self.sum, self.sumsq)]


class Fusion(ABC):
    """Per-layer patch rows [n, C_l] -> one fused row [n, D] per patch."""

    needs_moments: bool = False   # True: fit needs the per-channel Moments of the normal patches

    @abstractmethod
    def fit(self, moments: Moments | None) -> "Fusion":
        """Learn the fusion's statistics (if any) from ``moments``; returns self."""

    @abstractmethod
    def transform(self, layers: list[torch.Tensor]) -> torch.Tensor:
        """Fuse per-layer rows [n, C_l] into [n, D]."""

    @abstractmethod
    def widths(self, channels: list[int]) -> list[int]:
        """The fused row's columns per layer, in order, for layers of ``channels`` channels
        (every fusion here keeps each layer's columns together: concatenation)."""

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors saved with the model (names prefixed ``fusion.``)."""
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> "Fusion":
        """Restore what :meth:`state` saved; returns self."""
        return self


class EqualFusion(Fusion):
    """PatchCore's equal-weight concatenation (stateless)."""

    def fit(self, moments: Moments | None = None) -> "EqualFusion":
        return self

    def transform(self, layers: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(layers, dim=1)

    def widths(self, channels: list[int]) -> list[int]:
        return [int(c) for c in channels]


class L2Fusion(EqualFusion):
    """StructCore Eq. 1: per-layer L2 normalisation, then concatenation."""

    def transform(self, layers: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([F.normalize(x, dim=1) for x in layers], dim=1)


class VGFusion(Fusion):
    """Variance-Guided Fusion (LMF-Core Eq. 1 and channel pruning).

    State after :meth:`fit`: per layer the kept channel indices ``keep_[l]``, their mean
    ``mean_[l]`` and a scale ``scale_[l] = w_l / sigma_c`` so that the fused feature is
    ``concat_l((x_l[:, keep_l] - mean_l) * scale_l)``.
    """

    needs_moments = True

    def __init__(self, kappa: float = 0.5, eps: float = 1e-8):
        self.kappa = kappa
        self.eps = eps

    def fit(self, moments: Moments) -> "VGFusion":
        """Eq. 1 from the moments: layer weights w_l, the top-kappa channels by std, their mean
        and scale w_l / sigma_c."""
        means, variances = moments.mean(), moments.var()
        inv_v = [1.0 / (v.mean().item() + self.eps) for v in variances]          # 1 / v_l
        self.layer_weights_ = [iv / sum(inv_v) for iv in inv_v]                   # Eq. (1)
        self.keep_, self.mean_, self.scale_ = [], [], []
        for mu, var, w in zip(means, variances, self.layer_weights_):
            std = var.sqrt()
            n_keep = max(1, math.ceil(self.kappa * std.numel() - 1e-9))
            # top-kappa channels by std; stable sort so ties keep the lower channel index
            order = torch.sort(-std, stable=True).indices[:n_keep]
            keep = torch.sort(order).values
            self.keep_.append(keep)
            self.mean_.append(mu[keep].float())
            self.scale_.append((w / (std[keep] + self.eps)).float())
        return self

    def transform(self, layers: list[torch.Tensor]) -> torch.Tensor:
        dev = layers[0].device
        parts = [(x[:, k.to(dev)] - m.to(dev)) * s.to(dev)
                 for x, k, m, s in zip(layers, self.keep_, self.mean_, self.scale_)]
        return torch.cat(parts, dim=1)

    def widths(self, channels: list[int]) -> list[int]:
        """The kept channels of each layer (``channels`` is not needed once fitted)."""
        return [int(k.numel()) for k in self.keep_]

    def state(self) -> dict[str, torch.Tensor]:
        out = {}
        for i, (k, m, s) in enumerate(zip(self.keep_, self.mean_, self.scale_)):
            out[f"fusion.keep.{i}"], out[f"fusion.mean.{i}"], out[f"fusion.scale.{i}"] = k, m, s
        out["fusion.layer_weights"] = torch.tensor(self.layer_weights_, dtype=torch.float64)
        return out

    def load_state(self, tensors: dict[str, torch.Tensor]) -> "VGFusion":
        n = sum(1 for name in tensors if name.startswith("fusion.keep."))
        self.keep_ = [tensors[f"fusion.keep.{i}"].long() for i in range(n)]
        self.mean_ = [tensors[f"fusion.mean.{i}"].float() for i in range(n)]
        self.scale_ = [tensors[f"fusion.scale.{i}"].float() for i in range(n)]
        self.layer_weights_ = tensors["fusion.layer_weights"].tolist()
        return self


FUSIONS: dict[str, Callable[..., Fusion]] = {}


def register_fusion(name: str, factory: Callable[..., Fusion]) -> None:
    """Make ``name`` (a ``Config.fusion`` value) build its fusion with ``factory(config)``."""
    FUSIONS[name] = factory


register_fusion("equal", lambda config: EqualFusion())
register_fusion("vg", lambda config: VGFusion(config.kappa))
register_fusion("l2", lambda config: L2Fusion())


def make_fusion(config) -> Fusion:
    """The registered fusion ``config.fusion``, unfitted."""
    try:
        factory = FUSIONS[config.fusion]
    except KeyError:
        raise PatchbankError(f"unknown fusion {config.fusion!r}; choose one of "
                             f"{', '.join(sorted(FUSIONS))}") from None
    return factory(config)
