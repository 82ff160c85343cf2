"""Leave-one-group-out search: each query is blind to the bank rows of its own group.

Calibration scores every training image against the bank without the entries taken from that
image (:mod:`patchbank.pipeline.calibration`).  Where a subset costs nothing to build
(``Search.cheap_subsets``: the exact search masks rows by their squared norms) and the search
says that one call per image pays (``Search.groups_apart``: the exact search, for blocks large
enough for its kernels' full speed, such as an image's map queries) each image's queries are
searched in the bank without its rows, exactly.  Otherwise (an index, or the context taps' few
queries an image) all of a call's queries are searched at once (for an index, masking the
bank once per image would build one masked search per image): :class:`LeaveGroupOut` asks
the search for ``k + extra`` neighbours, drops those whose group (source image) is the query's,
and keeps the first ``k`` that remain.  Only queries left with fewer than ``k`` (their
``k + extra`` nearest are mostly their own image's rows) are searched again with their group
masked out (``Search.subset``).

For the exact search and FAISS's flat and IVF-Flat indexes this is exactly a search of each
query against the bank without its group: the nearest rows outside the group are the first ones
outside the group among the nearest rows of the whole bank (IVF probes the same lists either
way).  FAISS's IVF-PQ re-ranks ``refine`` times as many code-distance candidates as neighbours
asked for, so asking for more neighbours can only add candidates: approximate either way.  An
IVF query whose probed lists hold fewer than ``k`` rows outside its group (a few probes on a
small bank) would get no neighbour (id -1, an infinite score); such a query is searched exactly
against the rows outside its group instead.
"""
from __future__ import annotations

import copy

import torch

from patchbank.linalg import sq_dists, sq_norms
from patchbank.search.base import Search


def largest_group(groups: torch.Tensor) -> int:
    """Rows of the most frequent value of ``groups`` (0 when empty): a leave-one-group-out query
    of that group sees all rows but these."""
    return int(torch.unique(groups, return_counts=True)[1].max()) if groups.numel() else 0


class LeaveGroupOut(Search):
    """A view of ``search`` in which each query excludes the bank rows of its own group.

    ``bank_groups`` [entries] (integer): the group of each bank row (its source image).
    ``query_groups`` [G] (integer; set per batch with :meth:`for_queries`): the groups of one
    call's queries, which come in ``G`` equal consecutive blocks, block ``j`` from group
    ``query_groups[j]`` (a batch of ``G`` images: its ``G * P`` patch rows, or one row per
    image).  ``extra``: how many more neighbours than ``k`` are asked for before falling back to
    a masked search.

    ``search(queries, k)`` returns what ``search.subset(bank_groups != g).search(q, k)`` returns
    for each query ``q`` of group ``g`` (see the module docstring); ``k`` is capped at
    ``len(self)``, the rows outside the largest group, so every query gets ``k`` neighbours.
    ``n_fallback`` counts the queries of this view so far that needed the masked search.
    """

    def __init__(self, search: Search, bank_groups: torch.Tensor, extra: int,
                 query_groups: torch.Tensor | None = None, keep: torch.Tensor | None = None):
        self.inner = search
        self.bank_groups = bank_groups
        self.extra = int(extra)
        self.keep = keep          # bool mask [entries] of a subset view, None: every row
        groups = bank_groups if keep is None else bank_groups[keep]
        self.n = len(search) - largest_group(groups)
        self.query_groups = torch.zeros(0, dtype=bank_groups.dtype)
        self.n_fallback = 0
        if query_groups is not None:
            self.query_groups = query_groups.to(bank_groups.device, bank_groups.dtype)

    def for_queries(self, query_groups: torch.Tensor) -> "LeaveGroupOut":
        """This view for calls whose queries come from ``query_groups`` (see the class); shares
        everything else (no work over the bank)."""
        out = copy.copy(self)
        out.n_fallback = 0
        out.query_groups = query_groups.to(self.bank_groups.device, self.bank_groups.dtype)
        return out

    @property
    def shape(self) -> tuple[int, int]:
        """(entries, dim) of the whole bank."""
        return self.inner.shape

    def __len__(self) -> int:
        """Rows every query can reach: the searchable rows outside the largest group."""
        return self.n

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.inner.rows(ids)

    def all_rows(self) -> torch.Tensor:
        return self.inner.all_rows()

    def subset(self, keep: torch.Tensor) -> "LeaveGroupOut":
        """This view over the rows ``keep`` (bool mask [entries]) of the inner search."""
        keep = keep.to(self.bank_groups.device)
        both = keep if self.keep is None else keep & self.keep
        return LeaveGroupOut(self.inner.subset(both), self.bank_groups, self.extra,
                             self.query_groups, both)

    def owners(self, n: int) -> torch.Tensor:
        """The group [n] of each of ``n`` queries (``len(query_groups)`` equal blocks)."""
        g = self.query_groups.numel()
        if g == 0 or n % g:
            raise ValueError(f"{n} queries do not split into {g} equal blocks, one per group")
        return self.query_groups.repeat_interleave(n // g)

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(squared distances [n, k] ascending, bank row ids [n, k]) of ``queries`` [n, dim],
        each against the bank rows outside its own group."""
        k = min(k, len(self))
        owner = self.owners(queries.shape[0])
        if self.inner.groups_apart(queries.shape[0] // self.query_groups.numel()):   # split checked above
            return self._search_each_group(queries, k)
        wide = min(k + self.extra, len(self.inner))
        dist, ids = self.inner.search(queries, wide)
        device = ids.device
        own = owner.to(device).unsqueeze(1)
        valid = (ids >= 0) & (self.bank_groups.to(device)[ids.clamp_min(0)] != own)
        # the first k valid columns of each row, in order: the k smallest (invalid, position)
        pos = torch.arange(ids.shape[1], device=device)
        order = torch.where(valid, pos, pos + ids.shape[1]).topk(k, dim=1, largest=False).indices
        dist, ids = dist.gather(1, order), ids.gather(1, order)
        short = valid.sum(1) < k
        if bool(short.any()):
            self.n_fallback += int(short.sum())
            short_owner = owner.to(device)[short]
            rows = torch.nonzero(short).squeeze(1)
            for g in torch.unique(short_owner).tolist():
                mask = self.bank_groups != g
                if self.keep is not None:
                    mask &= self.keep
                pick = rows[short_owner == g]
                q = queries[pick.to(queries.device)]
                d, i = self.inner.subset(mask).search(q, k)
                empty = (i < 0).any(1)
                if bool(empty.any()):
                    d[empty], i[empty] = _exact(self.inner, mask, q[empty.to(q.device)], k, d.device)
                dist[pick], ids[pick] = d.to(dist.device), i.to(device)
        return dist, ids

    def _search_each_group(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each group's block of queries searched in the subset without that group's rows (for
        searches with ``cheap_subsets``: exact, one search per block, no extra neighbours)."""
        size = queries.shape[0] // self.query_groups.numel()
        found = []
        for j, g in enumerate(self.query_groups.tolist()):
            mask = self.bank_groups != g
            if self.keep is not None:
                mask &= self.keep
            found.append(self.inner.subset(mask).search(queries[j * size:(j + 1) * size], k))
        return torch.cat([d for d, _ in found]), torch.cat([i for _, i in found])


def _exact(search: Search, mask: torch.Tensor, queries: torch.Tensor, k: int,
           device) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest of ``queries`` among the bank rows ``mask`` of ``search``: the last
    resort for a query whose probed IVF lists hold fewer than k rows outside its group."""
    ids = torch.nonzero(mask.to(device)).squeeze(1)
    rows = search.rows(ids).to(queries.device, torch.float32)
    q = queries.to(torch.float32)
    d = sq_dists(q, rows, sq_norms(rows), sq_norms(q))
    best, pos = d.topk(k, dim=1, largest=False)
    return best.clamp_min_(0.0).to(device), ids.to(queries.device)[pos].to(device)
