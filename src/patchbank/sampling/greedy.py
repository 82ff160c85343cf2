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

Sizes: ``n = patchbank.sampling.uniform.coreset_size(N, ratio) = min(N, max(1, round(N * ratio)))``,
the rule every sampler shares (PatchCore's ``int(N * ratio)`` would give 28 for 100 * 0.29).

Distances are ``torch.cdist(..., compute_mode="donot_use_mm_for_euclid_dist")`` in float32,
i.e. ``sqrt(sum((x - c) ** 2))`` evaluated pair by pair; that kernel's value for a pair does
not depend on which other rows are in the call, so the fast sampler and the brute-force
reference (:func:`greedy_reference`) see bit-identical distances and select the *identical*
index sequence (the tests check this).

The fast sampler (CPU)
----------------------
A brute-force step reads all N points, so a 10% coreset of a few hundred thousand patches
takes on the order of an hour.  Bounds that skip whole regions (ball trees, Voronoi cells of
the centres) barely prune on CNN patch features, whose pairwise distances concentrate
(docs/performance.md, "Greedy coreset design measurements").
:func:`greedy_fast` therefore keeps the O(N * n) work but moves it into matrix products and
batches the sequential selection without changing it:

* **Batches.**  Take the ``pool`` rows with the largest min-distance ``r`` (all rows tied with
  the last one too); call the smallest of these ``tau``.  Every other row has ``r < tau``, and
  ``r`` only decreases, so as long as some pool row still has ``r >= tau`` the next farthest
  row is in the pool (and so is every row tied with it).  The greedy loop runs on the pool
  alone -- lowering only the pool's ``r`` after each selection -- until its largest ``r``
  drops below ``tau``; then the batch's centres are applied to all N rows at once.  Batches
  grow as the run goes on (the covering radius flattens).
* **Filters.**  Applying m centres to N rows is a matrix product: in centred principal-axes
  coordinates, ``|x - c|^2 >= |low(x) - low(c)|^2`` where ``low`` is the top-``low_dim``
  (default 32) coordinates plus the norm of the remaining ones, and that bound costs one
  ``[B, 33] x [33, m]`` product per row block.  Only pairs it cannot rule out get a
  full 128-d estimate (a sampled matrix product over those pairs), and only pairs that
  estimate cannot rule out (about the pairs that really lower ``r``) get the exact distance.
  Every test carries a rounding slack (see ``_S_REL`` / ``_E_REL``, and an absolute floor for
  float32 underflow), so a pair is skipped only when its exact distance cannot lower ``r``.
* **Lazy rows.**  A batch needs exact ``r`` only for rows that can enter its pool.  Rows with
  ``r < beta * tau`` (``freeze``, default 0.9) are frozen: the update passes skip them, and
  their stored ``r`` (an upper bound, r only decreases) stays below a threshold ``theta <=
  tau``.  When ``tau`` falls below ``theta``, frozen rows whose stored ``r >= beta * tau`` get
  every centre selected since they froze, and ``theta`` drops to ``beta * tau``
  (:class:`_Lazy`).  Rows that end far below the final threshold are never touched again.
* **Exactness.**  Every ``r`` that changes is set from the exact kernel (the same
  ``cdist`` as the brute force, whose value for a pair does not depend on the other rows), so
  every row that can enter a pool has the brute force's ``r``, bit for bit, and the
  selections are equal index for index (ties: lowest row).
* **Isotropic data.**  Where the low-dimensional bound passes over a quarter of the pairs
  (e.g. i.i.d. Gaussian noise), filter 1 is skipped and the pass is one 128-d product per
  block: the brute force's work, as matrix products.

Cost: about N * n * (low_dim + 1) multiply-adds in float32 matrix products, plus a pool pass
per selected centre.  The update pass runs in ``torch.get_num_threads()`` Python threads over
row ranges (single-threaded torch ops, which release the GIL); the rest is single-threaded.
Memory: O(N * D) -- one float32 copy of the rotated rows (``D + 2`` values per row), the ``r``
vector and the pool; no N x N (or N x n) matrix, only ``cells``-sized score tiles.

On CUDA tensors the brute-force loop runs on the device (it is memory-bandwidth bound and
needs no host synchronisation per step); the result follows the same rules but is computed by
CUDA kernels, so it is not guaranteed to be bit-identical to the CPU result.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from patchbank.linalg import gaussian_matrix
from patchbank.sampling.base import Sampler, coreset_size, register_sampler

__all__ = [
    "GreedySampler",
    "NaiveGreedySampler",
    "coreset_size",
    "greedy_reference",
    "greedy_fast",
    "random_projection",
    "covering_radius",
]

# Largest |value| GreedySampler accepts (before its projection).
_MAX_ABS = 1e15
# Largest row norm greedy_fast accepts: centred rows then have norm <= 2**62, so squared
# distances and the filters' sums of squared norms stay below float32's maximum (~2**128).
_MAX_NORM = 2.0**61


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
    w = gaussian_matrix(d, proxy_dim, generator).to(features.device)
    out = torch.empty(n, proxy_dim, dtype=torch.float32, device=features.device)
    for i in range(0, n, chunk):
        torch.matmul(features[i : i + chunk].float(), w, out=out[i : i + chunk])
    return out


def _check_features(features: torch.Tensor) -> torch.Tensor:
    """``features`` [N, D] as float32, refused (ValueError) when empty, not floating point, not
    finite or too large for float32 distances.  No copy of float32 input, a column slice
    included (a model with context taps selects on its map's columns): the projection reads it in
    row chunks and its result is made contiguous."""
    if not isinstance(features, torch.Tensor) or features.ndim != 2:
        raise ValueError("features: expected a 2-D tensor [N, D]")
    if features.shape[0] < 1 or features.shape[1] < 1:
        raise ValueError(f"features: expected a non-empty [N, D] tensor, got {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"features: expected a floating-point tensor, got {features.dtype}")
    features = features.detach()
    if features.dtype != torch.float32:
        features = features.float()
    low, high = torch.aminmax(features)       # no [N, D] temporary, unlike abs().max()
    peak = max(-float(low), float(high))
    if not math.isfinite(peak):
        raise ValueError("features: contains NaN or infinite values")
    if peak > _MAX_ABS:  # squared distances would overflow float32
        raise ValueError(f"features: values up to {peak:.3g} are too large for float32 distances")
    return features


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
# Fast sampler: batched exact greedy with matrix-product filters
# --------------------------------------------------------------------------------------------

# Every filter below keeps a pair (x, c) unless it has proved ``d(x, c) >= r(x)``.  A pair is
# dropped only when its float32 squared-distance estimate q satisfies
#     q >= r(x)^2 * (1 + _S_REL) + _E_REL * (|x|^2 + |c|^2) + floor   (norms of the centred rows).
# Rounding: the estimates are sums of <= D + 3 float32 products (error <= (D + 3) * 2**-24 *
# (|x|^2 + |c|^2) each, ~8e-6 for D = 128) of coordinates rounded once from float64 (another
# ~2e-7); the exact kernel's value differs from the true distance by ~1e-5 relative.  _E_REL
# (6e-5) and _S_REL (1e-3) cover these with a wide margin.
# Underflow: those relative bounds fail where squares fall into float32's subnormal range
# (coordinate differences below ~1e-19): every rounded coordinate, product, square and r^2 then
# also carries an absolute error of up to 2**-150 -- in the exact kernel too, whose squared terms
# can round to 0 -- and the relative slack terms themselves underflow to 0.  ``floor``
# (:func:`_underflow_floor`, a few hundred times 2**-149) covers the D + O(1) such errors of one
# comparison; for D below ~2e6 it is below every normal float32, so it changes no test on
# normal-range data.
# Together no pair whose exact distance could lower r(x) is ever dropped.
_S_REL = 2.0**-10
_E_REL = 2.0**-14


def _underflow_floor(dim: int) -> float:
    """Absolute slack covering the underflow errors of one filter comparison in ``dim``
    dimensions (see the comment above): ``(4 * dim + 64) * 2**-149``, exact in float32."""
    return (4 * dim + 64) * 2.0**-149


def _pair_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact distances between row i of ``a`` and row i of ``b`` (the kernel of :func:`_dist`)."""
    return torch.cdist(a[:, None, :], b[:, None, :], compute_mode="donot_use_mm_for_euclid_dist")[:, 0, 0]


def _principal_axes(sub: torch.Tensor) -> torch.Tensor:
    """Orthonormal ``[D, D]`` float64 basis, columns by decreasing variance of the centred rows
    ``sub`` (scaled in place); the identity when the eigensolver fails.  Any orthonormal basis
    keeps the filters exact (only their pruning depends on it)."""
    d = sub.shape[1]
    peak = float(sub.abs().max())
    if not 0.0 < peak < math.inf:
        return torch.eye(d, dtype=torch.float64)
    sub /= peak  # the eigenvectors do not depend on the scale; the Gram matrix stays in range
    try:
        return torch.linalg.eigh(sub.T @ sub).eigenvectors.flip(1).contiguous()
    except torch.linalg.LinAlgError:
        return torch.eye(d, dtype=torch.float64)


class _Coords:
    """Centred coordinates in a principal-axes basis, the filters' working copy of the rows.

    ``low [N, k + 1]``: the top-``k`` principal coordinates and, as last column, the norm of the
    remaining ``D - k``; ``rest [N, D - k]``: those remaining coordinates; ``sq [N]``: the
    squared norm of the whole centred row.  Computed in float64 (axes from a row sample) and
    rounded once to float32.  Distances are invariant under the centring and rotation, and
    ``|low(x) - low(c)|`` is a lower bound of ``|x - c|``: it is the distance in the top-k
    coordinates combined with ``| |rest(x)| - |rest(c)| |`` (reverse triangle inequality).
    ``floor``: the filters' absolute slack for ``D`` dimensions (:func:`_underflow_floor`).
    """

    def __init__(self, x: torch.Tensor, k: int, seed: int = 0, sample: int = 65536, chunk: int = 32768):
        N, D = x.shape
        k = max(1, min(int(k), D))
        gen = torch.Generator().manual_seed(seed)
        rows = torch.randperm(N, generator=gen)[:sample] if N > sample else slice(None)
        sub = x[rows].double()
        mu = sub.mean(0)
        sub -= mu
        axes = _principal_axes(sub)
        del sub
        self.k = k
        self.floor = _underflow_floor(D)
        self.low = torch.empty(N, k + 1)
        self.rest = torch.empty(N, D - k)
        self.sq = torch.empty(N)
        for i in range(0, N, chunk):
            y = (x[i : i + chunk].double() - mu) @ axes
            self.low[i : i + chunk, :k] = y[:, :k]
            self.low[i : i + chunk, k] = y[:, k:].norm(dim=1)
            self.rest[i : i + chunk] = y[:, k:]
            self.sq[i : i + chunk] = (y * y).sum(1)


def sampled_dots(a: torch.Tensor, c: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """``[P]`` dot products ``a[i] . c[j]`` for the pairs ``(i[p], j[p])``, sorted by i (as
    :func:`pairs_below` returns them): a sampled matrix product (``torch.sparse.sampled_addmm``
    over a CSR pattern), which computes only those entries of ``a @ c.T`` and gathers no rows.
    Each value is a float32 dot product in some summation order; filter 2's slack covers any
    order."""
    crow = torch.zeros(a.shape[0] + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(i, minlength=a.shape[0]), 0, out=crow[1:])
    pattern = torch.sparse_csr_tensor(crow, j.contiguous(), torch.zeros(i.numel()),
                                      size=(a.shape[0], c.shape[0]), check_invariants=False)
    return torch.sparse.sampled_addmm(pattern, a, c.T, beta=0.0).values()


def pairs_below(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices ``(i, j)`` of the entries of the 2-D CPU tensor ``a`` that are
    below ``b`` (broadcast against ``a``), in row-major order: the two columns of
    ``torch.nonzero(a < b)``.  NumPy compares and collects them several times faster than
    torch 2.14 does on the CPU, and releases the GIL meanwhile (docs/performance.md, "The
    greedy filters' comparisons")."""
    flat = torch.from_numpy(np.flatnonzero(a.numpy() < b.numpy()))
    i = flat.div(a.shape[1], rounding_mode="floor")
    return i, flat - i * a.shape[1]


def entries_below(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Indices of the entries of the 1-D CPU tensor ``a`` below ``b`` (broadcast), ascending:
    ``torch.nonzero(a < b)[:, 0]``, by NumPy (see :func:`pairs_below`)."""
    return torch.from_numpy(np.flatnonzero(a.numpy() < b.numpy()))


def quiet_sparse_csr() -> None:
    """Create one CSR tensor with warnings off: torch warns once per process that its CSR
    support is in beta, which a fit's output should not show.  Called on the caller's thread
    before the update threads start (``warnings.catch_warnings`` is not thread-safe)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.sparse_csr_tensor(torch.zeros(2, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                                torch.zeros(0), size=(1, 1), check_invariants=False)


# The three filter stages of one row block share their tiles and counters: split apart, they
# would pass a dozen temporaries between functions on the sampler's hottest path.
# long: see above
def _lower_rows(x: torch.Tensor, co: _Coords, r: torch.Tensor, rows: torch.Tensor | None, lo: int,
                hi: int, cent: torch.Tensor, block: int, dense: bool, counts: list[int]) -> None:
    """``r[i] = min(r[i], d(x[i], c))`` for every centre ``c`` (row indices ``cent``) and the
    rows ``rows[lo:hi]`` (``rows`` None: rows ``lo <= i < hi``), with exact distances,
    computed only for pairs that pass two filters:

    1. the lower bound ``|low(x) - low(c)|`` for every pair, one matrix product per row block
       (``-2 low(x) . low(c) + |c|^2`` compared with ``r^2 - |x|^2`` plus the slack);
    2. the full-dimensional estimate for the survivors: a sampled product over just those
       pairs (:func:`sampled_dots`) when they are few, else for the whole block by two more
       products.

    ``dense`` skips filter 1 (when it lets most pairs through, e.g. isotropic data).
    ``counts`` gets the pairs seen and the pairs that passed filter 1 added.
    """
    k = co.k
    cl, cr, cq = co.low.index_select(0, cent), co.rest.index_select(0, cent), co.sq.index_select(0, cent)
    clk = cl[:, :k].contiguous()
    cfull = torch.cat([clk, cr], 1)   # the centres' full coordinates, for filter 2's sparse form
    cx = x.index_select(0, cent)
    cterm = cq * (1.0 - _E_REL)
    m = cent.numel()
    seen = passed = 0
    for b0 in range(lo, hi, block):
        b1 = min(hi, b0 + block)
        if rows is None:
            ib = None
            rb, qb, lb = r[b0:b1], co.sq[b0:b1], co.low[b0:b1]
        else:
            ib = rows[b0:b1]
            rb, qb, lb = r.index_select(0, ib), co.sq.index_select(0, ib), co.low.index_select(0, ib)
        r2s = rb.clamp_min(0.0).square().mul_(1.0 + _S_REL).add_(co.floor)
        # pair (i, j) passes iff |c|^2 (1 - E) - 2 u_i . u_j < r_i^2 (1 + S) + floor - |x_i|^2 (1 - E),
        # u = low (filter 1) or the full coordinates (filter 2, dense form)
        t = (r2s - qb * (1.0 - _E_REL))[:, None]
        seen += (b1 - b0) * m
        if not dense:
            w = torch.addmm(cterm[None, :], lb, cl.T, alpha=-2.0)
            i, j = pairs_below(w, t)
            passed += i.numel()
            if i.numel() == 0:
                continue
        rs = co.rest[b0:b1] if ib is None else co.rest.index_select(0, ib)
        if dense or i.numel() * 16 > w.numel():
            w = torch.addmm(cterm[None, :], lb[:, :k], clk.T, alpha=-2.0)
            w.addmm_(rs, cr.T, alpha=-2.0)
            i, j = pairs_below(w, t)
            if dense:
                passed += i.numel()
        else:
            dot = sampled_dots(torch.cat([lb[:, :k], rs], 1), cfull, i, j)
            qi, qj = qb.index_select(0, i), cq.index_select(0, j)
            keep = entries_below(qi + qj - 2.0 * dot, r2s.index_select(0, i) + _E_REL * (qi + qj))
            i, j = i.index_select(0, keep), j.index_select(0, keep)
        if i.numel() == 0:
            continue
        xi = x[b0:b1].index_select(0, i) if ib is None else x.index_select(0, ib.index_select(0, i))
        rb.scatter_reduce_(0, i, _pair_dist(xi, cx.index_select(0, j)), "amin")
        if ib is not None:
            r.index_copy_(0, ib, rb)
    counts[0] += seen
    counts[1] += passed


def _lower_all(x: torch.Tensor, co: _Coords, r: torch.Tensor, cent: torch.Tensor, workers: int,
               cells: int, dense: bool = False, rows: torch.Tensor | None = None) -> float:
    """:func:`_lower_rows` over all rows (or ``rows``), split into ``workers`` ranges run in
    parallel threads (each torch op single-threaded; they release the GIL).  Returns the
    fraction of pairs that passed filter 1."""
    N = x.shape[0] if rows is None else rows.numel()
    block = max(32, min(8192, cells // max(1, cent.numel())))
    counts = [0, 0]
    if N == 0 or cent.numel() == 0:
        return 0.0
    if workers <= 1 or N < 4 * block:
        _lower_rows(x, co, r, rows, 0, N, cent, block, dense, counts)
    else:
        import threading

        edges = [round(N * q / workers) for q in range(workers + 1)]
        errors: list[BaseException] = []
        parts = [[0, 0] for _ in range(workers)]

        def work(q: int) -> None:
            try:
                # inference mode is thread-local: in-place updates of ``r`` (an inference tensor
                # when the caller runs under torch.inference_mode, as Detector.fit does) need it
                with torch.inference_mode():
                    _lower_rows(x, co, r, rows, edges[q], edges[q + 1], cent, block, dense, parts[q])
            except BaseException as exc:  # re-raised in the caller
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(q,)) for q in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        counts = [sum(p[0] for p in parts), sum(p[1] for p in parts)]
    return counts[1] / max(1, counts[0])


# One linear driver (validate, rotate, then the batch loop with its lazy catch-up), read top to
# bottom against the module docstring's steps.
# long: see above
@torch.no_grad()
def greedy_fast(
    features: torch.Tensor,
    n: int,
    start: int,
    progress: bool = False,
    pool: int | None = None,
    low_dim: int = 32,
    cells: int = 1 << 18,
    seed: int = 0,
    workers: int | None = None,
    freeze: float | None = 0.9,
) -> torch.LongTensor:
    """Greedy k-center on CPU ``features [N, D]`` (already projected), index for index the
    selection of :func:`greedy_reference`, in batches (see the module docstring).

    ``pool``: rows in the candidate pool of a batch (the ``pool`` largest min-distances, ties
    included; default ``N / 16`` clamped to [256, 16384]).  ``low_dim``: principal coordinates
    used by the first filter.  ``cells``: size of the row-block x batch score tile of the update
    pass.  ``workers``: threads of the update pass (default: ``torch.get_num_threads()``);
    everything else runs single-threaded, and the torch thread count is restored on return.
    ``seed``: row sample for the principal axes.  ``freeze``: factor beta of the lazy updates
    (None: update every row after every batch).  None of these changes the result.

    Raises ValueError for arguments out of range and for features that are not finite or have
    a row norm over ``2**61`` (~2.3e18; beyond it squared distances can overflow float32 --
    :class:`GreedySampler` accepts values up to 1e15, whose projections stay far below); for
    every other input -- duplicates, ties, ``n == N``, values down to float32's subnormal
    range -- it returns the reference's selection.
    """
    x = features
    if x.is_cuda or x.dtype != torch.float32 or x.ndim != 2 or not x.is_contiguous():
        raise ValueError("greedy_fast: expected a contiguous 2-D float32 CPU tensor")
    N = x.shape[0]
    if not (1 <= n <= N):
        raise ValueError(f"n: expected 1 <= n <= {N}, got {n}")
    if not (0 <= start < N):
        raise ValueError(f"start: expected 0 <= start < {N}, got {start}")
    top = float(torch.linalg.vector_norm(x, dim=1).max())
    if not top <= _MAX_NORM:  # also NaN
        raise ValueError(f"features: expected finite rows of norm <= {_MAX_NORM:.3g}, got {top:.3g}")
    if pool is None:
        pool = max(256, min(16384, N // 16))
    if pool < 1:
        raise ValueError(f"pool: expected a positive integer, got {pool}")
    if freeze is not None and not (0.0 < freeze < 1.0):
        raise ValueError(f"freeze: expected None or 0 < freeze < 1, got {freeze!r}")
    prev_threads = torch.get_num_threads()
    workers = prev_threads if workers is None else max(1, int(workers))
    sel = [start]
    with _progress(n, progress, "greedy coreset") as bar:
        bar.update(1)
        if n == 1:
            return torch.tensor(sel, dtype=torch.long)
        co = _Coords(x, low_dim, seed)
        r = _dist(x, x[start : start + 1])
        r[start] = -1.0
        torch.set_num_threads(1)
        quiet_sparse_csr()
        lazy = _Lazy(N, freeze)
        pass_rate, batches = 0.0, 0
        try:
            while len(sel) < n:
                tau = lazy.settle(x, co, r, sel, pool, workers, cells)
                new = _batch(x, co, r, tau, n - len(sel), bar)
                if new is None:  # every unselected row is at distance 0: index order
                    rest = torch.nonzero(r == 0)[:, 0][: n - len(sel)]
                    sel.extend(rest.tolist())
                    bar.update(rest.numel())
                    break
                sel.extend(new)
                if len(sel) < n:
                    cent = torch.tensor(new, dtype=torch.long)
                    r.index_fill_(0, cent, -1.0)
                    # filter 1 is skipped while it passes over a quarter of the pairs (probed
                    # again every 8th batch)
                    dense = pass_rate > 0.25 and batches % 8 != 7
                    rate = _lower_all(x, co, r, cent, workers, cells, dense, lazy.active)
                    pass_rate = rate if not dense else pass_rate
                    batches += 1
        finally:
            torch.set_num_threads(prev_threads)
    return torch.tensor(sel, dtype=torch.long)


class _Lazy:
    """Lazy updates: rows far below the selection threshold are frozen and skipped.

    A batch needs exact ``r`` only for rows that can enter its pool, i.e. rows with
    ``r >= tau``.  Rows with ``r < beta * tau`` (``beta = freeze``) are *frozen*: they keep
    their ``r`` (an upper bound of the true one, since r only decreases) and the number of
    centres applied to them, and the update passes skip them.  Invariant: every frozen row
    has stored ``0 <= r < theta <= tau`` (selected rows, ``r = -1``, are dropped at a freeze,
    never frozen).  When ``tau`` (computed over all stored r) falls below ``theta``, the frozen
    rows whose stored ``r >= beta * tau`` get every centre selected since they froze (the same
    filtered exact update), then ``theta = beta * tau`` and the loop repeats; so the pool is
    always built from exact values.  When ``tau <= 0`` (fewer unselected rows with ``r > 0``
    than the pool size) every frozen row thaws and ``theta = 0``, which ends the loop.  Rows
    whose min-distance ends far below the final threshold are never touched again.
    """

    def __init__(self, N: int, beta: float | None):
        self.N, self.beta = N, beta
        self.active: torch.Tensor | None = None  # sorted active rows; None: all rows
        self.groups: list[tuple[torch.Tensor, int]] = []  # (frozen rows, centres applied)
        self.theta = 0.0

    def settle(self, x, co, r, sel: list[int], pool: int, workers: int, cells: int) -> float:
        """Thaw what the next pool needs, freeze what it cannot need; return ``tau``."""
        N = self.N
        while True:
            tau = float(torch.topk(r, min(pool, N), sorted=False).values.min())
            if self.beta is None:
                return tau
            if self.groups and tau < self.theta:
                theta = self.beta * tau if tau > 0 else 0.0
                keep, thawed = [], []
                for rows, version in self.groups:
                    up = r.index_select(0, rows) >= theta
                    if bool(up.any()):
                        t_rows = rows[up]
                        cent = torch.tensor(sel[version:], dtype=torch.long)
                        _lower_all(x, co, r, cent, workers, cells, rows=t_rows)
                        thawed.append(t_rows)
                        rows = rows[~up]
                    if rows.numel():
                        keep.append((rows, version))
                self.groups = keep
                self.theta = theta
                if thawed:
                    self.active = torch.sort(torch.cat([self.active, *thawed])).values
                continue  # thawed rows may have lowered tau
            below = self.beta * tau
            if below > 0:
                ra = r if self.active is None else r.index_select(0, self.active)
                low = ra < below
                if int(low.sum()) * 4 > low.numel():   # freeze when over a quarter can go
                    act = self.active if self.active is not None else torch.arange(N)
                    # selected rows (r = -1) leave the active set without being frozen: no
                    # update concerns them and no thaw must wait for them
                    self.groups.append((act[low & (ra >= 0)], len(sel)))
                    self.active = act[~low]
                    self.theta = max(self.theta, below)
            return tau


def _batch(x: torch.Tensor, co: _Coords, r: torch.Tensor, tau: float, limit: int, bar) -> list[int] | None:
    """Select the next centres (at most ``limit``) from the candidate pool; None when every
    unselected row has min-distance 0.

    The pool holds every row with ``r >= tau`` (``tau``: the pool size-th largest r, ties
    included); rows outside it have ``r < tau`` and r never grows, so while the pool's largest
    r is ``>= tau`` the global farthest row (lowest index among ties) is in the pool.  Only the
    pool's r are lowered here; :func:`_lower_all` then applies the batch's centres to all rows.
    When ``tau <= 0`` the pool is the rows with ``r > 0`` and the batch runs while one is left.
    The batch ends at the first selection whose candidate is below ``tau`` (or ``<= 0``), at
    ``limit``, or when no pool row is left that could still be selected; it never returns an
    empty list.
    """
    idx = torch.nonzero(r >= tau if tau > 0 else r > 0)[:, 0]  # ascending row order
    if idx.numel() == 0:
        return None
    k = co.k
    # the pool's rows: low / rest coordinates, squared norms, features, r and the filters' r^2
    pl, prest, pq, px, pr = (co.low.index_select(0, idx), co.rest.index_select(0, idx),
                             co.sq.index_select(0, idx), x.index_select(0, idx), r.index_select(0, idx))
    ps = pr.clamp_min(0.0).square().mul_(1.0 + _S_REL).add_(co.floor)  # r^2 (1 + S) + floor
    e_rel = torch.tensor(_E_REL)
    new: list[int] = []
    while len(new) < limit:
        i = int(torch.argmax(pr))  # first maximum: the lowest row index among ties
        best = float(pr[i])
        if best <= 0.0 or best < tau:
            break
        ci = int(idx[i])
        new.append(ci)
        bar.update(1)
        pr[i] = -1.0
        ps[i] = 0.0
        if len(new) == limit:
            break
        # lower the pool's r with the new centre: both filters, then the exact kernel
        cl, cq = co.low[ci], co.sq[ci]
        qq = pq + cq
        thr = torch.addcmul(ps, qq, e_rel)
        cand = entries_below(torch.addmv(qq, pl, cl, alpha=-2.0), thr)
        if cand.numel() * 8 > pr.numel():  # most pass: full estimate for the whole pool
            dot = pl[:, :k] @ cl[:k] + prest @ co.rest[ci]
            cand = entries_below(qq - 2.0 * dot, thr)
        elif cand.numel():
            dot = pl[:, :k].index_select(0, cand) @ cl[:k] + prest.index_select(0, cand) @ co.rest[ci]
            d2 = pq.index_select(0, cand) + cq - 2.0 * dot
            cand = cand.index_select(0, entries_below(d2, thr.index_select(0, cand)))
        if cand.numel():
            nv = torch.minimum(pr.index_select(0, cand), _dist(px.index_select(0, cand), x[ci : ci + 1]))
            pr.index_copy_(0, cand, nv)
            ps.index_copy_(0, cand, nv.clamp_min(0.0).square().mul_(1.0 + _S_REL).add_(co.floor))
        # rows that dropped below tau can no longer be selected in this batch: drop them.  When
        # none is left the batch is over (the stop test above needs a non-empty pool).
        if pr.numel() > 1024 and len(new) % 64 == 0:
            keep = torch.nonzero(pr >= tau if tau > 0 else pr > 0)[:, 0]
            if keep.numel() == 0:
                break
            if keep.numel() * 2 < pr.numel():
                idx, pl, prest, pq, px, pr, ps = (t.index_select(0, keep) for t in (idx, pl, prest, pq, px, pr, ps))
    return new
# --------------------------------------------------------------------------------------------
# Public samplers
# --------------------------------------------------------------------------------------------


class GreedySampler(Sampler):
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

    def prepare(self, features: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """(the rows in the sampler's proxy space, the coreset size, the start row) for
        ``features`` [N, D]: what :meth:`run` selects on (see the module docstring, steps 1-2)."""
        x = _check_features(features)
        N = x.shape[0]
        n = coreset_size(N, self.ratio)
        gen = torch.Generator().manual_seed(self.seed)
        proxy = random_projection(x, self.proxy_dim, gen).contiguous()
        start = int(torch.randint(N, (1,), generator=gen))
        return proxy, n, start

    @torch.no_grad()
    def run(self, features: torch.Tensor) -> torch.LongTensor:
        proxy, n, start = self.prepare(features)
        if proxy.is_cuda:
            return greedy_reference(proxy, n, start, self.progress)
        return greedy_fast(proxy, n, start, self.progress, seed=self.seed)


class NaiveGreedySampler(GreedySampler):
    """Same API and result as :class:`GreedySampler`, by the brute-force O(N * n) loop."""

    @torch.no_grad()
    def run(self, features: torch.Tensor) -> torch.LongTensor:
        proxy, n, start = self.prepare(features)
        return greedy_reference(proxy, n, start, self.progress)


register_sampler("greedy", lambda config, progress=False: GreedySampler(
    config.coreset_ratio, proxy_dim=config.greedy_proxy_dim, seed=config.seed, progress=progress))
