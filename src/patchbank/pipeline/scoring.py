"""Patch scores from neighbour distances, image scores, and normal-score calibration.

* patch score: LMF-Core Eq. 2 (k = 1, Euclidean, min) or StructCore Eq. 5 (mean over k of the
  squared distance); ``distance`` picks plain or squared, ``knn_reduce`` min or mean.
* image score: ``max`` of the patch-score grid, or PatchCore's re-weighted max
  (Roth et al. Eq. 7): s = (1 - exp||m_t* - m*|| / sum_{m in N_b(m*)} exp||m_t* - m||) * s*,
  where m_t* is the test patch with the highest score s*, m* its nearest bank entry and N_b(m*)
  the b nearest bank entries of m* (m* included).
* ``topk_mean``: the mean of the top ceil(r * P) patch scores (StructCore Eq. 8's tail mass,
  used alone as a pooling operator); less sensitive to one spurious peak than the max.
* context taps (``Config.context_taps``): the bank rows also hold the columns of deeper taps that
  the map does not use.  The patches the pooling reads (the top ceil(r * P) by map score for
  ``topk_mean``, the top one for ``max``) are measured again against the bank on every column
  (:func:`context_pool`), and their mean is the image score: the map keeps the fine taps'
  resolution, the decision also sees the deeper context.
* :class:`PatchScorer`: the fitted scoring stage of one bank, built from these: embedding ->
  nearest neighbours -> patch scores -> image score (pooling) and anomaly map + descriptor.

Calibration of the image score (normalisation, threshold) is :mod:`patchbank.pipeline.calibration`.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import numpy as np
import torch

from patchbank.pipeline.anomaly_map import apply_map_operators, map_operator
from patchbank.pipeline.embedding import Embedding
from patchbank.pipeline.structure import COMPONENTS, descriptor, local_density_calibration
from patchbank.search import Search


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


def topk_count(n_patches: int, ratio: float) -> int:
    """How many of ``n_patches`` patch scores the top-k mean averages: max(1, ceil(ratio * P))."""
    return max(1, math.ceil(ratio * n_patches - 1e-9))


def topk_mean(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """[B, P] patch scores -> [B] mean of the top max(1, ceil(ratio * P)) scores (StructCore Eq. 8)."""
    return scores.topk(topk_count(scores.shape[1], ratio), dim=1).values.mean(1)


def context_pool(scores: torch.Tensor, emb: torch.Tensor, context, config) -> torch.Tensor:
    """[B, P] map patch scores, [B, P, D] patch rows on every column (map and context taps),
    ``context`` a search over the bank's rows on every column -> [B] image scores: the top
    ``topk_count(P, topk_ratio)`` patches by map score (pooling ``topk_mean``; the top one for
    ``max``), each scored again against ``context`` (the same patch score: ``k`` neighbours,
    ``distance``, ``knn_reduce``), averaged."""
    b, p, d = emb.shape
    n = 1 if config.base_pooling == "max" else topk_count(p, config.topk_ratio)
    top = scores.topk(n, dim=1).indices
    queries = emb.gather(1, top.unsqueeze(2).expand(-1, -1, d)).reshape(-1, d)
    sq, _ = context.search(queries, config.k)
    return patch_scores(sq, config.distance, config.knn_reduce).view(b, -1).mean(1)


Pooling = Callable[..., torch.Tensor]   # (scores [B, P], emb [B, P, d], nn [B, P], search, config) -> [B]
POOLINGS: dict[str, Pooling] = {}


def register_pooling(name: str, pooling: Pooling) -> None:
    """Make ``name`` (a ``Config.image_score`` / ``base_score`` value) pool patch scores with
    ``pooling(scores, emb, nn_index, search, config)``."""
    POOLINGS[name] = pooling


register_pooling("max", lambda scores, emb, nn, search, config: scores.max(1).values)
register_pooling("topk_mean", lambda scores, emb, nn, search, config: topk_mean(scores, config.topk_ratio))
register_pooling("reweighted_max", lambda scores, emb, nn, search, config: reweighted_max(
    scores, emb, nn, search, min(config.reweight_neighbors, search.shape[0])))


class PatchScorer:
    """The scoring stage of one fitted bank.

    ``embed(layers)``: per-layer rows -> bank-space rows (:class:`Embedding`).
    ``score(emb [B, P, d], search=None, context=None) -> (S_base [B] float64 tensor, patch
    scores [B, P])``: k nearest bank entries (``search``, default the bank's own), patch score
    (LMF-Core Eq. 2 / StructCore Eq. 5, divided by the matched entry's local radius when
    ``radius`` is given), then the configured pooling (max, PatchCore's re-weighted max, top-k
    mean).  With context taps, ``search`` covers the map's first ``search.shape[1]`` columns and
    ``context`` (default the scorer's own) every column; S_base is :func:`context_pool`.
    ``anomaly_map(scores) -> (maps [B, H, W] at config.input_size, descriptors [B, 3] float64)``:
    the patch scores minus ``map_offset`` (``Config.map_offset``; None: nothing subtracted),
    bilinear upsampling + Gaussian blur, and StructCore's phi(S) (Eq. 7) of exactly those maps.
    """

    def __init__(self, config, embedding: Embedding, search: Search, grid: tuple[int, int],
                 radius: torch.Tensor | None = None, context: Search | None = None,
                 map_offset: torch.Tensor | None = None):
        self.config = config
        self.embedding = embedding
        self.search = search
        self.grid = tuple(grid)
        self.radius = radius
        self.context = context   # the bank on every column (context taps), None without them
        self.map_offset = map_offset   # [h * w] subtracted before the map (map_offset "position")

    def with_map_offset(self, map_offset: torch.Tensor | None) -> "PatchScorer":
        """This scorer with another ``map_offset`` (a copy sharing the bank and the embedding)."""
        out = copy.copy(self)
        out.map_offset = map_offset
        return out

    @property
    def bank_search(self) -> Search:
        """The search over the bank's whole rows: ``context`` with context taps, else ``search``."""
        return self.search if self.context is None else self.context

    def embed(self, layers: list[torch.Tensor]) -> torch.Tensor:
        """Per-layer rows -> bank-space rows."""
        return self.embedding.transform(layers)

    def score(self, emb: torch.Tensor, search=None, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, P, d] embeddings -> (S_base [B] float64 tensor, patch scores [B, P]); see the
        class.  Torch ops only: ``search`` and ``context`` are anything with the Search
        protocol's ``search`` / ``rows`` / ``shape`` (an exported graph passes the banks it holds
        as constants)."""
        cfg = self.config
        search = self.search if search is None else search
        context = self.context if context is None else context
        b, p, d = emb.shape
        rows = emb.reshape(-1, d)
        if context is not None:        # the map's columns come first
            rows = rows[:, :search.shape[1]].contiguous()
        sq, idx = search.search(rows, cfg.k)
        scores = patch_scores(sq, cfg.distance, cfg.knn_reduce)
        if self.radius is not None:   # LMF-Core Sec. 6.2's rejected calibration (off by default)
            scores = local_density_calibration(scores, idx[:, 0], self.radius)
        scores = scores.view(b, p)
        if context is not None:
            image = context_pool(scores, emb, context, cfg)
        else:
            image = POOLINGS[cfg.base_pooling](scores, emb, idx[:, 0].view(b, p), search, cfg)
        return image.double(), scores

    def map_operators(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The (A_h [H, h], A_w [W, w]) operators of :meth:`anomaly_map` (upsampling + blur)."""
        cfg, (h, w) = self.config, self.grid
        device = device if device is not None else torch.device("cpu")
        return (map_operator(h, cfg.input_size[0], cfg.blur_sigma, device, mode=cfg.map_upsample),
                map_operator(w, cfg.input_size[1], cfg.blur_sigma, device, mode=cfg.map_upsample))

    def map_tensors(self, scores: torch.Tensor, operators: tuple[torch.Tensor, torch.Tensor] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, P] patch scores -> (maps [B, H, W], descriptors [B, 3] float64 tensor), with
        ``operators`` (:meth:`map_operators`) or the cached ones for the scores' device; the
        scores minus ``map_offset`` first, when there is one."""
        cfg = self.config
        if self.map_offset is not None:
            scores = scores - self.map_offset.to(scores.device, scores.dtype)
        grid = scores.view(scores.shape[0], *self.grid)
        if operators is None:
            operators = self.map_operators(scores.device)
        maps = apply_map_operators(grid, *operators)
        return maps, descriptor(maps, COMPONENTS, cfg.struct_topk_ratio)

    def anomaly_map(self, scores: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """[B, P] patch scores -> (maps [B, H, W], descriptors [B, 3]); see the class."""
        maps, phi = self.map_tensors(scores)
        return maps, phi.cpu().numpy()
