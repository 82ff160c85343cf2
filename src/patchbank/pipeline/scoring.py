"""Patch scores from neighbour distances, image scores, and normal-score calibration.

* patch score: LMF-Core Eq. 2 (k = 1, Euclidean, min) or StructCore Eq. 5 (mean over k of the
  squared distance); ``distance`` picks plain or squared, ``knn_reduce`` min or mean.
* image score: ``max`` of the patch-score grid, or PatchCore's re-weighted max
  (Roth et al. Eq. 7): s = (1 - exp||m_t* - m*|| / sum_{m in N_b(m*)} exp||m_t* - m||) * s*,
  where m_t* is the test patch with the highest score s*, m* its nearest bank entry and N_b(m*)
  the b nearest bank entries of m* (m* included).
* ``topk_mean``: the mean of the top ceil(r * P) patch scores (StructCore Eq. 8's tail mass,
  used alone as a pooling operator); less sensitive to one spurious peak than the max.
* normalised score (LMF-Core Sec. 4.5): a = (a_hat - mu) / sigma with mu, sigma the mean and
  standard deviation (ddof=1) of held-out normal image scores; the decision threshold is the
  (1 - fpr) empirical quantile (linear interpolation) of the held-out normalised scores.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def patch_scores(sq_dists: torch.Tensor, distance: str, knn_reduce: str) -> torch.Tensor:
    """[n, k] squared distances (ascending) -> [n] patch scores."""
    d = sq_dists if distance == "squared" else sq_dists.sqrt()
    return d[:, 0] if knn_reduce == "min" else d.mean(1)


def reweighted_max(scores: torch.Tensor, queries: torch.Tensor, nn_index: torch.Tensor,
                   search, b: int) -> torch.Tensor:
    """PatchCore's re-weighted max for each image.

    scores [B, P] patch scores, queries [B, P, d] patch features, nn_index [B, P] nearest bank
    row of each patch, ``search`` over the bank (its ``rows(ids)`` reads bank rows back);
    returns [B] image scores.
    """
    top = scores.argmax(1)
    rows = torch.arange(scores.shape[0], device=scores.device)
    s_star = scores[rows, top]
    q_star = queries[rows, top]                        # m_t*
    m_star = search.rows(nn_index[rows, top])          # m*
    _, support = search.search(m_star, b)              # N_b(m*), m* first
    dist = (q_star.unsqueeze(1) - search.rows(support).to(q_star.device)).norm(dim=2)
    weight = 1.0 - torch.softmax(dist.double(), dim=1)[:, 0].to(scores.dtype)
    return weight * s_star


def topk_mean(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """[B, P] patch scores -> [B] mean of the top max(1, ceil(ratio * P)) scores (StructCore Eq. 8)."""
    k = max(1, math.ceil(ratio * scores.shape[1] - 1e-9))
    return scores.topk(k, dim=1).values.mean(1)


class NormalStats:
    """Mean/std of held-out normal image scores and the threshold on the normalised score."""

    def fit(self, scores: np.ndarray, target_fpr: float) -> "NormalStats":
        scores = np.asarray(scores, dtype=np.float64)
        self.mean_ = float(scores.mean())
        self.std_ = float(scores.std(ddof=1)) if scores.size > 1 else 0.0
        if not self.std_ > 0:
            self.std_ = max(abs(self.mean_) * 1e-6, 1e-12)
        self.threshold_ = float(np.quantile(self.normalize(scores), 1.0 - target_fpr))
        self.n_ = int(scores.size)
        return self

    def normalize(self, scores):
        return (np.asarray(scores, dtype=np.float64) - self.mean_) / self.std_
