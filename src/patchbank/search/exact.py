"""Exact nearest-neighbour search: a matrix-product kernel finds candidates, differences rank them.

Each search runs in two steps.  A kernel finds the ``k + SPARE_CANDIDATES`` nearest bank rows of
each query from squared distances ``||q||^2 - 2 q.m + ||m||^2`` (:func:`candidate_rows`, torch's
matrix product, in ``query_chunk x bank_chunk`` blocks whose top-k are merged; or, on the CPU
with FAISS installed, FAISS's ``knn_L2sqr``, :mod:`patchbank.search.faiss_kernel`).  Then
:func:`refine` measures those candidates again as ``sum((q - m)^2)`` and keeps the k nearest.

Why two steps: the expansion loses digits to cancellation (a neighbour's distance is a small
difference of large norms) and its rounding depends on the kernel: FAISS's (OpenBLAS's) even on a
query's position in its call and on the thread count.  The refined distance depends only on the
query and the row, so a query's answer is the same whatever its batch, the thread count or the
kernel (FAISS installed or not); an exported graph refines the same way (:func:`nearest_rows`),
in its runtime's arithmetic.  The kernels can only disagree on a candidate list when rows lie
within the expansion's rounding of one another; the one spare candidate means that the k nearest
by differences are still found unless k + 1 rows are that close (docs/performance.md, "The exact
search's refinement").
"""
from __future__ import annotations

import copy
import math

import torch

from patchbank.linalg import sq_dists, sq_norms
from patchbank.search import faiss_kernel
from patchbank.search.base import Search, register_search

SPARE_CANDIDATES = 1   # candidates beyond the k wanted that the kernel hands to :func:`refine`
KERNELS = ("faiss", "torch")
#: A leave-one-group-out call searches each group's queries on their own only for blocks of this
#: many values (queries x dim) or more (:meth:`ExactSearch.groups_apart`): FAISS's threshold for
#: its matrix-product path (``distance_compute_blas_threshold``), below which both kernels' small
#: products run far from full speed.
GROUP_BLOCK_ELEMENTS = 128_000


class ExactSearch(Search):
    """Exact k-NN over a bank tensor (see the module docstring); the tensor is the only copy
    (a float32 tensor whose rows are unit-stride, a column slice included, is not copied).
    ``kernel`` finds the candidates: ``"faiss"`` (the default) uses FAISS's kernel for the calls
    :func:`patchbank.search.faiss_kernel.usable` accepts, reading a contiguous copy of a column
    slice (``kernel_rows``, made once; subsets share it), and the torch kernel for the rest (and
    everywhere when FAISS is not installed or the bank is not on the CPU); ``"torch"``: the torch
    kernel for every call.  Both give the same answers (module docstring)."""

    cheap_subsets = True     # a subset is the bank's squared norms with +inf for the rows left out
    device_only = True       # on a GPU: torch ops on the device (FAISS's kernel runs on the CPU only)
    cuda_block_bytes = 1 << 28   # on a GPU, query chunks grow to fill a distance block of this size

    def __init__(self, bank: torch.Tensor, query_chunk: int = 512, bank_chunk: int = 131072,
                 kernel: str = "faiss"):
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        bank = bank.float()
        # a column slice of a wider bank (the map's columns with context taps) is searched in
        # place by the torch kernel: the matrix product reads its row stride
        self.bank = bank if bank.stride(-1) == 1 else bank.contiguous()
        self.bank_sqnorm = sq_norms(self.bank)
        self.query_chunk = query_chunk
        self.bank_chunk = bank_chunk
        self.n = self.bank.shape[0]   # searchable rows (a subset: its kept rows)
        self.masked = False           # whether some rows are masked out (a subset)
        # FAISS's kernel reads these (kernel "faiss", on the CPU, FAISS installed), else None
        self.kernel_rows = self._faiss_rows() if kernel == "faiss" else None

    def __len__(self) -> int:
        return self.n

    def groups_apart(self, block: int) -> bool:
        """One call per group only for blocks of at least :data:`GROUP_BLOCK_ELEMENTS` values
        (``block`` x dim): smaller ones, such as the context taps' 65 queries an image, leave
        the matrix product's kernels far from full speed, and one call over every group's
        queries with extra neighbours is faster (docs/performance.md, "The calibration's
        context search")."""
        return block * self.bank.shape[1] >= GROUP_BLOCK_ELEMENTS

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
        out.masked = self.masked or out.n < self.bank.shape[0]
        return out

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (squared distances [n, k] ascending, bank indices [n, k])."""
        queries = queries.to(self.bank.device, torch.float32)
        k = min(k, len(self))
        ids = self._candidates(queries, min(k + SPARE_CANDIDATES, len(self)))
        found = [refine(q, self.bank, self.bank_sqnorm, i, k, self.masked)
                 for q, i in zip(queries.split(self.query_rows()), ids.split(self.query_rows()))]
        if len(found) == 1:      # one block (a GPU's batch): no copy
            return found[0]
        return torch.cat([d for d, _ in found]), torch.cat([i for _, i in found])

    def _candidates(self, queries: torch.Tensor, wanted: int) -> torch.Tensor:
        """Row ids [n, wanted] of each query's nearest rows by the kernel's distances."""
        if self.kernel_rows is not None and faiss_kernel.usable(queries):
            _, found = faiss_kernel.knn(queries, self.kernel_rows, self.bank_sqnorm, wanted)
            ids = torch.from_numpy(found)
            # NaN / infinite queries, or a masked row returned: the torch kernel's candidates
            lost = (ids < 0).any(1) | torch.isinf(self.bank_sqnorm[ids.clamp_min(0)]).any(1)
            if bool(lost.any()):
                ids[lost] = self._torch_candidates(queries[lost], wanted)
            return ids
        return self._torch_candidates(queries, wanted)

    def _torch_candidates(self, queries: torch.Tensor, wanted: int) -> torch.Tensor:
        blocks = [candidate_rows(q, self.bank, self.bank_sqnorm, wanted, self.bank_chunk)
                  for q in queries.split(self.query_rows())]
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks)


def candidate_rows(q: torch.Tensor, bank: torch.Tensor, bank_sqnorm: torch.Tensor, k: int,
                   bank_chunk: int) -> torch.Tensor:
    """The torch kernel: row ids [n, k] of the k nearest bank rows of queries ``q`` [n, d] by the
    expansion ``||q||^2 - 2 q.m + ||m||^2``, nearest first, ranked without the query's own
    ``||q||^2`` (the same for all of a query's rows, so it does not change the order; the
    distances themselves come from :func:`refine`).  ``bank`` [m, d] float32 with
    ``bank_sqnorm`` [m] (+inf masks a row out; ``k`` at most the rows not masked) is read
    ``bank_chunk`` rows at a time, every block, each block's top-k merged into the running best,
    so no more than one [n, bank_chunk] block of distances exists, read once.  A query's ids do
    not depend on the other rows of ``q``."""
    best_d = best_i = None
    for start in range(0, bank.shape[0], bank_chunk):
        m = bank[start:start + bank_chunk]
        d = sq_dists(q, m, bank_sqnorm[start:start + m.shape[0]])    # without ||q||^2
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
    return best_i


def refine(q: torch.Tensor, bank: torch.Tensor, bank_sqnorm: torch.Tensor, candidates: torch.Tensor,
           k: int, masked: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest of each query's ``candidates`` [n, c] (row ids, c >= k), measured again as
    ``sum((q - m)^2)`` over the row's values: (squared distances [n, k] ascending, row ids
    [n, k]).  A candidate whose squared norm is +inf (a row masked out) stays at +inf;
    ``masked=False`` says no row is masked out and skips that look-up.  With
    k = 1, of equal distances the earlier candidate is kept; for k > 1 their order is
    ``topk``'s.  Each query's answer depends on its own values and candidates only (the module
    docstring)."""
    rows = bank[candidates]                                         # [n, c, d]
    d = (q.unsqueeze(1) - rows).pow(2).sum(2)
    if masked:
        d.masked_fill_(torch.isinf(bank_sqnorm[candidates]), math.inf)
    if k == 1:
        dv, pos = d.min(1, keepdim=True)          # the first of equal minima
    else:
        dv, pos = d.topk(k, dim=1, largest=False)   # (a stable sort has no ONNX form)
    return dv, candidates.gather(1, pos)


def nearest_rows(q: torch.Tensor, bank: torch.Tensor, bank_sqnorm: torch.Tensor, k: int,
                 bank_chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact search in plain torch ops with a fixed number of blocks: the torch kernel's
    ``k + SPARE_CANDIDATES`` candidates (:func:`candidate_rows`, at most the bank's rows), then
    :func:`refine`.  ``k`` at most the rows not masked.  :class:`ExactSearch`'s torch kernel
    computes the same per query; an exported graph runs it on the whole batch."""
    ids = candidate_rows(q, bank, bank_sqnorm, min(k + SPARE_CANDIDATES, bank.shape[0]), bank_chunk)
    return refine(q, bank, bank_sqnorm, ids, k)


register_search("exact", lambda bank, config: ExactSearch(bank))
