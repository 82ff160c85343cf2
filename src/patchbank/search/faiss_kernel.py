"""FAISS's brute-force k-NN kernel: the exact search's candidates on the CPU when FAISS is installed.

:class:`~patchbank.search.exact.ExactSearch` takes each query's nearest bank rows from squared
distances ``||q||^2 - 2 q.m + ||m||^2`` and measures those candidates again from their
differences (:func:`~patchbank.search.exact.refine`).  Its torch kernel
(:func:`~patchbank.search.exact.candidate_rows`) multiplies with torch's float32 matrix product
(MKL on the CPU); FAISS's ``knn_L2sqr`` does the same arithmetic with the OpenBLAS it bundles and
keeps the running minimum of each block of bank rows while the block is in cache, which is faster
on the AMD CPUs measured (docs/performance.md, "The exact search's CPU kernel").  :func:`knn`
runs it on the same bank rows, squared norms and mask, with the same contract: the same
neighbours up to float rounding (an index can differ only between rows whose distances are
within rounding of each other), squared distances clamped at 0.  Its rounding of a query's
distances depends on the other queries of its call and on the thread count; the refinement's
does not, which is why the search's answers do not either.

When it runs (:func:`usable`): FAISS installed, queries on the CPU, at least ``MIN_QUERIES``
of them in the call, and enough values for FAISS to take its matrix-product path (queries x
dimensions >= ``faiss.cvar.distance_compute_blas_threshold``, 128,000 in FAISS 1.15: 762 queries
of 168 values).  Below that FAISS runs a pair-by-pair loop, which ignores the squared norms it
is given (the exact search's subsets mask rows out with ``+inf``), and small calls gain
nothing (the context taps' 65 queries; docs/performance.md).

What the caller checks (:class:`~patchbank.search.exact.ExactSearch`): queries whose answer
holds id -1 (a NaN or infinite feature: no distance compares below FAISS's initial bound) or a
masked row (should a FAISS version ignore the norms on this path too) get the torch kernel's
candidates, whose refinement gives NaN features the NaN distance the scores then carry (a NaN
score is never normal).
"""
from __future__ import annotations

import numpy as np
import torch

from patchbank.runtime.threads import sync_faiss

MIN_QUERIES = 256


def _faiss():
    """The faiss module, or None when it is not installed."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def available() -> bool:
    """Whether FAISS is installed (the kernel can run at all)."""
    return _faiss() is not None


def usable(queries: torch.Tensor) -> bool:
    """Whether :func:`knn` should search ``queries`` (see the module docstring)."""
    faiss = _faiss()
    if faiss is None or queries.device.type != "cpu":
        return False
    n, d = queries.shape
    return n >= MIN_QUERIES and n * d >= int(faiss.cvar.distance_compute_blas_threshold)


def float32_numpy(t: torch.Tensor) -> np.ndarray:
    """A C-contiguous float32 CPU array of ``t``, as FAISS reads arrays (no copy when ``t``
    already is one; a column view of wider rows is copied)."""
    return t.detach().float().cpu().contiguous().numpy()


def knn(queries: torch.Tensor, rows: np.ndarray, sqnorm: torch.Tensor, k: int
        ) -> tuple[np.ndarray, np.ndarray]:
    """(squared distances [n, k] ascending, clamped at 0; row ids [n, k]) of the k nearest of
    ``rows`` [m, d] (float32, C-contiguous) to each of ``queries`` [n, d] (CPU, :func:`usable`),
    with ``sqnorm`` [m] the rows' squared norms (``+inf``: a row masked out; ``k`` at most the
    rows left).  Ids are -1 for queries no row compares below FAISS's initial bound (a NaN or
    infinite query); the caller searches those again (see the module docstring)."""
    faiss = _faiss()
    sync_faiss()
    q, norms = float32_numpy(queries), float32_numpy(sqnorm)
    n, m = q.shape[0], rows.shape[0]
    dist = np.empty((n, k), dtype=np.float32)
    ids = np.empty((n, k), dtype=np.int64)
    ptr = faiss.swig_ptr
    faiss.knn_L2sqr(ptr(q), ptr(rows), rows.shape[1], n, m, k, ptr(dist), ptr(ids), ptr(norms))
    np.maximum(dist, 0.0, out=dist)
    return dist, ids
