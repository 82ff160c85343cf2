"""Running an export folder: one small protocol, one class per runtime, chosen from a registry.

A :class:`Runtime` is built from an export folder and its checked sidecar and runs the graph:
``run(x [B, 3, H, W] float32) -> the graph's outputs`` (numpy, in the sidecar's output order).
Before loading, it checks the files it reads against the sidecar's sha256, and that the external
data an ONNX graph names (read from the graph itself) is the data file the sidecar lists
(:meth:`Runtime.open_graph`, which keeps the hashes as ``graph_sha256``); after, the graph's one
input must be :data:`~patchbank.export.sidecar.INPUT_NAME` ``[batch, 3, H, W]`` at the sidecar's
``input_size`` (:func:`check_input`) and its outputs :data:`~patchbank.export.graph.OUTPUTS`
(:func:`check_outputs`); anything else is one line.
:data:`RUNTIMES` maps a name to its class (:func:`register_runtime`); :class:`ExportedModel` is
the one user of it and gives :meth:`Detector.predict <patchbank.detector.Detector.predict>`'s
results: the images are read and preprocessed by the torch path's own
:class:`~patchbank.io.images.ImageStream` (the sidecar's config, mean and std), the outputs
become the same :class:`~patchbank.pipeline.inference.Prediction` objects through
:class:`~patchbank.pipeline.inference.ScoredBatch`.  Its operating point is a
:class:`~patchbank.pipeline.calibration.ScoreCalibration` refitted from the sidecar's
calibration arrays (:func:`~patchbank.export.sidecar.sidecar_calibration`): ``threshold_``,
``calibrated_threshold_``, :meth:`~ExportedModel.set_threshold`, :meth:`~ExportedModel.map_level`
and :meth:`~ExportedModel.heatmap_range` are the Detector's, and the decision is made from the
graph's normalised score at the current threshold (the graph's own ``is_anomalous`` holds the
threshold it was exported with).

* ``onnx``: ONNX Runtime's CPU provider, every graph optimisation (``ORT_ENABLE_ALL``),
  ``threads`` intra-op threads (default: the runtime's, one per core).
* ``openvino``: the CPU plugin on ``model.xml`` with its ``model.bin`` (or ``model.onnx`` when
  only ONNX was exported), float32 inference precision (never the bf16 default of CPUs that have
  it, which would change the scores), ``hint`` LATENCY (default: one request per batch) or THROUGHPUT
  (the batch split over the plugin's streams, run at once), ``threads`` threads.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from patchbank.errors import PatchbankError
from patchbank.export.graph import OUTPUTS
from patchbank.export.onnx_writer import external_data_locations
from patchbank.export.openvino_writer import import_openvino
from patchbank.export.sidecar import (DATA_FILES, GRAPH_FILES, INPUT_NAME, SIDECAR_NAME, check_external_data,
                                      check_graph_files, read_sidecar, runtime_files, sidecar_calibration,
                                      sidecar_config, sidecar_path, write_threshold_override)
from patchbank.io.images import ImageStream, as_items
from patchbank.io.output_files import check_utf8_name
from patchbank.io.train_shape import TrainShape
from patchbank.pipeline.calibration import ImageScores, decide, map_means
from patchbank.pipeline.focus import blurriness
from patchbank.pipeline.inference import (PREDICT_STEPS, Prediction, ScoredBatch, check_batch_size,
                                          predict_batches, set_windows)

HINTS = ("LATENCY", "THROUGHPUT")

#: Why an ONNX export needs a UTF-8 folder path (ONNX Runtime takes only UTF-8 file names).
ONNX_UTF8 = "ONNX Runtime opens files by UTF-8 names only"


class Runtime(ABC):
    """An exported graph loaded in one runtime: built as ``cls(folder, sidecar, threads=, hint=)``,
    ``run(x [B, 3, H, W] float32)`` -> the outputs in :data:`OUTPUTS` order; ``graph_format``:
    the format of the graph file it read (a key of ``GRAPH_FILES``); ``graph_sha256``: the
    sha256 of the files it read, by name.  Every runtime opens its graph through
    :meth:`open_graph`, which checks the files and sets both."""

    name = ""
    graph_format = ""
    graph_sha256: dict[str, str]

    def open_graph(self, folder: Path, sidecar: dict[str, Any], fmt: str) -> Path:
        """The graph file of format ``fmt``, once the files a runtime reads for it (the graph and
        its data file) match the sidecar's sha256 (:func:`~patchbank.export.sidecar.check_graph_files`)
        and, for an ONNX graph, the external data it names is the data file the sidecar lists
        (:func:`~patchbank.export.sidecar.check_external_data`: a runtime reads whatever file the
        graph names); sets ``graph_format`` and ``graph_sha256``."""
        self.graph_format = fmt
        self.graph_sha256 = check_graph_files(folder, sidecar, runtime_files(sidecar, fmt))
        path = folder / GRAPH_FILES[fmt]
        if fmt == "onnx":
            check_external_data(folder, sidecar, external_data_locations(path))
        return path

    @abstractmethod
    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs for one batch."""


RUNTIMES: dict[str, Callable[..., Runtime]] = {}


def register_runtime(name: str, cls: Callable[..., Runtime]) -> None:
    """Make ``name`` (``predict --runtime NAME``) run export folders with ``cls``."""
    RUNTIMES[name] = cls


class OnnxRuntime(Runtime):
    """ONNX Runtime, CPU execution provider (see the module docstring)."""

    name = "onnx"

    def __init__(self, folder: Path, sidecar: dict[str, Any], threads: int | None = None,
                 hint: str | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise PatchbankError("ONNX Runtime is not installed: pip install 'patchbank[export]'") from None
        if "onnx" not in sidecar["formats"]:
            raise PatchbankError(f"{folder} has no ONNX graph (formats: {', '.join(sidecar['formats'])}); "
                                 f"export with --format onnx or use --runtime openvino")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        check_utf8_name(folder.absolute(), "ONNX export folder path", ONNX_UTF8)
        path = self.open_graph(folder, sidecar, "onnx")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:   # onnxruntime raises its own Fail/InvalidGraph types
            raise PatchbankError(f"ONNX Runtime cannot load {path} ({' '.join(str(exc).split())[:300]})") from None
        check_input([(i.name, [d if isinstance(d, int) else None for d in i.shape])
                     for i in self.session.get_inputs()], path, sidecar)
        check_outputs([o.name for o in self.session.get_outputs()], folder)

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {INPUT_NAME: x})


class OpenVinoRuntime(Runtime):
    """OpenVINO's CPU plugin (see the module docstring)."""

    name = "openvino"

    def __init__(self, folder: Path, sidecar: dict[str, Any], threads: int | None = None,
                 hint: str | None = None):
        ov = import_openvino()
        hint = (hint or "LATENCY").upper()
        if hint not in HINTS:
            raise PatchbankError(f"OpenVINO performance hint must be one of {', '.join(HINTS)}, got {hint!r}")
        path = self.open_graph(folder, sidecar, "openvino" if "openvino" in sidecar["formats"] else "onnx")
        # the IR's weights named explicitly: the checked model.bin (an ONNX graph names its own)
        weights = [str(folder / DATA_FILES["openvino"])] if self.graph_format == "openvino" else []
        props = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            props["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            core = ov.Core()
            self.compiled = core.compile_model(core.read_model(str(path), *weights), "CPU", props)
        except Exception as exc:   # OpenVINO raises RuntimeError with multi-line messages
            raise PatchbankError(f"OpenVINO cannot load {path} ({' '.join(str(exc).split())[:300]})") from None
        check_input([(_ov_name(i, (INPUT_NAME,)), [d.get_length() if d.is_static else None
                                                     for d in i.get_partial_shape()])
                     for i in self.compiled.inputs], path, sidecar)
        self.outputs = list(self.compiled.outputs)
        check_outputs([_ov_name(o, OUTPUTS) for o in self.outputs], folder)
        self.requests = [self.compiled.create_infer_request()
                         for _ in range(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
                                        if hint == "THROUGHPUT" else 1)]

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """One request (LATENCY), or under THROUGHPUT the batch split over the plugin's optimal
        number of requests run at once (its streams), outputs joined in order."""
        parts = np.array_split(x, min(len(self.requests), x.shape[0]))
        for req, part in zip(self.requests, parts):
            req.start_async({0: part})
        results = []
        for req in self.requests[:len(parts)]:
            req.wait()
            results.append([np.array(req.get_tensor(o).data) for o in self.outputs])
        return [np.concatenate(col) for col in zip(*results)]


def _ov_name(output, wanted: tuple[str, ...]) -> str:
    """The name of an OpenVINO output among ``wanted`` (a tensor may carry several names)."""
    names = output.get_names()
    return next((n for n in wanted if n in names), output.get_any_name())


def check_input(inputs: list[tuple[str, list[int | None]]], graph: Path, sidecar: dict[str, Any]) -> None:
    """Refuse a graph whose inputs (name, shape with None for a dynamic size) are not the one
    :data:`~patchbank.export.sidecar.INPUT_NAME` ``[batch, 3, H, W]`` at the sidecar's
    ``input_size`` (H, W) (one line)."""
    want = [(INPUT_NAME, [None, 3, *sidecar["input_size"]])]
    if inputs != want:
        raise PatchbankError(f"{graph}: the graph reads {_shown_inputs(inputs) or 'no input'}, the sidecar's "
                             f"input is {_shown_inputs(want)} (input_size); export again")


def _shown_inputs(inputs: list[tuple[str, list[int | None]]]) -> str:
    """``images [batch, 3, 96, 96]``, comma-separated."""
    return ", ".join(f"{name} [{', '.join('batch' if d is None else str(d) for d in dims)}]" for name, dims in inputs)


def check_outputs(names: list[str], folder: Path) -> None:
    """Refuse a graph whose outputs are not :data:`OUTPUTS` in order (one line)."""
    if list(names) != list(OUTPUTS):
        raise PatchbankError(f"{folder}: the graph's outputs {names} are not the ones this patchbank "
                             f"reads ({', '.join(OUTPUTS)}); export again")


register_runtime("onnx", OnnxRuntime)
register_runtime("openvino", OpenVinoRuntime)


def check_model_path(path: Path, runtime: str, what: str = "") -> bool:
    """Whether ``path`` is an export folder (True) or a model file (False) that ``runtime`` can
    run: torch runs ``.patchbank`` model files, onnx / openvino run export folders.  One-line
    :class:`PatchbankError` (prefixed ``what``) for a missing path or the wrong kind, saying what
    to do instead (a file of an export folder: give the folder, :func:`check_not_an_export_file`)."""
    path = Path(path)
    if path.is_dir():
        if runtime != "torch":
            return True
        if not sidecar_path(path).is_file():
            raise PatchbankError(f"{what}{path} is a folder, not a model file (give a .patchbank "
                                 f"file, or an export folder with --runtime onnx or openvino)")
        raise PatchbankError(f"{what}{path} is an export folder; run it with --runtime onnx or "
                             f"--runtime openvino (torch runs .patchbank model files)")
    if not path.is_file():
        raise PatchbankError(f"{what}model file not found: {path}")
    check_not_an_export_file(path, runtime, what)
    if runtime != "torch":
        raise PatchbankError(f"{what}--runtime {runtime} runs an export folder, and {path} is a model "
                             f"file: run 'patchbank export {path} -o DIR' first and give DIR, or drop "
                             f"--runtime to run the file with torch")
    return False


def check_not_an_export_file(path: Path, runtime: str, what: str = "") -> None:
    """Refuse (one line, prefixed ``what``) the file ``path`` given as a model when it belongs to
    an export folder, saying to give the folder instead: for ``onnx`` / ``openvino`` a file
    named like the sidecar or in a folder that holds one; for ``torch`` a file named like the
    sidecar (other files fail as what they are: not a model file)."""
    folder = path.parent
    is_sidecar = path.name == SIDECAR_NAME
    if runtime == "torch" and is_sidecar:
        raise PatchbankError(f"{what}{path} is the sidecar of an export folder, not a model file: run "
                             f"the folder {folder} with --runtime onnx or --runtime openvino")
    if runtime != "torch" and (is_sidecar or sidecar_path(folder).is_file()):
        raise PatchbankError(f"{what}{path} is {'the sidecar' if is_sidecar else 'a file'} of the export "
                             f"folder {folder}: give the folder itself ({folder}) to --runtime {runtime}")


class ExportedModel:
    """An export folder run by one runtime, predicting like a :class:`Detector`.

    ``config`` (the model's configuration, from the sidecar), ``sidecar``, ``runtime``,
    ``graph_sha256_`` (the files the runtime read, checked against the sidecar), ``calibration_``
    and the Detector's operating-point API (``threshold_``, ``calibrated_threshold_``,
    :meth:`set_threshold`, :meth:`map_level`, :meth:`heatmap_range`);
    :meth:`predict` returns the :class:`Prediction` list ``Detector.predict`` would (up to the
    runtime's float rounding), with ``last_timings_`` per step.
    """

    def __init__(self, folder: str | Path, runtime: str = "onnx", *, threads: int | None = None,
                 hint: str | None = None, progress: bool = True):
        self.folder = Path(folder)
        self.sidecar = read_sidecar(self.folder)
        self.config = sidecar_config(self.sidecar)
        self.calibration_ = sidecar_calibration(self.sidecar, sidecar_path(self.folder))
        self.train_shape_ = TrainShape.from_header(self.sidecar)   # the training images' shapes
        self.progress = progress
        try:
            factory = RUNTIMES[runtime]
        except KeyError:
            raise PatchbankError(f"unknown runtime {runtime!r}; choose one of {', '.join(sorted(RUNTIMES))}") from None
        self.runtime = factory(self.folder, self.sidecar, threads=threads, hint=hint)

    @property
    def aspect_(self) -> float | None:
        """The training images' shared H / W, or None (``train_shape_.aspect``, as on a Detector)."""
        return self.train_shape_.aspect

    # ------------------------------------------------------------------ operating point
    @property
    def threshold_(self) -> float:
        """The current threshold on the normalised score (the sidecar's ``threshold_override``,
        else the calibrated one, until :meth:`set_threshold`)."""
        return self.calibration_.threshold_

    @property
    def calibrated_threshold_(self) -> float:
        """The threshold calibrated at fit, whatever :meth:`set_threshold` moved ``threshold_`` to."""
        return self.calibration_.stats_.threshold_

    def set_threshold(self, threshold: float | None) -> "ExportedModel":
        """Move the operating point (None: the calibrated one); :meth:`Detector.set_threshold
        <patchbank.detector.Detector.set_threshold>`.  :meth:`save_threshold` records it."""
        self.calibration_.set_threshold(threshold)
        return self

    def map_level(self, threshold: float | None = None) -> float:
        """:meth:`ScoreCalibration.map_level <patchbank.pipeline.calibration.ScoreCalibration.map_level>`."""
        return self.calibration_.map_level(threshold)

    def heatmap_range(self) -> tuple[float, float]:
        """:meth:`ScoreCalibration.heatmap_range <patchbank.pipeline.calibration.ScoreCalibration.heatmap_range>`."""
        return self.calibration_.heatmap_range()

    def follow_sidecar(self, sidecar: dict[str, Any]) -> "ExportedModel":
        """Take the ``threshold_override`` of this export's sidecar as read again (another
        process's :meth:`save_threshold`; the caller checked that the rest is this export's)."""
        moved = sidecar.get("threshold_override")
        self.set_threshold(moved)
        self.sidecar = dict(self.sidecar, threshold_override=moved)
        return self

    def save_threshold(self) -> Path:
        """Write the current threshold into the sidecar as ``threshold_override`` (null at the
        calibrated one), atomically; the caller holds the sidecar's lock
        (:func:`~patchbank.export.sidecar.write_threshold_override`).  Returns the sidecar's path."""
        moved = None if self.threshold_ == self.calibrated_threshold_ else float(self.threshold_)
        path = write_threshold_override(self.folder, self.sidecar, moved)
        self.sidecar = dict(self.sidecar, threshold_override=moved)
        return path

    @property
    def graph_sha256_(self) -> dict[str, str]:
        """The sha256 of the files the runtime read (its graph and, when there is one, the
        graph's data file), by name: hashed once on load and checked against the sidecar's."""
        return dict(self.runtime.graph_sha256)

    def info(self) -> dict[str, Any]:
        """The keys of :meth:`Detector.info <patchbank.detector.Detector.info>` an export knows
        (from its sidecar; the bank as stored in the graph), at the current threshold."""
        sc, bank = self.sidecar, self.sidecar["bank"]
        return {
            "patchbank_version": sc["patchbank_version"], "format_version": sc["format_version"],
            "config": sc["config"], "bank_entries": int(bank["entries"]), "bank_dim": int(bank["dim"]),
            "bank_bytes": int(bank["bytes"]), "search": sc.get("search", "exact"),
            "patch_grid": sc.get("patch_grid"), "n_calibration_images": int(self.calibration_.scores_.size),
            "structure_lambda": self.calibration_.struct_.lambda_, "score_mean": sc["score_mean"],
            "score_std": sc["score_std"], "threshold": self.threshold_, "target_fpr": self.config.target_fpr,
            "threshold_override": sc.get("threshold_override"), "map_threshold": self.calibration_.map_threshold_,
            "blur_threshold": self.calibration_.blur_threshold_,
            "backbone_sha256": sc.get("backbone_sha256"),
            **({} if sc.get("fitted_with") is None else {"fitted_with": sc["fitted_with"]}),
        }

    # ------------------------------------------------------------------ predict
    def stream(self, items: list, batch_size: int | None = None) -> ImageStream:
        """Batches ``(x, names)`` preprocessed exactly as the torch path does."""
        return ImageStream(items, self.config, self.sidecar["mean"], self.sidecar["std"], batch_size)

    def run_batch(self, x: torch.Tensor) -> ScoredBatch:
        """One preprocessed batch -> its :class:`ScoredBatch`: the graph's outputs, decided at
        the current threshold (``not (normalized_score <= threshold_)``, the graph's own
        ``is_anomalous`` while the threshold is the exported one)."""
        final, norm, _, maps, base, struct, hybrid, phi = self.runtime.run(
            np.ascontiguousarray(x.numpy(), dtype=np.float32))
        f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
        maps = torch.from_numpy(np.asarray(maps, dtype=np.float32))
        means, blur = map_means(maps), blurriness(x)
        whole, focus = (f.numpy() for f in self.calibration_.check_flags(means, blur))
        scores = ImageScores(f64(final), f64(base), f64(struct), f64(hybrid), f64(norm), means.numpy(),
                             blur.numpy(), whole, focus, decide(f64(norm), whole | focus, self.threshold_))
        return ScoredBatch(scores, maps, f64(phi))

    def predict(self, images: Any, batch_size: int | None = None) -> list[Prediction]:
        """Score images as :meth:`Detector.predict <patchbank.detector.Detector.predict>` does."""
        check_batch_size(batch_size)
        items = as_items(images)

        def handle(x, names, clock):
            batch = self.run_batch(x)
            clock.lap("search")
            preds = batch.predictions(names)
            clock.lap("post")
            return preds

        stream = self.stream(items, batch_size)
        out, self.last_timings_ = predict_batches(stream, len(items), self.progress, PREDICT_STEPS, handle)
        preds = set_windows(out, stream.windows)
        self.train_shape_.warn([p.image_size for p in preds])
        return preds
