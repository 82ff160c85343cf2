"""Benchmark evaluation: fit per category and seed, score the test split, aggregate the metrics.

For each category and seed: fit a :class:`~patchbank.detector.Detector` on the training images
(``Config.seed`` = the seed), predict the test images, compute the image metrics (AUROC, AP,
F1-max) and the pixel metrics (AUROC, AP, F1-max, AUPRO; masks resized and cropped like the
images with :func:`~patchbank.io.images.crop_mask` to ``config.input_size``, good images count with
all-zero masks), plus the bank size in MB, the fit time in seconds (backbone loading excluded) and
the test time in ms per image (reading included).

Outputs in ``out_dir``:

* ``runs/<category>__seed<seed>.json``: one run (config, command, metrics).  This is the resume
  unit: with ``resume=True`` a run whose file exists with the same config is loaded, not
  recomputed.  Files are written atomically.
* ``results.csv``: one row per category x seed.
* ``summary.csv`` / ``summary.json``: mean and std over seeds per category, and a ``mean`` row.
  Std is the population std (numpy's default, ddof=0).  The ``mean`` row's mean is the mean over
  categories of the per-category means; its std is the std over seeds of the per-seed mean over
  categories.
* ``summary.md``: a Markdown table of ``mean ± std`` cells with the ``mean`` row last.

Metrics that cannot be computed (pixel metrics of a category without masks) are ``None`` in
JSON, empty in CSV and ``–`` in Markdown, and are left out of the means.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from patchbank import __version__
from patchbank.config import Config
from patchbank.io.datasets import Category, load_mask, read_dataset
from patchbank.errors import PatchbankError

METRICS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max",
           "aupro", "bank_mb", "fit_s", "ms_per_img")
LABELS = {"image_auroc": "image AUROC", "image_ap": "image AP", "image_f1_max": "image F1-max",
          "pixel_auroc": "pixel AUROC", "pixel_ap": "pixel AP", "pixel_f1_max": "pixel F1-max",
          "aupro": "AUPRO", "bank_mb": "bank MB", "fit_s": "fit s", "ms_per_img": "ms/img"}
_DECIMALS = {"bank_mb": 2, "fit_s": 2, "ms_per_img": 1}
RUN_FORMAT = 1


def _run_name(category: str, seed: int) -> str:
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', category)}__seed{seed}.json"


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def _load_run(path: Path, config: Config) -> dict | None:
    """The stored run if it is complete and was made with ``config``; else None."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("config") != config.to_dict() \
            or not isinstance(data.get("metrics"), dict):
        return None
    return data


# ------------------------------------------------------------------------------------------------
# one run
# ------------------------------------------------------------------------------------------------

class _BackboneCache:
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


def _check_mask_sizes(category: Category) -> None:
    """Every mask has its image's size (headers only; no pixels are decoded)."""
    from PIL import Image

    for img, mask in zip(category.test, category.masks):
        if mask is None:
            continue
        sizes = []
        for p in (mask, img):
            try:
                with Image.open(p) as im:
                    sizes.append(im.size)
            except FileNotFoundError:
                raise PatchbankError(f"file not found: {p}") from None
            except (OSError, ValueError) as exc:
                raise PatchbankError(f"cannot read {p}: {exc}") from None
        if sizes[0] != sizes[1]:
            (mw, mh), (iw, ih) = sizes
            raise PatchbankError(f"mask {mask} is {mw}x{mh} (WxH) but its image {img} is {iw}x{ih}")


def evaluate_category(category: Category, config: Config, *, device: str = "cpu",
                      progress: bool = True, backbones: _BackboneCache | None = None) -> dict[str, Any]:
    """Fit on ``category.train``, score ``category.test``; returns the metrics dict of one run."""
    from patchbank.detector import Detector
    from patchbank.io.images import crop_mask
    from patchbank.evaluation.metrics import PixelMetrics, image_metrics

    if len(set(category.labels)) < 2:
        raise PatchbankError(f"category {category.name!r}: the test set needs both good and "
                             f"defective images to compute the metrics")
    _check_mask_sizes(category)  # before the (long) fit
    det = (backbones or _BackboneCache()).detector(config, device, progress)
    t0 = time.perf_counter()
    det.fit([str(p) for p in category.train])
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    preds = det.predict([str(p) for p in category.test])
    pred_s = time.perf_counter() - t0

    metrics: dict[str, Any] = {k: None for k in METRICS}
    metrics.update(image_metrics(category.labels, [p.score for p in preds]))
    if category.has_masks:
        shape = tuple(config.input_size)
        with PixelMetrics() as pm:
            for img, mask_path, pred in zip(category.test, category.masks, preds):
                if mask_path is None:
                    mask = np.zeros(shape, dtype=bool)
                else:
                    mask = crop_mask(load_mask(mask_path, img), config)
                if mask.shape != pred.anomaly_map.shape:  # pragma: no cover - defensive
                    raise PatchbankError(f"mask {mask_path} maps to {mask.shape}, anomaly map is "
                                         f"{pred.anomaly_map.shape}")
                pm.update(pred.anomaly_map, mask)
            metrics.update(pm.compute())
    metrics["bank_mb"] = det.info()["bank_bytes"] / 1e6
    metrics["fit_s"] = fit_s
    metrics["ms_per_img"] = 1000.0 * pred_s / max(1, len(category.test))
    return {k: (None if metrics[k] is None else float(metrics[k])) for k in METRICS}


# ------------------------------------------------------------------------------------------------
# the benchmark
# ------------------------------------------------------------------------------------------------

def evaluate(root: str | os.PathLike | Category | Sequence[Category], preset: str = "lmf-core", overrides: dict[str, Any] | None = None,
             categories: Iterable[str] | None = None, seeds: Sequence[int] = (0,),
             out_dir: str | os.PathLike = "results", resume: bool = True, progress: bool = True, *,
             kind: str = "auto", device: str = "cpu", command: str | None = None) -> dict[str, Any]:
    """Evaluate ``preset`` (+ ``overrides``) on a dataset; see the module docstring.

    ``root`` is a dataset folder (read with :func:`~patchbank.io.datasets.read_dataset`, layout
    ``kind``) or :class:`~patchbank.io.datasets.Category` records (e.g. from ``read_generic``).

    Returns ``{"runs": [run dicts], "summary": summary dict, "markdown": str, "files": {...}}``.
    """
    overrides = dict(overrides or {})
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise PatchbankError("give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise PatchbankError(f"duplicate seeds in {seeds}")
    try:
        configs = {s: Config.preset(preset, **{**overrides, "seed": s}) for s in seeds}
    except ValueError as exc:
        raise PatchbankError(str(exc)) from None
    if isinstance(categories, str):
        categories = [c for c in categories.split(",") if c.strip()]
    if isinstance(root, Category) or (isinstance(root, (list, tuple)) and root
                                      and all(isinstance(c, Category) for c in root)):
        cats = [root] if isinstance(root, Category) else list(root)  # e.g. from read_generic
        if categories is not None:
            wanted = set(categories)
            cats = [c for c in cats if c.name in wanted]
        root = "<categories given directly>"
    else:
        cats = read_dataset(root, kind, categories)
    if not cats:
        raise PatchbankError("no categories selected")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PatchbankError(f"output path is not a folder: {out}")
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    if command is None:
        command = (f"patchbank.evaluation.runner.evaluate({str(root)!r}, preset={preset!r}, overrides={overrides!r}, "
                   f"categories={categories!r}, seeds={tuple(seeds)!r}, out_dir={str(out)!r}, "
                   f"resume={resume!r}, kind={kind!r})")

    backbones = _BackboneCache()
    runs = []
    for cat in cats:
        for seed in seeds:
            config = configs[seed]
            path = runs_dir / _run_name(cat.name, seed)
            run = _load_run(path, config) if resume else None
            if run is not None:
                _say(progress, f"{cat.name} seed {seed}: loaded {path}")
                runs.append(run)
                continue
            _say(progress, f"{cat.name} seed {seed}: fit on {len(cat.train)} images, "
                           f"test on {len(cat.test)}")
            try:
                metrics = evaluate_category(cat, config, device=device, progress=progress,
                                            backbones=backbones)
            except PatchbankError as exc:
                msg = str(exc)
                raise PatchbankError(msg if cat.name in msg else f"category {cat.name!r}: {msg}") from None
            run = {
                "format": RUN_FORMAT,
                "category": cat.name,
                "seed": seed,
                "dataset_root": str(root),
                "preset": preset,
                "overrides": {k: (list(v) if isinstance(v, tuple) else v) for k, v in overrides.items()},
                "config": config.to_dict(),
                "command": command,
                "patchbank_version": __version__,
                "device": str(device),
                "n_train": len(cat.train),
                "n_test": len(cat.test),
                "n_defective": cat.n_defective,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "metrics": metrics,
            }
            _write_json(path, run)
            runs.append(run)

    summary = summarize(runs, [c.name for c in cats], seeds)
    summary.update({"preset": preset, "overrides": runs[0]["overrides"] if runs else {},
                    "config": configs[seeds[0]].to_dict(), "command": command,
                    "dataset_root": str(root)})
    files = write_outputs(out, runs, summary)
    markdown = files.pop("_markdown")
    return {"runs": runs, "summary": summary, "markdown": markdown, "files": files}


# ------------------------------------------------------------------------------------------------
# aggregation and outputs
# ------------------------------------------------------------------------------------------------

def _mean_std(values: list[float | None]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    arr = np.asarray(vals, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": len(vals)}


def summarize(runs: list[dict], categories: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """Per-category mean/std over seeds and the ``mean`` row (see the module docstring)."""
    by = {(r["category"], int(r["seed"])): r["metrics"] for r in runs}
    per_cat: dict[str, dict[str, dict]] = {}
    for cat in categories:
        per_cat[cat] = {m: _mean_std([by[(cat, s)].get(m) for s in seeds if (cat, s) in by])
                        for m in METRICS}
    mean_row: dict[str, dict] = {}
    for m in METRICS:
        cat_means = [per_cat[c][m]["mean"] for c in categories if per_cat[c][m]["mean"] is not None]
        per_seed = []
        for s in seeds:
            vals = [by[(c, s)].get(m) for c in categories if (c, s) in by and by[(c, s)].get(m) is not None]
            if vals:
                per_seed.append(float(np.mean(vals)))
        mean_row[m] = {"mean": float(np.mean(cat_means)) if cat_means else None,
                       "std": float(np.std(per_seed)) if per_seed else None,
                       "n": len(cat_means)}
    return {"metrics": list(METRICS), "seeds": list(seeds), "categories": per_cat, "mean": mean_row,
            "std": "population (ddof=0) over seeds; mean row: std over seeds of the mean over categories"}


def _cell(entry: dict, metric: str) -> str:
    if entry["mean"] is None:
        return "–"
    d = _DECIMALS.get(metric, 3)
    return f"{entry['mean']:.{d}f} ± {entry['std']:.{d}f}"


def markdown_table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table: ``mean ± std`` cells, one row per category, then ``mean``."""
    head = "| category | " + " | ".join(LABELS[m] for m in METRICS) + " |"
    sep = "|---|" + "---:|" * len(METRICS)
    rows = [head, sep]
    for cat, entry in summary["categories"].items():
        rows.append(f"| {cat} | " + " | ".join(_cell(entry[m], m) for m in METRICS) + " |")
    rows.append("| **mean** | " + " | ".join(_cell(summary["mean"][m], m) for m in METRICS) + " |")
    return "\n".join(rows)


def _num(v: Any) -> str:
    return "" if v is None else repr(float(v))


def write_outputs(out: Path, runs: list[dict], summary: dict[str, Any]) -> dict[str, Any]:
    """Write results.csv, summary.csv, summary.json and summary.md; returns their paths."""
    results_csv = out / "results.csv"
    with open(results_csv, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["category", "seed", *METRICS, "n_train", "n_test", "n_defective"])
        for r in runs:
            w.writerow([r["category"], r["seed"], *(_num(r["metrics"].get(m)) for m in METRICS),
                        r.get("n_train", ""), r.get("n_test", ""), r.get("n_defective", "")])
    summary_csv = out / "summary.csv"
    with open(summary_csv, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["category", "n_seeds", *(f"{m}_{s}" for m in METRICS for s in ("mean", "std"))])
        rows = list(summary["categories"].items()) + [("mean", summary["mean"])]
        for cat, entry in rows:
            n = max(entry[m]["n"] for m in METRICS) if cat != "mean" else len(summary["seeds"])
            w.writerow([cat, n, *(_num(entry[m][s]) for m in METRICS for s in ("mean", "std"))])
    summary_json = out / "summary.json"
    _write_json(summary_json, summary)
    md = markdown_table(summary)
    summary_md = out / "summary.md"
    with open(summary_md, "w", encoding="utf-8") as fh:
        fh.write(md + "\n")
    return {"results_csv": results_csv, "summary_csv": summary_csv, "summary_json": summary_json,
            "summary_md": summary_md, "runs_dir": out / "runs", "_markdown": md}


# ------------------------------------------------------------------------------------------------
# comparison tables (ablation steps, sweep values): one row per evaluated configuration
# ------------------------------------------------------------------------------------------------

def write_comparison(out: Path, stem: str, first_column: str, rows: list[dict[str, Any]],
                     meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``<stem>.csv``, ``<stem>.json`` and ``<stem>.md`` in ``out``: one row per configuration.

    Each entry of ``rows`` has ``label`` (first column), ``detail`` (text for a second
    ``overrides`` column, or None), ``dir`` (the configuration's evaluate folder), ``overrides``,
    ``config`` (seed 0's, or the first seed's) and ``summary`` (what :func:`evaluate` returned as
    ``summary``).  The cells are the ``mean`` row of each summary: the mean over categories of the
    per-category means over seeds, ± the std over seeds of the per-seed mean over categories
    (with one category: that category's mean ± std over seeds).
    """
    show_detail = any(r.get("detail") for r in rows)
    head = [first_column] + (["overrides"] if show_detail else []) + [LABELS[m] for m in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|---|" + ("---|" if show_detail else "") + "---:|" * len(METRICS)]
    for r in rows:
        mean = r["summary"]["mean"]
        cells = [r["label"]] + ([f"`{r['detail']}`" if r.get("detail") else "–"] if show_detail else [])
        cells += [_cell(mean[m], m) for m in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    md = "\n".join(lines)

    csv_path = out / f"{stem}.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow([first_column, "overrides", "dir", "n_categories", "n_seeds",
                    *(f"{m}_{s}" for m in METRICS for s in ("mean", "std"))])
        for r in rows:
            mean = r["summary"]["mean"]
            w.writerow([r["label"], r.get("detail") or "", r["dir"], len(r["summary"]["categories"]),
                        len(r["summary"]["seeds"]),
                        *(_num(mean[m][s]) for m in METRICS for s in ("mean", "std"))])
    json_path = out / f"{stem}.json"
    _write_json(json_path, {
        **meta, "metrics": list(METRICS),
        "std": "population (ddof=0) over seeds of the per-seed mean over categories",
        "rows": [{first_column: r["label"], "overrides": r["overrides"], "dir": r["dir"],
                  "config": r["config"], "categories": list(r["summary"]["categories"]),
                  "seeds": r["summary"]["seeds"], "mean": r["summary"]["mean"]} for r in rows],
    })
    md_path = out / f"{stem}.md"
    with open(md_path, "w", encoding="utf-8") as fh:
        fh.write(md + "\n")
    return {"csv": csv_path, "json": json_path, "md": md_path, "markdown": md}
