"""FAISS searches of the memory bank (optional dependency faiss-cpu).

:class:`FaissSearch` wraps FAISS (optional dependency): ``flat`` (exact), ``ivf`` (inverted
lists, approximate; for large banks) or ``ivfpq`` (inverted lists over 4-bit product-quantizer
codes, re-ranked exactly; for banks over a million entries).  All return squared Euclidean
distances.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch

from patchbank.errors import PatchbankError
from patchbank.linalg import sq_dists, sq_norms
from patchbank.search.base import Search, register_search
from patchbank.search.faiss_kernel import float32_numpy
from patchbank.runtime.threads import sync_faiss


IVF_TRAIN_PER_LIST = 40   # IVF k-means sees at most this many bank rows per list
SMALL_CALL = 4096         # IVF calls with fewer queries find their lists with torch (_coarse)
COARSE_BLOCK = 1024       # queries per block of _coarse's distance matrix


def ivf_train_ids(n: int, nlist: int, seed: int) -> torch.Tensor | None:
    """Sorted ids of the bank rows the IVF lists are trained on: a seeded uniform sample of
    ``IVF_TRAIN_PER_LIST`` rows per list, or None (every row) for smaller banks.  The same rule
    serves a fit that streams its bank into the index and an index rebuilt from a saved bank,
    so both get the same lists.  40 rows per list: FAISS asks for at least 39 (the choice is
    measured in docs/performance.md, "Search design measurements")."""
    if n <= IVF_TRAIN_PER_LIST * nlist:
        return None
    g = torch.Generator().manual_seed(seed + 3)
    return torch.randperm(n, generator=g)[:IVF_TRAIN_PER_LIST * nlist].sort().values


def ivf_nlist(n: int) -> int:
    """4 sqrt(n) inverted lists, at least 39 training points each (FAISS's minimum)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39 or 1))


def pq_subquantizers(dim: int) -> int:
    """Sub-quantizers of the 4-bit IVF-PQ codes: one per 4 dimensions (dim / 8 bytes a vector,
    1/32 of float32), else one per 2 dimensions, else one per dimension (accuracy and speed of
    the choice: docs/performance.md, "Search design measurements")."""
    for per in (4, 2):
        if dim % per == 0 and dim >= per:
            return dim // per
    return dim


class FaissSearch(Search):
    """FAISS index over the bank.

    ``flat``  exact (IndexFlatL2).
    ``ivf``   IVF-Flat: 4 sqrt(n) lists, ``nprobe`` searched; the stored vectors are exact.
    ``ivfpq`` IVF-PQ for very large banks: the same lists, vectors stored as 4-bit product-quantizer
              codes (one sub-quantizer per 4 dimensions: 32x smaller than float32) scanned with
              FAISS's SIMD "fast scan" kernels; the ``refine`` x k best candidates by code distance
              are re-ranked with exact distances to the bank rows, so returned distances are exact.

    FAISS's OpenMP runtime is given torch's thread count before every call (no oversubscription,
    :mod:`patchbank.runtime.threads`).

    ``flat`` and ``ivf`` store the vectors exactly, so the index is the only copy of the bank:
    :meth:`rows` / :meth:`all_rows` read them back (bit-exact).  ``ivfpq`` keeps the float32 bank
    for its re-rank.  :meth:`from_chunks` builds an ``ivf`` index from bank chunks that are
    freed as they are added (the streaming fit: the bank never exists twice).
    """

    def __init__(self, bank: torch.Tensor | None, kind: str = "flat", nlist: int | None = None,
                 nprobe: int = 8, seed: int = 0, refine: int = 8, *, _dim: int | None = None,
                 _n: int | None = None):
        try:
            import faiss
        except ImportError:
            raise PatchbankError("FAISS search needs faiss: pip install faiss-cpu") from None
        self.faiss = faiss
        sync_faiss()
        n, dim = (bank.shape[0], bank.shape[1]) if bank is not None else (_n, _dim)
        self.kind, self.nprobe, self.seed, self.refine = kind, nprobe, seed, refine
        self.dim, self.total, self.n = dim, n, n
        if kind in ("ivf", "ivfpq"):
            # 5 k-means iterations (docs/performance.md, "Search design measurements")
            nlist = nlist or ivf_nlist(n)
            if kind == "ivf":
                index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
            else:
                index = faiss.IndexIVFPQFastScan(faiss.IndexFlatL2(dim), dim, nlist,
                                                 pq_subquantizers(dim), 4)
            index.cp.seed = seed
            index.cp.niter = 5
            index.cp.max_points_per_centroid = IVF_TRAIN_PER_LIST   # the sample is ivf_train_ids'
            index.nprobe = min(nprobe, nlist)
        else:
            index = faiss.IndexFlatL2(dim)
        self.index = index
        self.bank = bank if kind == "ivfpq" else None   # ivfpq re-ranks with the float32 rows
        self.params = None      # FAISS search parameters (an ID selector: see subset)
        self._direct = False    # IVF direct map (id -> list position) built for rows()
        self._centroids = None  # IVF list centroids, transposed, and their squared norms (_coarse)
        if bank is not None:
            train = None
            if kind in ("ivf", "ivfpq"):
                ids = ivf_train_ids(n, index.nlist, seed)
                train = bank if ids is None else bank[ids.to(bank.device)]
            self._fill(train, [bank], whole=True)

    def _fill(self, train: torch.Tensor | None, chunks, whole: bool = False) -> None:
        """Train the inverted lists on ``train`` (IVF kinds), then add the bank ``chunks`` in
        order: ``whole`` when they are all in memory (IVF-Flat lists are then sized exactly,
        :meth:`_add_exact_lists`), else one at a time, each may be freed once added."""
        if self.kind in ("ivf", "ivfpq"):
            self.index.train(float32_numpy(train))
        if self.kind == "ivf" and whole:
            self._add_exact_lists([float32_numpy(c) for c in chunks])
        else:
            for chunk in chunks:
                self.index.add(float32_numpy(chunk))
        added = self.index.ntotal
        if added != self.total:
            raise PatchbankError(f"internal error: {added} bank rows added, expected {self.total}")

    def _add_exact_lists(self, chunks: list[np.ndarray]) -> None:
        """Add the bank to an IVF-Flat index with every inverted list allocated at its final
        size.  FAISS's ``add`` appends entry by entry and each list's vector grows by doubling, so
        the index outgrows the bank (``benchmarks/bench_index_memory.py``; docs/performance.md,
        "Search design measurements").  Here the lists are
        assigned first (FAISS's own quantizer, as ``add`` does), each list is sized to its count
        (a vector keeps its capacity when shrunk back to 0), and the rows are added with those
        assignments (``add_core``): the same lists, in the same order, ~1.0x the vectors.  Used
        where the whole bank is at hand (small fits, loading a model); a bank streamed in chunks
        that are freed as they go cannot be counted before it is added."""
        faiss = self.faiss
        # slices of 65,536 rows, as FAISS's own add processes them
        chunks = [x[i:i + 65536] for x in chunks for i in range(0, x.shape[0], 65536)]
        assign = [self.index.quantizer.assign(x, 1).ravel() for x in chunks]
        counts = np.bincount(np.concatenate(assign), minlength=self.index.nlist)
        lists = faiss.downcast_InvertedLists(self.index.invlists)
        for list_no in np.nonzero(counts)[0].tolist():
            lists.resize(list_no, int(counts[list_no]))
            lists.resize(list_no, 0)
        start = self.index.ntotal
        for x, a in zip(chunks, assign):
            ids = np.arange(start, start + x.shape[0], dtype=np.int64)
            self.index.add_core(x.shape[0], faiss.swig_ptr(x), faiss.swig_ptr(ids), faiss.swig_ptr(a))
            start += x.shape[0]

    @classmethod
    def from_chunks(cls, chunks, n: int, dim: int, train: torch.Tensor, nlist: int | None = None,
                    nprobe: int = 8, seed: int = 0) -> "FaissSearch":
        """An ``ivf`` index over ``n`` rows arriving as an iterable of [m, dim] chunks (in bank
        order; each chunk may be freed once added), its lists trained on ``train``: the rows
        :func:`ivf_train_ids` picks (then the index equals ``FaissSearch(bank, "ivf")``)."""
        out = cls(None, "ivf", nlist=nlist, nprobe=nprobe, seed=seed, _dim=dim, _n=n)
        out._fill(train, chunks)
        return out

    @property
    def shape(self) -> tuple[int, int]:
        """(entries, dim) of the whole bank (a subset's too)."""
        return (self.total, self.dim)

    def _ensure_direct_map(self) -> None:
        if self.kind != "flat" and not self._direct:
            self.index.make_direct_map()
            self._direct = True

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Bank rows ``ids`` (float32, on the device of ``ids``), exact."""
        if self.bank is not None:
            return self.bank[ids.to(self.bank.device)].float().to(ids.device)
        self._ensure_direct_map()
        flat = ids.detach().reshape(-1).cpu().numpy().astype(np.int64)
        out = torch.from_numpy(self.index.reconstruct_batch(flat))
        return out.view(*ids.shape, self.dim).to(ids.device)

    def all_rows(self) -> torch.Tensor:
        """The whole bank as a float32 tensor (a fresh copy read from the index, except ivfpq)."""
        if self.bank is not None:
            return self.bank
        self._ensure_direct_map()
        return torch.from_numpy(self.index.reconstruct_n(0, self.total))

    def subset(self, keep: torch.Tensor) -> "FaissSearch":
        """A search over the rows ``keep`` (bool mask) of this bank, returning indices into the
        whole bank: the same index searched with an ID selector (a bitmap), so the same lists are
        probed and scanned, minus the excluded rows; no second index, no copy of the bank."""
        faiss = self.faiss
        mask = keep.detach().cpu().numpy().astype(bool)
        out = copy.copy(self)
        out.bitmap = np.packbits(mask, bitorder="little")   # kept alive: FAISS holds a pointer
        out.selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(out.bitmap))
        if self.kind in ("ivf", "ivfpq"):
            out.params = faiss.SearchParametersIVF(sel=out.selector, nprobe=self.index.nprobe)
        else:
            out.params = faiss.SearchParameters(sel=out.selector)
        out.n = int(mask.sum())
        return out

    def __len__(self) -> int:
        return self.n

    def _coarse(self, q: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The ``nprobe`` nearest inverted lists of each query and their squared distances, as
        FAISS's coarse quantizer finds them, computed as torch matrix products in blocks of
        ``COARSE_BLOCK`` queries ||q||^2 - 2 q.c + ||c||^2 (the lists are the same ones)."""
        if self._centroids is None:
            quantizer = self.faiss.downcast_index(self.index.quantizer)
            c = torch.from_numpy(quantizer.reconstruct_n(0, self.index.nlist))
            # the centroids are kept transposed and contiguous ([dim, nlist]): sq_dists
            # multiplies by c.T, which is then that contiguous block
            self._centroids = (c.T.contiguous().T, sq_norms(c))
        c, c_sq = self._centroids
        nprobe = min(self.index.nprobe, self.index.nlist)
        dist, ids = [], []
        for block in q.split(COARSE_BLOCK):
            d = sq_dists(block, c, c_sq)          # ||q||^2 added to the kept values only
            v, i = d.topk(nprobe, dim=1, largest=False)
            dist.append(v.add_(sq_norms(block).unsqueeze(1)))
            ids.append(i)
        return torch.cat(dist).numpy(), torch.cat(ids).numpy().astype(np.int64)

    def _ivf_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """IVF search of ``q`` (float32 [n, dim]).  Calls of fewer than ``SMALL_CALL`` queries
        (one image at a time, say) find their lists with :meth:`_coarse` and scan them with
        FAISS's ``search_preassigned``, in parallel over the queries (FAISS's own coarse step
        is slow for a few hundred queries: docs/performance.md, "Search design measurements"),
        with identical results.  Larger calls go through FAISS's own ``search``."""
        if q.shape[0] >= SMALL_CALL:
            return self.index.search(q, k, params=self.params)
        dq, iq = self._coarse(torch.from_numpy(q))
        d = np.empty((q.shape[0], k), dtype=np.float32)
        i = np.empty((q.shape[0], k), dtype=np.int64)
        ptr = self.faiss.swig_ptr
        mode = self.index.parallel_mode
        self.index.parallel_mode = 3        # search_preassigned splits the queries over threads
        try:
            self.index.search_preassigned_c(q.shape[0], ptr(q), k, ptr(iq), ptr(dq), ptr(d), ptr(i),
                                            False, self.params)
        finally:
            self.index.parallel_mode = mode
        return d, i

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        device = queries.device
        sync_faiss()
        k = min(k, self.n)
        q = queries.detach().float().cpu().contiguous()
        if self.kind == "flat":
            d, i = self.index.search(q.numpy(), k, params=self.params)
        elif self.kind == "ivf":
            d, i = self._ivf_search(q.numpy(), k)
        else:
            _, cand = self._ivf_search(q.numpy(), min(k * self.refine, self.n))
            return _rerank(q, torch.from_numpy(cand).long(), self.bank.detach().float().cpu(), k, device)
        # IVF may return -1 when fewer than k candidates were probed
        return torch.from_numpy(d).clamp_min_(0.0).to(device), torch.from_numpy(i).long().to(device)


def make_search_from_chunks(chunks, n: int, dim: int, train: torch.Tensor, config) -> FaissSearch:
    """The ``faiss-ivf`` search of :func:`make_search`, built from bank chunks (see
    :meth:`FaissSearch.from_chunks`)."""
    return FaissSearch.from_chunks(chunks, n, dim, train, nprobe=config.ivf_probe, seed=config.seed)


def _rerank(q: torch.Tensor, cand: torch.Tensor, bank: torch.Tensor, k: int, device,
            chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact squared distances of each query to its candidate rows (-1 = none), best k kept."""
    dists, idxs = [], []
    for qs, cs in zip(q.split(chunk), cand.split(chunk)):
        valid = cs >= 0
        rows = bank[cs.clamp_min(0)]                                 # [c, m, d]
        d = (rows - qs.unsqueeze(1)).pow_(2).sum(2)
        d = d.masked_fill_(~valid, float("inf"))
        best, pos = d.topk(k, dim=1, largest=False)
        idx = cs.gather(1, pos).masked_fill_(~torch.isfinite(best), -1)
        dists.append(best)
        idxs.append(idx)
    return torch.cat(dists).to(device), torch.cat(idxs).to(device)


def _from_config(kind: str):
    """The factory of :func:`patchbank.search.base.make_search` for FAISS index ``kind``."""
    def build(bank: torch.Tensor, config) -> FaissSearch:
        return FaissSearch(bank, kind, nprobe=config.ivf_probe, seed=config.seed, refine=config.pq_refine)
    return build


for _kind in ("flat", "ivf", "ivfpq"):
    register_search(f"faiss-{_kind}", _from_config(_kind))
