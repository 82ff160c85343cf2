"""Gaussian Johnson-Lindenstrauss projection (LMF-Core Sec. 4.4, StructCore Eq. 2).

z = R^T f / sqrt(d'), R in R^{D x d'} with i.i.d. N(0, 1) entries drawn from a seeded generator.
E||z||^2 = ||f||^2, so distances keep their scale and pairwise distances are preserved within
(1 +- eps) with high probability for d' = O(log n / eps^2).  R is stored with the model.
"""
from __future__ import annotations

import torch

from patchbank.linalg import gaussian_matrix, seeded




class GaussianProjection:
    """z = f R / sqrt(d'): ``fit(in_dim)`` draws R from the seed, ``transform`` applies it;
    ``state`` / ``load_state`` save and restore R (``projection.matrix``)."""

    def __init__(self, out_dim: int, seed: int = 0):
        self.out_dim = out_dim
        self.seed = seed

    def fit(self, in_dim: int) -> "GaussianProjection":
        self.matrix_ = gaussian_matrix(in_dim, self.out_dim, seeded(self.seed))
        return self

    def transform(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.matrix_.to(f.device)

    def state(self) -> dict[str, torch.Tensor]:
        return {"projection.matrix": self.matrix_}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> "GaussianProjection":
        self.matrix_ = tensors["projection.matrix"].float()
        return self
