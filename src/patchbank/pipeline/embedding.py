"""Per-layer patch rows -> bank-space rows: fusion, then the optional Gaussian projection.

LMF-Core Sec. 4.3-4.4 (VG-Fusion, Eq. 1; JL projection to d'), PatchCore (concatenation),
StructCore Eqs. 1-2 (per-layer L2 normalisation, projection).  The fusion's statistics are
learnt from the streamed :class:`~patchbank.pipeline.fusion.Moments` of the normal patches; the
projection matrix is drawn from the seed once the fused width is known.
"""
from __future__ import annotations

import torch

from patchbank.pipeline.fusion import Fusion, Moments, make_fusion
from patchbank.pipeline.projection import GaussianProjection


class Embedding:
    """``transform(layers) = projection(fusion(layers))``; ``projection_`` is None when the
    config's ``projection_dim`` is None."""

    def __init__(self, fusion: Fusion, projection_dim: int | None, seed: int):
        self.fusion = fusion
        self.projection_dim = projection_dim
        self.seed = seed

    @classmethod
    def from_config(cls, config) -> "Embedding":
        """The unfitted embedding ``config`` asks for (fusion, projection_dim, seed)."""
        return cls(make_fusion(config), config.projection_dim, config.seed)

    @property
    def needs_moments(self) -> bool:
        """Whether :meth:`fit` needs the streamed Moments (the fusion's statistics)."""
        return self.fusion.needs_moments

    def fit(self, moments: Moments | None, sample: list[torch.Tensor]) -> "Embedding":
        """Fit the fusion on ``moments``, then draw the projection for the fused width of the
        per-layer rows ``sample`` (any one row per layer will do)."""
        self.fusion_ = self.fusion.fit(moments)
        self.projection_ = None
        if self.projection_dim is not None:
            fused_dim = self.fusion_.transform(sample).shape[1]
            self.projection_ = GaussianProjection(self.projection_dim, self.seed).fit(fused_dim)
        return self

    def transform(self, layers: list[torch.Tensor]) -> torch.Tensor:
        """Per-layer rows [n, C_l] -> bank-space rows [n, d]."""
        f = self.fusion_.transform(layers)
        return self.projection_.transform(f) if self.projection_ is not None else f

    def state(self) -> dict[str, torch.Tensor]:
        """The fusion's and the projection's saved tensors."""
        out = dict(self.fusion_.state())
        if self.projection_ is not None:
            out.update(self.projection_.state())
        return out

    def load_state(self, tensors: dict[str, torch.Tensor]) -> "Embedding":
        """Restore a fitted embedding from :meth:`state`'s tensors."""
        self.fusion_ = self.fusion.load_state(tensors)
        self.projection_ = None
        if "projection.matrix" in tensors:
            self.projection_ = GaussianProjection(self.projection_dim, self.seed).load_state(tensors)
        return self
