"""Exact nearest-neighbour search in torch: the bank as one tensor, distances as a matrix product.

Squared distances are ``||q||^2 - 2 q.m + ||m||^2`` (:func:`patchbank.linalg.sq_dists_addmm`),
computed in ``query_chunk x bank_chunk`` blocks whose top-k are merged, so no more than one block
of distances exists at a time.  It runs wherever the bank tensor lives (CPU or CUDA) and is exact
up to float32 rounding, and a query's distances do not depend on the other queries of its call
(on the CPU: tests check that a score does not depend on the batch).  The calibration's copy
(:meth:`ExactSearch.for_fixed_calls`) runs calls of many queries through FAISS's kernel instead
when FAISS is installed (:mod:`patchbank.search.faiss_kernel`: faster on the CPU, the same
neighbours up to rounding, rounding that depends on the call's other queries).
"""
from __future__ import annotations

import copy
import math

import torch

from patchbank.linalg import sq_dists, sq_norms
from patchbank.search import faiss_kernel
from patchbank.search.base import Search, register_search


class ExactSearch(Search):
    """Exact k-NN over a bank tensor (see the module docstring); the tensor is the only copy
    (a float32 tensor whose rows are unit-stride, a column slice included, is not copied).
    ``kernel``: ``"torch"`` (every call), or ``"faiss"``: FAISS's kernel for the calls
    :func:`patchbank.search.faiss_kernel.usable` accepts, which reads a contiguous copy of a
    column slice (``kernel_rows``, made once; subsets share it), the torch kernel for the rest
    (and everywhere when FAISS is not installed or the bank is not on the CPU)."""

    cheap_subsets = True     # a subset is the bank's squared norms with +inf for the rows left out
    cuda_block_bytes = 1 << 28   # on a GPU, query chunks grow to fill a distance block of this size

    def __init__(self, bank: torch.Tensor, query_chunk: int = 512, bank_chunk: int = 131072,
                 kernel: str = "torch"):
        if kernel not in ("torch", "faiss"):
            raise ValueError(f"kernel must be 'torch' or 'faiss', got {kernel!r}")
        bank = bank.float()
        # a column slice of a wider bank (the map's columns with context taps) is searched in
        # place by the torch kernel: the matrix product reads its row stride
        self.bank = bank if bank.stride(-1) == 1 else bank.contiguous()
        self.bank_sqnorm = sq_norms(self.bank)
        self.query_chunk = query_chunk
        self.bank_chunk = bank_chunk
        self.n = self.bank.shape[0]   # searchable rows (a subset: its kept rows)
        # FAISS's kernel reads these (kernel "faiss", on the CPU, FAISS installed), else None
        self.kernel_rows = self._faiss_rows() if kernel == "faiss" else None

    def __len__(self) -> int:
        return self.n

    @property
    def shape(self) -> tuple[int, int]:
        """(entries, dim) of the whole bank (a subset's too)."""
        return tuple(self.bank.shape)

    def query_rows(self) -> int:
        """Queries searched per block: ``query_chunk`` on the CPU (larger blocks were timed and
        gain nothing there); on a GPU as many as fill ``cuda_block_bytes`` of float32 distances,
        at least ``query_chunk``, so a batch's queries go in one launch sequence where they fit
        (at batch 1, launches, not arithmetic, bound the GPU's time)."""
        if self.bank.device.type == "cpu":
            return self.query_chunk
        block = min(self.bank_chunk, max(self.bank.shape[0], 1))
        return max(self.query_chunk, self.cuda_block_bytes // (4 * block))

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Bank rows ``ids`` (float32, on the bank's device)."""
        return self.bank[ids.to(self.bank.device)]

    def all_rows(self) -> torch.Tensor:
        """The whole bank (no copy)."""
        return self.bank

    def for_fixed_calls(self) -> "ExactSearch":
        """This search with FAISS's kernel (see :meth:`Search.for_fixed_calls`): the bank (and a
        subset's mask) shared, a column slice copied once for the kernel."""
        out = copy.copy(self)
        if out.kernel_rows is None:
            out.kernel_rows = self._faiss_rows()
        return out

    def _faiss_rows(self):
        """The bank as FAISS's kernel reads it, or None where that kernel cannot run."""
        if self.bank.device.type != "cpu" or not faiss_kernel.available():
            return None
        return faiss_kernel.float32_numpy(self.bank)

    def subset(self, keep: torch.Tensor) -> "ExactSearch":
        """A search over the rows ``keep`` (bool mask) of this bank, returning indices into the
        whole bank.  Shares the bank (no copy): excluded rows get an infinite squared norm, so
        their distance is +inf and they are never among the ``k <= len`` nearest."""
        keep = keep.to(self.bank.device)
        out = copy.copy(self)
        out.bank_sqnorm = self.bank_sqnorm.masked_fill(~keep, math.inf)
        out.n = int(keep.sum())
        return out

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (squared distances [n, k] ascending, bank indices [n, k])."""
        queries = queries.to(self.bank.device, torch.float32)
        k = min(k, len(self))
        if self.kernel_rows is not None and faiss_kernel.usable(queries):
            d, i = faiss_kernel.knn(queries, self.kernel_rows, self.bank_sqnorm, k)
            dist, ids = torch.from_numpy(d), torch.from_numpy(i)
            # NaN / infinite queries, or a masked row returned: the torch kernel's answer
            lost = (ids < 0).any(1) | torch.isinf(self.bank_sqnorm[ids.clamp_min(0)]).any(1)
            if bool(lost.any()):
                dist[lost], ids[lost] = self._torch_search(queries[lost], k)
            return dist, ids
        return self._torch_search(queries, k)

    def _torch_search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        found = [nearest_rows(q, self.bank, self.bank_sqnorm, k, self.bank_chunk)
                 for q in queries.split(self.query_rows())]
        return torch.cat([d for d, _ in found]), torch.cat([i for _, i in found])


def nearest_rows(q: torch.Tensor, bank: torch.Tensor, bank_sqnorm: torch.Tensor, k: int,
                 bank_chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest bank rows of queries ``q`` [n, d]: (squared distances [n, k] ascending,
    clamped at 0, row ids [n, k]).  ``bank`` [m, d] float32 with ``bank_sqnorm`` [m] (+inf masks
    a row out; ``k`` at most the rows not masked) is read ``bank_chunk`` rows at a time, every
    block, each block's top-k merged into the running best, so no more than one [n, bank_chunk] block of
    distances exists, read once (||q||^2 is added after the selection).  Plain torch ops with a
    fixed number of blocks: :class:`ExactSearch` runs it per query chunk and an exported graph
    runs it on the whole batch (same results)."""
    best_d = best_i = None
    for start in range(0, bank.shape[0], bank_chunk):
        m = bank[start:start + bank_chunk]
        d = sq_dists(q, m, bank_sqnorm[start:start + m.shape[0]])    # without ||q||^2 (see below)
        if k == 1:
            dv, di = d.min(1, keepdim=True)
        else:
            dv, di = d.topk(k, dim=1, largest=False)
        di = di + start
        if best_d is None:
            best_d, best_i = dv, di
        else:
            cat_d, cat_i = torch.cat([best_d, dv], 1), torch.cat([best_i, di], 1)
            best_d, pos = cat_d.topk(k, dim=1, largest=False)
            best_i = cat_i.gather(1, pos)
    # ||q||^2 is added to the k kept values only, not to every distance: x -> fl(x + c) never
    # reverses an order, so the values are bitwise those of adding it first (an index can differ
    # only between entries whose distances round to the same float)
    return (best_d + sq_norms(q).unsqueeze(1)).clamp_min(0.0), best_i


register_search("exact", lambda bank, config: ExactSearch(bank))
