"""One model for many product categories: per-category detectors plus a router (StructCore Sec. 3.4).

A :class:`MultiDetector` holds, for every category, a fitted :class:`~patchbank.detector.Detector`
(its own scoring bank, fusion statistics, calibration and structure statistics) and a routing
bank of K prototypes (:class:`~patchbank.pipeline.routing.Router`).  All categories share one
configuration, hence one backbone and one image preprocessing, so an image is read and passed
through the backbone once; routing (Eqs. 3-4) then picks the one bank it is scored against.  The
category may also be given, which skips routing (the "oracle" system of an evaluation).

Model file: one ``.patchbank`` safetensors file; the tensors of category ``c`` are stored under
``c/<name>`` (``c/bank``, ``c/routing_prototypes``, ...), the JSON metadata has ``kind: multi``,
the shared config, the category order and each category's :meth:`Detector.info`.  Adding a
category (:meth:`MultiDetector.add`, ``patchbank fit --add``) fits only the new one; the other
categories' tensors are written back exactly as they were read, byte for byte.
"""
from __future__ import annotations

import re
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from patchbank import __version__
from patchbank.config import DEFAULT_PRESET, Config
from patchbank.detector import Detector, Prediction, check_header_weights, check_savable, given_weights
from patchbank.pipeline.focus import blurriness
from patchbank.pipeline.inference import check_batch_size, predict_batches, set_windows
from patchbank.runtime.cuda_graphs import GraphedCall, graphed_call, graphs_wanted
from patchbank.runtime.devices import resolve_device
from patchbank.errors import PatchbankError
from patchbank.io.images import as_items, check_views, view_batches, view_names
from patchbank.io.train_shape import unlike_note
from patchbank.io.model_checks import check_multi_header
from patchbank.io.model_file import FORMAT_VERSION, load_model, read_header, save_model
from patchbank.pipeline.routing import Router, routing_embedding

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
MULTI_STEPS = ("read", "extract", "route", "search", "post")   # predict's timing split
ROUTING_SAMPLE = 20000   # patches per category from which the K prototypes are clustered


def check_category_name(name: str) -> str:
    """``name`` if it is a valid category name (letters, digits, '_', '.', '-'), else a one-line error."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise PatchbankError(f"invalid category name {name!r}: use letters, digits, '_', '.', '-'")
    return name


#: The attributes a fit replaces (a failed fit puts the previous ones back).
FITTED_STATE = ("detectors_", "router_", "_graphs", "_raw_tensors", "_infos")


class MultiDetector:
    """Several categories in one model, routed per image (StructCore Eqs. 3-4)."""

    def __init__(self, config: Config | None = None, *, device: str | torch.device = "cpu",
                 progress: bool = True, n_prototypes: int = 64, cuda_graphs: bool | None = None):
        if config is not None and not isinstance(config, Config):
            raise PatchbankError(f"config must be a patchbank Config (Config.preset(...)), got "
                                 f"{type(config).__name__}")
        if isinstance(n_prototypes, bool) or not isinstance(n_prototypes, int) or n_prototypes < 1:
            raise PatchbankError(f"n_prototypes must be an integer >= 1, got {n_prototypes!r}")
        self.config = config if config is not None else Config.preset(DEFAULT_PRESET)
        self.device = resolve_device(device)
        self.progress = progress
        self.n_prototypes = n_prototypes
        # on a GPU the shared extraction replays CUDA graphs (Detector's cuda_graphs, the same rule)
        self.cuda_graphs = graphs_wanted(cuda_graphs)
        self._backbone = None   # loaded once, shared by every category's detector
        self._graphs: tuple[bool, GraphedCall | None] | None = None   # (for which flag, the call)

    @classmethod
    def from_preset(cls, name: str, *, device: str | torch.device = "cpu", progress: bool = True,
                    n_prototypes: int = 64, cuda_graphs: bool | None = None,
                    **overrides: Any) -> "MultiDetector":
        """A multi-category model configured by preset ``name`` with Config fields overridden."""
        try:
            config = Config.preset(name, **overrides)
        except ValueError as exc:
            raise PatchbankError(str(exc)) from None
        return cls(config, device=device, progress=progress, n_prototypes=n_prototypes,
                   cuda_graphs=cuda_graphs)

    # ------------------------------------------------------------------ fit
    @property
    def categories(self) -> list[str]:
        """The category names, in the model's order."""
        self.check_fitted()
        return list(self.router_.names_)

    @property
    def is_fitted(self) -> bool:
        """True once :meth:`fit` or :meth:`load` has given the model its categories."""
        return hasattr(self, "detectors_")

    def check_fitted(self) -> None:
        """Refuse (one line) to use a model that is not fitted."""
        if not self.is_fitted:
            raise PatchbankError("this multi-category model is not fitted: call fit() or load()")

    def _new_detector(self) -> Detector:
        # one input shape for every category (one backbone pass routes and scores an image):
        # aspect "auto" keeps the configured shape here
        return Detector(self.config.replace(aspect="fixed"), device=self.device,
                        progress=self.progress, backbone=self._backbone, cuda_graphs=self.cuda_graphs)

    def fit(self, categories: Mapping[str, Any]) -> "MultiDetector":
        """Fit every category from its normal images ({name: folder or list of images})."""
        if not isinstance(categories, Mapping):
            raise PatchbankError(f"categories must be a mapping {{name: folder or list of images}}, "
                                 f"got {type(categories).__name__}")
        if not categories:
            raise PatchbankError("no categories to fit")
        previous = {k: self.__dict__[k] for k in FITTED_STATE if k in self.__dict__}
        self.detectors_: dict[str, Detector] = {}
        self.router_ = Router(self.n_prototypes, seed=self.config.seed)
        self._graphs = None     # recorded on the previous fit's extractor
        self._raw_tensors: dict[str, dict[str, torch.Tensor]] = {}
        self._infos: dict[str, dict[str, Any]] = {}
        try:
            for name, images in categories.items():
                self.add(name, images)
        except BaseException:   # a fit that fails leaves the model as it was (unfitted, or the last fit)
            for key in FITTED_STATE:
                self.__dict__.pop(key, None)
            self.__dict__.update(previous)
            raise
        return self

    def add(self, name: str, images: Any) -> "MultiDetector":
        """Fit one more category; the others are left exactly as they are."""
        check_category_name(name)
        if not self.is_fitted:
            return self.fit({name: images})
        if name in self.detectors_:
            raise PatchbankError(f"category {name!r} is already in this model")
        t0 = time.perf_counter()
        det = self._new_detector()
        det.fit(images, routing_sample=ROUTING_SAMPLE)
        self._backbone = det.backbone
        self.router_.add(name, det.routing_sample_)
        del det.routing_sample_
        det.fit_seconds_ = time.perf_counter() - t0
        self.detectors_[name] = det
        return self

    # ------------------------------------------------------------------ predict
    def _resolve(self, category: str | None) -> str | None:
        if category is not None and not isinstance(category, str):
            raise PatchbankError(f"category must be a category name (a string) or None, got {category!r}")
        if category is not None and category not in self.detectors_:
            raise PatchbankError(f"unknown category {category!r}; this model has "
                                 f"{', '.join(self.router_.names_)}")
        return category

    @torch.inference_mode()
    def predict(self, images: Any, category: str | None = None,
                batch_size: int | None = None) -> list[Prediction]:
        """Route each image to a category (or use ``category``) and score it against that
        category's bank only.  Each :class:`Prediction` carries the ``category`` used; results
        are in the order of ``images``; the time per step is left in ``last_timings_``."""
        self.check_fitted()
        check_batch_size(batch_size)
        category = self._resolve(category)
        items = as_items(images)
        first = self.detectors_[self.router_.names_[0]]
        stream = first.stream(items, batch_size)
        preds = set_windows(self._predict_batches(stream, len(items), category), stream.windows)
        note = unlike_note([self.detectors_[p.category].train_shape_ for p in preds],   # each image
                           [p.image_size for p in preds])                              # its category's
        if note is not None:   # one line, as Detector.predict warns
            warnings.warn(note, UserWarning, stacklevel=2)
        return preds

    @torch.inference_mode()
    def predict_views(self, views: list, names: list | None = None, category: str | None = None,
                      batch_size: int | None = None) -> list[Prediction]:
        """:meth:`predict` for images already read, resized and cropped by
        :func:`patchbank.io.images.prepare_input` (see :meth:`Detector.predict_views`)."""
        self.check_fitted()
        check_batch_size(batch_size)
        category = self._resolve(category)
        views = check_views(views, self.config.network_size)
        names = view_names(names, len(views))
        bb = self.detectors_[self.router_.names_[0]].backbone
        return self._predict_batches(view_batches(views, names, bb.mean, bb.std,
                                                  batch_size or self.config.batch_size), len(views), category)

    @property
    def graphs(self) -> GraphedCall | None:
        """The shared extraction (images -> per-layer rows) replayed as CUDA graphs per batch
        shape, as a :class:`Detector`'s inference path is (:mod:`patchbank.runtime.cuda_graphs`);
        None on the CPU or with ``cuda_graphs`` False.  Routing and each category's scoring run
        eagerly after it: their batch shapes follow the routing.  Built at first use, again when
        ``cuda_graphs`` changes."""
        self.check_fitted()
        if self._graphs is None or self._graphs[0] != self.cuda_graphs:
            extractor = self.detectors_[self.router_.names_[0]].extractor
            self._graphs = (self.cuda_graphs, graphed_call(lambda x: tuple(extractor(x)[0]),
                                                           extractor.device, self.cuda_graphs))
        return self._graphs[1]

    def _extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer rows of a batch, through :attr:`graphs` where there are any."""
        graphs = self.graphs
        if graphs is None:
            return self.detectors_[self.router_.names_[0]].extractor(x)[0]
        return list(graphs(x))

    def _predict_batches(self, batches, n: int, category: str | None) -> list[Prediction]:
        def handle(x, names, clock):
            layers = self._extract(x)
            b = x.shape[0]
            blur = blurriness(x)
            clock.lap("extract")
            chosen = self._route_layers(layers, b) if category is None else [category] * b
            clock.lap("route")
            out: list[Prediction | None] = [None] * b
            for name in dict.fromkeys(chosen):
                sel = [i for i, c in enumerate(chosen) if c == name]
                idx = torch.tensor(sel, device=layers[0].device)
                sub = [layer.view(b, -1, layer.shape[1]).index_select(0, idx).reshape(-1, layer.shape[1])
                       for layer in layers]
                batch = self.detectors_[name].model_.score_layers(sub, len(sel), blur[idx], clock)
                for i, p in zip(sel, batch.predictions([names[i] for i in sel], category=name)):
                    out[i] = p
                clock.lap("post")
            return out

        out, self.last_timings_ = predict_batches(batches, n, self.progress, MULTI_STEPS, handle)
        return out

    def _route_layers(self, layers: list[torch.Tensor], b: int) -> list[str]:
        """The routing decision (Eq. 4) for ``b`` images' per-layer rows."""
        return self.router_.route(routing_embedding(layers).view(b, -1, self.router_.dim))

    def route(self, images: Any, batch_size: int | None = None) -> list[str]:
        """Only the routing decision (Eq. 4) for each image."""
        self.check_fitted()
        check_batch_size(batch_size)
        first = self.detectors_[self.router_.names_[0]]
        out: list[str] = []
        with torch.inference_mode():
            for x, _ in first.stream(as_items(images), batch_size):
                out.extend(self._route_layers(self._extract(x), x.shape[0]))
        return out

    # ------------------------------------------------------------------ persistence
    def info(self) -> dict[str, Any]:
        """A JSON-able summary: shared config, category order, each category's Detector.info."""
        self.check_fitted()
        cats = {}
        for name in self.router_.names_:
            det = self.detectors_[name]
            if name in self._infos:   # read from a file: as read, with the current operating point
                cats[name] = {**self._infos[name], "threshold": det.threshold_,
                              "threshold_override": det.info()["threshold_override"]}
                if "config" in cats[name]:   # its copy names the weights file it is loaded with, as
                    cats[name]["config"] = {**cats[name]["config"], "weights": self.config.weights}  # the shared one
            else:
                cats[name] = det.info()
        return {"patchbank_version": __version__, "format_version": FORMAT_VERSION, "kind": "multi",
                "config": self.config.to_dict(), "category_order": list(self.router_.names_),
                "routing_prototypes": self.n_prototypes, "categories": cats,
                "bank_bytes": int(sum(c["bank_bytes"] for c in cats.values()))}

    def save(self, path: str | Path, overwrite: bool = False) -> int:
        """Write one model file; categories read from a file are written back unchanged.  A model
        fitted with random backbone weights is refused (:func:`~patchbank.detector.check_savable`)."""
        self.check_fitted()
        check_savable(self.detectors_[self.router_.names_[0]].backbone_sha256_)
        tensors: dict[str, torch.Tensor] = {}
        for name in self.router_.names_:
            state = self._raw_tensors.get(name)
            if state is None:
                state = dict(self.detectors_[name].state_tensors())
                state["routing_prototypes"] = self.router_.prototypes_[name]
            for key, value in state.items():
                tensors[f"{name}/{key}"] = value
        return save_model(path, tensors, self.info(), overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu", progress: bool = True,
             weights: str | None = None, cuda_graphs: bool | None = None) -> "MultiDetector":
        """Load a multi-category model file (one backbone shared by every category);
        ``cuda_graphs`` as in :class:`MultiDetector`."""
        tensors, meta = load_model(path)
        if meta.get("kind") != "multi":
            raise PatchbankError(f"{path} is a single-category model, not a multi-category one "
                                 f"(load it with Detector.load; fit with --multi to route)")
        states = check_multi_header(tensors, meta, str(path))     # {name: (tensors, meta)}, in order
        check_header_weights(meta, weights, str(path))
        config = Config.from_dict(meta["config"])
        if weights is not None:
            config = config.replace(weights=given_weights(weights))
        n_proto = int(meta["routing_prototypes"])
        self = cls(config, device=device, progress=progress, n_prototypes=n_proto, cuda_graphs=cuda_graphs)
        self.detectors_, self._raw_tensors, self._infos = {}, {}, {}
        self.router_ = Router(n_proto, seed=config.seed)
        for name, (state, info) in states.items():
            det = Detector.from_state(state, info, f"{path} [{name}]", device=device,
                                      progress=progress, weights=weights, backbone=self._backbone,
                                      cuda_graphs=cuda_graphs, routed=True)
            self._backbone = det.backbone
            self.detectors_[name] = det
            self.router_.set(name, state["routing_prototypes"])
            self._raw_tensors[name] = state
            self._infos[name] = meta["categories"][name]
        return self


def load_any(path: str | Path, **kwargs: Any) -> Detector | MultiDetector:
    """Load a single- or multi-category model file, whichever ``path`` holds."""
    meta = read_header(path)
    return (MultiDetector if meta.get("kind") == "multi" else Detector).load(path, **kwargs)
