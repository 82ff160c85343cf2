"""ROC and precision-recall curve points of image scores, and the operating point of a run.

The conventions are those of :mod:`patchbank.evaluation.metrics` (which computes the areas but
keeps no curve): higher score = more anomalous, label 1 = defective, every distinct score ``t``
is one threshold and an image counts as flagged at ``t`` iff ``score >= t`` (ties merged).  The
points are therefore those of scikit-learn's ``roc_curve(..., drop_intermediate=False)`` and
``precision_recall_curve`` (without its appended ``(recall 0, precision 1)`` end point); their
areas are the run's ``image_auroc`` and ``image_ap``, which the page shows as the metric code
computed them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from patchbank.errors import PatchbankError


@dataclass
class Curves:
    """Counts at each distinct score, from the highest down: ``thresholds`` [K] (descending),
    ``tp`` / ``fp`` [K] (images with ``score >= threshold`` that are defective / good), and the
    numbers of defective (``n_pos``) and good (``n_neg``) images."""

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    n_pos: int
    n_neg: int

    @property
    def fpr(self) -> np.ndarray:
        """ROC x: ``[0, FP_1/N, ..., 1]`` (K + 1 points, starting at "nothing flagged")."""
        return np.concatenate(([0.0], self.fp / self.n_neg))

    @property
    def tpr(self) -> np.ndarray:
        """ROC y: ``[0, TP_1/P, ..., 1]``."""
        return np.concatenate(([0.0], self.tp / self.n_pos))

    @property
    def recall(self) -> np.ndarray:
        """PR x: ``TP_k / P`` (K points, increasing)."""
        return self.tp / self.n_pos

    @property
    def precision(self) -> np.ndarray:
        """PR y: ``TP_k / (TP_k + FP_k)``."""
        return self.tp / (self.tp + self.fp)


def image_curves(labels, scores) -> Curves:
    """The :class:`Curves` of 0/1 ``labels`` and ``scores`` (equal length).

    Raises:
        PatchbankError: no defective or no good image, a NaN score, or lengths that differ.
    """
    y = np.asarray(labels, dtype=np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise PatchbankError(f"{y.size} labels for {s.size} scores")
    if np.isnan(s).any():
        raise PatchbankError("a score is NaN; no curve can be drawn")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise PatchbankError("curves need both good and defective images")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.concatenate((np.flatnonzero(np.diff(s) != 0), [s.size - 1]))  # end of each tie group
    tp = np.cumsum(y)[last]
    fp = last + 1 - tp
    return Curves(s[last], tp, fp, n_pos, n_neg)


@dataclass
class OperatingPoint:
    """Where the run's decisions sit: ``tp`` defective and ``fp`` good images flagged, out of
    ``n_pos`` defective and ``n_neg`` good."""

    tp: int
    fp: int
    n_pos: int
    n_neg: int

    @property
    def fpr(self) -> float:
        """Share of good images flagged."""
        return self.fp / self.n_neg

    @property
    def tpr(self) -> float:
        """Share of defective images flagged (the recall)."""
        return self.tp / self.n_pos

    @property
    def precision(self) -> float | None:
        """Share of flagged images that are defective; None when nothing is flagged."""
        flagged = self.tp + self.fp
        return self.tp / flagged if flagged else None


def operating_point(labels, flagged) -> OperatingPoint:
    """The :class:`OperatingPoint` of 0/1 ``labels`` and boolean decisions ``flagged``."""
    y = np.asarray(labels, dtype=np.int64).ravel() == 1
    f = np.asarray(flagged, dtype=bool).ravel()
    return OperatingPoint(int(np.sum(f & y)), int(np.sum(f & ~y)), int(y.sum()), int((~y).sum()))
