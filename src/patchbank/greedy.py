"""Greedy k-center coreset (farthest-point sampling), PatchCore's memory-bank sampler.

The algorithm (Sener & Savarese 2018; PatchCore's ``ApproximateGreedyCoresetSampler``)
-------------------------------------------------------------------------------------
1. Project the features ``[N, D]`` to ``proxy_dim`` dimensions with a Gaussian random matrix
   drawn from ``torch.Generator().manual_seed(seed)`` (entries ``N(0, 1/proxy_dim)``).  The
   projection is skipped when ``proxy_dim`` is ``None`` or ``>= D``.
2. Draw the first centre uniformly with the same generator (``torch.randint`` right after the
   projection matrix; without projection it is the generator's first draw).
3. Keep, for every point, its Euclidean distance to the nearest selected centre.  Repeatedly
   select the unselected point with the largest such distance (ties: lowest row index), then
   lower every point's distance with its distance to the new centre.

Differences from the official PatchCore code, all deliberate: one seeded start point instead
of the mean distance to 10 unseeded ones; a Gaussian rather than ``nn.Linear``-initialised
projection; already selected points are never selected again (PatchCore can re-pick a
duplicate once every remaining distance is 0), so the result is always distinct indices.

Sizes: ``n = patchbank.samplers.coreset_size(N, ratio) = min(N, max(1, round(N * ratio)))``,
the rule every sampler shares (PatchCore's ``int(N * ratio)`` would give 28 for 100 * 0.29).

Distances are ``torch.cdist(..., compute_mode="donot_use_mm_for_euclid_dist")`` in float32,
i.e. ``sqrt(sum((x - c) ** 2))`` evaluated pair by pair; that kernel's value for a pair does
not depend on which other rows are in the call, so the fast sampler and the brute-force
reference (:func:`greedy_reference`) see bit-identical distances and select the *identical*
index sequence (the tests check this).

The fast sampler (CPU)
----------------------
A brute-force step reads all N points (600k x 128 float32 = 300 MB, ~35 ms here), so 60,000
steps would take over half an hour.  :func:`greedy_fast` proves, for most points, that the new
centre ``c`` cannot lower their min-distance ``r(x)`` -- i.e. that ``d(x, c) >= r(x)`` -- and
computes exact distances only for the rest:

* a static ball tree (:class:`_BallTree`, built once: recursive 2-means bisection along
  principal directions, leaves of <= 48 points, nested levels of <= 8**j leaves) with, per
  node, a centroid ``g``, a radius ``rho`` and the current max min-distance ``m`` of its points.
  A node is skipped when ``d(c, g) - rho > m``;
* per point, the pivot bound ``|d(c, g) - d(x, g)|`` (``g`` = its leaf centroid);
* per point, the centre bound: with ``a`` its nearest centre, ``d(x, c) >= d(c, a) - r(x)``,
  so only points with ``d(c, a) < 2 r(x)`` can move to ``c`` (the Voronoi-cell argument);
* per point, a low-dimensional bound ``||V^T (x - c)|| <= ||x - c||`` with ``V`` the top-32
  principal axes (used when ``D >= 64``; paused automatically while it prunes little);
* when the bounds fail for nearly all points for a few steps in a row (e.g. isotropic noise),
  the next 64 steps skip the tree and do one dense pass each, like the brute force.

The farthest point comes from the per-leaf maxima (ties: every leaf and slot holding the
maximum is looked at, and the lowest row wins).  Every bound is applied with a relative slack of ``2**-9`` (float32
distance rounding is ~1e-6 relative), so a point is skipped only when its exact distance could
not have changed its min-distance: the result equals the brute force's, index for index.

Memory: O(N*D) -- a leaf-ordered copy of the (projected) features, their 32-d PCA coordinates
and a few arrays of ~1.5 N slots; no N x N (or N x n) matrix is ever formed.  The selection loop runs
single-threaded by default, except its dense passes (see ``num_threads`` in
:func:`greedy_fast`).

Speed depends on the data.  On clustered data (what CNN patch features look like) most steps
touch a few hundred to a few thousand points.  On isotropic Gaussian noise in 128 dimensions
no bound prunes (all distances concentrate) and the sampler runs at the brute-force speed.

On CUDA tensors the brute-force loop runs on the device (it is memory-bandwidth bound and
needs no host synchronisation per step); the result follows the same rules but is computed by
CUDA kernels, so it is not guaranteed to be bit-identical to the CPU result.
"""
from __future__ import annotations

import math

import torch

from patchbank.samplers import coreset_size

__all__ = [
    "GreedySampler",
    "NaiveGreedySampler",
    "coreset_size",
    "greedy_reference",
    "greedy_fast",
    "random_projection",
    "covering_radius",
]

# Relative slack applied to every triangle-inequality bound.  float32 distances from cdist
# carry a relative error of ~1e-6; 2**-10 (~1e-3) keeps the pruning safe by a wide margin.
_SLACK = 2.0**-10  # kappa = (1 - s) / (1 + s) ~ 1 - 2**-9
_KAPPA = (1.0 - _SLACK) / (1.0 + _SLACK)


def _dist(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Exact Euclidean distances ``[M]`` from rows of ``a [M, D]`` to one point ``c [1, D]``."""
    return torch.cdist(a, c, compute_mode="donot_use_mm_for_euclid_dist")[:, 0]


def random_projection(
    features: torch.Tensor, proxy_dim: int | None, generator: torch.Generator, chunk: int = 65536
) -> torch.Tensor:
    """``features @ W`` with ``W ~ N(0, 1/proxy_dim)`` drawn from ``generator`` (on the CPU).

    Returns ``features`` itself (no copy) when ``proxy_dim`` is None or ``>= D``.  Computed in
    row chunks, so only the ``[N, proxy_dim]`` result is allocated.
    """
    n, d = features.shape
    if proxy_dim is None or proxy_dim >= d:
        return features
    if proxy_dim < 1:
        raise ValueError(f"proxy_dim: expected a positive integer or None, got {proxy_dim!r}")
    w = torch.randn(d, proxy_dim, generator=generator, dtype=torch.float32) / math.sqrt(proxy_dim)
    w = w.to(features.device)
    out = torch.empty(n, proxy_dim, dtype=torch.float32, device=features.device)
    for i in range(0, n, chunk):
        torch.matmul(features[i : i + chunk].float(), w, out=out[i : i + chunk])
    return out


def _check_features(features: torch.Tensor) -> torch.Tensor:
    if not isinstance(features, torch.Tensor) or features.ndim != 2:
        raise ValueError("features: expected a 2-D tensor [N, D]")
    if features.shape[0] < 1 or features.shape[1] < 1:
        raise ValueError(f"features: expected a non-empty [N, D] tensor, got {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"features: expected a floating-point tensor, got {features.dtype}")
    features = features.detach()
    if features.dtype != torch.float32:
        features = features.float()
    peak = float(features.abs().max())
    if not math.isfinite(peak):
        raise ValueError("features: contains NaN or infinite values")
    if peak > 1e15:  # squared distances would overflow float32
        raise ValueError(f"features: values up to {peak:.3g} are too large for float32 distances")
    return features.contiguous()


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="centre", mininterval=0.5)


# --------------------------------------------------------------------------------------------
# Brute force reference
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def greedy_reference(
    features: torch.Tensor, n: int, start: int, progress: bool = False
) -> torch.LongTensor:
    """Plain O(N * n) greedy k-center on ``features`` (already projected), from row ``start``.

    Every step computes the distance of every point to the newest centre.  Works on any
    device without host synchronisation; returns a CPU LongTensor of length ``n``.
    """
    x = features
    N = x.shape[0]
    if not (1 <= n <= N):
        raise ValueError(f"n: expected 1 <= n <= {N}, got {n}")
    if not (0 <= start < N):
        raise ValueError(f"start: expected 0 <= start < {N}, got {start}")
    dev = x.device
    sel = torch.empty(n, dtype=torch.long, device=dev)
    r = torch.full((N,), math.inf, dtype=torch.float32, device=dev)
    idx = torch.tensor([start], dtype=torch.long, device=dev)
    with _progress(n, progress, "greedy coreset (dense)") as bar:
        for t in range(n):
            sel[t : t + 1] = idx
            bar.update(1)
            if t == n - 1:
                break
            torch.minimum(r, _dist(x, x.index_select(0, idx)), out=r)
            r.index_fill_(0, idx, -1.0)  # selected: never again
            idx = torch.argmax(r).view(1)  # first maximum = lowest index
    return sel.cpu()


def covering_radius(features: torch.Tensor, selected: torch.Tensor, block: int = 1 << 24) -> float:
    """Max over all rows of the distance to the nearest selected row (the k-center objective).

    Computed in blocks of at most ``block`` distances, so memory stays O(N + n).
    """
    x = features.float()
    cent = x[selected.to(x.device)]
    cc = max(1, min(cent.shape[0], block // 1024))
    rc = max(1, block // cc)
    worst = 0.0
    for i in range(0, x.shape[0], rc):
        best = torch.full((min(rc, x.shape[0] - i),), math.inf, device=x.device)
        for j in range(0, cent.shape[0], cc):
            d = torch.cdist(x[i : i + rc], cent[j : j + cc], compute_mode="donot_use_mm_for_euclid_dist")
            best = torch.minimum(best, d.amin(1))
        worst = max(worst, float(best.max()))
    return worst


# --------------------------------------------------------------------------------------------
# Fast sampler: static ball tree + triangle-inequality pruning
# --------------------------------------------------------------------------------------------


class _BallTree:
    """Static ball tree over the rows of ``x`` with a slot-ordered copy of the points.

    Bisection: the rows are split recursively until every part has at most ``leaf_size``
    rows.  A part is cut along its principal direction (power iteration in the top-32 PCA
    coordinates of the data, on at most ~128 of its points) at the point that minimises the
    within-part sum of squares of the projections (1-D 2-means), searched between the 10%
    and 90% quantiles, so cuts follow gaps between clusters.  The parts that are not split
    further are the leaves.

    Levels: level 0 is the leaves; level ``j >= 1`` is the set of maximal subtrees of the
    bisection with at most ``f**j`` leaves (``f = 2**fanout_bits``), up to the first level
    with at most ``4 * f`` nodes.  The levels nest, so each node's children on the level below
    are a contiguous run of nodes, stored padded in ``children[j]`` (padding points at a
    sentinel node appended to level ``j - 1``, whose max min-distance is -inf).  Following the
    bisection keeps nodes from straddling gaps in the data, which matters far more for
    pruning than balance.

    Storage: ``xs`` is a copy of ``x`` with every leaf's rows contiguous, in leaf order (and
    ``ys`` the same for the PCA coordinates).  The per-point state lives in slots: leaf ``i``
    owns slots ``i*L .. i*L+L-1`` (``L = leaf_size``); ``slot2c`` / ``slot2orig`` map a slot to
    its row of ``xs`` / ``x``.  Unused slots are flagged in ``dead`` and point at their leaf's
    first row, so they never widen a ball; the search never selects or updates them.  The
    shape of the tree affects only speed.

    Every node has a centroid and a radius (max distance of its slots to the centroid), and
    ``dxg`` holds each slot's distance to its leaf centroid.
    """

    def __init__(self, x: torch.Tensor, leaf_size: int = 48, fanout_bits: int = 3, seed: int = 0):
        N, D = x.shape
        L = max(1, int(leaf_size))
        self.N, self.D, self.L = N, D, L
        gen = torch.Generator().manual_seed(seed)
        k = min(D, 32)
        y, ynorm = self._pca_coords(x, k, gen)  # [N, k] top-k PCA coordinates, by row
        order, nstart, nlen, nparent, leaf = self._bisect(y, L, gen)

        # Leaves in depth-first (= start) order.
        lid = torch.nonzero(leaf)[:, 0]
        lid = lid.index_select(0, torch.argsort(nstart.index_select(0, lid)))
        lstart, llen = nstart.index_select(0, lid), nlen.index_select(0, lid)
        m = lid.numel()
        self.m = m
        j = torch.arange(L)
        live = j[None, :] < llen[:, None]  # [m, L]
        offs = torch.where(live, j[None, :], torch.zeros_like(j)[None, :])
        # Compact storage: row p of xs is row order[p] of x; leaf i holds xs[lstart[i] : + llen[i]].
        # slot2c maps a slot to its compact row (a dead slot to its leaf's first row).
        self.slot2c = (lstart[:, None] + offs).reshape(-1).contiguous()
        self.lstart = torch.cat([lstart, torch.tensor([N])])
        self.slot2orig = order.index_select(0, self.slot2c)
        self.dead = (~live).reshape(-1).contiguous()
        live_slots = torch.nonzero(~self.dead)[:, 0]
        self.orig2slot = torch.empty(N, dtype=torch.long)
        self.orig2slot[self.slot2orig.index_select(0, live_slots)] = live_slots
        self.xs = x.index_select(0, order)  # [N, D], leaves contiguous
        # Low-dimensional bound: ||V^T (x - c)|| <= ||x - c|| for the orthonormal PCA basis V.
        # Only worth it when k is well below D.  y is float32-rounded from float64, so the
        # computed low-dim distance is off by at most 2*sqrt(k)*2**-24*max||x - mu||; low_tol
        # is 6x that.
        if 2 * k <= D:
            self.ys = y.index_select(0, order)
            self.low_tol = 4e-6 * ynorm
        else:
            self.ys = None
            self.low_tol = 0.0
        del y

        # Leaf range [lo, hi) of every bisection node, and the nested levels.
        lo = torch.searchsorted(lstart, nstart)
        hi = torch.searchsorted(lstart, nstart + nlen)
        cnt = hi - lo
        pcnt = torch.where(nparent >= 0, cnt.index_select(0, nparent.clamp_min(0)), torch.full_like(cnt, 1 << 62))
        f = 1 << max(1, int(fanout_bits))
        level_lo = [torch.arange(m)]  # level 0: leaves
        level_hi = [torch.arange(1, m + 1)]
        thr = f
        while level_lo[-1].numel() > 4 * f:
            sel_ = torch.nonzero((cnt <= thr) & (pcnt > thr))[:, 0]
            o = torch.argsort(lo.index_select(0, sel_))
            level_lo.append(lo.index_select(0, sel_.index_select(0, o)))
            level_hi.append(hi.index_select(0, sel_.index_select(0, o)))
            thr *= f
        nlev = len(level_lo)
        # children[j] (j >= 1): padded indices into level j - 1 (sentinel = its node count)
        self.children: list[torch.Tensor] = [torch.empty(0, dtype=torch.long)]
        for lv in range(1, nlev):
            c0 = torch.searchsorted(level_lo[lv - 1], level_lo[lv])
            c1 = torch.searchsorted(level_lo[lv - 1], level_hi[lv])
            width = int((c1 - c0).max())
            ch = c0[:, None] + torch.arange(width)[None, :]
            ch = torch.where(ch < c1[:, None], ch, torch.full_like(ch, level_lo[lv - 1].numel()))
            self.children.append(ch)
        # Centroids and radii, a sentinel row appended to every level.  Leaves: exact (cdist).
        # Upper nodes: centroid = mean of their leaves' centroids, radius = max over their
        # leaves of d(node centroid, leaf centroid) + leaf radius (a valid, cheap bound).
        self.centroid: list[torch.Tensor] = []
        self.radius: list[torch.Tensor] = []
        g0 = torch.empty(m, D)
        dz = torch.empty(m, L)
        step = max(1, (1 << 22) // (L * D))
        for a0 in range(0, m, step):
            b0 = min(m, a0 + step)
            z = self.xs.index_select(0, self.slot2c[a0 * L : b0 * L]).view(b0 - a0, L, D)
            w = live[a0:b0, :, None]
            g0[a0:b0] = (z * w).sum(1) / llen[a0:b0, None]  # mean of the live rows
            dz[a0:b0] = torch.cdist(z, g0[a0:b0, None, :], compute_mode="donot_use_mm_for_euclid_dist")[..., 0]
        self.dxg = dz.reshape(-1)
        rad0 = dz.amax(1)
        self.centroid.append(torch.cat([g0, torch.zeros(1, D)]))
        self.radius.append(torch.cat([rad0, torch.zeros(1)]))
        for lv in range(1, nlev):
            nn_ = level_lo[lv].numel()
            width = level_hi[lv] - level_lo[lv]
            node_of_leaf = torch.repeat_interleave(torch.arange(nn_), width)
            g = torch.zeros(nn_, D, dtype=torch.float64).index_add_(0, node_of_leaf, g0.double())
            g = (g / width.double()[:, None]).float()
            dl = (g0 - g.index_select(0, node_of_leaf)).norm(dim=1) + rad0
            rad = torch.zeros(nn_).scatter_reduce_(0, node_of_leaf, dl, "amax", include_self=False)
            rad.mul_(1.0 + 2.0**-12)  # rounding of the sum above; stay conservative
            self.centroid.append(torch.cat([g, torch.zeros(1, D)]))
            self.radius.append(torch.cat([rad, torch.zeros(1)]))
        # The same in the low-dim coordinates (for the cheap first test of a node).
        self.centroid_low: list[torch.Tensor] = []
        self.radius_low: list[torch.Tensor] = []
        if self.ys is not None:
            zl = self.ys.index_select(0, self.slot2c).view(m, L, k)
            gl0 = (zl * live[:, :, None]).sum(1) / llen[:, None]
            rl0 = (zl - gl0[:, None, :]).norm(dim=2).amax(1)
            del zl
            self.centroid_low.append(torch.cat([gl0, torch.zeros(1, k)]))
            self.radius_low.append(torch.cat([rl0, torch.zeros(1)]) * (1.0 + 2.0**-12))
            for lv in range(1, nlev):
                nn_ = level_lo[lv].numel()
                width = level_hi[lv] - level_lo[lv]
                node_of_leaf = torch.repeat_interleave(torch.arange(nn_), width)
                g = torch.zeros(nn_, k, dtype=torch.float64).index_add_(0, node_of_leaf, gl0.double())
                g = (g / width.double()[:, None]).float()
                dl = (gl0 - g.index_select(0, node_of_leaf)).norm(dim=1) + rl0
                rad = torch.zeros(nn_).scatter_reduce_(0, node_of_leaf, dl, "amax", include_self=False)
                self.centroid_low.append(torch.cat([g, torch.zeros(1, k)]))
                self.radius_low.append(torch.cat([rad, torch.zeros(1)]) * (1.0 + 2.0**-12))
            self.centroid_low.reverse()
            self.radius_low.reverse()
        # the search walks top-down
        self.centroid.reverse()
        self.radius.reverse()
        self.children = [None] + self.children[1:][::-1]
        self.nlev = nlev

    @staticmethod
    def _bisect(y: torch.Tensor, L: int, gen: torch.Generator, window: float = 0.1, iters: int = 4):
        """Recursive 2-means bisection of the rows of ``y`` into parts of at most ``L`` rows.

        Returns ``order`` (a permutation of the rows; every node is a contiguous range of it)
        and, for every node of the bisection tree, its ``start``, ``len``, ``parent`` (-1 for
        the root) and whether it is a leaf.  All nodes of one depth are split together.
        """
        N, k = y.shape
        order = torch.arange(N, dtype=torch.long)
        starts = [torch.zeros(1, dtype=torch.long)]
        lens = [torch.full((1,), N, dtype=torch.long)]
        parents = [torch.full((1,), -1, dtype=torch.long)]
        leafs = []
        cur_id = torch.zeros(1, dtype=torch.long)  # ids of the current frontier
        cur_start, cur_len = starts[0], lens[0]
        n_nodes = 1
        while True:
            split = cur_len > L
            leafs.append((cur_id, ~split))
            act = torch.nonzero(split)[:, 0]
            if act.numel() == 0:
                break
            a_start, a_len, a_id = cur_start[act], cur_len[act], cur_id[act]
            na = act.numel()
            seg = torch.repeat_interleave(torch.arange(na), a_len)  # segment of each point
            off = torch.cumsum(a_len, 0) - a_len
            rank = torch.arange(seg.numel()) - off.index_select(0, seg)
            pidx = a_start.index_select(0, seg) + rank  # positions in `order`
            z = y.index_select(0, order.index_select(0, pidx))
            # principal direction from at most ~128 evenly spaced points per segment
            stride = (a_len // 128).clamp_min(1)
            sub = torch.nonzero(rank % stride.index_select(0, seg) == 0)[:, 0]
            ss = seg.index_select(0, sub)
            zs = z.index_select(0, sub)
            cnt = torch.zeros(na).index_add_(0, ss, torch.ones(sub.numel()))
            zs -= (torch.zeros(na, k).index_add_(0, ss, zs) / cnt[:, None]).index_select(0, ss)
            v = torch.randn(na, k, generator=gen)
            for _ in range(iters):
                pr = (zs * v.index_select(0, ss)).sum(1)
                v = torch.zeros(na, k).index_add_(0, ss, zs * pr[:, None])
                v /= v.norm(dim=1, keepdim=True).clamp_min(1e-30)
            del zs
            pr = (z * v.index_select(0, seg)).sum(1)
            del z
            # one sort on (segment, projection): pr scaled into [0, 0.5] inside each segment
            pmin = torch.full((na,), math.inf).scatter_reduce(0, seg, pr, "amin")
            pmax = torch.full((na,), -math.inf).scatter_reduce(0, seg, pr, "amax")
            span = (pmax - pmin).clamp_min(1e-30).double()
            key = seg.double() + (pr.double() - pmin.double().index_select(0, seg)) / (2 * span.index_select(0, seg))
            o = torch.argsort(key, stable=True)
            del key
            ps = pr.index_select(0, o).double()
            order.index_copy_(0, pidx, order.index_select(0, pidx.index_select(0, o)))
            # 1-D 2-means: sum of squares left + right for a cut after each rank
            c1 = torch.cumsum(ps, 0)
            c2 = torch.cumsum(ps * ps, 0)
            zero = torch.zeros(na, dtype=ps.dtype)
            base1 = torch.where(off > 0, c1.index_select(0, (off - 1).clamp_min(0)), zero)
            base2 = torch.where(off > 0, c2.index_select(0, (off - 1).clamp_min(0)), zero)
            end = off + a_len - 1
            t1, t2 = c1.index_select(0, end) - base1, c2.index_select(0, end) - base2
            l1, l2 = c1 - base1.index_select(0, seg), c2 - base2.index_select(0, seg)
            nl = (rank + 1).double()
            nr = a_len.index_select(0, seg).double() - nl
            r1 = t1.index_select(0, seg) - l1
            sse = (l2 - l1 * l1 / nl) + ((t2.index_select(0, seg) - l2) - r1 * r1 / nr.clamp_min(1))
            lo = torch.ceil(window * a_len.double()).long().clamp_min(1)
            hi = torch.maximum(torch.floor((1 - window) * a_len.double()).long().clamp_max(a_len - 1), lo)
            cut = rank + 1
            ok = (cut >= lo.index_select(0, seg)) & (cut <= hi.index_select(0, seg))
            sse = torch.where(ok, sse, torch.full_like(sse, math.inf))
            best = torch.full((na,), math.inf, dtype=sse.dtype).scatter_reduce(0, seg, sse, "amin")
            is_best = ok & (sse <= best.index_select(0, seg))
            big = torch.iinfo(torch.long).max
            p = torch.full((na,), big, dtype=torch.long).scatter_reduce(
                0, seg, torch.where(is_best, cut, torch.full_like(cut, big)), "amin"
            )
            cur_start = torch.stack([a_start, a_start + p], 1).view(-1)
            cur_len = torch.stack([p, a_len - p], 1).view(-1)
            cur_id = torch.arange(n_nodes, n_nodes + 2 * na)
            n_nodes += 2 * na
            starts.append(cur_start)
            lens.append(cur_len)
            parents.append(a_id.repeat_interleave(2))
        leaf = torch.zeros(n_nodes, dtype=torch.bool)
        for ids, is_leaf in leafs:
            leaf[ids[is_leaf]] = True
        return order, torch.cat(starts), torch.cat(lens), torch.cat(parents), leaf

    @staticmethod
    def _pca_coords(
        x: torch.Tensor, k: int, gen: torch.Generator, sample: int = 65536, chunk: int = 65536
    ) -> tuple[torch.Tensor, float]:
        """Coordinates ``(x - mu) @ V`` on the top-``k`` principal axes (from a row sample),
        computed in float64 and rounded to float32, and ``max ||x - mu||``."""
        N, D = x.shape
        rows = torch.randperm(N, generator=gen)[:sample] if N > sample else slice(None)
        sub = x[rows].double()
        mu = sub.mean(0)
        sub -= mu
        v = torch.linalg.eigh(sub.T @ sub).eigenvectors[:, -k:].flip(1).contiguous()
        del sub
        out = torch.empty(N, k)
        norm = 0.0
        for i in range(0, N, chunk):
            xc = x[i : i + chunk].double() - mu
            out[i : i + chunk] = xc @ v
            norm = max(norm, float(xc.norm(dim=1).max()))
        return out, norm


@torch.no_grad()
def greedy_fast(
    features: torch.Tensor,
    n: int,
    start: int,
    progress: bool = False,
    leaf_size: int = 48,
    fanout_bits: int = 3,
    seed: int = 0,
    num_threads: int | None = 1,
    run_slots: int | None = None,
) -> torch.LongTensor:
    """Greedy k-center on CPU ``features [N, D]`` (already projected), identical to
    :func:`greedy_reference` but pruned with a ball tree (see the module docstring).

    Builds a slot-ordered copy of ``features`` (O(N*D) extra memory, freed on return).
    ``run_slots``: steps whose candidate leaves hold more slots than this read contiguous
    runs of leaves instead of gathering rows (default ``max(8192, slots // 32)``; a knob for
    tests, it never changes the result).
    ``num_threads``: torch intra-op threads for the selection loop (restored afterwards; None
    keeps the current setting).  The loop issues many small ops, and with more than one thread
    each waits on a thread barrier; on a busy machine that costs up to a scheduler tick per op
    (measured 10x slower with 2 threads on a loaded 2-core box).  The tree build and distance
    passes over >= 65536 rows (dense steps) use the caller's thread count.
    """
    x = features
    if x.is_cuda or x.dtype != torch.float32 or x.ndim != 2 or not x.is_contiguous():
        raise ValueError("greedy_fast: expected a contiguous 2-D float32 CPU tensor")
    N = x.shape[0]
    if not (1 <= n <= N):
        raise ValueError(f"n: expected 1 <= n <= {N}, got {n}")
    if not (0 <= start < N):
        raise ValueError(f"start: expected 0 <= start < {N}, got {start}")
    if n == 1:
        return torch.tensor([start], dtype=torch.long)
    prev_threads = torch.get_num_threads()
    try:
        tree = _BallTree(x, leaf_size=leaf_size, fanout_bits=fanout_bits, seed=seed)
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        return _greedy_loop(tree, n, start, progress, run_slots, prev_threads)
    finally:
        torch.set_num_threads(prev_threads)


def _runs(leaves: list[int]) -> list[tuple[int, int]]:
    """Sorted leaf ids -> maximal ranges ``[a, b)`` of consecutive ids."""
    runs, a0 = [], leaves[0]
    for i in range(1, len(leaves)):
        if leaves[i] != leaves[i - 1] + 1:
            runs.append((a0, leaves[i - 1] + 1))
            a0 = leaves[i]
    runs.append((a0, leaves[-1] + 1))
    return runs


def _greedy_loop(
    tree: _BallTree, n: int, start: int, progress: bool, big: int | None = None, wide_threads: int = 1
) -> torch.LongTensor:
    N, m, L = tree.N, tree.m, tree.L
    xs, ys, low_tol = tree.xs, tree.ys, tree.low_tol
    total = m * L
    s2o, s2c, dead = tree.slot2orig, tree.slot2c, tree.dead
    o2s = tree.orig2slot.tolist()
    ls = tree.lstart.tolist()  # compact row where each leaf starts (+ N at the end)
    G, P, CH = tree.centroid, tree.radius, tree.children
    GL, PL = tree.centroid_low, tree.radius_low
    nlev = len(G)
    dxg = tree.dxg.view(m, L)
    dxk = (tree.dxg * _KAPPA).view(m, L)
    arL = torch.arange(L, dtype=torch.long)
    # Steps whose candidate leaves hold more than `big` slots evaluate bounds and distances on
    # contiguous runs of leaves instead of gathering rows.
    if big is None:
        big = max(8192, total // 32)
    use_low_from = 0  # the low-dim bound is paused until this step when it stops paying
    loop_threads = torch.get_num_threads()

    def dist_wide(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # Passes over many rows run with the caller's thread count (no barrier cost to fear).
        if a.shape[0] < 65536 or wide_threads == loop_threads:
            return _dist(a, c)
        torch.set_num_threads(wide_threads)
        try:
            return _dist(a, c)
        finally:
            torch.set_num_threads(loop_threads)

    def dist_runs(rows: torch.Tensor, c: torch.Tensor, runs: list[tuple[int, int]]) -> torch.Tensor:
        # Distances for every slot of the leaf runs, [leaves, L]; a dead slot gets its leaf's
        # first row's distance (harmless: its r is -1).
        parts = [
            dist_wide(rows[ls[a] : ls[b]], c).index_select(0, s2c[a * L : b * L] - ls[a]) for a, b in runs
        ]
        return torch.cat(parts).view(-1, L)

    # r: min-distance per slot (-1 for selected and padding slots); assign: position in `sel`
    # of the slot's nearest centre; cent: the centres' coordinates by position.
    c0 = int(s2c[o2s[start]])
    r = dist_wide(xs, xs[c0 : c0 + 1]).index_select(0, s2c)
    r[dead] = -1.0
    r[o2s[start]] = -1.0
    rv = r.view(m, L)
    assign = torch.zeros(total, dtype=torch.int32)
    av = assign.view(m, L)
    cent = torch.empty(n, xs.shape[1])
    cent[0] = xs[c0]
    # nmax[lv]: max r over each node of level lv (top-down), plus a sentinel entry -inf that
    # the children tables use as padding.
    nmax: list[torch.Tensor] = [torch.empty(0)] * nlev
    nmax[-1] = torch.cat([rv.amax(1), torch.full((1,), -math.inf)])

    def refresh_upper() -> None:
        for lv in range(nlev - 2, -1, -1):
            ch = CH[lv + 1]
            up = nmax[lv + 1].index_select(0, ch.view(-1)).view(ch.shape).amax(1)
            nmax[lv] = torch.cat([up, torch.full((1,), -math.inf)])

    refresh_upper()
    # Dense mode: after 4 consecutive steps whose bounds failed for nearly every slot, the
    # next 64 steps skip the tree and make one pass over all points (as the brute force).
    dense_until, streak = 0, 0

    sel = [start]
    with _progress(n, progress, "greedy coreset") as bar:
        bar.update(1)
        while len(sel) < n:
            # The farthest point: max r over the leaves, ties by lowest row.
            lm = nmax[-1]
            M = float(lm.max())
            if M <= 0.0:
                # Every unselected point is at distance 0 from the centres: the rest of the
                # order is simply the unselected rows by increasing index.
                r_orig = torch.empty(N)
                live = ~dead
                r_orig[s2o[live]] = r[live]
                rest = torch.nonzero(r_orig >= 0)[:, 0][: n - len(sel)]
                sel.extend(rest.tolist())
                bar.update(rest.numel())
                break
            tied = torch.nonzero(lm == M)[:, 0]
            flat = torch.nonzero(rv.index_select(0, tied).view(-1) == M)[:, 0]
            slots = ((tied * L)[:, None] + arL).view(-1).index_select(0, flat)
            ci = int(s2o.index_select(0, slots).min())
            t = len(sel)
            sel.append(ci)
            bar.update(1)
            if t + 1 == n:
                break
            cs = o2s[ci]
            cc = int(s2c[cs])
            c = xs[cc : cc + 1]
            cent[t] = c[0]
            r[cs] = -1.0
            if t < dense_until:
                dd = dist_wide(xs, c).index_select(0, s2c).view(m, L)
                av.masked_fill_(dd < rv, t)
                torch.minimum(rv, dd, out=rv)
                nmax[-1][:m] = rv.amax(1)
                refresh_upper()
                continue

            # 1. Descend the tree: keep nodes whose ball may hold a point closer to c than
            #    the node's largest min-distance (d(x, c) >= d(c, g) - rho for x in the node).
            #    (index_select/index_copy_ throughout: several times faster than t[idx].)
            #    With PCA coordinates, a node is first tested in them (4x cheaper):
            #    d(x, c) >= ||V^T (x - c)|| >= d_low(c, g_low) - rho_low.
            yc = ys[cc : cc + 1] if ys is not None else None
            cands = []
            for lv in range(nlev):
                if lv == 0:
                    ids = None
                    nm = nmax[0]
                else:
                    ids = CH[lv].index_select(0, cand).view(-1)
                    nm = nmax[lv].index_select(0, ids)
                if yc is not None:
                    gl = GL[lv] if ids is None else GL[lv].index_select(0, ids)
                    pl = PL[lv] if ids is None else PL[lv].index_select(0, ids)
                    kk = torch.nonzero(_dist(gl, yc) * _KAPPA - low_tol - pl <= nm)[:, 0]
                    ids = kk if ids is None else ids.index_select(0, kk)
                    nm = nm.index_select(0, kk)
                if ids is None:  # top level, no PCA coordinates
                    d = _dist(G[0], c)
                    cand = torch.nonzero(d * _KAPPA - P[0] <= nm)[:, 0]
                    dc = d.index_select(0, cand)
                else:
                    d = _dist(G[lv].index_select(0, ids), c)
                    kk = torch.nonzero(d * _KAPPA - P[lv].index_select(0, ids) <= nm)[:, 0]
                    cand = ids.index_select(0, kk)
                    dc = d.index_select(0, kk)
                cands.append(cand)

            # 2. Points of the candidate leaves.  Pivot bound: d(x, c) >= |d(c,g) - d(x,g)|.
            rr = rv.index_select(0, cand)
            dcc = dc[:, None]
            ok = (rr > 0) & (dcc * _KAPPA - dxg.index_select(0, cand) <= rr)
            ok &= dxk.index_select(0, cand) - dcc <= rr
            nk = rr.numel()
            use_low = ys is not None and t >= use_low_from
            runs = _runs(cand.tolist()) if nk > big else None
            if runs is not None and len(runs) * 8 > cand.numel():
                runs = None  # fragmented: gathering is cheaper than many small calls
            flat = None
            if runs is not None:
                # 3a. Many candidates, in long runs of leaves: low-dim bound on every slot
                #     of the runs, then exact distances on the runs or on the survivors.
                if use_low:
                    dl = dist_runs(ys, yc, runs)
                    before = int(ok.sum())
                    ok &= dl * _KAPPA - low_tol <= rr
                    if int(ok.sum()) * 4 > before * 3:  # pruned < 25%: pause it
                        use_low_from = t + 32
                flat = torch.nonzero(ok.view(-1))[:, 0]
                if flat.numel() * 4 > nk:
                    streak = streak + 1 if nk * 10 >= 9 * m * L else 0
                    if streak >= 4:
                        dense_until, streak = t + 64, 0
                    dd = dist_runs(xs, c, runs)
                    imp = dd < rr
                    rr = torch.where(imp, dd, rr)
                    rv.index_copy_(0, cand, rr)
                    av.index_copy_(0, cand, torch.where(imp, t, av.index_select(0, cand)))
                    flat = None
                    done = True
                else:
                    done, streak = False, 0
            else:
                flat = torch.nonzero(ok.view(-1))[:, 0]
                done, streak = False, 0
            if not done:
                if flat.numel():
                    slots = ((cand * L)[:, None] + arL).view(-1).index_select(0, flat)
                    rf = rr.view(-1).index_select(0, flat)
                    if runs is None:
                        # 3b. Centre bound: d(x, c) >= d(c, a) - r(x) with a = x's nearest
                        #     centre, so x can only move to c when d(c, a) < 2 r(x).
                        af = assign.index_select(0, slots)
                        if slots.numel() > 8 * t:
                            dca = _dist(cent[:t], c).index_select(0, af)
                        else:  # distances to the distinct centres only (a flag table, no sort)
                            mark = torch.zeros(t, dtype=torch.bool).index_fill_(0, af.long(), True)
                            u = torch.nonzero(mark)[:, 0]
                            pos = torch.empty(t, dtype=torch.long).index_copy_(0, u, torch.arange(u.numel()))
                            dca = _dist(cent.index_select(0, u), c).index_select(0, pos.index_select(0, af))
                        kk = torch.nonzero(dca * _KAPPA <= 2.0 * rf)[:, 0]
                        slots, rf = slots.index_select(0, kk), rf.index_select(0, kk)
                        if use_low and slots.numel() > 64:
                            # 3c. Low-dim bound on the gathered survivors.
                            dl = _dist(ys.index_select(0, s2c.index_select(0, slots)), yc)
                            kk = torch.nonzero(dl * _KAPPA - low_tol <= rf)[:, 0]
                            if slots.numel() > 1024 and kk.numel() * 4 > slots.numel() * 3:
                                use_low_from = t + 32
                            slots, rf = slots.index_select(0, kk), rf.index_select(0, kk)
                    # 4. Exact distances for the rest.
                    dd = _dist(xs.index_select(0, s2c.index_select(0, slots)), c)
                    kk = torch.nonzero(dd < rf)[:, 0]
                    slots = slots.index_select(0, kk)
                    r.index_copy_(0, slots, dd.index_select(0, kk))
                    assign.index_fill_(0, slots, t)
                rr = rv.index_select(0, cand)
            nmax[-1].index_copy_(0, cand, rr.amax(1))
            for lv in range(nlev - 2, -1, -1):
                cl_ = cands[lv]
                ch = CH[lv + 1].index_select(0, cl_)
                nmax[lv].index_copy_(0, cl_, nmax[lv + 1].index_select(0, ch.view(-1)).view(ch.shape).amax(1))
    return torch.tensor(sel, dtype=torch.long)


# --------------------------------------------------------------------------------------------
# Public samplers
# --------------------------------------------------------------------------------------------


class GreedySampler:
    """Greedy k-center (farthest-point) coreset, PatchCore's sampler.

    ``run(features)`` returns ``coreset_size(N, ratio)`` row indices in selection order.  The
    projection matrix and the start row come from ``torch.Generator().manual_seed(seed)``.
    CPU tensors use the pruned sampler (:func:`greedy_fast`), CUDA tensors a dense device loop;
    both follow the rules in the module docstring.
    """

    def __init__(self, ratio: float, proxy_dim: int | None = 128, seed: int = 0, progress: bool = False):
        coreset_size(1, ratio)  # validates ratio
        if proxy_dim is not None and (not isinstance(proxy_dim, int) or proxy_dim < 1):
            raise ValueError(f"proxy_dim: expected a positive integer or None, got {proxy_dim!r}")
        self.ratio = float(ratio)
        self.proxy_dim = proxy_dim
        self.seed = int(seed)
        self.progress = bool(progress)

    def _prepare(self, features: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = _check_features(features)
        N = x.shape[0]
        n = coreset_size(N, self.ratio)
        gen = torch.Generator().manual_seed(self.seed)
        proxy = random_projection(x, self.proxy_dim, gen).contiguous()
        start = int(torch.randint(N, (1,), generator=gen))
        return proxy, n, start

    @torch.no_grad()
    def run(self, features: torch.Tensor) -> torch.LongTensor:
        proxy, n, start = self._prepare(features)
        if proxy.is_cuda:
            return greedy_reference(proxy, n, start, self.progress)
        return greedy_fast(proxy, n, start, self.progress, seed=self.seed)


class NaiveGreedySampler(GreedySampler):
    """Same API and result as :class:`GreedySampler`, by the brute-force O(N * n) loop."""

    @torch.no_grad()
    def run(self, features: torch.Tensor) -> torch.LongTensor:
        proxy, n, start = self._prepare(features)
        return greedy_reference(proxy, n, start, self.progress)
