"""The served models: load, warm up, describe, predict, move or persist the threshold.

A served model comes from one of two sources, decided in one place (:func:`model_source`, by
the server's ``runtime``): a model file (:class:`ModelFile`, runtime ``torch``: loaded with
:func:`patchbank.multi.load_any`, a ``Detector`` or a ``MultiDetector``) or an export folder
(:class:`ExportFolder`, runtime ``onnx`` / ``openvino``: an
:class:`~patchbank.export.runtimes.ExportedModel`).  All three have the same predict and
operating-point methods (``predict``, ``threshold_``, ``calibrated_threshold_``,
``set_threshold``, ``map_level``, ``heatmap_range``, ``info``), and every model is scored only
through its ``predict``: nothing here computes a score.  Each model has one lock, held while it
predicts and while its threshold moves or is written, so a response always reports the
threshold its decision was made with.

Thresholds are on the normalised score.  A multi-category model has one per category; a PUT
without a category moves every category's.  ``persist`` writes the source again, atomically and
under ``<file>.lock``: a model file is saved whole (the lock ``patchbank fit --add`` takes) with
the moved threshold in its header; an export folder's sidecar gets the moved threshold as
``threshold_override`` (the graph files are never touched).  Without ``persist`` nothing is
written.

The file is the operating point's one source of truth between processes: before a model
predicts, describes itself or moves its threshold, the registry looks at its file's stamp
(:func:`file_stamp`, one ``stat``) and, when it changed, reads the header again.  A file that
still holds the same model with other thresholds (another worker's or server's persist, a
script's ``set_threshold`` + ``save``) gives its thresholds to the loaded model
(:meth:`ModelRegistry.follow`); a file that now holds another model (a new fit, ``fit --add``)
is left alone, the loaded model keeps serving and a persist answers 503.  So with ``--workers
N`` a persisted threshold reaches every worker at its next request, and a threshold moved
without ``persist`` (one worker's memory only) is refused (409).
"""
from __future__ import annotations

import json
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from patchbank.detector import Detector, Prediction
from patchbank.errors import PatchbankError
from patchbank.export.runtimes import ExportedModel, check_model_path
from patchbank.export.sidecar import read_sidecar, sidecar_path
from patchbank.io.heatmap import png_bytes
from patchbank.io.image_coords import region_polygons
from patchbank.io.model_file import file_sha256, read_header
from patchbank.io.output_files import file_lock, lock_path_for
from patchbank.multi import MultiDetector, load_any
from patchbank.runtime.malloc import trim_malloc
from patchbank.service.errors import ServiceError, bad_request, not_found, not_ready
from patchbank.service.settings import ModelSpec, ServeSettings

__all__ = ["ModelRegistry", "Served", "Scored", "ModelFile", "ExportFolder", "model_source"]

PERSIST_LOCK_TIMEOUT_S = 10.0   # a PUT waits this long for a concurrent fit --add, then 503


def file_stamp(path: Path) -> tuple[int, int, int, int] | None:
    """``(device, inode, size, mtime_ns)`` of ``path`` (links followed), None when it cannot be
    read: a persist renames a new file into place, so any rewrite changes the stamp."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def without_thresholds(meta: dict[str, Any], keys: tuple[str, ...]) -> str:
    """A header or sidecar as canonical JSON without its operating point (``keys``, the source's
    ``moved_keys``, at the top and in each category): two files with the same text hold the
    same model."""
    def strip(d: Any) -> Any:
        return {k: v for k, v in d.items() if k not in keys} if isinstance(d, dict) else d
    out = strip(meta)
    if isinstance(out.get("categories"), dict):
        out["categories"] = {c: strip(v) for c, v in out["categories"].items()}
    return json.dumps(out, sort_keys=True)


@dataclass
class Scored:
    """One image's prediction and the threshold its decision was made with."""

    prediction: Prediction
    threshold: float
    done: float        # time.perf_counter() when its model call returned


@dataclass(frozen=True)
class ModelFile:
    """A ``.patchbank`` model file, run by torch: the file is what persist writes and hashes."""

    path: Path
    runtime: str = "torch"
    moved_keys = ("threshold", "threshold_override")   # what a persist changes in the header

    @property
    def main(self) -> Path:
        """The file whose sha256 is reported and that ``persist`` rewrites (under its lock)."""
        return self.path

    def load(self, settings: ServeSettings) -> Detector | MultiDetector:
        """The model (a Detector or a MultiDetector)."""
        return load_any(self.path, device=settings.device, progress=False, weights=settings.weights)

    def header(self) -> dict[str, Any]:
        """The model file's JSON header."""
        return read_header(self.path)

    def write(self, model: Detector | MultiDetector) -> None:
        """Save ``model`` (its thresholds included) over the file."""
        model.save(self.path, overwrite=True)

    def recorded(self, model: Detector | MultiDetector) -> dict[str, Any]:
        """The header :meth:`write` would write for ``model`` now."""
        return model.info()

    def follow(self, model: Detector | MultiDetector, header: dict[str, Any]) -> None:
        """Give ``model`` the thresholds of ``header`` (the same model's, :func:`without_thresholds`
        equal): each category's ``threshold_override``, null for the calibrated one."""
        if isinstance(model, MultiDetector):
            for name in model.categories:
                model.detectors_[name].set_threshold(header["categories"][name].get("threshold_override"))
        else:
            model.set_threshold(header.get("threshold_override"))

    def graph_sha256(self, model) -> dict[str, str]:
        """No graph files: the model file holds everything."""
        return {}


@dataclass(frozen=True)
class ExportFolder:
    """A ``patchbank export`` folder, run by ONNX Runtime or OpenVINO: persist writes its
    sidecar's ``threshold_override`` (the graph files are read only)."""

    path: Path
    runtime: str
    moved_keys = ("threshold_override",)   # what a persist changes ("threshold" is the graph's own)

    @property
    def main(self) -> Path:
        """The sidecar: its sha256 is reported and ``persist`` rewrites it (under its lock)."""
        return sidecar_path(self.path)

    def load(self, settings: ServeSettings) -> ExportedModel:
        """The export in the server's runtime, with its ``--threads``."""
        return ExportedModel(self.path, self.runtime, threads=settings.threads, progress=False)

    def header(self) -> dict[str, Any]:
        """The checked sidecar."""
        return read_sidecar(self.path)

    def write(self, model: ExportedModel) -> None:
        """Record the model's current threshold in the sidecar."""
        model.save_threshold()

    def recorded(self, model: ExportedModel) -> dict[str, Any]:
        """The sidecar as ``model`` holds it (:meth:`write` changes only its threshold)."""
        return model.sidecar

    def follow(self, model: ExportedModel, header: dict[str, Any]) -> None:
        """Give ``model`` the ``threshold_override`` of its sidecar read again (``header``)."""
        model.follow_sidecar(header)

    def graph_sha256(self, model: ExportedModel) -> dict[str, str]:
        """The sha256 of the graph (and weights) files the runtime read, by name (hashed once, on
        load, where they were checked against the sidecar's)."""
        return model.graph_sha256_


def model_source(spec: ModelSpec, runtime: str) -> ModelFile | ExportFolder:
    """Where ``spec`` is served from under ``runtime``: a model file or an export folder
    (:func:`patchbank.export.runtimes.check_model_path` decides, with its one-line errors)."""
    path = Path(spec.path)
    if check_model_path(path, runtime, what=f"model {spec.name!r}: "):
        return ExportFolder(path, runtime)
    return ModelFile(path)


@dataclass
class Served:
    """A loaded model, where it came from (``source``) and what is known of its files."""

    spec: ModelSpec
    model: Detector | MultiDetector | ExportedModel
    source: ModelFile | ExportFolder
    sha256: str
    header: dict[str, Any]
    graph_sha256: dict[str, str] = field(default_factory=dict)   # an export's graph files, by name
    lock: threading.Lock = field(default_factory=threading.Lock)
    stamp: tuple | None = None    # file_stamp of the file as last read (loaded, written or followed)

    @property
    def multi(self) -> bool:
        """True for a multi-category (routed) model."""
        return isinstance(self.model, MultiDetector)

    @property
    def categories(self) -> list[str]:
        """The categories of a multi-category model ([] for a single one)."""
        return self.model.categories if isinstance(self.model, MultiDetector) else []

    @property
    def read_size(self) -> tuple[int, int]:
        """The (H, W) the model reads encoded images toward (its ``config.image_size``: a
        JPEG decodes at a reduced scale not below it), for uploads to decode as its files do."""
        return tuple(self.model.config.image_size)

    def detector(self, category: str | None) -> Detector | ExportedModel:
        """The detector that scores ``category`` (None for a single-category model)."""
        if isinstance(self.model, MultiDetector):
            return self.model.detectors_[self.check_category(category)]
        return self.model

    def check_category(self, category: str | None) -> str | None:
        """``category`` if this model has it (None: route); 404 for an unknown one, 400 for
        any category on a single-category model."""
        if category is None:
            return None
        if not self.multi:
            raise bad_request(f"model {self.spec.name!r} has one category; 'category' is only "
                              f"for multi-category models")
        if category not in self.categories:
            raise not_found(f"model {self.spec.name!r} has no category {category!r} "
                            f"(it has {', '.join(self.categories)})")
        return category

    def detectors_for(self, category: str | None) -> list[Detector | ExportedModel]:
        """The detectors a threshold change applies to: the category's, or every one."""
        if isinstance(self.model, MultiDetector) and category is None:
            return [self.model.detectors_[c] for c in self.categories]
        return [self.detector(self.check_category(category))]


def load_served(spec: ModelSpec, settings: ServeSettings) -> Served:
    """Load one model file or export folder (one-line :class:`PatchbankError` if it is missing,
    of the wrong kind for the runtime, or unloadable)."""
    source = model_source(spec, settings.runtime)
    stamp = file_stamp(source.main)    # before reading: a change while loading is followed later
    model = source.load(settings)
    return Served(spec, model, source, file_sha256(source.main), source.header(), source.graph_sha256(model),
                  stamp=stamp)


class ModelRegistry:
    """The models of one server process, by name; ``ready`` once all are loaded and warmed up."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.models: dict[str, Served] = {}
        self.ready = False
        self.failure: str | None = None   # why loading failed (the server then stays unready)

    @property
    def names(self) -> list[str]:
        """The model names, in the order given."""
        return [m.name for m in self.settings.models]

    def load(self) -> "ModelRegistry":
        """Load every model not loaded yet; raises a one-line PatchbankError for a bad one (a
        path of the wrong kind for the runtime before anything loads)."""
        for spec in self.settings.models:
            model_source(spec, self.settings.runtime)
        for spec in self.settings.models:
            if spec.name not in self.models:
                self.models[spec.name] = load_served(spec, self.settings)
        return self

    def warm_up(self) -> "ModelRegistry":
        """One prediction per model on a synthetic grey image (first-call costs paid now; on a
        GPU a second one, which captures the batch-1 CUDA graph), then ``ready``."""
        calls = 2 if self.settings.device.startswith("cuda") else 1
        for served in self.models.values():
            h, w = served.model.config.image_size
            grey = Image.new("RGB", (w, h), (128, 128, 128))
            with served.lock, warnings.catch_warnings():
                warnings.simplefilter("ignore")   # the grey frame is no product image: no other_shape line
                for _ in range(calls):
                    served.model.predict([grey], batch_size=1)
        # the response outputs' first-use costs (scikit-image's import, the PNG encoder)
        region_polygons(np.eye(3, dtype=bool))
        png_bytes(np.zeros((2, 2), np.uint8))
        self.ready = len(self.models) == len(self.settings.models)
        return self

    def start(self) -> None:
        """:meth:`load` then :meth:`warm_up`, recording a failure in ``failure`` instead of
        raising (for a worker process loading in the background)."""
        try:
            self.load().warm_up()
        except Exception as exc:   # the server stays up, unready, and says why
            self.failure = " ".join(str(exc).split()) or type(exc).__name__
            raise

    def get(self, name: str) -> Served:
        """The loaded model ``name``: 404 if there is none, 503 while it loads."""
        if name not in self.names:
            raise not_found(f"no model {name!r}; this server has {', '.join(self.names)}")
        if not self.ready or name not in self.models:
            why = f"loading failed: {self.failure}" if self.failure else "still loading"
            raise not_ready(f"model {name!r} is not ready: {why}")
        return self.models[name]

    # ------------------------------------------------------------------ predict
    def predict(self, name: str, category: str | None, images: list[Image.Image]) -> list[Scored]:
        """Score decoded images with model ``name`` (routed, or against ``category``) in one
        ``predict`` call: the batcher's ``run``."""
        served = self.get(name)
        with served.lock:
            self.follow(served)
            if isinstance(served.model, MultiDetector):
                preds = served.model.predict(images, category=category, batch_size=len(images))
            else:
                preds = served.model.predict(images, batch_size=len(images))
            thresholds = {p.category: float(served.detector(p.category).threshold_) for p in preds}
        done = time.perf_counter()
        trim_malloc()   # a batch's freed activations go back to the system: RSS stays flat
        return [Scored(p, thresholds[p.category], done) for p in preds]

    # ------------------------------------------------------------------ threshold
    def set_threshold(self, name: str, threshold: float | None, category: str | None = None,
                      persist: bool = False) -> None:
        """Move the threshold of model ``name`` (of ``category``, or of every category) to
        ``threshold``; None goes back to the calibrated one.  ``persist`` writes the model file
        (atomically, under its lock); if that fails, the threshold is left as it was."""
        served = self.get(name)
        detectors = served.detectors_for(category)
        if not persist and self.settings.workers > 1:
            raise ServiceError(409, f"this server runs {self.settings.workers} worker processes: a threshold "
                                    f"moved without persist would change the one that answers only; send "
                                    f"persist: true (every worker follows the model file) or give the "
                                    f"threshold per request")
        with served.lock:
            self.follow(served)
            if not persist:
                self._move(detectors, threshold, None)
                return
            path = served.source.main
            try:
                with file_lock(lock_path_for(path), timeout=PERSIST_LOCK_TIMEOUT_S, what=str(path), quiet=True):
                    self._persist(served, detectors, threshold)
            except (PatchbankError, OSError) as exc:
                why = exc if isinstance(exc, PatchbankError) else f"{path} cannot be read ({exc.strerror or exc})"
                raise ServiceError(503, f"cannot persist the threshold of model {served.spec.name!r}: {why}") from None

    @staticmethod
    def _move(detectors: list, threshold: float | None, write) -> None:
        """Set ``threshold`` on ``detectors``, then ``write()`` (None: nothing to write); if
        either fails, every threshold is put back as it was."""
        before = [d.threshold_ for d in detectors]
        try:
            for d in detectors:
                d.set_threshold(threshold)
            if write is not None:
                write()
        except BaseException:
            for d, t in zip(detectors, before):
                d.set_threshold(None if t == d.calibrated_threshold_ else t)
            raise

    def _persist(self, served: Served, detectors: list, threshold: float | None) -> None:
        """Under the file's lock: take another process's persisted thresholds first
        (:meth:`follow`), then move ``detectors`` to ``threshold`` and write the model's source
        (its model file, or its export's sidecar) only while the file is still the one this
        server loaded, last wrote or followed (its sha256): a file that holds another model since
        (``fit --overwrite``, ``fit --add``, an export again) is never written over
        (PatchbankError: 503).  The sha256, header and stamp recorded are read under the lock."""
        path = served.source.main
        self.follow(served)
        if file_sha256(path) != served.sha256:
            raise PatchbankError(f"{path} changed since it was loaded by this server (fit again, --add or "
                                 f"exported again: another model now); restart the server to serve the file "
                                 f"as it is now, then move the threshold")
        self._move(detectors, threshold, lambda: served.source.write(served.model))
        served.header, served.sha256, served.stamp = served.source.header(), file_sha256(path), file_stamp(path)

    def follow(self, served: Served) -> None:
        """Take the thresholds of ``served``'s file when it changed since it was last read and
        still holds the same model (see the module docstring); the caller holds ``served.lock``.
        A file being replaced, missing or unreadable now is looked at again at the next call; one
        that holds another model is remembered (its stamp) and left alone."""
        path = served.source.main
        stamp = file_stamp(path)
        if stamp is None or stamp == served.stamp:
            return
        try:
            header, sha = served.source.header(), file_sha256(path)
        except (PatchbankError, OSError):
            return
        if file_stamp(path) != stamp:            # rewritten while read: the next call reads it
            return
        served.stamp = stamp
        if sha == served.sha256:
            return
        keys = served.source.moved_keys
        if without_thresholds(header, keys) != without_thresholds(served.source.recorded(served.model), keys):
            return                                # another model now: persist answers 503
        served.source.follow(served.model, header)
        served.header, served.sha256 = header, sha

    # ------------------------------------------------------------------ describe
    def describe(self, name: str) -> dict[str, Any]:
        """What ``GET /v2/models/{name}`` answers: the model, its file and its operating point."""
        served = self.get(name)
        with served.lock:
            self.follow(served)
            cfg, header = served.model.config, served.header
            info = served.model.info()
            cats = [_category_entry(c, served.detector(c), info["categories"][c])
                    for c in served.categories]
            single = None if served.multi else _category_entry(None, served.model, info)
        out = {
            "name": name, "kind": "multi" if served.multi else "single",
            "backbone": cfg.backbone, "preset": cfg.preset_name(),
            "input_size": list(cfg.input_size), "image_size": list(cfg.image_size),
            "crop_size": None if cfg.crop_size is None else list(cfg.crop_size),
            "keep_aspect": cfg.keep_aspect, "aspect": cfg.aspect, "crop_at": cfg.crop_at,
            "network_size": list(cfg.network_size),
            "train_aspect": info.get("train_aspect"), "train_scale": info.get("train_scale"),
            "target_fpr": cfg.target_fpr,
            "threshold_rule": cfg.threshold_rule,
            "map_offset": cfg.map_offset,
            "bank_entries": sum(c["bank_entries"] for c in cats) if cats else single["bank_entries"],
            "bank_dim": cats[0]["bank_dim"] if cats else single["bank_dim"],
            "bank_bytes": int(info["bank_bytes"]),
            "threshold": None if cats else single["threshold"],
            "calibrated_threshold": None if cats else single["calibrated_threshold"],
            "whole_image_check": cfg.whole_image_check,
            "map_threshold": None if cats else single["map_threshold"],
            "focus_check": cfg.focus_check,
            "blur_threshold": None if cats else single["blur_threshold"],
            "categories": cats if cats else None,
            "path": str(served.spec.path), "runtime": served.source.runtime,
            "sha256": served.sha256, "sha256_file": served.source.main.name,
            "graph_sha256": served.graph_sha256 or None,
            "format_version": header.get("format_version"),
            "patchbank_version": header.get("patchbank_version"),
            "fitted_with": None if cats else single["fitted_with"],
            "device": str(self.settings.device),
        }
        return out


def _category_entry(name: str | None, det: Detector | ExportedModel, info: dict[str, Any]) -> dict[str, Any]:
    """One category's (or a single model's) bank, operating point, the library versions it was
    fitted with and its training images' shape (``other_shape`` is judged against it; None for
    a model file or an export written before they were recorded)."""
    return {"name": name, "threshold": float(det.threshold_),
            "calibrated_threshold": float(det.calibrated_threshold_),
            "map_threshold": info.get("map_threshold"), "blur_threshold": info.get("blur_threshold"),
            "bank_entries": int(info["bank_entries"]), "bank_dim": int(info["bank_dim"]),
            "bank_bytes": int(info["bank_bytes"]), "fitted_with": info.get("fitted_with"),
            "train_aspect": info.get("train_aspect"), "train_scale": info.get("train_scale")}
