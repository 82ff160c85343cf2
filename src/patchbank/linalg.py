"""The small tensor kernels every stage shares: squared distances as a matrix product, the seeded
Gaussian random matrix, and the finiteness test of large feature tensors.

* :func:`sq_dists`: ``||a||^2 - 2 a.b + ||b||^2`` for all row pairs, one ``addmm`` (as anomalib
  computes distances: a matrix product rather than ``torch.cdist``, so it runs on any device and
  exports to ONNX).  Used by the exact search, the IVF coarse step, routing and the bank's local
  radius.
* :func:`gaussian_matrix`: ``R / sqrt(d')`` with ``R`` i.i.d. N(0, 1) from a seeded generator, the
  Johnson-Lindenstrauss projection of LMF-Core Sec. 4.4 / StructCore Eq. 2 and the greedy
  coreset's proxy space.
* :func:`all_finite`: whether a tensor holds no NaN or infinity, in one reduction pass without an
  elementwise boolean temporary (the training features are checked once per chunk).
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


def all_finite(t: torch.Tensor) -> bool:
    """True when the floating-point tensor ``t`` holds no NaN and no +-inf (an empty tensor is
    finite).  ``torch.aminmax`` is one pass that propagates NaN and keeps infinities, so its two
    values are finite exactly when every value is, without the elementwise boolean tensor that
    ``isfinite(t).all()`` builds first."""
    if t.numel() == 0:
        return True
    low, high = torch.aminmax(t.detach())
    return math.isfinite(float(low)) and math.isfinite(float(high))
