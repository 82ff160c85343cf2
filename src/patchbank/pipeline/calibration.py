"""Calibration on the training images, leave-one-image-out: which images are scored, the
structure scorer, the normal-score statistics and the decision threshold.

Scoring a training image against a bank that contains its own patches would give near-zero
distances and a badly biased mean/std.  Every training image is therefore scored against the
deployed bank *without the entries taken from that image* (leave-one-image-out,
:func:`calibrate`): the same bank and search as prediction, each image blind to its own rows
(:class:`~patchbank.search.LeaveGroupOut`: ``k + LOO_EXTRA`` neighbours, the image's own rows
dropped, a masked search for the rare patches left with fewer than ``k``).  The statistics
come from all N training images, each scored against a bank that lacks only its own share of
the entries (about 1/N of them).

Which images (:func:`calibration_images`): their raw patch rows are kept from the one pass over
the images until the bank is built (the fusion's statistics are only known after the pass).  All
N images are scored when their raw rows fit in ``calibration_max_mb`` (or when the sampler holds
every row anyway, as greedy does); otherwise a seeded uniform subset of as many images as fit,
never fewer than ``min(N, CALIBRATION_MIN_SUBSET)``.

* normalised score (LMF-Core Sec. 4.5): a = (a_hat - mu) / sigma, mu and sigma the mean and
  standard deviation (ddof=1) of the calibration images' scores;
* threshold (:func:`~patchbank.pipeline.conformal.threshold_at`, by ``Config.threshold_rule``):
  ``conformal`` in every preset, the split-conformal rank of the n calibration images'
  normalised scores (:mod:`patchbank.pipeline.conformal`: at most target_fpr of new normal
  images above it); where the rank exceeds n the threshold is the largest score, and
  :func:`check_training_images` warns about so few images.  An image is anomalous unless
  a <= threshold (a NaN score is anomalous);
* StructCore (Eqs. 10-12): D_struct's train-good statistics and lambda_auto come from the same
  images' map descriptors and base scores;
* whole-image check (``Config.whole_image_check``): the mean of each calibration image's anomaly
  map (:func:`map_means`, the map a prediction draws) is a second statistic.  The two thresholds
  come from one conformal rank (:func:`~patchbank.pipeline.conformal.joint_conformal_thresholds`)
  and an image is anomalous when either statistic is above its threshold: the union, not each
  rule, is held at the target (at most target_fpr + 1 / (n + 1) of new normal images).  A blurred, dark or
  noisy frame raises every patch a little and none much, so the pooled score can miss it while
  the map's mean does not (docs/reliability.md).
* focus check (``Config.focus_check``, :mod:`patchbank.pipeline.focus`): the blurriness of every
  training image (a function of the image alone, no leave-one-image-out pass); an image blurrier
  than all of them is flagged too (``out_of_focus``; one more 1 / (n_train + 1) on the bound).
"""
from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from patchbank.errors import PatchbankError
from patchbank.pipeline.conformal import flags_above, joint_conformal_thresholds, threshold_at
from patchbank.pipeline.focus import focus_threshold
from patchbank.pipeline.scoring import PatchScorer
from patchbank.pipeline.structure import COMPONENTS, StructScorer
from patchbank.search import LeaveGroupOut


MIN_TRAIN_IMAGES = 5         # each scored against the bank entries of at least 4 others
FEW_CALIBRATION_IMAGES = 10  # below this (or 1 / target_fpr) a fit warns: a rough threshold
# Raw rows of the calibration images kept at most (MB), while Config has no
# ``calibration_max_mb`` field; beyond it a seeded subset of the images is scored.
CALIBRATION_MIN_SUBSET = 100  # a subset (over the budget) still has at least this many images
# Neighbours asked for beyond k before an image's own rows are dropped (LeaveGroupOut); a patch
# left with fewer than k falls back to a search with its image masked out.
LOO_EXTRA = 16


def enough_calibration_images(target_fpr: float) -> int:
    """Calibration images below which a fit warns: ``FEW_CALIBRATION_IMAGES``, and at least
    1 / target_fpr (fewer, and less than one normal image is expected above the (1 - target_fpr)
    quantile: the threshold is an extrapolation from the top few scores)."""
    return max(FEW_CALIBRATION_IMAGES, math.ceil(1.0 / target_fpr - 1e-9))


def check_training_images(n: int, config) -> None:
    """Refuse fewer than ``MIN_TRAIN_IMAGES`` training images (one line); warn (UserWarning)
    when fewer than :func:`enough_calibration_images`: the threshold is then a quantile of a
    handful of scores."""
    if n < MIN_TRAIN_IMAGES:
        raise PatchbankError(f"need at least {MIN_TRAIN_IMAGES} training images (each is scored "
                             f"against the others' patches to calibrate the threshold), got {n}")
    need = enough_calibration_images(config.target_fpr)
    if n < need:
        warnings.warn(f"the threshold is calibrated on only {n} normal training images (each "
                      f"scored without its own patches); use {need} or more for a stable "
                      f"false-positive rate at target_fpr {config.target_fpr:g}",
                      UserWarning, stacklevel=4)   # the caller of Detector.fit


def calibration_budget_bytes(config) -> int:
    """The raw-row budget of the calibration images in bytes: ``config.calibration_max_mb`` x 2**20."""
    return int(config.calibration_max_mb * 2**20)


def calibration_images(n: int, image_bytes: int, config) -> np.ndarray:
    """Sorted indices of the training images scored for calibration, out of ``n``.

    ``image_bytes``: the raw rows one image adds to the fit's memory when kept for calibration
    (0 when the fit holds every image's rows anyway).  All ``n`` when ``n * image_bytes`` fits
    in :func:`calibration_budget_bytes`; otherwise a seeded uniform subset (``config.seed + 1``)
    of ``max(budget // image_bytes, min(n, CALIBRATION_MIN_SUBSET))`` images."""
    budget = calibration_budget_bytes(config)
    if n * image_bytes <= budget:
        return np.arange(n)
    count = min(n, max(budget // image_bytes, CALIBRATION_MIN_SUBSET))
    rng = np.random.default_rng(config.seed + 1)
    return np.sort(rng.choice(n, size=count, replace=False))


def map_means(maps: torch.Tensor) -> torch.Tensor:
    """Anomaly maps [B, H, W] -> the mean of each, float64 [B]: the whole-image statistic."""
    return maps.double().mean(dim=(-2, -1))


def decide(normalized, whole_image, threshold: float):
    """The decision: anomalous unless ``normalized <= threshold`` (so a NaN score is anomalous),
    or flagged by the whole-image check.  Element-wise on torch tensors or numpy arrays /
    scalars (``whole_image`` bool of the same kind), so the torch path, an exported graph, an
    export runtime and a request's own threshold decide by this one rule."""
    return ~(normalized <= threshold) | whole_image


class NormalStats:
    """Mean/std of the calibration images' scores and the threshold on the normalised score."""

    def fit(self, scores: np.ndarray, target_fpr: float, rule: str = "conformal") -> "NormalStats":
        """mu, sigma (ddof=1; a tiny positive floor when the scores are constant) and the
        threshold (:func:`threshold_at` by ``rule``) of the normalised ``scores``; returns self."""
        scores = np.asarray(scores, dtype=np.float64)
        self.mean_ = float(scores.mean())
        self.std_ = float(scores.std(ddof=1)) if scores.size > 1 else 0.0
        if not self.std_ > 0:
            self.std_ = max(abs(self.mean_) * 1e-6, 1e-12)
        self.threshold_ = threshold_at(self.normalize(scores), target_fpr, rule)
        self.n_ = int(scores.size)
        return self

    def normalize(self, scores) -> np.ndarray:
        """(scores - mu) / sigma, float64."""
        return (np.asarray(scores, dtype=np.float64) - self.mean_) / self.std_


@dataclass
class ImageScores:
    """Image-level results of a batch, [B] each: the configured final score, the pooled S_base,
    D_struct (Eq. 10), S_base + lambda D_struct (Eq. 12), the normalised final score, the map's
    mean and the input's blurriness (float64), whether the whole-image check flags it, whether
    the focus check does and the decision (bool)."""

    final: np.ndarray
    base: np.ndarray
    struct: np.ndarray
    hybrid: np.ndarray
    normalized: np.ndarray
    map_mean: np.ndarray
    blurriness: np.ndarray
    whole_image: np.ndarray
    out_of_focus: np.ndarray
    anomalous: np.ndarray


def finite_threshold(threshold: Any) -> float:
    """``threshold`` as a float: a finite real number (numpy's too; not a bool, a string, an
    array or an integer too large for a float), else a one-line PatchbankError."""
    try:
        ok = isinstance(threshold, numbers.Real) and not isinstance(threshold, bool) \
            and math.isfinite(float(threshold))
    except OverflowError:
        ok = False
    if not ok:
        raise PatchbankError(f"threshold must be a finite number (on the normalised score), "
                             f"got {threshold!r}"[:300])
    return float(threshold)


class ScoreCalibration:
    """Fitted on the calibration images' base scores [n], map descriptors [n, 3] and, with the
    whole-image check, map means [n], and with the focus check every training image's
    blurriness; then turns any batch's base scores, descriptors, map means and blurriness into
    :class:`ImageScores` (:meth:`image_scores`).  ``map_threshold_``: the threshold on the map
    mean (None without the check); ``blur_threshold_``: on the blurriness (None without the
    focus check)."""

    def __init__(self, config):
        self.config = config

    def fit(self, base: np.ndarray, phi: np.ndarray, images: np.ndarray | None = None,
            means: np.ndarray | None = None, blurriness: np.ndarray | None = None) -> "ScoreCalibration":
        """Fit on the calibration images' base scores [n] and full descriptors [n, 3] (each
        image scored without its own bank entries): the structure scorer (Eqs. 10-11), the final
        calibration scores, their statistics and the threshold.  ``images`` [n]: the training
        image index of each score, kept as ``images_`` (a model file keeps them as
        ``calibration_images``; None for a file written before that tensor existed).  ``means``
        [n]: their maps' means, needed with ``Config.whole_image_check`` (the two thresholds
        then come from :func:`joint_conformal_thresholds`), ignored without it.  ``blurriness``
        [n_train]: every training image's (:func:`~patchbank.pipeline.focus.blurriness`), needed
        with ``Config.focus_check`` (kept as ``training_blurriness_``; the threshold is their
        largest), ignored without it."""
        cfg = self.config
        self.images_ = None if images is None else np.asarray(images, dtype=np.int64)
        self.base_scores_ = np.asarray(base, dtype=np.float64)
        self.descriptors_ = np.asarray(phi, dtype=np.float64).reshape(-1, len(COMPONENTS))
        self.struct_ = StructScorer(cfg.struct_components, cfg.struct_distance,
                                    cfg.hybrid_lambda).fit(self.descriptors_, self.base_scores_)
        self.scores_ = self._final(self.base_scores_, self.descriptors_)[0]
        self.stats_ = NormalStats().fit(self.scores_, cfg.target_fpr, cfg.threshold_rule)
        self.map_means_ = self.map_threshold_ = None
        if cfg.whole_image_check:
            if means is None:
                raise PatchbankError("whole_image_check needs the calibration images' map means")
            self.map_means_ = np.asarray(means, dtype=np.float64).reshape(-1)
            z = self.stats_.normalize(self.scores_)
            self.stats_.threshold_, self.map_threshold_ = (float(t) for t in joint_conformal_thresholds(
                np.stack([z, self.map_means_], axis=1), cfg.target_fpr))
        self.training_blurriness_ = self.blur_threshold_ = None
        if cfg.focus_check:
            if blurriness is None or np.asarray(blurriness).size == 0:
                raise PatchbankError("focus_check needs the training images' blurriness")
            self.training_blurriness_ = np.asarray(blurriness, dtype=np.float64).reshape(-1)
            self.blur_threshold_ = focus_threshold(self.training_blurriness_)
        self.threshold_ = self.stats_.threshold_
        return self

    def above_threshold(self) -> list[tuple[int, float]]:
        """The calibration images the calibrated thresholds flag (normalised score, or with the
        whole-image check the map mean, above its threshold), as ``(training image index,
        normalised score)``, highest score first: a first place to look for defects in the
        training set.  Needs ``images_`` (a fit, or a model file that records
        ``calibration_images``)."""
        if self.images_ is None:
            raise PatchbankError("this model does not record which training images calibrated it "
                                 "(a model file written before calibration_images existed); refit it")
        z = self.stats_.normalize(self.scores_)
        flagged = z > self.stats_.threshold_
        if self.map_means_ is not None:
            flagged |= self.map_means_ > self.map_threshold_
        # the focus check flags no training image: its threshold is their largest blurriness
        order = np.argsort(-z, kind="stable")
        return [(int(self.images_[i]), float(z[i])) for i in order if flagged[i]]

    def set_threshold(self, threshold: float | None) -> None:
        """Move the decision threshold (on the normalised score) to ``threshold``, a finite
        number; None restores the calibrated one (``stats_.threshold_``).  The whole-image
        check's threshold (``map_threshold_``) stays where the calibration put it."""
        if threshold is None:
            self.threshold_ = self.stats_.threshold_
            return
        self.threshold_ = finite_threshold(threshold)

    def map_level(self, threshold: float | None = None) -> float:
        """The anomaly-map value above which a pixel belongs to the anomalous region, for a
        decision ``threshold`` on the normalised score (default the current one).

        With q the share of calibration images whose normalised score is at or below the
        threshold, the level is the q-quantile (linear interpolation) of the calibration images'
        top-1% map means (the descriptor's ``topk_mean``, StructCore Eq. 8): only about 1 - q of
        normal images have their hottest 1% of pixels above it.  It is on the map's own scale
        whatever the image score is, and it rises with the threshold."""
        t = self.threshold_ if threshold is None else finite_threshold(threshold)
        q = float(np.mean(self.stats_.normalize(self.scores_) <= t))
        return float(np.quantile(self.descriptors_[:, COMPONENTS.index("topk_mean")], q))

    def heatmap_range(self) -> tuple[float, float]:
        """One colour range for every heatmap of this model: 0 to twice the region level at the
        calibrated threshold, so that level sits mid-scale and colours compare across images
        and requests (a moved threshold does not change them)."""
        return 0.0, 2.0 * self.map_level(self.stats_.threshold_)

    def _final(self, base: np.ndarray, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        final, d_struct, hyb = self.final_tensors(torch.as_tensor(np.asarray(base, dtype=np.float64)),
                                                  torch.as_tensor(np.asarray(phi, dtype=np.float64)))
        return final.numpy(), d_struct.numpy(), hyb.numpy()

    def final_tensors(self, base: torch.Tensor, phi: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Base scores [B] and full descriptors [B, 3] -> (final score, D_struct, hybrid), float64
        tensors on ``base``'s device (Eqs. 10-12; the final score is the config's image_score;
        the descriptor statistics live on the CPU, D_struct is moved to ``base``)."""
        base = base.double()
        d_struct = self.struct_.struct(phi).to(base.device)
        hyb = base + self.struct_.lambda_ * d_struct                 # Eq. 12
        final = {"struct": d_struct, "hybrid": hyb}.get(self.config.image_score, base)
        return final, d_struct, hyb

    def score_tensors(self, base: torch.Tensor, phi: torch.Tensor, means: torch.Tensor,
                      blur: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """:meth:`image_scores` in torch ops only (float64): (final, base, D_struct, hybrid,
        normalised, map mean, blurriness, whole-image flag, focus flag, anomalous); an exported
        graph runs exactly this, the calibration's numbers as constants.  Anomalous: not
        (normalised <= threshold), or a flag of the whole-image or the focus check
        (:meth:`check_flags`)."""
        final, d_struct, hyb = self.final_tensors(base, phi)
        norm = (final - self.stats_.mean_) / self.stats_.std_
        means, blur = means.double().to(norm.device), blur.double().to(norm.device)
        whole, focus = self.check_flags(means, blur)
        return (final, base.double(), d_struct, hyb, norm, means, blur, whole, focus,
                decide(norm, whole | focus, self.threshold_))

    def check_flags(self, means: torch.Tensor, blur: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map means [B] and blurriness [B] -> (whole-image flags, focus flags), bool [B] each:
        not (mean <= ``map_threshold_``), not (blurriness <= ``blur_threshold_``), so a NaN is
        flagged; a check that is off flags nothing."""
        return flags_above(means, self.map_threshold_), flags_above(blur.to(means.device), self.blur_threshold_)

    def image_scores(self, base, phi, means, blur) -> ImageScores:
        """A batch's base scores [B], descriptors [B, 3], map means [B] and blurriness [B]
        (numpy or torch) -> its :class:`ImageScores`."""
        as_t = lambda a: a.detach().cpu() if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
        return ImageScores(*(t.numpy() for t in self.score_tensors(as_t(base), as_t(phi), as_t(means),
                                                                   as_t(blur))))


class CalibrationRows:
    """The patch rows of the calibration images, image-major (``n_patches`` rows per image).

    ``images``: their sorted training-image indices.  The rows are either ``raw`` (per-layer
    raw rows kept in the pass over the images, embedded a batch of images at a time) or
    ``embedded`` (bank-space rows the fit holds anyway: set by the bank builder when its sampler
    embedded every row)."""

    def __init__(self, images: np.ndarray, n_patches: int, raw: list[torch.Tensor] | None = None):
        self.images = np.asarray(images, dtype=np.int64)
        self.n_patches = n_patches
        self.raw = raw
        self.embedded: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.size)

    def batch(self, start: int, stop: int,
              embed: Callable[[list[torch.Tensor]], torch.Tensor]) -> torch.Tensor:
        """Bank-space rows [(stop - start) * n_patches, d] of calibration images start..stop-1."""
        part = slice(start * self.n_patches, stop * self.n_patches)
        if self.embedded is not None:
            return self.embedded[part]
        return embed([buf[part] for buf in self.raw])


@torch.inference_mode()
def leave_one_out_scores(scorer: PatchScorer, rows: CalibrationRows, bank_source: torch.Tensor,
                         progress: bool = False) -> tuple[np.ndarray, list[torch.Tensor]]:
    """Score each calibration image (``rows``) against the scorer's bank without the entries
    taken from that image (``bank_source`` [entries]: the training image of each bank entry):
    what :meth:`PatchScorer.score` gives against ``search.subset(bank_source != image)``, patch
    scores (LMF-Core Eq. 2 / StructCore Eq. 5) and the pooling, PatchCore's re-weighting
    neighbourhood and the context taps' search included, see no entry of the image.  Returns
    the base scores [n] and the patch-score grids, one [batch, P] tensor per batch of
    ``config.batch_size`` images.  ``progress``: a bar over the images on stderr."""
    cfg = scorer.config
    loo = LeaveGroupOut(scorer.search, bank_source, LOO_EXTRA)
    context = None if scorer.context is None else LeaveGroupOut(scorer.context, bank_source, LOO_EXTRA)
    images = torch.from_numpy(rows.images)
    n_patches = scorer.grid[0] * scorer.grid[1]
    base, grids = [], []
    bar = tqdm(total=len(rows), desc="fit: calibration", unit="img", disable=not progress)
    for start in range(0, len(rows), cfg.batch_size):
        stop = min(start + cfg.batch_size, len(rows))
        emb = rows.batch(start, stop, scorer.embed)
        groups = images[start:stop]
        b_score, scores = scorer.score(emb.view(stop - start, n_patches, -1), loo.for_queries(groups),
                                       None if context is None else context.for_queries(groups))
        base.append(b_score.cpu().numpy())
        grids.append(scores)
        bar.update(stop - start)
    bar.close()
    return np.concatenate(base), grids


def calibration_from_state(config, tensors: dict[str, torch.Tensor],
                           threshold_override: float | None = None) -> ScoreCalibration:
    """The :class:`ScoreCalibration` a model file's checked tensors describe (its calibration
    images' base scores, descriptors, in files that record them training-image indices, with
    the whole-image check their map means, and with the focus check every training image's
    blurriness), with the file's threshold override."""
    images = tensors.get("calibration_images")   # absent in files written before it
    means = tensors.get("calibration_map_means")  # present exactly with whole_image_check
    blur = tensors.get("training_blurriness")     # present exactly with focus_check
    cal = ScoreCalibration(config).fit(tensors["calibration_base_scores"].double().numpy(),
                                       tensors["calibration_descriptors"].double().numpy(),
                                       None if images is None else images.numpy(),
                                       None if means is None else means.double().numpy(),
                                       None if blur is None else blur.double().numpy())
    cal.set_threshold(threshold_override)
    return cal


#: Relative tolerance of a calibration refitted from a file's arrays against the numbers the file
#: records beside them (a model header, an export sidecar): they are the same fit's floats.
RECORDED_RTOL = 1e-9


def recorded_numbers(cal: ScoreCalibration) -> dict[str, float | None]:
    """The numbers a model header or an export sidecar records of a calibration, by their keys
    there (None: the calibration has no such rule)."""
    return {"score_mean": cal.stats_.mean_, "score_std": cal.stats_.std_,
            "calibrated_threshold": cal.stats_.threshold_, "threshold": cal.threshold_,
            "structure_lambda": cal.struct_.lambda_, "map_threshold": cal.map_threshold_,
            "blur_threshold": cal.blur_threshold_}


def check_recorded(cal: ScoreCalibration, recorded: dict, keys: tuple[str, ...], where: str,
                   remedy: str) -> None:
    """Refuse, in one line naming ``where`` and the key, a file whose recorded ``keys``
    (:func:`recorded_numbers`' names) are not what its calibration arrays give (within
    :data:`RECORDED_RTOL`): a number recorded where the calibration has none, or missing where
    it has one, is refused too.  What a file shows (``patchbank info``) and what it does (the
    refitted calibration) are then the same numbers."""
    got = recorded_numbers(cal)
    for key in keys:
        value, said = got[key], recorded.get(key)
        if value is None and said is None:
            continue
        if value is None or not isinstance(said, (int, float)) or isinstance(said, bool) or \
                not math.isclose(value, said, rel_tol=RECORDED_RTOL, abs_tol=1e-12):
            raise PatchbankError(f"{where}: the calibration arrays give {key} {value!r}, the file "
                                 f"records {said!r}; {remedy}")


@dataclass
class Calibrated:
    """What :func:`calibrate` learns: the score calibration, and with ``Config.map_offset =
    "position"`` the map offset the fitted scorer subtracts (None otherwise)."""

    calibration: ScoreCalibration
    map_offset: torch.Tensor | None


@torch.inference_mode()
def calibrate(scorer: PatchScorer, rows: CalibrationRows, bank_source: torch.Tensor,
              blurriness: np.ndarray, progress: bool = False) -> Calibrated:
    """Leave-one-image-out calibration: the calibration images' scores without their own bank
    entries (:func:`leave_one_out_scores`), and the calibration fitted on the base scores and
    the descriptors of their maps (and ``blurriness`` [n_train], every training image's, for
    the focus check).  ``progress``: a bar over the calibration images.

    With ``Config.map_offset = "position"`` it also fits the map offset (:func:`position_offset`
    of these images' patch-score grids) and takes the descriptors of the maps drawn with it,
    the maps a prediction draws; ``scorer`` itself is not changed (the caller gives the fitted
    scorer the offset: :meth:`PatchScorer.with_map_offset`)."""
    base, grids = leave_one_out_scores(scorer, rows, bank_source, progress)
    offset = position_offset(torch.cat(grids)) if scorer.config.map_offset == "position" else None
    drawn = scorer.with_map_offset(offset)
    phi, means = [], []
    for scores in grids:
        maps, descriptors = drawn.anomaly_map(scores)
        phi.append(descriptors)
        means.append(map_means(maps).cpu().numpy())
    return Calibrated(ScoreCalibration(scorer.config).fit(base, np.concatenate(phi), rows.images,
                                                          np.concatenate(means), blurriness), offset)


def position_offset(grids: torch.Tensor) -> torch.Tensor:
    """[n, P] leave-one-image-out patch scores of the calibration images -> [P] float32: the
    mean normal score at each grid position, subtracted before the map with
    ``Config.map_offset = "position"``.  For an aligned product (a part in a fixture) a position
    whose normal appearance varies more scores higher in every image; without the offset its
    normal pixels compete with defects elsewhere.  The scale is left alone: dividing by each
    position's spread would make a quiet background as loud as the part
    (docs/default_preset.md)."""
    return grids.double().mean(0).float()
