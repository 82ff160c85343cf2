"""The Detector: fit on normal images, predict image scores, decisions and anomaly maps.

scikit-learn style: the constructor stores configuration only; :meth:`Detector.fit` learns the
state (attributes ending in ``_``), resolving every "auto" choice once (``search_kind_``; the
input shape of ``aspect="auto"``: ``config`` then holds the resolved sizes, ``aspect_`` the
training images' shared H / W, and ``requested_config`` what each fit resolves);
:meth:`Detector.predict` runs the one inference path, :class:`~patchbank.pipeline.inference.
InferenceModel` (``model_``).  The stages live in :mod:`patchbank.pipeline`: the fit streams the
images once (:func:`~patchbank.pipeline.bank.stream_features`), fits the embedding (fusion,
projection), builds the bank and its search (:func:`~patchbank.pipeline.bank.build_bank`) and
calibrates on the training images, each scored without its own bank entries
(leave-one-image-out, :func:`~patchbank.pipeline.calibration.calibrate`).

Fitted state: ``scorer_`` (:class:`~patchbank.pipeline.scoring.PatchScorer`: embedding, search
over the bank, patch grid, optional local radius), ``calibration_``
(:class:`~patchbank.pipeline.calibration.ScoreCalibration`: structure scorer, normal-score
statistics, with ``Config.whole_image_check`` the map-mean threshold ``map_threshold_``, with
``Config.focus_check`` every training image's blurriness and ``blur_threshold_``),
``threshold_``, ``search_kind_``, ``grid_``, ``n_train_images_``,
``train_names_`` (the training images' file names, None for in-memory images),
``train_shape_`` (their shared H / W, also ``aspect_``, and the range of their sizes:
:class:`~patchbank.io.train_shape.TrainShape`, which flags prediction images unlike them),
``backbone_sha256_``, ``fitted_with_`` (the library versions of the fit,
:func:`~patchbank.runtime.environment.library_versions`; None for files written before it),
``fit_seconds_`` and ``fit_timings_`` (features, bank, index, calibration).
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

import torch

from patchbank import __version__
from patchbank.backbones import Backbone, check_backbone_name, create_backbone
from patchbank.backbones.weights import RANDOM, sha256 as weights_sha256
from patchbank.config import DEFAULT_PRESET, Config
from patchbank.errors import PatchbankError
from patchbank.io.aspect import input_config
from patchbank.io.images import (ImageStream, as_items, check_views, distinct_images, item_name, view_batches,
                                 view_names)
from patchbank.io.model_checks import (check_backbone_fit, check_map_columns, check_model_state,
                                       check_patch_grid)
from patchbank.io.model_file import FORMAT_VERSION, load_model, save_model
from patchbank.io.train_shape import TrainShape
from patchbank.pipeline.bank import bank_searches, build_bank, stream_features
from patchbank.pipeline.calibration import (calibrate, calibration_from_state, calibration_images,
                                            check_recorded, check_training_images)
from patchbank.pipeline.embedding import Embedding
from patchbank.pipeline.features import FeatureExtractor, feature_crop
from patchbank.pipeline.fusion import VGFusion
from patchbank.pipeline.inference import (PREDICT_STEPS, InferenceModel, Prediction, check_batch_size,
                                          predict_batches, set_windows)
from patchbank.pipeline.scoring import PatchScorer
from patchbank.runtime.clock import StepClock
from patchbank.runtime.cuda_graphs import graphs_wanted
from patchbank.runtime.devices import resolve_device
from patchbank.runtime.environment import library_versions
from patchbank.sampling import make_sampler

__all__ = ["Detector", "Prediction"]

FIT_STEPS = ("features", "bank", "index", "calibration")


class Detector:
    """Memory-bank anomaly detector; LMF-Core, PatchCore and StructCore are configurations of it.

    Args:
        config: the method's configuration (default: the :data:`~patchbank.config.DEFAULT_PRESET`
            preset).
        device: torch device for the backbone and the exact search.
        progress: show progress bars.
        backbone: an already loaded backbone to share (same name, weights, layers and device as
            ``config`` asks for); by default it is created on first use.
        cuda_graphs: on a CUDA device, replay each batch shape's prediction as a CUDA graph
            from its second batch on (:class:`~patchbank.pipeline.inference.InferenceModel`);
            the answers are the same to float rounding.  Ignored on the CPU.  None (the
            default): ``PATCHBANK_CUDA_GRAPHS`` decides, on when unset
            (:func:`~patchbank.runtime.cuda_graphs.graphs_wanted`).
    """

    def __init__(self, config: Config | None = None, *, device: str | torch.device = "cpu",
                 progress: bool = True, backbone: Backbone | None = None, cuda_graphs: bool | None = None):
        if config is not None and not isinstance(config, Config):
            raise PatchbankError(f"config must be a patchbank Config (Config.preset(...)), got "
                                 f"{type(config).__name__}")
        self._config = config if config is not None else Config.preset(DEFAULT_PRESET)
        self.requested_config = self._config   # what fit resolves (aspect "auto") each time
        self.device = resolve_device(device)
        self.progress = progress
        self.cuda_graphs = graphs_wanted(cuda_graphs)
        if backbone is not None:
            check_shared_backbone(backbone, self._config)
        self._backbone = backbone
        self._extractor: FeatureExtractor | None = None
        self._source = "this model"     # a loaded model's file, named in error messages
        self._model: InferenceModel | None = None

    @classmethod
    def from_preset(cls, name: str, *, device: str | torch.device = "cpu", progress: bool = True,
                    cuda_graphs: bool | None = None, **overrides: Any) -> "Detector":
        """A detector configured by preset ``name`` with any Config field overridden."""
        try:
            config = Config.preset(name, **overrides)
        except ValueError as exc:
            raise PatchbankError(str(exc)) from None
        return cls(config, device=device, progress=progress, cuda_graphs=cuda_graphs)

    @property
    def config(self) -> Config:
        """The configuration: as given until :meth:`fit`, then the one the fit resolved (with
        ``aspect="auto"`` its sizes) and the fitted state belongs to.  It may be replaced before
        the fit (the fit then uses the new one); a fitted detector's is refused, one line (its
        bank, calibration and model file belong to the fitted one: build a new Detector)."""
        return self._config

    @config.setter
    def config(self, value: Config) -> None:
        if not isinstance(value, Config):
            raise PatchbankError(f"config must be a patchbank Config (Config.preset(...)), got "
                                 f"{type(value).__name__}")
        if self.is_fitted:
            raise PatchbankError("a fitted detector's config is the one its bank and calibration were "
                                 "fitted with; build a new Detector(config) and fit it")
        if self._backbone is not None and not _same_backbone_settings(value, self._config):
            self._backbone = None           # the new settings' backbone is built on first use
        self._config = self.requested_config = value
        self._extractor = None

    # ------------------------------------------------------------------ feature path
    @property
    def backbone(self) -> Backbone:
        """The frozen backbone (loaded on first use, or the one given to the constructor)."""
        if self._backbone is None:
            cfg = self.config
            self._backbone = create_backbone(cfg.backbone, cfg.weights, cfg.layers, self.device,
                                             cfg.context_taps)
        return self._backbone

    @property
    def extractor(self) -> FeatureExtractor:
        """Images -> per-layer patch rows (checked against the fitted weights' sha256)."""
        if self._extractor is None:
            extractor = self._new_extractor(self.config)
            if self.is_fitted:      # fitted or loaded: the backbone must fit
                self._check_backbone(extractor)
            self._extractor = extractor
        return self._extractor

    def input_config(self, items: Any) -> tuple[Config, float | None]:
        """(the configuration a fit on ``items`` reads them with, the images' shared H / W or
        None): :func:`patchbank.io.aspect.input_config` of ``requested_config`` with this
        backbone's largest stride (the sides' step) and finest (the crop margins' cell)."""
        strides = self.backbone.strides
        return input_config(self.requested_config, items, max(strides), min(strides))

    def _new_extractor(self, cfg: Config) -> FeatureExtractor:
        """The backbone with ``cfg``'s aggregation and crop (a fit passes the shape it resolved)."""
        bb = self.backbone
        return FeatureExtractor(bb, cfg.patch_size, self.device, cfg.patch_border,
                                feature_crop(cfg, bb.strides[0]))

    def _check_backbone(self, extractor: FeatureExtractor) -> None:
        """The backbone about to run must be the one the model was fit with: same weights
        (sha256), channels that fit the fusion and projection, the fitted patch grid."""
        where, bb = self._source, extractor.backbone
        check_weights_sha(bb.weights_sha256, self.backbone_sha256_, where)
        emb = self.scorer_.embedding
        keep = emb.fusion_.keep_ if isinstance(emb.fusion_, VGFusion) else None
        in_dim = (emb.projection_.matrix_.shape[0] if emb.projection_ is not None
                  else self.scorer_.bank_search.shape[1])
        check_backbone_fit(bb.channels, keep, emb.fusion_.widths(bb.channels), in_dim, where)
        if self.scorer_.context is not None:
            check_map_columns(map_columns(bb, emb, self.config), self.scorer_.search.shape[1], where)
        with torch.inference_mode():
            _, grid = extractor(torch.zeros(1, 3, *self.config.network_size))
        check_patch_grid(self.grid_, grid, where)

    def stream(self, items: list, batch_size: int | None = None, config: Config | None = None) -> ImageStream:
        """Batches ``(x [B, 3, H, W], names)`` of ``items``, read and preprocessed for the backbone
        as ``config`` says (default ``self.config``; a fit passes the shape it resolved)."""
        bb = self.backbone
        return ImageStream(items, config or self.config, bb.mean, bb.std, batch_size,
                           pin=self.device.type == "cuda")

    def embed(self, layers: list[torch.Tensor]) -> torch.Tensor:
        """Per-layer patch rows -> bank-space rows with the fitted fusion and projection."""
        self.check_fitted()
        return self.scorer_.embed(layers)

    # ------------------------------------------------------------------ fit
    @torch.inference_mode()
    def fit(self, images: Any, routing_sample: int = 0) -> "Detector":
        """Build the memory bank and calibration from normal images (a folder or a list).

        ``routing_sample`` > 0 also keeps a seeded uniform sample of that many routing
        embeddings in ``routing_sample_`` (a multi-category model's routing bank), read in the
        same pass over the images.
        """
        items = distinct_images(as_items(images))
        # aspect "auto": the input shape of these images (patchbank.io.aspect), resolved once;
        # it becomes self.config together with the fitted state below
        cfg, _ = self.input_config(items)
        extractor = self._new_extractor(cfg)
        extractor.check_input(cfg.network_size)    # a map smaller than the patch: before any warning
        check_training_images(len(items), cfg)     # refuses too few images, warns on few
        clock = StepClock(FIT_STEPS)
        sampler = make_sampler(cfg, progress=self.progress)
        embedding = Embedding.from_config(cfg)
        stream = self.stream(items, config=cfg)
        feats = stream_features(stream, len(items), extractor, sampler,
                                partial(calibration_images, len(items), config=cfg),
                                embedding.needs_moments, routing_sample, cfg.seed, self.progress)
        clock.lap("features")
        embedding.fit(feats.moments, feats.raw.sample_row())
        bank = build_bank(feats.raw, sampler, embedding.transform, feats.calibration, cfg, self.device,
                          clock, map_columns(self.backbone, embedding, cfg))
        scorer = PatchScorer(cfg, embedding, bank.search, feats.grid, bank.radius, bank.context)
        calibrated = calibrate(scorer, feats.calibration, bank.source, feats.blurriness, self.progress)
        self.scorer_ = scorer.with_map_offset(calibrated.map_offset)
        self.calibration_ = calibrated.calibration
        clock.lap("calibration")
        self.threshold_ = self.calibration_.threshold_
        self.search_kind_, self.grid_, self.n_train_images_ = bank.kind, feats.grid, len(items)
        self._config, self._extractor = cfg, extractor
        self.train_shape_ = TrainShape.of_sizes([w.original for w in stream.windows])
        self.train_names_ = [Path(name).name if (name := item_name(i)) else None for i in items]
        self.fitted_with_ = library_versions()
        if routing_sample > 0:
            self.routing_sample_ = feats.routing_rows
        self.backbone_sha256_ = self.backbone.weights_sha256
        self.fit_seconds_, self.fit_timings_ = clock.elapsed, clock.totals
        self._model = None
        self._source = "this model"     # refitted: no longer the file it was loaded from
        return self

    @property
    def aspect_(self) -> float | None:
        """The training images' shared H / W (None when they do not share one, or the model file
        predates it): ``train_shape_.aspect``."""
        return self.train_shape_.aspect

    @property
    def bank_(self) -> torch.Tensor:
        """The memory bank [entries, dim], float32, read back from the search index (for FAISS a
        fresh copy on every access: the scoring path never uses it)."""
        return self.scorer_.bank_search.all_rows().to(self.device)

    # ------------------------------------------------------------------ predict
    @property
    def model_(self) -> InferenceModel:
        """The inference path of the fitted detector (one ``nn.Module``)."""
        self.check_fitted()
        if self._model is None or self._model.cuda_graphs != self.cuda_graphs:
            self._model = InferenceModel(self.extractor, self.scorer_, self.calibration_, self.cuda_graphs)
        return self._model

    @property
    def is_fitted(self) -> bool:
        """True once :meth:`fit` or :meth:`load` has given the detector its bank and calibration."""
        return hasattr(self, "scorer_")

    def check_fitted(self) -> None:
        """Refuse (one line) to use a detector that is not fitted."""
        if not self.is_fitted:
            raise PatchbankError("this detector is not fitted: call fit() or Detector.load() first")

    @torch.inference_mode()
    def predict(self, images: Any, batch_size: int | None = None) -> list[Prediction]:
        """Score images: raw and normalised image score, decision, and anomaly map each.
        The time per step of the call is left in ``last_timings_``."""
        check_batch_size(batch_size)
        items = as_items(images)
        stream = self.stream(items, batch_size)
        preds = set_windows(self._predict_batches(stream, len(items)), stream.windows)
        self.train_shape_.warn([p.image_size for p in preds])
        return preds

    @torch.inference_mode()
    def predict_views(self, views: list, names: list | None = None,
                      batch_size: int | None = None) -> list[Prediction]:
        """:meth:`predict` for images already read, resized and cropped by
        :func:`patchbank.io.images.prepare_input` elsewhere (e.g. in a distributed engine's
        decoding tasks): the same normalisation and inference path, so the same results."""
        check_batch_size(batch_size)
        views = check_views(views, self.config.network_size)
        names = view_names(names, len(views))
        bb = self.backbone
        return self._predict_batches(view_batches(views, names, bb.mean, bb.std,
                                                  batch_size or self.config.batch_size), len(views))

    def _predict_batches(self, batches, n: int) -> list[Prediction]:
        model = self.model_

        def handle(x, names, clock):
            preds = model(x, clock).predictions(names)
            clock.lap("post")
            return preds

        out, self.last_timings_ = predict_batches(batches, n, self.progress, PREDICT_STEPS, handle)
        return out

    # ------------------------------------------------------------------ operating point
    @property
    def calibrated_threshold_(self) -> float:
        """The threshold calibrated at fit (the split-conformal (1 - target_fpr) rank of the
        training images' normalised scores, :func:`patchbank.pipeline.conformal.conformal_threshold`),
        whatever :meth:`set_threshold` moved ``threshold_`` to."""
        self.check_fitted()
        return self.calibration_.stats_.threshold_

    def set_threshold(self, threshold: float | None) -> "Detector":
        """Move the operating point without refitting: images are anomalous unless their
        normalised score is <= ``threshold`` (or, with the whole-image check, their map's mean
        is above ``calibration_.map_threshold_``, which does not move); None goes back to the
        calibrated threshold.  :meth:`save` records a moved threshold (``threshold_override``)
        and :meth:`load` applies it."""
        self.check_fitted()
        self.calibration_.set_threshold(threshold)
        self.threshold_ = self.calibration_.threshold_
        return self

    def map_level(self, threshold: float | None = None) -> float:
        """The map value above which a pixel is in the anomalous region at ``threshold``
        (default the current one); :meth:`ScoreCalibration.map_level
        <patchbank.pipeline.calibration.ScoreCalibration.map_level>`."""
        self.check_fitted()
        return self.calibration_.map_level(threshold)

    def heatmap_range(self) -> tuple[float, float]:
        """One colour range for every heatmap of this model (fixed by the calibration, whatever
        the threshold): :meth:`ScoreCalibration.heatmap_range
        <patchbank.pipeline.calibration.ScoreCalibration.heatmap_range>`."""
        self.check_fitted()
        return self.calibration_.heatmap_range()

    # ------------------------------------------------------------------ persistence
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors of a saved model: bank, calibration inputs, fusion/projection state."""
        self.check_fitted()
        dtype = torch.float16 if self.config.bank_dtype == "float16" else torch.float32
        cal = self.calibration_
        tensors = {"bank": self.bank_.to(dtype),
                   "calibration_base_scores": torch.from_numpy(cal.base_scores_),
                   "calibration_descriptors": torch.from_numpy(cal.descriptors_)}
        if cal.images_ is not None:
            tensors["calibration_images"] = torch.from_numpy(cal.images_)
        if cal.map_means_ is not None:
            tensors["calibration_map_means"] = torch.from_numpy(cal.map_means_)
        if cal.training_blurriness_ is not None:
            tensors["training_blurriness"] = torch.from_numpy(cal.training_blurriness_)
        if self.scorer_.radius is not None:
            tensors["bank_radius"] = self.scorer_.radius.float().cpu()
        if self.scorer_.map_offset is not None:
            tensors["map_offset"] = self.scorer_.map_offset.float().cpu()
        tensors.update(self.scorer_.embedding.state())
        return tensors

    def info(self) -> dict[str, Any]:
        """A JSON-able summary: configuration, bank size, calibration (the model file's header)."""
        self.check_fitted()
        elem = 2 if self.config.bank_dtype == "float16" else 4
        entries, dim = self.scorer_.bank_search.shape
        cal = self.calibration_
        context = {} if self.scorer_.context is None else {"bank_map_dim": int(self.scorer_.search.shape[1])}
        return {
            "patchbank_version": __version__, "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(), "bank_entries": int(entries), "bank_dim": int(dim),
            "bank_bytes": int(entries * dim * elem), "search": self.search_kind_,
            "patch_grid": list(self.grid_), "n_train_images": self.n_train_images_,
            "n_calibration_images": int(cal.scores_.size), "structure_lambda": cal.struct_.lambda_,
            "score_mean": cal.stats_.mean_, "score_std": cal.stats_.std_,
            "threshold": self.threshold_, "target_fpr": self.config.target_fpr,
            "threshold_override": (None if self.threshold_ == self.calibrated_threshold_
                                   else self.threshold_),
            "map_threshold": cal.map_threshold_, "blur_threshold": cal.blur_threshold_,
            "backbone_sha256": self.backbone_sha256_, **self.train_shape_.header(),
            "train_images": self.train_names_, **context,
            **({} if self.fitted_with_ is None else {"fitted_with": dict(self.fitted_with_)}),
        }

    def save(self, path: str | Path, overwrite: bool = False) -> int:
        """Write one ``.patchbank`` file (safetensors + JSON header); returns its size in bytes.
        A model fitted with random backbone weights is refused (:func:`check_savable`)."""
        self.check_fitted()
        check_savable(self.backbone_sha256_)
        return save_model(path, self.state_tensors(), self.info(), overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu", progress: bool = True,
             weights: str | None = None, cuda_graphs: bool | None = None) -> "Detector":
        """Load a model file; ``weights`` points at the backbone weights file if it moved (or the
        model was fit with its own): a missing file or one with another sha256 than the model
        recorded is refused here, not at the first prediction."""
        tensors, meta = load_model(path)
        if meta.get("kind") == "multi":
            names = ", ".join(meta.get("category_order", []))
            raise PatchbankError(f"{path} is a multi-category model ({names}); load it with "
                                 f"patchbank.multi.MultiDetector.load")
        check_header_weights(meta, weights, str(path))
        return cls.from_state(tensors, meta, str(path), device=device, progress=progress,
                              weights=weights, cuda_graphs=cuda_graphs)

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], where: str, *,
                   device: str | torch.device = "cpu", progress: bool = True,
                   weights: str | None = None, backbone: Backbone | None = None,
                   cuda_graphs: bool | None = None, routed: bool = False) -> "Detector":
        """Rebuild a fitted detector from :meth:`state_tensors` and :meth:`info` metadata
        (``where`` names the source in error messages; ``routed``: a category of a
        multi-category model, whose tensors include its routing prototypes)."""
        calibration = check_state(tensors, meta, where, weights_given=weights is not None,
                                  backbone_given=backbone is not None, routed=routed)
        try:
            config = Config.from_dict(meta["config"])
            if weights is not None:
                config = config.replace(weights=given_weights(weights))
            det = cls(config, device=device, progress=progress, backbone=backbone, cuda_graphs=cuda_graphs)
            # a refit keeps the input shape the file was fitted with (its sizes are resolved)
            det.requested_config = config.replace(aspect="fixed")
            det._source = where
            embedding = Embedding.from_config(config).load_state(tensors)
            bank = tensors["bank"].float().to(det.device)
            radius = tensors["bank_radius"].float().to(det.device) if config.local_density else None
            offset = tensors["map_offset"].float().to(det.device) if config.map_offset == "position" else None
            det.calibration_ = calibration
            det.grid_ = tuple(meta["patch_grid"])
            det.n_train_images_ = meta["n_train_images"]
            det.backbone_sha256_ = meta["backbone_sha256"]
            det.search_kind_ = meta["search"]
            det.train_shape_ = TrainShape.from_header(meta)   # its fields absent in older files
            det.train_names_ = meta.get("train_images")  # likewise
            det.fitted_with_ = meta.get("fitted_with")   # likewise
        except (KeyError, TypeError, ValueError) as exc:
            raise PatchbankError(f"{where} is missing or has invalid model state ({exc})") from None
        det.threshold_ = det.calibration_.threshold_
        search, context = bank_searches(bank, config, det.search_kind_, meta.get("bank_map_dim"))
        det.scorer_ = PatchScorer(config, embedding, search, det.grid_, radius, context, offset)
        return det


#: The numbers a model header records of its calibration, each checked against its arrays.
HEADER_CALIBRATION_KEYS = ("score_mean", "score_std", "threshold", "structure_lambda", "map_threshold",
                           "blur_threshold")


def check_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any], where: str, *,
                weights_given: bool = False, backbone_given: bool = False, routed: bool = False):
    """Check one detector's saved state without building a backbone, and return the
    calibration its tensors give (:class:`~patchbank.pipeline.calibration.ScoreCalibration`, at
    the header's threshold override): every tensor against the header
    (:func:`~patchbank.io.model_checks.check_model_state`; ``routed``: a category of a
    multi-category model, with its routing prototypes), ``config.backbone`` a registered
    backbone (unless the caller gives the backbone), and the header's calibration numbers those
    the tensors give (:data:`HEADER_CALIBRATION_KEYS`), so that what ``patchbank info`` shows of
    a file is what loading it does.  One-line :class:`PatchbankError` naming ``where``."""
    check_model_state(tensors, meta, where, weights_given=weights_given, routed=routed)
    config = Config.from_dict(meta["config"])
    if not backbone_given:
        check_backbone_name(config.backbone, where)
    calibration = calibration_from_state(config, tensors, meta.get("threshold_override"))
    check_recorded(calibration, meta, HEADER_CALIBRATION_KEYS, where, "the header does not belong to "
                   "these tensors (refit, or restore the file)")
    return calibration


def map_columns(backbone: Backbone, embedding: Embedding, config: Config) -> int | None:
    """The bank columns of the map's taps with context taps (the first ones: the fitted fusion
    keeps each tap's columns together, and there is no projection, ``Config.context_taps``'
    constraint), else None (every column)."""
    if not config.context_taps:
        return None
    return sum(embedding.fusion_.widths(backbone.channels)[:backbone.map_taps])


def _same_backbone_settings(a: Config, b: Config) -> bool:
    return (a.backbone, a.weights, a.layers, a.context_taps) == (b.backbone, b.weights, b.layers, b.context_taps)


def check_shared_backbone(backbone: Any, config: Config) -> None:
    """Refuse (one line) a backbone given to share that is not what ``config`` asks for: another
    network, other taps (where the config names them) or another number of context taps; a
    model fitted with it would record one backbone and ask for another when loaded."""
    if not isinstance(backbone, Backbone):
        raise PatchbankError(f"backbone must be a loaded patchbank Backbone (Detector(...).backbone), got "
                             f"{type(backbone).__name__}; name the network with Config.backbone")
    taps = len(backbone.layers) - backbone.map_taps
    if (backbone.name != config.backbone or taps != config.context_taps
            or (config.layers is not None and tuple(config.layers) != backbone.layers[:backbone.map_taps])):
        raise PatchbankError(f"the backbone given ({backbone.name}, taps {backbone.layers}) is not the one "
                             f"the config asks for ({config.backbone}, layers {config.layers}, context taps "
                             f"{config.context_taps})")


def given_weights(weights: str) -> str:
    """A weights file given to a load, as the loaded config records it: an absolute path (a
    relative one would name another file from another folder once the model is saved again);
    ``"random"`` as it is."""
    return weights if weights == RANDOM else os.path.abspath(weights)


def check_savable(backbone_sha256: str | None) -> None:
    """Refuse (one line) to save a model fitted with random backbone weights (``weights="random"``,
    no sha256): no file could hold the backbone it needs, so no load could check it, and every
    load refuses such a model."""
    if backbone_sha256 is None:
        raise PatchbankError(f"a model fitted with random backbone weights (weights={RANDOM!r}) cannot be "
                             f"saved: it could never be loaded again (there are no weights to check); "
                             f"fit with a weights file (--weights FILE) to keep the model")


def check_header_weights(meta: dict[str, Any], weights: str | None, where: str) -> None:
    """A weights file given for the model whose header is ``meta`` (single- or multi-category:
    every category shares one backbone) must be the one it was fit with; see
    :func:`check_given_weights`.  Nothing to check without ``weights``."""
    if weights is None:
        return
    info = next(iter(meta["categories"].values())) if meta.get("kind") == "multi" else meta
    check_given_weights(weights, info.get("backbone_sha256"), where)


def check_given_weights(weights: str, fitted: str | None, where: str) -> None:
    """A weights file given for a fitted model (``"random"``: random init) must be the one it was
    fit with (sha256 ``fitted``): a one-line error for a missing file or another one, before
    anything is built."""
    check_weights_sha(None if weights == RANDOM else weights_sha256(weights), fitted, where)


def check_weights_sha(got: str | None, fitted: str | None, where: str) -> None:
    """The backbone weights about to be used (sha256 ``got``) must be those the model was fit
    with (``fitted``); a one-line error naming ``where`` otherwise."""
    if got != fitted:
        raise PatchbankError(f"{where}: backbone weights differ from the ones this model was fit "
                             f"with (sha256 {got} != {fitted})")
