"""Calibration on held-out normal images: which images are held out, the structure scorer, the
normal-score statistics and the decision threshold.

Scoring training images against a bank that contains their own patches would give near-zero
distances and a badly biased mean/std.  A seeded subset of the training images
(:func:`calibration_images`: ``calibration_fraction``, at least 5 when possible, at most
``calibration_max_images``) is scored against the bank *without any entry taken from a held-out
image* (:func:`calibrate`: the one search, with those rows masked).  Their rows stay in the
deployed bank, so the statistics come from a bank about 10% smaller than the deployed one: a
slightly conservative (higher-score) estimate.

* normalised score (LMF-Core Sec. 4.5): a = (a_hat - mu) / sigma, mu and sigma the mean and
  standard deviation (ddof=1) of the held-out normal image scores;
* threshold: the (1 - target_fpr) empirical quantile (linear interpolation) of the held-out
  normalised scores; an image is anomalous unless a <= threshold (a NaN score is anomalous);
* StructCore (Eqs. 10-12): D_struct's train-good statistics and lambda_auto come from the same
  held-out images' map descriptors and base scores.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from patchbank.errors import PatchbankError
from patchbank.pipeline.scoring import PatchScorer
from patchbank.pipeline.structure import COMPONENTS, StructScorer


MIN_TRAIN_IMAGES = 5         # 4 held out to calibrate + at least 1 more for the bank
FEW_CALIBRATION_IMAGES = 10  # below this a fit warns that its threshold is a rough estimate


def calibration_images(n: int, config) -> np.ndarray:
    """Sorted indices of the training images held out for calibration, out of ``n``.

    Refuses fewer than ``MIN_TRAIN_IMAGES`` images (one line) and warns (UserWarning) when fewer
    than ``FEW_CALIBRATION_IMAGES`` are held out: the threshold is then a quantile of a handful
    of scores."""
    if n < MIN_TRAIN_IMAGES:
        raise PatchbankError(f"need at least {MIN_TRAIN_IMAGES} training images (4 are held out to "
                             f"calibrate the threshold), got {n}")
    n_cal = max(math.ceil(config.calibration_fraction * n), min(5, n - 1))
    n_cal = min(n_cal, config.calibration_max_images, n - 1)
    if n_cal < FEW_CALIBRATION_IMAGES:
        warnings.warn(f"the threshold is calibrated on only {n_cal} held-out normal images "
                      f"({n} training images); use {math.ceil(FEW_CALIBRATION_IMAGES / config.calibration_fraction)} "
                      f"or more for a stable false-positive rate", UserWarning, stacklevel=3)
    rng = np.random.default_rng(config.seed + 1)
    return np.sort(rng.choice(n, size=n_cal, replace=False))


class NormalStats:
    """Mean/std of held-out normal image scores and the threshold on the normalised score."""

    def fit(self, scores: np.ndarray, target_fpr: float) -> "NormalStats":
        """mu, sigma (ddof=1; a tiny positive floor when the scores are constant) and the
        (1 - target_fpr) quantile of the normalised ``scores``; returns self."""
        scores = np.asarray(scores, dtype=np.float64)
        self.mean_ = float(scores.mean())
        self.std_ = float(scores.std(ddof=1)) if scores.size > 1 else 0.0
        if not self.std_ > 0:
            self.std_ = max(abs(self.mean_) * 1e-6, 1e-12)
        self.threshold_ = float(np.quantile(self.normalize(scores), 1.0 - target_fpr))
        self.n_ = int(scores.size)
        return self

    def normalize(self, scores) -> np.ndarray:
        """(scores - mu) / sigma, float64."""
        return (np.asarray(scores, dtype=np.float64) - self.mean_) / self.std_


@dataclass
class ImageScores:
    """Image-level results of a batch, float64 [B] each: the configured final score, the pooled
    S_base, D_struct (Eq. 10), S_base + lambda D_struct (Eq. 12), the normalised final score and
    the decision."""

    final: np.ndarray
    base: np.ndarray
    struct: np.ndarray
    hybrid: np.ndarray
    normalized: np.ndarray
    anomalous: np.ndarray


class ScoreCalibration:
    """Fitted on the held-out images' base scores [n] and map descriptors [n, 3]; then turns any
    batch's base scores and descriptors into :class:`ImageScores` (:meth:`image_scores`)."""

    def __init__(self, config):
        self.config = config

    def fit(self, base: np.ndarray, phi: np.ndarray) -> "ScoreCalibration":
        """Fit on the held-out images' base scores [n] and full descriptors [n, 3]: the structure
        scorer (Eqs. 10-11), the final calibration scores, their statistics and the threshold."""
        cfg = self.config
        self.base_scores_ = np.asarray(base, dtype=np.float64)
        self.descriptors_ = np.asarray(phi, dtype=np.float64).reshape(-1, len(COMPONENTS))
        self.struct_ = StructScorer(cfg.struct_components, cfg.struct_distance,
                                    cfg.hybrid_lambda).fit(self.descriptors_, self.base_scores_)
        self.scores_ = self._final(self.base_scores_, self.descriptors_)[0]
        self.stats_ = NormalStats().fit(self.scores_, cfg.target_fpr)
        self.threshold_ = self.stats_.threshold_
        return self

    def _final(self, base: np.ndarray, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d_struct = self.struct_.struct(phi).numpy()
        hyb = base + self.struct_.lambda_ * d_struct                 # Eq. 12
        final = {"struct": d_struct, "hybrid": hyb}.get(self.config.image_score, base)
        return final, d_struct, hyb

    def image_scores(self, base: np.ndarray, phi: np.ndarray) -> ImageScores:
        """A batch's base scores [B] and descriptors [B, 3] -> its :class:`ImageScores`."""
        final, d_struct, hyb = self._final(base, phi)
        norm = self.stats_.normalize(final)
        return ImageScores(final, base, d_struct, hyb, norm, ~(norm <= self.threshold_))


@torch.inference_mode()
def calibrate(scorer: PatchScorer, rows: list[torch.Tensor], n_images: int,
              held_out: torch.Tensor) -> ScoreCalibration:
    """Score the held-out images (their raw per-layer rows ``rows``, ``n_images`` images of the
    scorer's grid) against the bank without the entries ``held_out`` (bool mask, taken from those
    images), and fit the calibration on their base scores and descriptors."""
    cfg = scorer.config
    sub = scorer.search.subset(~held_out)
    n_patches = scorer.grid[0] * scorer.grid[1]
    base, phi = [], []
    for start in range(0, n_images, cfg.batch_size):
        m = min(cfg.batch_size, n_images - start)
        part = slice(start * n_patches, (start + m) * n_patches)
        emb = scorer.embed([buf[part] for buf in rows])
        b_score, scores = scorer.score(emb.view(m, n_patches, -1), sub)
        base.append(b_score)
        phi.append(scorer.anomaly_map(scores)[1])
    return ScoreCalibration(cfg).fit(np.concatenate(base), np.concatenate(phi))
