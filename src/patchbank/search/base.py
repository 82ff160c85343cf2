"""The Search protocol, its registry, and the choice that ``search="auto"`` stands for.

A search holds the memory bank (it is the only copy: see :class:`Search`) and answers k-nearest
neighbour queries with squared Euclidean distances.  Implementations register a factory under
their config name with :func:`register_search`; :func:`make_search` builds the one a config asks
for.  Adding a search is one module with one registered class (plus its name in
``patchbank.config.SEARCHES``).
"""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from typing import Callable

import torch

from patchbank.errors import PatchbankError


class Search(ABC):
    """Nearest-neighbour search over a bank of [entries, dim] float32 rows.

    ``search(queries [n, dim], k) -> (squared distances [n, k] ascending, bank row ids [n, k])``.
    ``subset(keep)`` is a search over the rows ``keep`` (bool mask) returning ids into the whole
    bank, sharing its storage.  ``rows(ids)`` / ``all_rows()`` read bank rows back (exactly).
    ``len(search)`` counts the searchable rows (a subset's kept rows); ``shape`` is the whole
    bank's (entries, dim).

    ``cheap_subsets`` (declared per class): ``subset`` costs one pass over the entries, with no
    index to rebuild and no rows copied.  A leave-one-group-out search
    (:class:`~patchbank.search.LeaveGroupOut`) then searches each query group in the subset
    without its own rows, instead of asking for extra neighbours and dropping the group's.

    ``device_only`` (declared per class): ``search`` runs as work on the queries' device alone,
    with no copy to the host and no shape that depends on the data, so a CUDA graph can record
    it (:mod:`patchbank.runtime.cuda_graphs`).
    """

    cheap_subsets: bool = False
    device_only: bool = False

    def groups_apart(self, block: int) -> bool:
        """Whether a leave-one-group-out search should search each group's block of ``block``
        queries in the subset without the group's rows (one call per group) rather than all of a
        call's queries at once, with extra neighbours of which the group's own are dropped.
        Both give the same neighbours; this says which is faster: here, where subsets are cheap."""
        return self.cheap_subsets

    @property
    @abstractmethod
    def shape(self) -> tuple[int, int]:
        """(entries, dim) of the whole bank (a subset's too)."""

    @abstractmethod
    def __len__(self) -> int:
        """Searchable rows (a subset's kept rows)."""

    @abstractmethod
    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(squared distances [n, k] ascending, bank row ids [n, k]) of ``queries`` [n, dim]."""

    @abstractmethod
    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Bank rows ``ids`` (any shape) as float32 [*ids.shape, dim], exact."""

    @abstractmethod
    def all_rows(self) -> torch.Tensor:
        """The whole bank [entries, dim], float32."""

    @abstractmethod
    def subset(self, keep: torch.Tensor) -> "Search":
        """A search over the rows ``keep`` (bool mask [entries]) returning whole-bank ids."""


SearchFactory = Callable[[torch.Tensor, object], Search]   # (bank, config) -> Search
SEARCHES: dict[str, SearchFactory] = {}


def register_search(name: str, factory: SearchFactory) -> None:
    """Make ``name`` (a ``Config.search`` value) build its search with ``factory(bank, config)``."""
    SEARCHES[name] = factory


def resolve_search(config, bank_size: int, device: str | torch.device = "cpu") -> str:
    """The search kind "auto" stands for: on a GPU, the exact torch search on the device (one
    matrix product; FAISS here is CPU-only); on CPU with FAISS installed, IVF-PQ for banks of at
    least ``ivfpq_min_bank`` entries, IVF-Flat from ``ivf_min_bank``; exact otherwise."""
    if config.search != "auto":
        return config.search
    if torch.device(device).type == "cuda":
        return "exact"
    if bank_size >= config.ivf_min_bank:
        try:
            import faiss  # noqa: F401
        except ImportError:
            warnings.warn(f"faiss is not installed: the bank of {bank_size:,} entries is searched "
                          f"exactly, much slower than with FAISS's IVF index "
                          f"(pip install faiss-cpu)", UserWarning, stacklevel=2)
            return "exact"
        return "faiss-ivfpq" if bank_size >= config.ivfpq_min_bank else "faiss-ivf"
    return "exact"


def make_search(bank: torch.Tensor, config, kind: str) -> Search:
    """The registered search ``kind`` (already resolved: never "auto") over ``bank``."""
    try:
        factory = SEARCHES[kind]
    except KeyError:
        raise PatchbankError(f"unknown search {kind!r}; choose one of {', '.join(sorted(SEARCHES))}") from None
    return factory(bank, config)
