"""The page model of an ``evaluate`` folder: the metric table, the image metrics per defect type,
and one section per category and seed.

:func:`evaluate_page` returns the dict the template renders (``kind`` ``"evaluate"``).  Each run
with per-image records gets ROC and PR curves of its raw image scores (the score the image
metrics rank; :mod:`patchbank.report.curves`), the operating point of its decisions at the
calibrated threshold marked on both, a histogram of normalised scores of good and defective
images with the threshold, and the worst images: the good images with the highest scores
(false positives when flagged) and the defective images with the lowest (false negatives when
passed).  A run without records shows its problem instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from patchbank.errors import PatchbankError
from patchbank.evaluation.by_type import BY_TYPE_METRICS
from patchbank.evaluation.reports import LABELS, by_type_rows, metric_cell
from patchbank.report.cards import ImageCard, by_score, file_notes, image_card, progress_bar
from patchbank.report.charts import Series, curve_svg, histogram_svg
from patchbank.report.curves import Curves, OperatingPoint, image_curves, operating_point
from patchbank.report.predict_page import SCORE_AXIS
from patchbank.report.results import EvaluateResults, EvaluateRun
from patchbank.report.render import num

WORST_N = 6
"""Images shown per run in each of the worst-good and worst-defective strips."""


@dataclass
class RunView:
    """One category x seed on the page; the charts and strips are empty when ``problem`` is set."""

    category: str
    seed: int
    path: str
    problem: str | None = None
    threshold: float | None = None
    curves: Curves | None = None
    op: OperatingPoint | None = None
    auroc: float | None = None   # the run's image_auroc / image_ap (evaluation.metrics)
    ap: float | None = None
    charts: list[str] = field(default_factory=list)
    histogram: str = ""
    worst_good: list[ImageCard] = field(default_factory=list)
    worst_defective: list[ImageCard] = field(default_factory=list)


def metric_table(summary: dict[str, Any]) -> dict[str, Any]:
    """``{"header": [metric labels], "rows": [{"name", "cells", "mean"}]}``: ``mean ± std`` over
    seeds per category as ``summary.json`` has it, then its ``mean`` row."""
    metrics = summary["metrics"]
    rows = [{"name": cat, "mean": False, "cells": [metric_cell(entry[m], m) if m in entry else "–" for m in metrics]}
            for cat, entry in summary["categories"].items()]
    mean = summary.get("mean")
    if isinstance(mean, dict):
        rows.append({"name": "mean", "mean": True,
                     "cells": [metric_cell(mean[m], m) if isinstance(mean.get(m), dict) else "–" for m in metrics]})
    return {"header": [LABELS.get(m, m) for m in metrics], "rows": rows}


def type_table(results: EvaluateResults) -> list[dict[str, Any]]:
    """One row per category and defect type (``by_type.csv``'s, from the runs' image records):
    ``{"category", "defect_type", "n_images", "n_seeds", "cells"}``, the cells ``mean ± std`` of
    :data:`~patchbank.evaluation.by_type.BY_TYPE_METRICS`; empty when no record has a type."""
    runs = [r.run for r in results.runs if r.run is not None and r.problem is None]
    return [{**{k: row[k] for k in ("category", "defect_type", "n_images", "n_seeds")},
             "cells": [metric_cell(row[m], m) for m in BY_TYPE_METRICS]}
            for row in by_type_rows(runs)]


def _charts(view: "RunView", title: str) -> list[str]:
    """The ROC and PR charts of one run with its operating point and the run's areas."""
    curves, op = view.curves, view.op
    roc = curve_svg(curves.fpr, curves.tpr, kind="roc", title=f"ROC {title}", area=f"AUROC {num(view.auroc)}",
                    marker=(op.fpr, op.tpr, f"threshold: FPR {op.fpr:.3f}, TPR {op.tpr:.3f}"))
    pr_marker = None if op.precision is None else (
        op.tpr, op.precision, f"threshold: recall {op.tpr:.3f}, precision {op.precision:.3f}")
    pr = curve_svg(curves.recall, curves.precision, kind="pr", title=f"PR {title}",
                   area=f"AP {num(view.ap)}", marker=pr_marker)
    return [roc, pr]


def run_view(run: EvaluateRun, bar: Any) -> RunView:
    """The :class:`RunView` of one run; ``bar`` (:func:`~patchbank.report.cards.progress_bar`)
    is advanced by the thumbnails made."""
    view = RunView(run.category, run.seed, str(run.path), run.problem)
    images = run.images
    if run.problem is not None or images is None:
        return view
    labels = [r["label"] for r in images]
    try:
        view.curves = image_curves(labels, [r["score"] for r in images])
    except PatchbankError as exc:
        view.problem = str(exc)
        return view
    view.op = operating_point(labels, [r["is_anomalous"] for r in images])
    view.threshold = images[0]["threshold"]
    title = f"{run.category}, seed {run.seed}"
    metrics = run.run["metrics"]
    view.auroc, view.ap = metrics.get("image_auroc"), metrics.get("image_ap")
    view.charts = _charts(view, title)
    good = [r for r in images if r["label"] == 0]
    bad = [r for r in images if r["label"] == 1]
    view.histogram = histogram_svg(
        [Series("good", [r["normalized_score"] for r in good], "good"),
         Series("defective", [r["normalized_score"] for r in bad], "defect")],
        [("threshold", view.threshold)], title=f"normalised scores, {title}", xlabel=SCORE_AXIS)
    worst_good = by_score(good, "score")[:WORST_N]
    worst_bad = list(reversed(by_score(bad, "score")))[:WORST_N]
    view.worst_good = [image_card(i + 1, r, label="good") for i, r in enumerate(worst_good)]
    view.worst_defective = [image_card(i + 1, r, label="defective") for i, r in enumerate(worst_bad)]
    bar.update(len(view.worst_good) + len(view.worst_defective))
    return view


def evaluate_page(results: EvaluateResults, *, progress: bool = False) -> dict[str, Any]:
    """The page model of an evaluate folder (see the module docstring)."""
    summary = results.summary
    n_thumbs = sum(min(WORST_N, sum(r["label"] == y for r in run.images)) for run in results.runs
                   if run.problem is None for y in (0, 1))
    bar = progress_bar(n_thumbs, "report: thumbnails", progress)
    runs = [run_view(run, bar) for run in results.runs]
    bar.close()
    cards = [c for v in runs for c in v.worst_good + v.worst_defective]
    notes = file_notes(cards)
    no_images = [v for v in runs if v.problem is not None]
    if no_images:
        notes.insert(0, f"{len(no_images)} of {len(runs)} runs have no curves or images (see each run).")
    return {
        "kind": "evaluate", "folder": str(results.folder), "preset": summary.get("preset"),
        "dataset_root": summary.get("dataset_root"), "command": summary.get("command"),
        "overrides": summary.get("overrides"), "seeds": summary["seeds"],
        "categories": list(summary["categories"]), "std_text": summary.get("std"),
        "table": metric_table(summary), "types": type_table(results),
        "type_header": [LABELS[m] for m in BY_TYPE_METRICS], "runs": runs, "notes": notes, "worst_n": WORST_N,
    }
