"""Evaluation metrics of industrial anomaly detection (MVTec AD / anomalib definitions), exact.

Conventions (the same for every metric here)
--------------------------------------------
Higher score = more anomalous; label 1 / ``True`` = anomalous ("positive").  Every *distinct* score
value ``t`` is one threshold and a sample is predicted anomalous iff ``score >= t`` -- the convention
of scikit-learn's ``roc_curve`` / ``precision_recall_curve``.  Equal scores are therefore never split
by a threshold ("ties merged"): they enter a curve together as one (possibly diagonal) step.  With
``TP(t)``, ``FP(t)`` the counts at threshold ``t``, ``P`` / ``N`` the numbers of positives / negatives,
and the thresholds visited from the highest score down, starting from the point "nothing predicted":

* **AUROC** -- trapezoidal area under ``(FPR, TPR) = (FP/N, TP/P)`` from (0, 0) to (1, 1); equals
  ``sklearn.metrics.roc_auc_score``.  Computed in exact integer arithmetic,
  ``sum_k (FP_k - FP_{k-1}) * (TP_k + TP_{k-1}) / (2 P N)``, while ``2 P N < 2**62``.
* **AP** (average precision) -- the step-wise sum ``sum_k (R_k - R_{k-1}) * Prec_k`` with recall
  ``R = TP/P`` and precision ``Prec = TP/(TP+FP)``, no interpolation; equals
  ``sklearn.metrics.average_precision_score``.
* **F1-max** -- ``max_k 2 Prec_k R_k / (Prec_k + R_k) = max_k 2 TP_k / (TP_k + FP_k + P)``, the best
  F1 over all thresholds (the maximum over ``precision_recall_curve``'s points).
* **AUPRO** (MVTec AD, Bergmann et al. 2021) -- ground-truth regions are the 8-connected components
  of each image's mask (``scipy.ndimage.label`` with a 3x3 structure of ones); with ``R`` regions
  over the whole test set, ``PRO(t) = (1/R) * sum_r |{p in r : score_p >= t}| / |r|``, i.e. a pixel of
  region ``r`` carries weight ``1 / (R |r|)``; ``FPR(t)`` is the false-positive rate over *all*
  anomaly-free pixels of the test set, good images included.  The curve ``(FPR, PRO)``, starting
  at (0, 0), is integrated with the trapezoid rule from FPR 0 to ``max_fpr`` (default 0.3), the
  curve being linearly interpolated at exactly ``FPR = max_fpr``, and the area divided by ``max_fpr``
  (so a perfect detector scores 1).  This is the official MVTec evaluation code's definition.
* Pixel AUROC / AP / F1-max are the image-level functions applied to all pixels of the test set
  (the flattened concatenation of every map and mask).

Everything is exact: one global sort, cumulative sums, one curve point per distinct score -- no
threshold grid.  Counts are integers; the only rounding is float64 arithmetic in AP, F1, PRO and
the AUPRO trapezoids.  Sums are accumulated strictly sequentially (``np.cumsum`` with a carried
start value) so that a result does not depend on how the data was cut into chunks: the in-RAM and
the on-disk paths of :class:`PixelMetrics` return bit-identical numbers.

Undefined cases raise :class:`~patchbank.errors.PatchbankError` (never ``nan``): AUROC needs both
classes; AP and F1-max need at least one positive; the pixel metrics (and :func:`image_metrics`)
need both classes.  NaN scores are rejected.

API
---
``auroc(labels, scores)``, ``average_precision(labels, scores)``, ``f1_max(labels, scores)`` and
``image_metrics(labels, scores) -> {"image_auroc", "image_ap", "image_f1_max"}``; the accumulator
:class:`ImageMetrics` (``update(labels, scores)`` any number of times, then ``compute()``).

:class:`PixelMetrics` (``update(anomaly_map, mask)`` once per image, then
``compute() -> {"pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"}``) and the conveniences
``pixel_metrics(maps, masks)`` and ``aupro(maps, masks)``.

Memory design of :class:`PixelMetrics`
--------------------------------------
A test set can hold 10^9 pixels, so the maps are not kept.  Each pixel is packed into ONE uint64
sort key, ``(order_key(float32 score) << 32) | region_id``: the high half is the float32 score mapped
to an unsigned integer with the same order (sign bit flipped for positives, all bits flipped for
negatives; ``-0.0`` is canonicalised to ``+0.0`` first), the low half is 0 for an anomaly-free
pixel and otherwise the test-set-wide id (1, 2, ...) of its ground-truth region.  The region sizes
are kept in a small side array, so a pixel's class and AUPRO weight ``1/(R |r|)`` follow from its
key; ``R`` is only known at ``compute()``.  Sorting the keys sorts by score, and equal keys are
interchangeable, so the sorted key sequence is run-length encoded into (key, count) pairs and fed,
from the highest key down, to a streaming integrator that merges equal scores into one curve point
and accumulates the four metrics on the fly (it never holds the curve).

* While the test set has at most ``max_memory_bytes / 40`` pixels the keys stay in RAM (8 bytes a
  pixel) and ``compute()`` concatenates and sorts them once.
* Beyond that, every image's keys are sorted on ``update`` and appended as a sorted *run* to a
  temporary file (``tmp_dir``, deleted by :meth:`PixelMetrics.close`, on garbage collection or
  interpreter exit).  ``compute()`` memory-maps the file and merges the runs by *key range*: from
  the top, it picks the lowest key ``v`` such that at most ``max_memory_bytes / 40`` keys lie in
  ``[v, previous bound)`` (bisection over a sample of the runs, then over the integer key line if
  needed; exact counts by a binary search in every sorted run, vectorised over the runs), reads
  those contiguous slices, sorts them in RAM and feeds them on.  A single key more frequent than
  the budget (e.g. millions of exact zeros) is counted, never loaded.  The working RAM stays about
  ``max_memory_bytes`` (plus reclaimable page cache of the mapped file); the disk use is 8 bytes a
  pixel (8 GB for 10^9 pixels).  Both paths feed the integrator the same (key, count) sequence, so
  their results are bit-identical.

Scores are evaluated as float32 (a float64 map is rounded to float32 on ``update``), so two
float64 scores closer than float32 resolution count as a tie.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Iterable, Iterator

import numpy as np
from scipy import ndimage

from patchbank.errors import PatchbankError

__all__ = [
    "DEFAULT_MAX_FPR",
    "DEFAULT_MAX_MEMORY_BYTES",
    "ImageMetrics",
    "PixelMetrics",
    "aupro",
    "auroc",
    "average_precision",
    "f1_max",
    "image_metrics",
    "pixel_metrics",
]

DEFAULT_MAX_FPR = 0.3
DEFAULT_MAX_MEMORY_BYTES = 1 << 30
# Approximate peak bytes per pixel while sorting one bucket (keys, sort, run-length encoding).
_BYTES_PER_PIXEL = 40
# Entries handed to the integrator at once (bounds its temporary arrays).
_FEED_CHUNK = 1 << 20
_STRUCTURE_8 = np.ones((3, 3), dtype=bool)
_LOW32 = np.uint64(0xFFFFFFFF)
_MAX_REGIONS = 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# Streaming curve integrator
# ---------------------------------------------------------------------------------------------


def _seq_cumsum(start: float, values: np.ndarray) -> np.ndarray:
    """``start + values[0], start + values[0] + values[1], ...`` summed strictly left to right.

    ``np.cumsum`` (``np.add.accumulate``) is sequential, unlike ``np.sum`` (pairwise), so carrying
    ``start`` across chunks gives the same bits however a sequence is cut into chunks.
    """
    return np.cumsum(np.concatenate((np.array([start], dtype=np.float64), values)))[1:]


class _CurveIntegrator:
    """Accumulates AUROC, AP, F1-max and (optionally) AUPRO from entries fed in descending score order.

    ``feed(tie, pos, neg, pro)`` takes consecutive entries: ``tie`` identifies the threshold (equal
    values = same score, must be non-increasing in score across all calls), ``pos`` / ``neg`` the
    numbers of positives / negatives of each entry, ``pro`` each entry's total PRO weight.  A curve
    point is emitted at the end of each group of equal ``tie``; the last group of a call stays
    pending until the next call shows a different value or :meth:`finish` is called, so the result
    is independent of how the entries are split into calls.
    """

    def __init__(self, n_pos: int, n_neg: int, max_fpr: float | None = None):
        self.n_pos = int(n_pos)
        self.n_neg = int(n_neg)
        self.max_fpr = max_fpr
        # Running cumulative sums over all entries fed so far.
        self._tp = 0
        self._fp = 0
        self._pro = 0.0
        self._pending: tuple | None = None  # (tie value, tp, fp, pro) of the open group
        # Last emitted curve point (the origin before the first one).
        self._prev_tp = 0
        self._prev_fp = 0
        self._prev_pro = 0.0
        self._exact_roc = 2 * self.n_pos * self.n_neg < 2**62
        self._roc_num: int | float = 0 if self._exact_roc else 0.0
        self._ap_sum = 0.0
        self._f1 = 0.0
        self._pro_area = 0.0
        self._pro_done = False
        self._finished = False

    def feed(self, tie: np.ndarray, pos: np.ndarray, neg: np.ndarray, pro: np.ndarray | None = None):
        """Add entries in descending score order: ``tie`` (equal values = one threshold), positive
        and negative counts, and (for AUPRO) the PRO weight of each entry."""
        if len(tie) == 0:
            return
        tp = self._tp + np.cumsum(pos, dtype=np.int64)
        fp = self._fp + np.cumsum(neg, dtype=np.int64)
        pr = _seq_cumsum(self._pro, pro) if pro is not None else np.zeros(len(tie))
        ends = np.flatnonzero(tie[1:] != tie[:-1])  # last entry of each group closed in this call
        tp_pts, fp_pts, pro_pts = tp[ends], fp[ends], pr[ends]
        if self._pending is not None and tie[0] != self._pending[0]:
            _, ptp, pfp, ppro = self._pending
            tp_pts = np.concatenate(([ptp], tp_pts))
            fp_pts = np.concatenate(([pfp], fp_pts))
            pro_pts = np.concatenate(([ppro], pro_pts))
        self._emit(tp_pts, fp_pts, pro_pts)
        self._tp, self._fp, self._pro = int(tp[-1]), int(fp[-1]), float(pr[-1])
        self._pending = (tie[-1], self._tp, self._fp, self._pro)

    def _emit(self, tp: np.ndarray, fp: np.ndarray, pro: np.ndarray):
        """Add the curve points ``(tp[k], fp[k], pro[k])`` (in threshold order) to the integrals."""
        if len(tp) == 0:
            return
        tp0 = np.concatenate(([self._prev_tp], tp))
        fp0 = np.concatenate(([self._prev_fp], fp))
        dtp = np.diff(tp0)
        dfp = np.diff(fp0)
        # AUROC: trapezoids in integer units of (1/N) x (1/(2P)).
        if self._exact_roc:
            self._roc_num += int(np.sum(dfp * (tp0[1:] + tp0[:-1])))
        else:
            terms = dfp.astype(np.float64) * (tp0[1:] + tp0[:-1]).astype(np.float64)
            self._roc_num = float(_seq_cumsum(self._roc_num, terms)[-1])
        # AP: sum of (TP_k - TP_{k-1}) * precision_k, divided by P at the end.
        precision = tp / (tp + fp)
        self._ap_sum = float(_seq_cumsum(self._ap_sum, dtp * precision)[-1])
        # F1 = 2 TP / (TP + FP + P).
        self._f1 = max(self._f1, float(np.max(2.0 * tp / (tp + fp + self.n_pos))))
        # AUPRO: trapezoids of (FPR, PRO) up to FPR = max_fpr, interpolated there.
        if self.max_fpr is not None and not self._pro_done:
            x = np.concatenate(([self._prev_fp], fp)) / self.n_neg
            y = np.concatenate(([self._prev_pro], pro))
            over = np.flatnonzero(x[1:] > self.max_fpr)
            m = int(over[0]) if over.size else len(x) - 1  # number of segments entirely <= max_fpr
            terms = (x[1 : m + 1] - x[:m]) * (y[1 : m + 1] + y[:m]) * 0.5
            if over.size:
                width = self.max_fpr - x[m]
                y_at = y[m] + (y[m + 1] - y[m]) * width / (x[m + 1] - x[m])
                terms = np.append(terms, width * (y[m] + y_at) * 0.5)
                self._pro_done = True
            self._pro_area = float(_seq_cumsum(self._pro_area, terms)[-1])
        self._prev_tp, self._prev_fp, self._prev_pro = int(tp[-1]), int(fp[-1]), float(pro[-1])

    def finish(self) -> dict:
        """Close the last threshold group; ``{"auroc", "ap", "f1_max", "aupro"}`` (idempotent)."""
        if not self._finished:
            if self._pending is not None:
                _, ptp, pfp, ppro = self._pending
                self._emit(np.array([ptp]), np.array([pfp]), np.array([ppro]))
                self._pending = None
            self._finished = True
        if self._tp != self.n_pos or self._fp != self.n_neg:  # pragma: no cover - internal check
            raise AssertionError(f"curve ends at TP={self._tp}, FP={self._fp}, expected {self.n_pos}, {self.n_neg}")
        out = {}
        if self.n_pos > 0 and self.n_neg > 0:
            out["auroc"] = self._roc_num / (2 * self.n_pos * self.n_neg)
        if self.n_pos > 0:
            out["ap"] = self._ap_sum / self.n_pos
            out["f1_max"] = self._f1
        if self.max_fpr is not None and self.n_pos > 0 and self.n_neg > 0:
            out["aupro"] = self._pro_area / self.max_fpr
        return out


# ---------------------------------------------------------------------------------------------
# Image level
# ---------------------------------------------------------------------------------------------


def _binary_inputs(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """Validate and flatten (labels, scores) -> (bool array, float64 array)."""
    y = np.asarray(labels)
    s = np.asarray(scores)
    if y.shape != s.shape:
        raise PatchbankError(f"labels shape {y.shape} does not match scores shape {s.shape}")
    if y.size == 0:
        raise PatchbankError("no samples to evaluate (labels and scores are empty)")
    y = y.ravel()
    if y.dtype != bool:
        if not np.all((y == 0) | (y == 1)):
            raise PatchbankError(f"labels must be 0/1 or boolean, got values {np.unique(y)[:5].tolist()}")
        y = y == 1
    try:
        s = s.astype(np.float64).ravel()
    except (TypeError, ValueError) as exc:
        raise PatchbankError(f"scores must be numeric, got dtype {np.asarray(scores).dtype}") from exc
    if np.isnan(s).any():
        raise PatchbankError("scores contain NaN")
    return y, s


def _image_curve(labels, scores, need: str) -> dict:
    y, s = _binary_inputs(labels, scores)
    n_pos = int(np.count_nonzero(y))
    n_neg = y.size - n_pos
    _require(n_pos, n_neg, need, "labels")
    order = np.argsort(s, kind="stable")[::-1]
    pos = y[order].astype(np.int64)
    curve = _CurveIntegrator(n_pos, n_neg)
    curve.feed(s[order], pos, 1 - pos)
    return curve.finish()


def _require(n_pos: int, n_neg: int, need: str, what: str):
    if n_pos == 0:
        raise PatchbankError(f"{need} is undefined: the {what} contain no anomalous sample (need both classes)")
    if n_neg == 0 and need != "AP/F1-max":
        raise PatchbankError(f"{need} is undefined: the {what} contain no anomaly-free sample (need both classes)")


def auroc(labels, scores) -> float:
    """Area under the ROC curve (equals ``sklearn.metrics.roc_auc_score``); needs both classes."""
    return _image_curve(labels, scores, "AUROC")["auroc"]


def average_precision(labels, scores) -> float:
    """Step-wise average precision (equals ``sklearn.metrics.average_precision_score``).

    Needs at least one positive; with no negative it is 1.
    """
    return _image_curve(labels, scores, "AP/F1-max")["ap"]


def f1_max(labels, scores) -> float:
    """Best F1 over all thresholds ``score >= t`` (ties merged); needs at least one positive."""
    return _image_curve(labels, scores, "AP/F1-max")["f1_max"]


def image_metrics(labels, scores) -> dict[str, float]:
    """``{"image_auroc", "image_ap", "image_f1_max"}`` from one sort; needs both classes."""
    r = _image_curve(labels, scores, "AUROC")
    return {"image_auroc": r["auroc"], "image_ap": r["ap"], "image_f1_max": r["f1_max"]}


class ImageMetrics:
    """Accumulates image labels and scores; ``compute()`` returns :func:`image_metrics`."""

    def __init__(self):
        self._labels: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []

    def update(self, labels, scores) -> None:
        """Add one sample (scalars) or a batch (equal-shaped arrays)."""
        y = np.atleast_1d(np.asarray(labels))
        s = np.atleast_1d(np.asarray(scores))
        if y.shape != s.shape:
            raise PatchbankError(f"labels shape {y.shape} does not match scores shape {s.shape}")
        self._labels.append(y.ravel())
        self._scores.append(s.ravel())

    def __len__(self) -> int:
        return sum(len(y) for y in self._labels)

    def compute(self) -> dict[str, float]:
        """:func:`image_metrics` of every sample added so far."""
        if not self._labels:
            raise PatchbankError("no samples to evaluate (ImageMetrics.update was never called)")
        return image_metrics(np.concatenate(self._labels), np.concatenate(self._scores))


# ---------------------------------------------------------------------------------------------
# Pixel level
# ---------------------------------------------------------------------------------------------


def _float32_order_key(scores: np.ndarray) -> np.ndarray:
    """uint32 keys ordered like the float32 ``scores`` (which must hold no NaN and no -0.0)."""
    bits = np.ascontiguousarray(scores, dtype=np.float32).view(np.uint32)
    return np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))


def _rle_desc(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ascending keys -> (distinct keys descending, their counts)."""
    n = sorted_keys.size
    if n == 0:
        return sorted_keys, np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
    counts = np.diff(np.append(starts, n))
    return sorted_keys[starts][::-1], counts[::-1]


# The bound search, the over-full-key case and the slice loading share the per-run ``end`` bounds
# long: that shrink as the merge goes down; split up, each piece would hand that state back and forth.
def _merge_runs(data: np.ndarray, lengths: list[int], limit: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield all keys of ``data`` -- consecutive ascending runs of the given lengths -- as
    (distinct keys, counts), in descending order overall.

    Works by key range: each step loads at most ``limit`` keys -- the slices ``[v, bound)`` of all
    runs, for the lowest ``v`` that keeps the total within ``limit`` -- sorts them and yields them;
    a single key with more than ``limit`` copies is yielded as one counted entry without loading.
    ``v`` is found by bisection over candidates (a strided sample of every run, including each
    run's first key, and each sample + 1), refined by bisection over the integer key line when the
    candidates are too sparse; every count is exact (a binary search in each sorted run,
    vectorised over the runs).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    start = np.concatenate(([0], np.cumsum(lengths)[:-1]))[lengths > 0]
    end = start + lengths[lengths > 0]  # current exclusive bound of each run; shrinks as we go
    if end.size == 0:
        return
    total = int(end[-1])
    stride = max(1, limit // (2 * len(start)), -(-4 * total // limit))
    sample = np.concatenate([data[a:b:stride] for a, b in zip(start, end)])
    cands = np.unique(np.concatenate((sample, sample + np.uint64(1))))
    steps = int(lengths.max()).bit_length() + 1

    def lower_bounds(v) -> np.ndarray:
        """Per run, the first index in [start, end) whose key is >= v (end if none)."""
        v = np.uint64(v)
        lo, up = start.copy(), end.copy()
        for _ in range(steps):
            active = lo < up
            if not active.any():
                break
            mid = (lo + up) >> 1
            right = active & (data[np.minimum(mid, total - 1)] < v)
            lo = np.where(right, mid + 1, lo)
            up = np.where(active & ~right, mid, up)
        return lo

    while True:
        alive = np.flatnonzero(end > start)
        if alive.size == 0:
            return
        top = data[end[alive] - 1].max()
        lo = lower_bounds(top)
        count = int((end - lo).sum())
        if count > limit:  # one key, too frequent to load: count it
            yield np.array([top], dtype=np.uint64), np.array([count], dtype=np.int64)
            end = lo
            continue
        # Smallest candidate v <= top with count(keys in [v, bound)) <= limit (top qualifies).
        a, b = 0, int(np.searchsorted(cands, top, side="left"))
        v = int(top)
        while a < b:
            mid = (a + b) // 2
            lo_mid = lower_bounds(cands[mid])
            n_mid = int((end - lo_mid).sum())
            if n_mid <= limit:
                b, v, lo, count = mid, int(cands[mid]), lo_mid, n_mid
            else:
                a = mid + 1
        if b > 0 and 2 * count < limit:  # cands[b - 1] has too many: refine on the key line
            ka, kb = int(cands[b - 1]) + 1, v
            while ka < kb:
                mid = (ka + kb) // 2
                lo_mid = lower_bounds(mid)
                n_mid = int((end - lo_mid).sum())
                if n_mid <= limit:
                    kb, lo, count = mid, lo_mid, n_mid
                else:
                    ka = mid + 1
        bucket = np.concatenate([data[lo[i] : end[i]] for i in np.flatnonzero(end > lo)])
        bucket.sort()
        yield _rle_desc(bucket)
        end = lo


def _cleanup(file, directory):
    try:
        file.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class PixelMetrics:
    """Exact pixel AUROC, AP, F1-max and AUPRO over a test set, one image at a time.

    ``update(anomaly_map, mask)`` per image: ``anomaly_map`` a 2-D float array (H, W), ``mask`` the
    ground truth of the same shape (boolean, or numeric with nonzero = anomalous; an all-zero mask
    is a good image).  Maps must already be at mask resolution.  ``compute()`` returns
    ``{"pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"}`` and can be called again after more
    updates.  ``max_memory_bytes`` bounds (approximately) the RAM the pixel data uses; beyond
    ``max_memory_bytes / 40`` pixels the data goes to a temporary file in ``tmp_dir`` (see the module
    docstring).  Use as a context manager or call :meth:`close` to delete the file early.
    """

    def __init__(
        self,
        max_fpr: float = DEFAULT_MAX_FPR,
        max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
        tmp_dir: str | os.PathLike | None = None,
    ):
        if not 0.0 < float(max_fpr) <= 1.0:
            raise PatchbankError(f"max_fpr must be in (0, 1], got {max_fpr}")
        self.max_fpr = float(max_fpr)
        self.max_memory_bytes = int(max_memory_bytes)
        self.tmp_dir = tmp_dir
        self._limit = max(1, self.max_memory_bytes // _BYTES_PER_PIXEL)  # keys held / sorted at once
        self._ram: list[np.ndarray] = []  # keys of each image (unsorted), while in RAM
        self._run_lengths: list[int] = []  # sorted runs in the file, once spilled
        self._file = None
        self._dir: str | None = None
        self._finalizer = None
        self._region_sizes: list[np.ndarray] = []
        self._n_regions = 0
        self._n_pixels = 0
        self._n_pos = 0
        self._n_images = 0

    # -- bookkeeping ------------------------------------------------------------------------
    @property
    def n_images(self) -> int:
        """Images added so far."""
        return self._n_images

    @property
    def n_pixels(self) -> int:
        """Pixels added so far."""
        return self._n_pixels

    @property
    def n_regions(self) -> int:
        """Ground-truth regions (8-connected components of the masks) added so far."""
        return self._n_regions

    @property
    def on_disk(self) -> bool:
        """Whether the pixel data has been moved to the temporary file."""
        return self._file is not None

    def close(self) -> None:
        """Delete the temporary file (if any) and forget all data."""
        if self._finalizer is not None:
            self._finalizer()
        self._file = self._dir = self._finalizer = None
        self._ram, self._run_lengths, self._region_sizes = [], [], []
        self._n_regions = self._n_pixels = self._n_pos = self._n_images = 0

    def __enter__(self) -> "PixelMetrics":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- input ------------------------------------------------------------------------------
    def update(self, anomaly_map, mask) -> None:
        """Add one image: its anomaly map (H, W) and ground-truth mask (H, W)."""
        amap = np.asarray(anomaly_map)
        gt = np.asarray(mask)
        if amap.shape != gt.shape:
            raise PatchbankError(f"anomaly map shape {amap.shape} does not match mask shape {gt.shape}")
        if amap.ndim != 2:
            raise PatchbankError(f"anomaly map and mask must be 2-D (H, W), got shape {amap.shape}")
        try:
            scores = amap.astype(np.float32)  # a copy
        except (TypeError, ValueError) as exc:
            raise PatchbankError(f"anomaly map must be numeric, got dtype {amap.dtype}") from exc
        if np.isnan(scores).any():
            raise PatchbankError("anomaly map contains NaN")
        scores += np.float32(0.0)  # -0.0 -> +0.0, so that equal scores get equal keys
        gt = gt if gt.dtype == bool else gt != 0
        regions, n = ndimage.label(gt, structure=_STRUCTURE_8)
        if self._n_regions + n > _MAX_REGIONS:
            raise PatchbankError(f"more than {_MAX_REGIONS} ground-truth regions in the test set")
        ids = np.where(regions > 0, regions.astype(np.int64) + self._n_regions, 0).astype(np.uint64)
        keys = ((_float32_order_key(scores).astype(np.uint64) << np.uint64(32)) | ids).ravel()
        self._region_sizes.append(np.bincount(regions.ravel(), minlength=n + 1)[1:].astype(np.int64))
        self._n_regions += n
        self._n_pos += int(np.count_nonzero(gt))
        self._n_images += 1
        if self._file is None and self._n_pixels + keys.size <= self._limit:
            self._ram.append(keys)
        else:
            if self._file is None:
                self._spill()
            keys.sort()
            keys.tofile(self._file)
            self._run_lengths.append(keys.size)
        self._n_pixels += keys.size

    def _spill(self) -> None:
        """Move the keys held in RAM to a new temporary file, one sorted run per image."""
        self._dir = tempfile.mkdtemp(prefix="patchbank-metrics-", dir=self.tmp_dir)
        self._file = open(os.path.join(self._dir, "keys.u64"), "wb")
        self._finalizer = weakref.finalize(self, _cleanup, self._file, self._dir)
        for keys in self._ram:
            keys.sort()
            keys.tofile(self._file)
            self._run_lengths.append(keys.size)
        self._ram = []

    def _sorted_entries(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All keys as (distinct keys, counts), in descending key order, in bounded pieces."""
        if self._file is None:
            keys = np.concatenate(self._ram) if self._ram else np.zeros(0, np.uint64)
            keys.sort()
            yield _rle_desc(keys)
            return
        self._file.flush()
        data = np.memmap(self._file.name, dtype=np.uint64, mode="r", shape=(sum(self._run_lengths),))
        # A plain ndarray view of the mapping: indexing a np.memmap object is slow.
        yield from _merge_runs(np.asarray(data), self._run_lengths, self._limit)

    # -- output -----------------------------------------------------------------------------
    def compute(self) -> dict[str, float]:
        """``{"pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"}`` over all pixels added so far."""
        if self._n_pixels == 0:
            raise PatchbankError("no pixels to evaluate (PixelMetrics.update was never called)")
        n_pos, n_neg = self._n_pos, self._n_pixels - self._n_pos
        _require(n_pos, n_neg, "pixel AUROC/AUPRO", "masks")
        sizes = np.concatenate(self._region_sizes).astype(np.float64)
        weight = np.zeros(self._n_regions + 1)  # per region id; id 0 = anomaly-free
        weight[1:] = 1.0 / (float(self._n_regions) * sizes)
        curve = _CurveIntegrator(n_pos, n_neg, self.max_fpr)
        for keys, counts in self._sorted_entries():
            for i in range(0, keys.size, _FEED_CHUNK):
                k, c = keys[i : i + _FEED_CHUNK], counts[i : i + _FEED_CHUNK]
                ids = (k & _LOW32).astype(np.intp)
                pos = np.where(ids > 0, c, 0)
                curve.feed(k >> np.uint64(32), pos, c - pos, c * weight[ids])
        r = curve.finish()
        return {"pixel_auroc": r["auroc"], "pixel_ap": r["ap"], "pixel_f1_max": r["f1_max"], "aupro": r["aupro"]}


def pixel_metrics(
    anomaly_maps: Iterable,
    masks: Iterable,
    max_fpr: float = DEFAULT_MAX_FPR,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    tmp_dir: str | os.PathLike | None = None,
) -> dict[str, float]:
    """:class:`PixelMetrics` over paired sequences of maps (H, W) and masks (H, W)."""
    maps, gts = list(anomaly_maps), list(masks)
    if len(maps) != len(gts):
        raise PatchbankError(f"{len(maps)} anomaly maps but {len(gts)} masks")
    with PixelMetrics(max_fpr=max_fpr, max_memory_bytes=max_memory_bytes, tmp_dir=tmp_dir) as acc:
        for amap, gt in zip(maps, gts):
            acc.update(amap, gt)
        return acc.compute()


def aupro(anomaly_maps: Iterable, masks: Iterable, max_fpr: float = DEFAULT_MAX_FPR) -> float:
    """MVTec AUPRO (normalised area under PRO vs FPR up to ``max_fpr``) of paired maps and masks."""
    return pixel_metrics(anomaly_maps, masks, max_fpr=max_fpr)["aupro"]
