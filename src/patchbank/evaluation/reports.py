"""Tables of evaluation results: mean +- std, CSV / JSON / Markdown writers, the evaluate summary.

Generic pieces, used by :mod:`~patchbank.evaluation.runner` and every study:

* :func:`mean_std` (population std, ddof=0, over the values that are not None / NaN) and
  :func:`format_mean_std` (the one ``mean ± std`` cell text, ``–`` for a missing value);
* :func:`pipe_table` (Markdown pipe-table lines), :func:`write_csv`, :func:`write_json` (atomic),
  :func:`write_text`.

The evaluate outputs (see :mod:`patchbank.evaluation.runner`): :func:`summarize`,
:func:`markdown_table`, :func:`write_outputs`, and :func:`write_comparison` (one row per evaluated
configuration: the ablation and sweep tables).
"""
from __future__ import annotations

import csv
import json
import math
import numbers
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from patchbank.errors import PatchbankError
from patchbank.evaluation.by_type import BY_TYPE_METRICS, run_by_type
from patchbank.io.output_files import commit_file

METRICS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max",
           "aupro", "good_fpr", "defect_tpr", "bank_mb", "fit_s", "ms_per_img")
LABELS = {"image_auroc": "image AUROC", "image_ap": "image AP", "image_f1_max": "image F1-max",
          "pixel_auroc": "pixel AUROC", "pixel_ap": "pixel AP", "pixel_f1_max": "pixel F1-max",
          "aupro": "AUPRO", "good_fpr": "good flagged", "defect_tpr": "defects flagged",
          "bank_mb": "bank MB", "fit_s": "fit s", "ms_per_img": "ms/img"}
DECIMALS = {"bank_mb": 2, "fit_s": 2, "ms_per_img": 1}   # Markdown decimals; 3 for the others
MISSING = "–"


# ------------------------------------------------------------------------------------------------
# mean +- std
# ------------------------------------------------------------------------------------------------

def mean_std(values: Iterable[float | None]) -> dict[str, float | None]:
    """``{"mean", "std", "n"}`` of the values that are not None or NaN (population std, ddof=0).

    Returns ``{"mean": None, "std": None, "n": 0}`` when no value is left.
    """
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    arr = np.asarray(vals, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": len(vals)}


def format_mean_std(mean: float | None, std: float | None, decimals: int = 3) -> str:
    """The table cell ``"<mean> ± <std>"`` with ``decimals`` decimals; ``–`` when ``mean`` is None;
    a value that is no number (a hand-edited table) is a one-line :class:`PatchbankError`."""
    if mean is None:
        return MISSING
    return f"{real_number(mean):.{decimals}f} ± {real_number(std):.{decimals}f}"


def real_number(value: Any) -> float:
    """``value`` as a float when it is a real number (not a bool), else a one-line
    :class:`PatchbankError` naming it: a table or run file edited by hand."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise PatchbankError(f"a metric in the results is not a number: {str(value)[:80]!r} (an edited "
                         f"table or run file?); evaluate again")


def metric_cell(entry: dict[str, Any], metric: str) -> str:
    """:func:`format_mean_std` of a ``{"mean", "std"}`` entry with the metric's decimals."""
    return format_mean_std(entry["mean"], entry["std"], DECIMALS.get(metric, 3))


def number_text(value: Any) -> str:
    """A number for CSV: ``repr(float(value))`` (round-trips exactly), ``""`` for None."""
    return "" if value is None else repr(float(value))


# ------------------------------------------------------------------------------------------------
# writers
# ------------------------------------------------------------------------------------------------

def pipe_table(header: Sequence[str], rows: Iterable[Sequence[str]], right: int = 0) -> list[str]:
    """Markdown pipe-table lines: header, separator, rows; the last ``right`` columns right-aligned."""
    left = len(header) - right
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * left + "---:|" * right]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """Write a CSV file (UTF-8) with ``header`` and ``rows``; returns its path."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 2, newline: bool = True,
               default: Any = None) -> Path:
    """Write ``data`` as JSON atomically (:func:`patchbank.io.output_files.commit_file`: a
    temporary file of its own, then a rename); returns the path.

    Args:
        indent: ``json.dumps`` indent (None: one line).
        newline: end the file with a newline.
        default: ``json.dumps``'s ``default`` (e.g. ``str`` for paths).
    """
    text = json.dumps(data, indent=indent, default=default) + ("\n" if newline else "")
    return commit_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8); returns the path."""
    path = Path(path)
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------
# the evaluate summary
# ------------------------------------------------------------------------------------------------

def _mean_row(by: dict, per_cat: dict, categories: Sequence[str], seeds: Sequence[int],
              metric: str) -> dict[str, Any]:
    """Mean over categories of the per-category means; std over seeds of the per-seed mean."""
    cat_means = [per_cat[c][metric]["mean"] for c in categories if per_cat[c][metric]["mean"] is not None]
    per_seed = []
    for s in seeds:
        vals = [by[(c, s)].get(metric) for c in categories
                if (c, s) in by and by[(c, s)].get(metric) is not None]
        if vals:
            per_seed.append(float(np.mean(vals)))
    return {"mean": float(np.mean(cat_means)) if cat_means else None,
            "std": float(np.std(per_seed)) if per_seed else None,
            "n": len(cat_means)}


def summarize(runs: list[dict], categories: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """Per-category mean/std over seeds of every metric, and the ``mean`` row.

    Args:
        runs: run records (``category``, ``seed``, ``metrics``).
        categories, seeds: the rows and the seeds to aggregate.

    Returns:
        ``{"metrics", "seeds", "categories": {cat: {metric: mean_std}}, "mean": {metric: ...},
        "std": <description>}``; the ``mean`` row's mean is the mean over categories of the
        per-category means, its std the std over seeds of the per-seed mean over categories.
    """
    by = {(r["category"], int(r["seed"])): r["metrics"] for r in runs}
    per_cat = {cat: {m: mean_std([by[(cat, s)].get(m) for s in seeds if (cat, s) in by]) for m in METRICS}
               for cat in categories}
    mean_row = {m: _mean_row(by, per_cat, categories, seeds, m) for m in METRICS}
    return {"metrics": list(METRICS), "seeds": list(seeds), "categories": per_cat, "mean": mean_row,
            "std": "population (ddof=0) over seeds; mean row: std over seeds of the mean over categories"}


def by_type_rows(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (category, defect type) over ``runs`` (records with ``category``, ``seed``,
    ``images``; :func:`~patchbank.evaluation.by_type.run_by_type` per run): ``category``,
    ``defect_type``, ``n_images``, ``n_seeds`` and the :func:`mean_std` over seeds of each of
    :data:`~patchbank.evaluation.by_type.BY_TYPE_METRICS`."""
    per: dict[tuple[str, str], list[dict[str, float]]] = {}
    for run in runs:
        for t, m in run_by_type(run.get("images") or []).items():
            per.setdefault((run["category"], t), []).append(m)
    return [{"category": cat, "defect_type": t, "n_images": ms[0]["n_images"], "n_seeds": len(ms),
             **{k: mean_std([m[k] for m in ms]) for k in BY_TYPE_METRICS}}
            for (cat, t), ms in per.items()]


def markdown_table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table: ``mean ± std`` cells, one row per category, then ``mean``."""
    rows = [[cat] + [metric_cell(entry[m], m) for m in METRICS] for cat, entry in summary["categories"].items()]
    rows.append(["**mean**"] + [metric_cell(summary["mean"][m], m) for m in METRICS])
    return "\n".join(pipe_table(["category"] + [LABELS[m] for m in METRICS], rows, right=len(METRICS)))


#: The tables :func:`write_outputs` derives from a folder's run files.
SUMMARY_TABLES = ("results.csv", "summary.csv", "summary.json", "summary.md", "by_type.csv")


def write_outputs(out: Path, runs: list[dict], summary: dict[str, Any]) -> dict[str, Any]:
    """Write results.csv, summary.csv, summary.json, summary.md and by_type.csv in ``out``.

    ``by_type.csv``: one row per category and defect type, the type's images against the good
    ones, image AUROC / AP / F1-max mean and std over seeds
    (:func:`by_type_rows`).

    Returns their paths (keys ``results_csv``, ``summary_csv``, ``summary_json``, ``summary_md``,
    ``by_type_csv``, ``runs_dir``) and the Markdown text under ``_markdown``.
    """
    results_csv = write_csv(
        out / "results.csv", ["category", "seed", *METRICS, "n_train", "n_test", "n_defective"],
        ([r["category"], r["seed"], *(number_text(r["metrics"].get(m)) for m in METRICS),
          r.get("n_train", ""), r.get("n_test", ""), r.get("n_defective", "")] for r in runs))
    rows = list(summary["categories"].items()) + [("mean", summary["mean"])]
    summary_csv = write_csv(
        out / "summary.csv", ["category", "n_seeds", *(f"{m}_{s}" for m in METRICS for s in ("mean", "std"))],
        ([cat, max(entry[m]["n"] for m in METRICS) if cat != "mean" else len(summary["seeds"]),
          *(number_text(entry[m][s]) for m in METRICS for s in ("mean", "std"))] for cat, entry in rows))
    summary_json = write_json(out / "summary.json", summary)
    md = markdown_table(summary)
    summary_md = write_text(out / "summary.md", md + "\n")
    by_type_csv = write_csv(
        out / "by_type.csv", ["category", "defect_type", "n_images", "n_seeds",
                              *(f"{m}_{s}" for m in BY_TYPE_METRICS for s in ("mean", "std"))],
        ([r["category"], r["defect_type"], r["n_images"], r["n_seeds"],
          *(number_text(r[m][s]) for m in BY_TYPE_METRICS for s in ("mean", "std"))]
         for r in by_type_rows(runs)))
    return {"results_csv": results_csv, "summary_csv": summary_csv, "summary_json": summary_json,
            "summary_md": summary_md, "by_type_csv": by_type_csv, "runs_dir": out / "runs", "_markdown": md}


# ------------------------------------------------------------------------------------------------
# comparison tables (ablation steps, sweep values): one row per evaluated configuration
# ------------------------------------------------------------------------------------------------

def _comparison_markdown(first_column: str, rows: list[dict[str, Any]]) -> str:
    show_detail = any(r.get("detail") for r in rows)
    head = [first_column] + (["overrides"] if show_detail else []) + [LABELS[m] for m in METRICS]
    cells = []
    for r in rows:
        detail = [f"`{r['detail']}`" if r.get("detail") else MISSING] if show_detail else []
        cells.append([r["label"]] + detail + [metric_cell(r["summary"]["mean"][m], m) for m in METRICS])
    return "\n".join(pipe_table(head, cells, right=len(METRICS)))


def write_comparison(out: Path, stem: str, first_column: str, rows: list[dict[str, Any]],
                     meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``<stem>.csv``, ``<stem>.json`` and ``<stem>.md`` in ``out``: one row per configuration.

    Each entry of ``rows`` has ``label`` (first column), ``detail`` (text for a second
    ``overrides`` column, or None), ``dir`` (the configuration's evaluate folder), ``overrides``,
    ``config`` (seed 0's, or the first seed's) and ``summary`` (what
    :func:`~patchbank.evaluation.runner.evaluate` returned as ``summary``).  The cells are the
    ``mean`` row of each summary: the mean over categories of the per-category means over seeds,
    ± the std over seeds of the per-seed mean over categories (with one category: that
    category's mean ± std over seeds).

    Returns ``{"csv", "json", "md"}`` paths and the Markdown text under ``markdown``.
    """
    md = _comparison_markdown(first_column, rows)
    csv_path = write_csv(
        out / f"{stem}.csv", [first_column, "overrides", "dir", "n_categories", "n_seeds",
                              *(f"{m}_{s}" for m in METRICS for s in ("mean", "std"))],
        ([r["label"], r.get("detail") or "", r["dir"], len(r["summary"]["categories"]),
          len(r["summary"]["seeds"]),
          *(number_text(r["summary"]["mean"][m][s]) for m in METRICS for s in ("mean", "std"))]
         for r in rows))
    json_path = write_json(out / f"{stem}.json", {
        **meta, "metrics": list(METRICS),
        "std": "population (ddof=0) over seeds of the per-seed mean over categories",
        "rows": [{first_column: r["label"], "overrides": r["overrides"], "dir": r["dir"],
                  "config": r["config"], "categories": list(r["summary"]["categories"]),
                  "seeds": r["summary"]["seeds"], "mean": r["summary"]["mean"]} for r in rows],
    })
    md_path = write_text(out / f"{stem}.md", md + "\n")
    return {"csv": csv_path, "json": json_path, "md": md_path, "markdown": md}
