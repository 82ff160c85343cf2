"""Benchmark evaluation: fit per category and seed, score the test split, aggregate the metrics.

For each category and seed: fit a :class:`~patchbank.detector.Detector` on the training images
(``Config.seed`` = the seed), predict the test images, compute the image metrics (AUROC, AP,
F1-max) and the pixel metrics (AUROC, AP, F1-max, AUPRO; masks resized and cropped like the
images with :func:`~patchbank.io.images.crop_mask` to ``config.input_size``, good images count with
all-zero masks; :func:`~patchbank.evaluation.scoring.score_category`), plus the bank size in MB, the fit time in seconds (backbone loading excluded) and
the test time in ms per image (reading included).

Outputs in ``out_dir``:

* ``runs/<category>__seed<seed>.json``: one run (config, command, data fingerprint, metrics,
  and under ``images`` one record per test image: path, label, score, normalised score,
  decision, the run's threshold and the defect type -- what ``patchbank report`` draws its
  curves from; run files written before ``images`` existed load and resume without it).
  This is the resume unit (:class:`~patchbank.evaluation.run_store.RunStore`): with
  ``resume=True`` a run whose file exists with the same config AND the same data fingerprint
  (:func:`~patchbank.evaluation.run_store.data_fingerprint`: file list, sizes, mtimes, labels)
  is loaded, not recomputed.  One line on stderr says how many runs are reused and from where
  (``reusing N stored runs from DIR``), and one line per run recomputed because its data changed
  or its file has no fingerprint, or its device or backbone weights differ or are not recorded
  (older run files are never trusted): both even without
  ``progress``.  Files are written atomically.
* ``results.csv``: one row per category x seed.
* ``summary.csv`` / ``summary.json``: mean and std over seeds per category, and a ``mean`` row.
  Std is the population std (numpy's default, ddof=0).  The ``mean`` row's mean is the mean over
  categories of the per-category means; its std is the std over seeds of the per-seed mean over
  categories.
* ``summary.md``: a Markdown table of ``mean ± std`` cells with the ``mean`` row last.
* ``by_type.csv``: image AUROC / AP / F1-max per category and defect type (that type's images
  against the good ones), mean and std over seeds (:mod:`patchbank.evaluation.by_type`).

The output folder is checked before the first fit (not a file, writable,
:data:`~patchbank.io.output_files.MIN_FREE_BYTES` free).

Metrics that cannot be computed (pixel metrics of a category without masks) are ``None`` in
JSON, empty in CSV and ``–`` in Markdown, and are left out of the means.  The tables are
written by :mod:`patchbank.evaluation.reports`.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from patchbank import __version__
from patchbank.config import DEFAULT_PRESET, Config
from patchbank.errors import PatchbankError
from patchbank.evaluation.inputs import (load_categories, out_folder, preset_config, say, seed_list,
                                         source_text)
from patchbank.evaluation.reports import (LABELS, METRICS, SUMMARY_TABLES, markdown_table,  # noqa: F401
                                          summarize, write_comparison, write_outputs)
from patchbank.evaluation.run_store import RUN_FORMAT, STORED_RUN_PROBLEMS, RunStore, data_fingerprint
from patchbank.evaluation.scoring import check_test_set, score_category
from patchbank.io.datasets import Category
from patchbank.io.output_files import MIN_FREE_BYTES, check_output_folder, file_lock, remove_previous

__all__ = ["LABELS", "METRICS", "RUN_FORMAT", "evaluate", "evaluate_category", "image_records",
           "markdown_table", "run_category", "summarize", "write_comparison", "write_outputs"]


# ------------------------------------------------------------------------------------------------
# one run
# ------------------------------------------------------------------------------------------------

class BackboneCache:
    """Reuse a loaded backbone across runs that share backbone, weights, layers and device."""

    def __init__(self):
        self.key, self.backbone = None, None

    def detector(self, config: Config, device: str, progress: bool):
        """A new detector for ``config``, sharing the cached backbone when it fits."""
        from patchbank.detector import Detector

        key = (config.backbone, config.weights, config.layers, str(device))
        det = Detector(config, device=device, progress=progress,
                       backbone=self.backbone if key == self.key else None)
        self.key, self.backbone = key, det.backbone  # loads it when not shared
        return det

    def weights_sha256(self, config: Config, device: str) -> str | None:
        """The sha256 of the weights ``config``'s backbone loads (None: random), loading and
        caching the backbone: a stored run of other weights (the file rewritten) is not reused."""
        return self.detector(config, device, progress=False).backbone.weights_sha256


def run_category(category: Category, config: Config, *, device: str = "cpu", progress: bool = True,
                 backbones: BackboneCache | None = None) -> dict[str, Any]:
    """Fit on ``category.train``, score ``category.test``; returns ``{"metrics", "images"}``.

    ``metrics``: keys :data:`METRICS` (floats; pixel metrics None without masks).  ``good_fpr`` /
    ``defect_tpr``: the share of good / defective test images flagged anomalous at the calibrated
    threshold (the decision a line sees; compare ``good_fpr`` with ``config.target_fpr``).
    ``fit_s`` excludes loading the backbone; ``ms_per_img`` includes reading the test images.

    ``input``: the resize and crop the fit read the images with (``aspect="auto"`` resolves
    them from the training images) and the training images' shared H / W (None: none, or the
    aspect is fixed).

    ``images``: one record per test image, in ``category.test`` order: ``path`` (as the category
    gives it), ``label`` (0 good, 1 defective), ``score`` (raw, the one the image metrics rank),
    ``normalized_score``, ``is_anomalous`` (the decision: normalised score above the threshold,
    or a flag of the whole-image or focus check), ``whole_image_anomalous`` (that flag: the map's mean above
    its threshold, ``Config.whole_image_check``), ``out_of_focus`` (the focus check's flag:
    blurrier than every training image, ``Config.focus_check``) and ``threshold`` (the run's, on the normalised
    score).
    """
    check_test_set(category)    # before the (long) fit
    det = (backbones or BackboneCache()).detector(config, device, progress)
    t0 = time.perf_counter()
    det.fit([str(p) for p in category.train])
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    preds = det.predict([str(p) for p in category.test])
    pred_s = time.perf_counter() - t0

    metrics: dict[str, Any] = dict.fromkeys(METRICS)
    metrics.update(score_category(category, preds, det.config))   # the fitted input shape
    flagged = np.array([p.is_anomalous for p in preds], dtype=bool)
    labels = np.asarray(category.labels)
    metrics["good_fpr"] = flagged[labels == 0].mean()
    metrics["defect_tpr"] = flagged[labels == 1].mean()
    metrics["bank_mb"] = det.info()["bank_bytes"] / 1e6
    metrics["fit_s"] = fit_s
    metrics["ms_per_img"] = 1000.0 * pred_s / max(1, len(category.test))
    return {"metrics": {k: (None if metrics[k] is None else float(metrics[k])) for k in METRICS},
            "backbone_sha256": det.backbone_sha256_,
            "images": image_records(category, preds, float(det.threshold_)),
            "input": {"image_size": list(det.config.image_size),
                      "crop_size": None if det.config.crop_size is None else list(det.config.crop_size),
                      **det.train_shape_.header()}}


def image_records(category: Category, predictions: Sequence[Any], threshold: float) -> list[dict[str, Any]]:
    """One JSON record per test image (see :func:`run_category`), in ``category.test`` order;
    with ``defect_type`` (``good`` for good images) where the category knows the types."""
    types = category.defect_types if len(category.defect_types) == len(category.test) else None
    return [{"path": str(path), "label": int(label), "score": float(p.score),
             "normalized_score": float(p.normalized_score), "is_anomalous": bool(p.is_anomalous),
             "whole_image_anomalous": bool(p.whole_image_anomalous), "out_of_focus": bool(p.out_of_focus),
             "threshold": threshold, **({} if types is None else {"defect_type": str(types[i])})}
            for i, (path, label, p) in enumerate(zip(category.test, category.labels, predictions))]


def evaluate_category(category: Category, config: Config, *, device: str = "cpu",
                      progress: bool = True, backbones: BackboneCache | None = None) -> dict[str, Any]:
    """The metrics dict of one run: :func:`run_category`'s ``metrics``."""
    return run_category(category, config, device=device, progress=progress, backbones=backbones)["metrics"]


# ------------------------------------------------------------------------------------------------
# the benchmark
# ------------------------------------------------------------------------------------------------

def _run_record(cat: Category, seed: int, config: Config, result: dict[str, Any],
                context: dict[str, Any]) -> dict[str, Any]:
    """The JSON record of one run (keys in the order of format 1, then ``images``);
    ``result`` is :func:`run_category`'s."""
    return {
        "format": RUN_FORMAT, "category": cat.name, "seed": seed,
        "dataset_root": context["dataset_root"], "preset": context["preset"],
        "overrides": context["overrides"], "config": config.to_dict(), "command": context["command"],
        "patchbank_version": __version__, "device": context["device"],
        "n_train": len(cat.train), "n_test": len(cat.test), "n_defective": cat.n_defective,
        "data_fingerprint": context["fingerprints"][cat.name],
        "backbone_sha256": result.get("backbone_sha256"),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "metrics": result["metrics"],
        "input": result["input"], "images": result["images"],
    }


def _with_defect_types(run: dict[str, Any], cat: Category) -> dict[str, Any]:
    """A stored run whose image records predate ``defect_type``, with each record's type read
    from ``cat`` (the same data: the fingerprint matched) when the records' paths are the
    category's test images in order; the stored file is not changed."""
    images = run.get("images")
    if (not images or all("defect_type" in r for r in images)
            or len(cat.defect_types) != len(cat.test) or len(images) != len(cat.test)
            or any(r.get("path") != str(p) for r, p in zip(images, cat.test))):
        return run
    return {**run, "images": [{**r, "defect_type": str(t)} for r, t in zip(images, cat.defect_types)]}


def run_expectations(store: RunStore, category: str, seed: int, config: Config, device: str,
                     resume: bool, backbones: BackboneCache) -> dict[str, Any]:
    """What a stored run of ``category`` x ``seed`` must record to be reused
    (:meth:`RunStore.lookup`'s ``expect``): the device, and, when ``resume`` and a run file is
    there to compare, the sha256 of the weights ``config``'s backbone loads (read only then: it
    loads the backbone)."""
    expect = {"device": str(device)}
    if resume and store.path(category, seed).exists():
        expect["backbone_sha256"] = backbones.weights_sha256(config, device)
    return expect


def _stored_runs(cats: Sequence[Category], seeds: Sequence[int], configs: dict[int, Config],
                 store: RunStore, resume: bool, fingerprints: dict[str, Any], device: str,
                 backbones: BackboneCache) -> dict[tuple[str, int], Any]:
    """The reusable stored run per (category, seed) (None where it must be computed): the same
    config, data, device and backbone weights (whose sha256 is read only when a run file is
    there to compare).  Prints ``reusing N stored runs from DIR`` and each run recomputed
    because of its data, device or weights on stderr."""
    stored: dict[tuple[str, int], Any] = {}
    for cat in cats:
        for seed in seeds:
            expect = run_expectations(store, cat.name, seed, configs[seed], device, resume, backbones)
            run, why = (store.lookup(cat.name, seed, configs[seed], "metrics", fingerprints[cat.name], expect)
                        if resume else (None, "no resume"))
            stored[cat.name, seed] = run
            if why in STORED_RUN_PROBLEMS:
                print(f"{cat.name} seed {seed}: stored run {store.path(cat.name, seed)} "
                      f"{STORED_RUN_PROBLEMS[why]}; recomputing", file=sys.stderr, flush=True)
    n = sum(run is not None for run in stored.values())
    if n:
        print(f"reusing {n} stored run{'s' if n != 1 else ''} from {store.folder}", file=sys.stderr, flush=True)
    return stored


def _one_run(cat: Category, seed: int, config: Config, store: RunStore, stored: dict[str, Any] | None, *,
             device: str, progress: bool, backbones: BackboneCache, context: dict[str, Any],
             computed: Iterator[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``stored`` (the reusable stored run of ``cat`` x ``seed``) if any, else a new run, saved
    (the next of ``computed``, the ``map_runs`` results, when given)."""
    if stored is not None:
        say(progress, f"{cat.name} seed {seed}: loaded {store.path(cat.name, seed)}")
        return _with_defect_types(stored, cat)
    say(progress, f"{cat.name} seed {seed}: fit on {len(cat.train)} images, test on {len(cat.test)}")
    try:
        result = (next(computed) if computed is not None else
                  run_category(cat, config, device=device, progress=progress, backbones=backbones))
    except PatchbankError as exc:
        msg = str(exc)
        raise PatchbankError(msg if cat.name in msg else f"category {cat.name!r}: {msg}") from None
    run = _run_record(cat, seed, config, result, context)
    store.save(cat.name, seed, run)
    return run


def categories_to_score(root: Any, categories: str | Iterable[str] | None = None,
                        kind: str = "auto") -> list[Category]:
    """The categories an evaluation of ``root`` scores (:func:`~patchbank.evaluation.inputs.load_categories`;
    ``categories`` a list or a comma-separated string), every one's test set checked
    (:func:`~patchbank.evaluation.scoring.check_test_set`): what :func:`evaluate` and the studies
    built on it run before they create a folder or fit anything."""
    if isinstance(categories, str):
        categories = [c for c in categories.split(",") if c.strip()]
    if categories is not None:
        categories = list(categories)
        repeated = sorted({c for i, c in enumerate(categories) if c in categories[:i]})
        if repeated:
            raise PatchbankError(f"categories named twice: {', '.join(repeated)}")
    cats = load_categories(root, categories, kind)
    for cat in cats:            # every category's test set before the first fit, not before its own
        check_test_set(cat)
    return cats


def evaluate(root: str | os.PathLike | Category | Sequence[Category], preset: str = DEFAULT_PRESET,
             overrides: dict[str, Any] | None = None, categories: Iterable[str] | None = None,
             seeds: Sequence[int] = (0,), out_dir: str | os.PathLike = "results", resume: bool = True,
             progress: bool = True, *, kind: str = "auto", device: str = "cpu",
             command: str | None = None, map_runs: Callable[[list[tuple[Category, Config]]],
                                                            Iterable[dict[str, Any]]] | None = None
             ) -> dict[str, Any]:
    """Evaluate ``preset`` (+ ``overrides``) on a dataset; see the module docstring.

    ``map_runs`` computes the runs that are not reused elsewhere (e.g. as Ray tasks,
    :func:`patchbank.distributed.run_map`): it gets ``[(category, config), ...]`` in run order
    and yields :func:`run_category`'s result for each, in that order; each is stored as it arrives.

    ``root`` is a dataset folder (read with :func:`~patchbank.io.datasets.read_dataset`, layout
    ``kind``) or :class:`~patchbank.io.datasets.Category` records (e.g. from ``read_generic``);
    categories are chosen by :func:`~patchbank.evaluation.inputs.load_categories`.

    Returns ``{"runs": [run dicts], "summary": summary dict, "markdown": str, "files": {...}}``.
    """
    overrides = dict(overrides or {})
    seeds = seed_list(seeds)
    configs = {s: preset_config(preset, {**overrides, "seed": s}) for s in seeds}
    cats = categories_to_score(root, categories, kind)
    check_output_folder(out_dir, need_bytes=MIN_FREE_BYTES)
    out = out_folder(out_dir, "runs")
    if command is None:
        command = (f"patchbank.evaluation.runner.evaluate({source_text(root)!r}, preset={preset!r}, "
                   f"overrides={overrides!r}, categories={categories!r}, seeds={tuple(seeds)!r}, "
                   f"out_dir={str(out)!r}, resume={resume!r}, kind={kind!r})")
    fingerprints = {cat.name: data_fingerprint(cat) for cat in cats}
    context = {"dataset_root": source_text(root), "preset": preset, "command": command,
               "device": str(device), "fingerprints": fingerprints,
               "overrides": {k: (list(v) if isinstance(v, tuple) else v) for k, v in overrides.items()}}
    store, backbones = RunStore(out / "runs"), BackboneCache()
    # one evaluation writes a folder at a time: a second one waits (or gives up, one line), then
    # resumes from what the first stored (two at once replaced each other's runs and tables)
    with file_lock(out, what=f"the evaluation in {out}"):
        stored = _stored_runs(cats, seeds, configs, store, resume, fingerprints, device, backbones)
        todo = [(cat, configs[seed]) for cat in cats for seed in seeds if stored[cat.name, seed] is None]
        if todo:   # the old tables stop describing the runs once one is recomputed: a run that
            remove_previous([out / name for name in SUMMARY_TABLES])   # fails or is stopped leaves none
        computed = iter(map_runs(todo)) if map_runs is not None else None
        runs = [_one_run(cat, seed, configs[seed], store, stored[cat.name, seed], device=device,
                         progress=progress, backbones=backbones, context=context, computed=computed)
                for cat in cats for seed in seeds]

        summary = summarize(runs, [c.name for c in cats], seeds)
        summary.update({"preset": preset, "overrides": runs[0]["overrides"] if runs else {},
                        "config": configs[seeds[0]].to_dict(), "command": command,
                        "dataset_root": source_text(root)})
        files = write_outputs(out, runs, summary)
    markdown = files.pop("_markdown")
    return {"runs": runs, "summary": summary, "markdown": markdown, "files": files}
