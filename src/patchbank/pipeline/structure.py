"""StructCore's structure-aware image score (Sec. 3.6) and LMF-Core's rejected density calibration.

Everything here acts on anomaly maps or distances only (torch tensors or numpy arrays); it never
touches patch scores or localisation.

* descriptor phi(S) (Eq. 7) of a map S [H, W] with flattened values s:
  - ``std``: sigma_s, the *population* standard deviation of s (divide by HW, ddof=0): the map
    is the whole population, not a sample;
  - ``topk_mean``: mean of the k = max(1, ceil(HW * r)) largest values of s (Eq. 8; a 1e-9 slack
    inside ceil so that e.g. 0.07 * 100 gives 7, as :func:`patchbank.pipeline.scoring.topk_mean`);
  - ``tv``: total variation (Eq. 9) with forward differences,
    TV(S) = (1/HW) * [ sum_{i<H-1, j} |S[i+1,j] - S[i,j]| + sum_{i, j<W-1} |S[i,j+1] - S[i,j]| ],
    i.e. a difference whose second pixel falls outside the map is omitted (no padding, no wrap).
  Any non-empty ordered subset of :data:`COMPONENTS` may be used (Tables 5 and 7).
* train-good statistics (Eq. 10): mu, sigma per dimension of phi over train-good maps, sigma the
  *population* standard deviation (ddof=0, defined for a single sample; ``numpy.std``'s default);
  D_struct = || (phi - mu) / (sigma + eps) ||_2 (diagonal Mahalanobis), plus the Table 6
  alternatives (standardised L1 / Chebyshev, raw L1 / L2 / Chebyshev, cosine distance to mu).
* lambda_auto (Eq. 11) = std(S_base) / (std(D_struct) + eps) over train-good samples, both stds
  with ddof=0 as above (the ratio does not depend on ddof when eps is negligible).
* hybrid (Eq. 12): S_hyb = S_base + lambda * D_struct (:class:`patchbank.pipeline.calibration.ScoreCalibration`).
* local-density calibration (LMF-Core Sec. 6.2, reported there as a negative result): see
  :func:`bank_local_radius` and :func:`local_density_calibration`.

All statistics are computed in float64; descriptors and distances are returned as float64.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from patchbank.errors import PatchbankError
from patchbank.linalg import sq_dists, sq_norms

COMPONENTS = ("std", "topk_mean", "tv")
DISTANCES = ("mahalanobis", "l1_std", "chebyshev_std", "l1", "l2", "chebyshev", "cosine")


def _tensor(x, dtype=torch.float64) -> torch.Tensor:
    """A torch tensor (numpy arrays and lists accepted) converted to ``dtype``."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    return x.to(dtype)


def _check_components(components) -> tuple[str, ...]:
    if isinstance(components, str):
        components = (components,)
    components = tuple(components)
    if not components:
        raise PatchbankError(f"structure components must be a non-empty subset of {COMPONENTS}")
    for c in components:
        if c not in COMPONENTS:
            raise PatchbankError(f"unknown structure component {c!r}; choose from {COMPONENTS}")
    if len(set(components)) != len(components):
        raise PatchbankError(f"structure components repeat an entry: {components}")
    return components


def _topk_count(n: int, ratio: float) -> int:
    """k = max(1, ceil(n * r)) of Eq. 8."""
    return max(1, math.ceil(n * ratio - 1e-9))


def map_std(s: torch.Tensor) -> torch.Tensor:
    """[B, HW] flattened maps -> [B] population standard deviation sigma_s (Eq. 7, ddof=0)."""
    return s.std(dim=1, unbiased=False)


def map_topk_mean(s: torch.Tensor, ratio: float) -> torch.Tensor:
    """[B, HW] flattened maps -> [B] mean of the top max(1, ceil(HW * r)) values (Eq. 8)."""
    k = min(_topk_count(s.shape[1], ratio), s.shape[1])
    return s.topk(k, dim=1).values.mean(1)


def total_variation(maps: torch.Tensor) -> torch.Tensor:
    """[B, H, W] maps -> [B] TV (Eq. 9): forward differences, out-of-map terms omitted, / HW."""
    h, w = maps.shape[1:]
    vertical = (maps[:, 1:, :] - maps[:, :-1, :]).abs().sum((1, 2))
    horizontal = (maps[:, :, 1:] - maps[:, :, :-1]).abs().sum((1, 2))
    return (vertical + horizontal) / (h * w)


def descriptor(maps, components=COMPONENTS, topk_ratio: float = 0.01) -> torch.Tensor:
    """Anomaly maps [B, H, W] (or one map [H, W]) -> phi(S) [B, len(components)] (Eq. 7).

    Columns follow ``components`` (any non-empty ordered subset of :data:`COMPONENTS`).
    """
    components = _check_components(components)
    if not 0.0 < topk_ratio <= 1.0:
        raise PatchbankError(f"structure topk_ratio must be in (0, 1], got {topk_ratio}")
    maps = _tensor(maps)
    if maps.dim() == 2:
        maps = maps.unsqueeze(0)
    if maps.dim() != 3 or maps.shape[1] == 0 or maps.shape[2] == 0:
        raise PatchbankError(f"anomaly maps must be [B, H, W] with H, W > 0, "
                             f"got {tuple(maps.shape)}")
    flat = maps.reshape(maps.shape[0], -1)
    compute = {
        "std": lambda: map_std(flat),
        "topk_mean": lambda: map_topk_mean(flat, topk_ratio),
        "tv": lambda: total_variation(maps),
    }
    return torch.stack([compute[c]() for c in components], dim=1)


class StructStats:
    """Train-good statistics of phi(S) and the structural distance D_struct (Eq. 10, Table 6).

    ``mean_`` and ``std_`` [d] are the per-dimension mean and population std (ddof=0) of the
    train-good descriptors; ``eps`` is added to ``std_`` before dividing (Eq. 10) and guards the
    norms of the cosine distance.
    """

    def __init__(self, eps: float = 1e-6):
        self.eps = float(eps)
        self.mean_: torch.Tensor | None = None
        self.std_: torch.Tensor | None = None

    def fit(self, phi_train_good) -> "StructStats":
        """[N, d] train-good descriptors -> self with mu = mean_, sigma = std_ (ddof=0)."""
        phi = _tensor(phi_train_good)
        if phi.dim() != 2 or phi.shape[0] < 1 or phi.shape[1] < 1:
            raise PatchbankError(f"structure statistics need [N >= 1, d >= 1] descriptors, "
                                 f"got {tuple(phi.shape)}")
        self.mean_ = phi.mean(0)
        self.std_ = phi.std(0, unbiased=False)
        return self

    def _phi(self, phi) -> torch.Tensor:
        if self.mean_ is None:
            raise PatchbankError("structure statistics are not fitted (call fit first)")
        phi = _tensor(phi).to(self.mean_.device)
        if phi.dim() == 1:
            phi = phi.unsqueeze(0)
        if phi.dim() != 2 or phi.shape[1] != self.mean_.shape[0]:
            raise PatchbankError(f"descriptors of shape {tuple(phi.shape)} do not match the "
                                 f"{self.mean_.shape[0]}-dimensional structure statistics")
        return phi

    def standardize(self, phi) -> torch.Tensor:
        """[B, d] -> (phi - mu) / (sigma + eps), the standardised deviation of Eq. 10."""
        return (self._phi(phi) - self.mean_) / (self.std_ + self.eps)

    def distance(self, phi, kind: str = "mahalanobis") -> torch.Tensor:
        """[B, d] descriptors -> [B] D_struct.

        ``mahalanobis``: ||z||_2 with z the standardised deviation (Eq. 10); ``l1_std``: ||z||_1;
        ``chebyshev_std``: ||z||_inf; ``l1`` / ``l2`` / ``chebyshev``: the same norms of the raw
        deviation phi - mu; ``cosine``: 1 - <phi, mu> / (max(||phi||, eps) * max(||mu||, eps)).
        """
        if kind not in DISTANCES:
            raise PatchbankError(f"unknown structure distance {kind!r}; choose from {DISTANCES}")
        phi = self._phi(phi)
        if kind == "cosine":
            num = phi @ self.mean_
            den = phi.norm(dim=1).clamp_min(self.eps) * self.mean_.norm().clamp_min(self.eps)
            return 1.0 - num / den
        dev = self.standardize(phi) if kind.endswith("_std") or kind == "mahalanobis" \
            else phi - self.mean_
        norm = {"mahalanobis": 2, "l2": 2, "l1_std": 1, "l1": 1,
                "chebyshev_std": math.inf, "chebyshev": math.inf}[kind]
        return torch.linalg.vector_norm(dev, ord=norm, dim=1)


def lambda_auto(base_scores_train, d_struct_train, eps: float = 1e-12) -> float:
    """Eq. 11: std(S_base) / (std(D_struct) + eps) over train-good samples (ddof=0 stds)."""
    base = _tensor(base_scores_train).reshape(-1)
    d = _tensor(d_struct_train).reshape(-1)
    if base.numel() < 1 or d.numel() < 1:
        raise PatchbankError("lambda_auto needs at least one train-good score")
    return float(base.std(unbiased=False) / (d.std(unbiased=False) + eps))


def bank_local_radius(bank, k: int = 5, chunk: int | None = None) -> torch.Tensor:
    """[N, d] bank -> [N] local radius of each entry: the mean Euclidean distance to its k nearest
    *other* entries (n itself is excluded by index; exact duplicates count at distance 0; k is
    clipped to N - 1).  Small in dense regions of the bank, large at its sparse boundary.

    The kNN runs as a chunked matrix product ||a||^2 - 2 a.b + ||b||^2 over ``chunk`` rows at a
    time (default: about 2^24 distances per chunk), never an N x N matrix.  Computed in the
    bank's floating dtype (float32 for integer input), on the bank's device.
    """
    bank = bank if isinstance(bank, torch.Tensor) else torch.as_tensor(np.asarray(bank))
    if not bank.is_floating_point():
        bank = bank.float()
    if bank.dim() != 2 or bank.shape[0] < 2:
        raise PatchbankError(f"local density needs a bank [N >= 2, d], got {tuple(bank.shape)}")
    if k < 1:
        raise PatchbankError(f"local density k must be >= 1, got {k}")
    n = bank.shape[0]
    k = min(int(k), n - 1)
    chunk = chunk or max(1, (1 << 24) // n)
    sq = sq_norms(bank)
    radius = torch.empty(n, dtype=bank.dtype, device=bank.device)
    for start in range(0, n, chunk):
        rows = bank[start:start + chunk]
        m = rows.shape[0]
        d2 = sq_dists(rows, bank, sq, sq[start:start + m])
        rows_at = torch.arange(m, device=bank.device)
        d2[rows_at, rows_at + start] = math.inf          # exclude the entry itself
        nearest = d2.topk(k, dim=1, largest=False).values.clamp_min_(0.0).sqrt_()
        radius[start:start + m] = nearest.mean(1)
    return radius


def local_density_calibration(nn_dist, nn_index, bank_radius, eps: float = 1e-12) -> torch.Tensor:
    """LMF-Core Sec. 6.2 (its rejected variant): the nearest-neighbour distance divided by the
    local density term of the matched bank entry, score = nn_dist / (radius[nn_index] + eps).

    The paper says it "divides the nearest-neighbour distance by the density of the bank around
    the matched element" and explains the failure as anomalies matching "the sparse boundary of
    the normal manifold", where the division "suppresses their score".  Only a density term that
    is *large* at a sparse boundary suppresses scores there, i.e. a local scale such as the mean
    distance to the k nearest entries (:func:`bank_local_radius`); dividing by an inverse
    distance would instead amplify them.  We therefore divide by the local radius (a LOF-style
    normalisation), the reading under which the paper's explanation holds.

    ``nn_dist`` and ``nn_index`` have any common shape; the result has that shape.
    """
    dist = nn_dist if isinstance(nn_dist, torch.Tensor) else torch.as_tensor(np.asarray(nn_dist))
    index = nn_index if isinstance(nn_index, torch.Tensor) \
        else torch.as_tensor(np.asarray(nn_index))
    radius = bank_radius if isinstance(bank_radius, torch.Tensor) \
        else torch.as_tensor(np.asarray(bank_radius))
    if dist.shape != index.shape:
        raise PatchbankError(f"nn_dist {tuple(dist.shape)} and nn_index {tuple(index.shape)} "
                             f"differ in shape")
    radius = radius.to(dist.device)
    return dist / (radius[index.to(dist.device).long()] + eps)


class StructScorer:
    """StructCore's image score from a map descriptor, fitted on train-good data (Eqs. 10-12).

    Works on the full descriptor [B, 3] (columns :data:`COMPONENTS`) and uses the ``components``
    subset, so one stored descriptor serves every subset (Tables 5 and 7).  ``fit`` takes the
    train-good descriptors and base scores (the calibration images, each scored without its own bank entries):
    ``stats_`` (mu, sigma of Eq. 10) and ``lambda_`` (``lam`` if given, else Eq. 11).
    """

    def __init__(self, components=COMPONENTS, distance: str = "mahalanobis",
                 lam: float | None = None):
        self.components = _check_components(components)
        if distance not in DISTANCES:
            raise PatchbankError(f"unknown structure distance {distance!r}; choose from {DISTANCES}")
        self.distance = distance
        self.lam = lam
        self._cols = [COMPONENTS.index(c) for c in self.components]

    def _select(self, phi_full) -> torch.Tensor:
        phi = _tensor(phi_full)
        if phi.dim() == 1:
            phi = phi.unsqueeze(0)
        if phi.dim() != 2 or phi.shape[1] != len(COMPONENTS):
            raise PatchbankError(f"expected full descriptors [B, {len(COMPONENTS)}], "
                                 f"got {tuple(phi.shape)}")
        return phi[:, self._cols]

    def fit(self, phi_full_train, base_train) -> "StructScorer":
        """mu, sigma of the train-good descriptors (Eq. 10) and lambda (given, or Eq. 11)."""
        self.stats_ = StructStats().fit(self._select(phi_full_train))
        d = self.stats_.distance(self._select(phi_full_train), self.distance)
        self.lambda_ = float(self.lam) if self.lam is not None else lambda_auto(base_train, d)
        return self

    def struct(self, phi_full) -> torch.Tensor:
        """[B] D_struct (Eq. 10 or the chosen Table 6 distance)."""
        return self.stats_.distance(self._select(phi_full), self.distance)
