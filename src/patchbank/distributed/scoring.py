"""Distributed batch scoring: a Ray Data pipeline whose actors hold the model.

The pipeline (:func:`predict`):

1. the driver lists the inputs (:func:`~patchbank.distributed.inputs.read_inputs`) and reads the
   model file once; the file's bytes go to Ray's object store, so workers need no shared copy of
   the model (they do need to read the images at the paths given);
2. Ray tasks (:func:`decode_batch`, see :data:`DECODE_CPUS`) read, resize and centre-crop each
   image with the local path's own preprocessing (:func:`patchbank.io.images.read_input`), so
   only the model-sized views travel to the actors;
3. a pool of ``actors`` :class:`ScoringActor` s (one model load each, ``threads`` torch threads,
   one GPU each with ``device="cuda"``) calls the model's own ``predict_views`` on each batch of
   views -- normalisation, backbone, (routing,) scoring: the local inference path unchanged, so a
   score equals the local ``predict``'s bit for bit at the same thread count (``docs/scaling.md``
   says what was checked);
4. the driver collects one record per image, checks every image came back exactly once, and
   writes the local ``predict``'s columns (:mod:`~patchbank.distributed.outputs`).

An actor that dies is restarted and its unfinished batches are given to a live actor, at most
:data:`~patchbank.distributed.engine.ACTOR_RETRIES` times each (Ray's ``max_restarts`` / ``max_task_retries``; Ray Data's
default, -1, would retry a crash that happens on every batch forever); the output holds each
image once whatever happened, and a run whose actors keep dying fails with one line.  With ``heatmaps`` each actor writes the overlay PNGs itself (the folder
must be on storage every worker reaches), coloured on the model's fixed range
(``Detector.heatmap_range``), as the local ``predict`` and the service colour them, into the
run's staging folder; the driver moves them into ``heatmaps/`` when the run has succeeded
(:class:`~patchbank.distributed.outputs.ResultFiles`).
"""
from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from patchbank.errors import PatchbankError

DECODE_CPUS = 0
"""CPUs Ray reserves per decoding task: none.  Decoding is a few ms per image against the
backbone's tens, so the decoding tasks share the actors' cores (see :func:`decode_tasks`)
instead of holding cores of their own that would sit idle most of the time."""


def decode_tasks(actors: int, threads: int, device: str) -> int:
    """Decoding tasks that run at once by default: one per actor on the CPU (the backbone keeps
    the actor's cores busy), two per actor thread on a GPU (the actor's cores mostly wait for
    the GPU, and one task decodes far more slowly than a GPU scores; docs/scaling.md has the
    measurement)."""
    return actors * (2 * threads if device.startswith("cuda") else 1)


def decode_batch(batch: dict[str, np.ndarray], config: Any) -> dict[str, Any]:
    """Ray Data UDF: add columns ``image``, ``height`` and ``width`` for column ``path``: each
    image read, resized and centre-cropped to the model's input
    (:func:`patchbank.io.images.read_input`, the local path's own preprocessing; uint8 HxWx3 at
    ``config.network_size``), and the original image's size."""
    from patchbank.io.images import read_input

    views = [read_input(str(p), config) for p in batch["path"]]
    return {**batch, "image": [v for v, _ in views], "height": [w.original[0] for _, w in views],
            "width": [w.original[1] for _, w in views]}


def load_model_bytes(data: bytes, device: str, weights: str | None = None, source: str | None = None) -> Any:
    """A Detector or MultiDetector from a model file's bytes (written to a private temp file),
    with the backbone ``weights`` file if given (see ``Detector.load``).  An error names
    ``source`` (the user's model file) where it would name the private copy."""
    from patchbank.multi import load_any

    fd, name = tempfile.mkstemp(suffix=".patchbank")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return load_any(name, device=device, progress=False, weights=weights)
    except PatchbankError as exc:
        if source is None:
            raise
        raise PatchbankError(str(exc).replace(name, source)) from None
    finally:
        os.unlink(name)


class ScoringActor:
    """Ray Data actor UDF: holds one loaded model; scores batches of decoded images into records.

    Args:
        model_bytes: the model file's content, or an object-store reference to it.
        device: torch device of the model ("cpu", "cuda").
        threads: torch / FAISS / BLAS threads of this actor.
        category: a multi-category model's category (skips routing); None routes.
        heatmaps: write each image's overlay to the path in its ``heatmap`` column.
        weights: the backbone weights file of a model fitted with its own (a path every worker
            reads); None: the packaged weights.
        source: the model file's path, for error messages (the actor loads a private copy).
    """

    def __init__(self, model_bytes: bytes, device: str, threads: int, category: str | None,
                 heatmaps: bool, weights: str | None = None, source: str | None = None):
        from patchbank.multi import MultiDetector
        from patchbank.runtime.threads import set_threads

        set_threads(threads)
        if not isinstance(model_bytes, bytes):   # an object-store reference
            import ray

            model_bytes = ray.get(model_bytes)
        self.model = load_model_bytes(model_bytes, device, weights, source)
        self.multi = isinstance(self.model, MultiDetector)
        self.category, self.heatmaps = category, heatmaps

    def _detector(self, prediction: Any) -> Any:
        return self.model.detectors_[prediction.category] if self.multi else self.model

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from patchbank.io.output_files import commit_file
        from patchbank.io.prediction_files import overlay_writer, prediction_record

        images = list(batch["image"])
        kwargs = {"category": self.category} if self.multi else {}
        preds = self.model.predict_views(images, batch_size=len(images), **kwargs)
        heat = list(batch["heatmap"]) if self.heatmaps else [None] * len(images)
        records = []
        for path, pred, target, h, w in zip(batch["path"], preds, heat, batch["height"], batch["width"]):
            det = self._detector(pred)
            rec = prediction_record(path, pred, det.threshold_,
                                    other_shape=det.train_shape_.is_other((int(h), int(w))),
                                    routed=(self.category is None) if self.multi else None,
                                    heatmap=target)
            if target is not None:
                lo, hi = det.heatmap_range()
                commit_file(target, overlay_writer(path, pred.anomaly_map, det.config, lo, hi))
                rec.update({HEATMAP_RANGE[0]: lo, HEATMAP_RANGE[1]: hi})   # the driver's note, not a column
            records.append(rec)
        return {"index": batch["index"], **{k: [r[k] for r in records] for k in records[0]}}


BLOCK_ROWS = 64
"""Input rows a Ray Data block aims at (see :func:`_rows_per_block`)."""


def _rows_per_block(n: int, batch_size: int, actors: int) -> int:
    """Input rows per Ray Data block, a multiple of ``batch_size`` (so the actors' batches are
    the local path's): about :data:`BLOCK_ROWS`, so that Ray's per-task costs (the driver's
    scheduling, the object transfers, Ray Data's bookkeeping) are shared by many images, but
    small enough that every actor gets several blocks, and never more than ~2,000 blocks."""
    per = max(batch_size, min(BLOCK_ROWS, math.ceil(n / (4 * actors))), math.ceil(n / 2000))
    return batch_size * math.ceil(per / batch_size)


def _resources(ray: Any, actors: int, threads: int, device: str) -> dict[str, Any]:
    """Ray resources and retry limits per actor; a one-line error when the cluster cannot
    hold the pool."""
    from patchbank.distributed.engine import cluster_cpus

    cpus = cluster_cpus(ray)
    if actors * threads > cpus:
        raise PatchbankError(f"{actors} actor(s) x {threads} thread(s) need {actors * threads} CPUs; "
                             f"the Ray cluster has {cpus:g} (fewer --actors or --threads)")
    if device.startswith("cuda"):
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        if gpus < actors:
            raise PatchbankError(f"--device {device}: {actors} actor(s) need one GPU each; the Ray "
                                 f"cluster has {gpus:g}")
        return {"num_cpus": threads, "num_gpus": 1, **_retries()}
    return {"num_cpus": threads, **_retries()}


def _retries() -> dict[str, int]:
    from patchbank.distributed.engine import ACTOR_RETRIES

    return {"max_restarts": ACTOR_RETRIES, "max_task_retries": ACTOR_RETRIES}


def _model_summary(model: Path, category: str | None,
                   weights: str | None) -> tuple[dict[str, Any], Any, Any]:
    """(the JSON fields the local predict writes about the model, its Config, the training
    images' shapes by category (``None`` for a single-category model) from the header: checked
    when the actors load the model); a given backbone ``weights`` file is checked against the
    model's here, once, not in every actor."""
    from patchbank.config import Config
    from patchbank.detector import check_header_weights
    from patchbank.io.model_file import read_header
    from patchbank.io.train_shape import TrainShape

    meta = read_header(model)
    check_header_weights(meta, weights, str(model))
    config = Config.from_dict(meta["config"])
    if meta.get("kind") != "multi":
        if category is not None:
            raise PatchbankError(f"--category needs a multi-category model; {model} has one category")
        return {"model": str(model), "threshold": float(meta["threshold"]),
                "threshold_applies_to": "normalized_score", "map_threshold": meta.get("map_threshold"),
                "blur_threshold": meta.get("blur_threshold")}, config, {None: TrainShape.from_header(meta)}
    names = list(meta["category_order"])
    if category is not None and category not in names:
        raise PatchbankError(f"unknown category {category!r}; this model has {', '.join(names)}")
    shapes = {name: TrainShape.from_header(meta["categories"][name]) for name in names}
    return {"model": str(model), "threshold": None, "threshold_applies_to": "normalized_score",
            "map_threshold": None, "blur_threshold": None, "categories": names, "routing": "given" if category else "routed"}, config, shapes


# One Ray Data pipeline (decode, score, collect, write), read top to bottom; its steps are the
# long: helpers around it, and splitting the pipeline would scatter its one session and result files.
def predict(model: str | os.PathLike, inputs: Sequence[str] | str, out_dir: str | os.PathLike, *,
            actors: int = 1, batch_size: int | None = None, threads: int = 1,
            category: str | None = None, heatmaps: bool = False, device: str = "cpu",
            address: str | None = None, overwrite: bool = False, path_column: str = "path",
            progress: bool = False, actor_class: type = ScoringActor,
            decoders: int | None = None, weights: str | None = None) -> dict[str, Any]:
    """Score every image ``inputs`` name with ``model`` on Ray (see the module docstring) and write
    ``out_dir/predictions.parquet``, ``.csv``, ``.json`` (and ``heatmaps/`` with ``heatmaps``).

    Returns the JSON dict written (records under ``predictions``, in input order).  ``actors``
    actors of ``threads`` threads each; ``batch_size`` images per model call (default: the
    model's); ``address`` None starts a local Ray unless one is running, ``"auto"`` or
    ``HOST:PORT`` joins a cluster.  ``actor_class`` is :class:`ScoringActor` or a subclass.
    ``decoders``: decoding tasks at once (default :func:`decode_tasks`).  ``weights``: the
    backbone weights file of a model fitted with its own, at a path every worker reads.

    Raises:
        PatchbankError: a bad input, model or option, an existing output without
            ``overwrite``, an image that cannot be decoded, a cluster too small for the pool.
    """
    from patchbank.distributed.engine import ray_session, reraise
    from patchbank.distributed.inputs import read_inputs, source_files
    from patchbank.distributed.outputs import ResultFiles
    from patchbank.io.prediction_files import HEATMAP_FOLDER, heatmap_names, heatmap_note, model_files

    decoders = decode_tasks(actors, threads, device) if decoders is None else decoders
    _check_counts(actors=actors, threads=threads, batch_size=batch_size or 1, decoders=decoders)
    model = Path(model)
    summary, config, shapes = _model_summary(model, category, weights)
    batch_size = batch_size or config.batch_size
    paths = read_inputs(inputs, path_column, out_dir)
    heat_paths = ([Path(out_dir) / HEATMAP_FOLDER / n for n in heatmap_names(paths)] if heatmaps else [])
    t0 = time.perf_counter()
    reads = [*paths, *source_files(inputs), *model_files(model, weights)]
    with ResultFiles(out_dir, heat_paths, overwrite=overwrite, inputs=reads) as files, \
            ray_session(address) as ray, reraise():
        resources = _resources(ray, actors, threads, device)
        staged = files.staged()
        rows = [{"index": i, "path": str(p), **({"heatmap": str(staged[i])} if heatmaps else {})}
                for i, p in enumerate(paths)]
        _quiet_ray_data(ray, progress)
        ds = ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / _rows_per_block(len(rows), batch_size, actors)))
        ds = ds.map_batches(decode_batch, fn_kwargs={"config": config},
                            batch_size=batch_size, num_cpus=DECODE_CPUS,
                            compute=ray.data.TaskPoolStrategy(size=decoders))
        with _retry_limits_accepted():
            ds = ds.map_batches(actor_class, batch_size=batch_size, batch_format="numpy",
                                compute=ray.data.ActorPoolStrategy(size=actors),
                                fn_constructor_kwargs={"model_bytes": ray.put(model.read_bytes()),
                                                       "device": device, "threads": threads,
                                                       "category": category, "heatmaps": heatmaps,
                                                       "weights": weights, "source": str(model)},
                                **resources)
        batches = ({k: v.tolist() for k, v in b.items()}
                   for b in ds.iter_batches(batch_size=None, batch_format="numpy"))
        records = files.collect(batches, len(paths))
        ranges = _final_heatmaps(records, heat_paths)
        summary.update({"n_images": len(records), "n_flagged": sum(r["is_anomalous"] for r in records),
                        "heatmaps": heatmap_note(heat_paths[0].parent, ranges) if heatmaps else None,
                        "engine": {"name": "ray", "actors": actors, "threads_per_actor": threads,
                                   "batch_size": batch_size, "device": device, "decoders": decoders,
                                   "seconds": time.perf_counter() - t0}})
        files.write(records, summary)
    _warn_other_shapes(paths, records, shapes)
    return {**summary, "predictions": records}


def _warn_other_shapes(paths: list, records: list[dict], shapes: dict) -> None:
    """The local predict's warning about images unlike the training images in shape or size
    (``shapes``: :class:`~patchbank.io.train_shape.TrainShape` by category from the model header,
    checked by then: the actors loaded the model), counted from the actors' per-image
    ``other_shape``; the driver reads the header of the first such image only (``records`` are in
    the order of ``paths``)."""
    from patchbank.io.aspect import image_hw

    odd = [i for i, r in enumerate(records) if r["other_shape"]]
    if odd:
        shape = shapes[records[odd[0]].get("category")]
        warnings.warn(shape.describe(len(odd), len(records), image_hw(paths[odd[0]])),
                      UserWarning, stacklevel=2)


def _check_counts(**counts: Any) -> None:
    """Each of ``counts`` must be an integer >= 1 (a one-line error naming the first that is not)."""
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PatchbankError(f"{name} must be an integer >= 1, got {value!r}")


HEATMAP_RANGE = ("heatmap_vmin", "heatmap_vmax")
"""The keys under which an actor hands back each heatmap's colour range (not table columns)."""


def _final_heatmaps(records: list[dict[str, Any]], heat_paths: list[Path]) -> dict[str | None, tuple[float, float]]:
    """Give each record its heatmap's final path (the actors wrote it in staging) and take out
    the colour ranges the actors used: category (None for a single-category model) -> (vmin,
    vmax), for the JSON's heatmap note as the local ``predict`` writes it."""
    ranges: dict[str | None, tuple[float, float]] = {}
    for rec, path in zip(records, heat_paths):
        ranges[rec.get("category")] = (rec.pop(HEATMAP_RANGE[0]), rec.pop(HEATMAP_RANGE[1]))
        rec["heatmap"] = str(path)
    return ranges


def _quiet_ray_data(ray: Any, progress: bool) -> None:
    """Ray Data's progress bars only with ``progress`` (and without them, not its warning that
    they are off); its INFO log lines never on the console, nor its two ERROR lines about a
    failed task (the run's own error says what failed, in one line, or raises what it was)."""
    import logging

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.WARNING if progress else logging.ERROR)
    for name in TASK_FAILURE_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)


#: Ray Data's loggers that repeat a failed task's error (with a pointer to its log file) before
#: the run ends with that error.
TASK_FAILURE_LOGGERS = ("ray.data._internal.execution.streaming_executor_state", "ray.data.exceptions")


@contextlib.contextmanager
def _retry_limits_accepted() -> Iterator[None]:
    """A context in which Ray Data's deprecation warning for ``ray_remote_args`` is not shown:
    Ray 2.60 has no named parameter for an actor pool's ``max_restarts`` /
    ``max_task_retries``, and the retry limits are deliberate (see the module docstring)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated")
        yield
