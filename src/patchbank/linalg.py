"""The two linear-algebra kernels every stage shares: squared distances as a matrix product and
the seeded Gaussian random matrix.

* :func:`sq_dists`: ``||a||^2 - 2 a.b + ||b||^2`` for all row pairs, one ``addmm`` (as anomalib
  computes distances: a matrix product rather than ``torch.cdist``, so it runs on any device and
  exports to ONNX).  Used by the exact search, the IVF coarse step, routing and the bank's local
  radius.
* :func:`gaussian_matrix`: ``R / sqrt(d')`` with ``R`` i.i.d. N(0, 1) from a seeded generator, the
  Johnson-Lindenstrauss projection of LMF-Core Sec. 4.4 / StructCore Eq. 2 and the greedy
  coreset's proxy space.
"""
from __future__ import annotations

import math

import torch


def sq_dists(a: torch.Tensor, b: torch.Tensor, b_sqnorm: torch.Tensor,
             a_sqnorm: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances [n, m] between rows of ``a`` [n, d] and ``b`` [m, d].

    ``b_sqnorm`` [m] holds ``||b_j||^2`` (callers cache it; an entry of +inf masks row j out).
    With ``a_sqnorm`` [n] the result is ``||a_i||^2 - 2 a_i.b_j + ||b_j||^2``; without it the
    per-row constant ``||a_i||^2`` is left out, which does not change the order of a row's
    distances (nearest-neighbour ranking).  Not clamped: float rounding can leave values
    slightly below 0.
    """
    d = torch.addmm(b_sqnorm, a, b.T, alpha=-2.0)
    if a_sqnorm is not None:
        d.add_(a_sqnorm.unsqueeze(1))
    return d


def sq_norms(x: torch.Tensor) -> torch.Tensor:
    """[n, d] -> [n] squared L2 norm of each row."""
    return (x * x).sum(1)


def gaussian_matrix(in_dim: int, out_dim: int, generator: torch.Generator) -> torch.Tensor:
    """The [in_dim, out_dim] float32 matrix R / sqrt(out_dim), R ~ N(0, 1) drawn from
    ``generator`` (CPU), so that E||x R / sqrt(d')||^2 = ||x||^2."""
    return torch.randn(in_dim, out_dim, generator=generator, dtype=torch.float32) / math.sqrt(out_dim)


def seeded(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(int(seed))
