"""The inference path: one ``torch.nn.Module`` from images to decisions, and its per-image result.

:class:`InferenceModel` composes the fitted stages and its ``forward`` reads as the data flow:
``extract`` (backbone -> aggregated, aligned patch rows) -> ``embed`` (fusion, projection) ->
``score`` (nearest bank entries -> patch scores -> pooled image score) -> ``map`` (anomaly map and
its structure descriptor; the input's blurriness for the focus check) -> ``decide`` (final
score, normalisation, thresholds).  The search is a
pluggable part of the scorer (exact torch search, or a FAISS index outside torch).  ``predict``
of a single- and a multi-category model, and every other consumer, call this path; nothing else
re-implements it.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from patchbank.errors import PatchbankError
from patchbank.io.image_coords import Window
from patchbank.pipeline.calibration import ImageScores, ScoreCalibration, map_means
from patchbank.pipeline.features import FeatureExtractor
from patchbank.pipeline.focus import blurriness
from patchbank.pipeline.scoring import PatchScorer
from patchbank.runtime.clock import StepClock
from patchbank.runtime.cuda_graphs import graphed_call

PREDICT_STEPS = ("read", "extract", "search", "post")


@dataclass
class Prediction:
    """The result for one image.

    ``anomaly_map`` lies on the network's view of the image (``config.input_size``, after the
    resize and crops).  :attr:`image_map` is the same map on the original image, NaN where the
    crop cut it off (not inspected): what a person should be shown.  ``window`` (where the view
    lies in the original image) is set by ``predict``; ``predict_views`` is given views only,
    so its predictions have none.
    """

    path: str | None
    score: float              # raw image score a_hat (the config's image_score)
    normalized_score: float   # a = (a_hat - mu) / sigma
    is_anomalous: bool        # not (a <= threshold), whole_image_anomalous or out_of_focus: a NaN is anomalous
    anomaly_map: np.ndarray   # float32 [H, W] at config.input_size
    base_score: float = math.nan     # the pooled score S_base (image_score, or base_score for struct/hybrid)
    struct_score: float = math.nan   # D_struct of the map (StructCore Eq. 10)
    hybrid_score: float = math.nan   # S_base + lambda * D_struct (Eq. 12)
    descriptor: np.ndarray | None = None  # phi(S) = [std, top-1% mean, TV] (Eq. 7)
    map_mean: float = math.nan       # the mean of anomaly_map (the whole-image statistic)
    whole_image_anomalous: bool = False  # map_mean above the whole-image check's threshold
    blurriness: float = math.nan     # -log variance of the input's Laplacian (the focus check's statistic)
    out_of_focus: bool = False       # blurrier than every training image (the focus check)
    category: str | None = None      # set by a multi-category model
    window: Window | None = None     # the view inside the original image (set by predict)

    @property
    def image_size(self) -> tuple[int, int] | None:
        """The original image's (H, W), if known."""
        return None if self.window is None else self.window.original

    @property
    def image_map(self) -> np.ndarray | None:
        """``anomaly_map`` on the original image: float32 [H0, W0], NaN where not inspected
        (:meth:`Window.map_back <patchbank.io.image_coords.Window.map_back>`); None without a
        ``window``."""
        return None if self.window is None else self.window.map_back(self.anomaly_map)


def set_windows(predictions: list[Prediction], windows: list[Window]) -> list[Prediction]:
    """Give each prediction the window of its image (``ImageStream.windows``, in the same
    order); returns ``predictions``."""
    for p, window in zip(predictions, windows, strict=True):
        p.window = window
    return predictions


@dataclass
class ScoredBatch:
    """A batch's output of :class:`InferenceModel`: image scores, maps [B, H, W], descriptors [B, 3]."""

    scores: ImageScores
    maps: torch.Tensor
    descriptors: np.ndarray

    def predictions(self, names: list, category: str | None = None) -> list[Prediction]:
        """One :class:`Prediction` per image, named ``names[i]``."""
        s, maps = self.scores, self.maps.cpu().numpy()
        return [Prediction(name, float(s.final[i]), float(s.normalized[i]), bool(s.anomalous[i]),
                           maps[i], float(s.base[i]), float(s.struct[i]), float(s.hybrid[i]),
                           self.descriptors[i], float(s.map_mean[i]), bool(s.whole_image[i]),
                           float(s.blurriness[i]), bool(s.out_of_focus[i]), category)
                for i, name in enumerate(names)]


def stays_on_device(scorer: PatchScorer) -> bool:
    """Whether every search of ``scorer`` (the map's and, with context taps, the context one)
    runs on the device alone (``Search.device_only``), so a CUDA graph can record its scoring."""
    return all(s.device_only for s in (scorer.search, scorer.context) if s is not None)


class InferenceModel(nn.Module):
    """Images [B, 3, H, W] -> :class:`ScoredBatch`; the fitted extractor, scorer and calibration.

    ``cuda_graphs``: on a CUDA device, the device part (:meth:`device_outputs`: extract, embed,
    score, map, blurriness) is replayed as one CUDA graph per batch shape from a shape's second batch on
    (:class:`~patchbank.runtime.cuda_graphs.GraphedCall`); the answers are the eager path's to
    float rounding.  Ignored on the CPU, and where a search of the scorer is not
    ``device_only`` (a FAISS index searches on the host).  ``graphs`` is the
    :class:`~patchbank.runtime.cuda_graphs.GraphedCall` in use, or None."""

    def __init__(self, extractor: FeatureExtractor, scorer: PatchScorer, calibration: ScoreCalibration,
                 cuda_graphs: bool):
        super().__init__()
        self.extractor = extractor
        self.scorer = scorer
        self.calibration = calibration
        self.cuda_graphs = bool(cuda_graphs)
        self.graphs = graphed_call(self.device_outputs, extractor.device,
                                   self.cuda_graphs and stays_on_device(scorer))

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer patch rows of ``x``."""
        return self.extractor(x)[0]

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, clock: StepClock | None = None) -> ScoredBatch:
        if self.graphs is None:
            return self.score_layers(self.extract(x), x.shape[0], blurriness(x), clock)
        maps, phi, base, blur = self.graphs(x)
        _lap(clock, "extract")     # a replay is one launch: the split cannot see its steps
        return self.scored(maps, phi, base, blur)

    def device_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Images -> (maps [B, H, W], descriptors [B, 3] float64, S_base [B] float64, blurriness
        [B] float64) on the model's device: the part of :meth:`forward` before the host (what a
        CUDA graph replays)."""
        return (*self.score_maps(self.extract(x), x.shape[0]), blurriness(x))

    @torch.inference_mode()
    def score_layers(self, layers: list[torch.Tensor], b: int, blur: torch.Tensor,
                     clock: StepClock | None = None) -> ScoredBatch:
        """The path after extraction, for ``b`` images' per-layer rows and their inputs'
        blurriness [b] (a multi-category model extracts once, then scores each image against
        its category's model).  ``clock`` laps "extract" after the embedding and "search" after
        the scoring."""
        return self.scored(*self.score_maps(layers, b, clock), blur)

    def scored(self, maps: torch.Tensor, phi: torch.Tensor, base: torch.Tensor,
               blur: torch.Tensor) -> ScoredBatch:
        """:meth:`score_maps`' outputs and the blurriness -> :class:`ScoredBatch`.  The base
        scores, descriptors, map means and blurriness come to the host in one copy and are
        calibrated there (float64, the same ops as :meth:`score_tensors`): one device-to-host
        transfer for them and one for the maps."""
        host = torch.cat([base.double().unsqueeze(1), phi.double(), map_means(maps).unsqueeze(1),
                          blur.double().to(maps.device).unsqueeze(1)], dim=1).cpu()
        base, phi, means, blur = host[:, 0], host[:, 1:-2], host[:, -2], host[:, -1]
        return ScoredBatch(self.calibration.image_scores(base, phi, means, blur), maps, phi.numpy())

    def score_maps(self, layers: list[torch.Tensor], b: int, clock: StepClock | None = None,
                   search=None, map_operators=None, context=None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-layer rows -> (maps [B, H, W], descriptors [B, 3] float64, S_base [B] float64),
        on the rows' device: embed, search, score, map (see :meth:`score_tensors` for the
        arguments)."""
        emb = self.scorer.embed(layers)
        _lap(clock, "extract")
        base, patch = self.scorer.score(emb.view(b, -1, emb.shape[1]), search, context)
        _lap(clock, "search")
        maps, phi = self.scorer.map_tensors(patch, map_operators)
        return maps, phi, base

    def score_tensors(self, layers: list[torch.Tensor], b: int, blur: torch.Tensor,
                      clock: StepClock | None = None, search=None, map_operators=None, context=None
                      ) -> tuple[torch.Tensor, ...]:
        """:meth:`score_layers` in torch ops only: (maps [B, H, W], descriptors [B, 3], final,
        base, D_struct, hybrid, normalised score, map mean, blurriness, whole-image flag, focus
        flag, anomalous [B]).  An exported graph (:mod:`patchbank.export.graph`) runs exactly this
        with the bank as a constant (``search``, and ``context`` with context taps) and the map
        operators as constants (``map_operators``)."""
        maps, phi, base = self.score_maps(layers, b, clock, search, map_operators, context)
        return (maps, phi) + tuple(self.calibration.score_tensors(base, phi, map_means(maps), blur))


def check_batch_size(batch_size) -> None:
    """Refuse a predict ``batch_size`` that is not None or an integer >= 1 (one line)."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
                                   or batch_size < 1):
        raise PatchbankError(f"batch_size must be an integer >= 1 (or None for the config's), "
                             f"got {batch_size!r}")


def _lap(clock: StepClock | None, step: str) -> None:
    if clock is not None:
        clock.lap(step)


def predict_batches(batches: Iterable, n_images: int, progress: bool, steps: tuple[str, ...],
                    handle: Callable[[torch.Tensor, list, StepClock], list]) -> tuple[list, dict[str, float]]:
    """Run ``handle(x, names, clock)`` over ``batches`` with a progress bar; returns the
    concatenated results and the time per step (``read`` is timed here, the rest by ``handle``)."""
    clock, out = StepClock(steps), []
    bar = tqdm(total=n_images, desc="predict", unit="img", disable=not progress)
    it = iter(batches)
    while True:
        clock.restart()
        try:
            x, names = next(it)
        except StopIteration:
            break
        clock.lap("read")
        out.extend(handle(x, names, clock))
        bar.update(x.shape[0])
    bar.close()
    return out, clock.totals
