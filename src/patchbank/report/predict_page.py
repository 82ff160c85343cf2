"""The page model of a ``predict`` folder: counts, thresholds, histograms, every image by score.

:func:`predict_page` returns the dict the template renders (``kind`` ``"predict"``).  Images are
sorted by normalised score, highest first -- the score the threshold applies to, comparable
across the categories of a multi-category model (each is normalised by its own category's
statistics).  A multi-category model has one threshold per category, so each category gets its
own histogram with its own threshold line.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from patchbank.report.cards import by_score, file_notes, image_card, progress_bar
from patchbank.report.charts import Series, histogram_svg
from patchbank.report.results import PredictResults

SCORE_AXIS = "normalised score (a = (score - mu) / sigma of the calibration images)"


def heatmap_file(results: PredictResults, rec: dict[str, Any]) -> Path | None:
    """The overlay of a record when the run wrote heatmaps: ``<folder>/heatmaps/<its name>``
    when that exists (the folder may have moved since), else the path recorded; None when the
    run wrote no heatmaps."""
    if results.data.get("heatmaps") is None:
        return None
    recorded = rec.get("heatmap")
    if not isinstance(recorded, str):
        return results.folder / "heatmaps" / "(no heatmap recorded)"
    local = results.folder / "heatmaps" / Path(recorded).name
    return local if local.is_file() else Path(recorded)


def threshold_rows(records: list[dict[str, Any]], top: float | None) -> list[dict[str, Any]]:
    """One row per category (``name`` None for a single-category model): its threshold, images
    and flagged images."""
    groups: dict[str | None, list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault(rec.get("category"), []).append(rec)
    rows = []
    for name, recs in sorted(groups.items(), key=lambda kv: (kv[0] is not None, kv[0] or "")):
        values = sorted({r["threshold"] for r in recs})
        rows.append({"name": name, "value": values[0] if len(values) == 1 else None, "values": values,
                     "n": len(recs), "n_flagged": sum(r["is_anomalous"] for r in recs)})
    if not rows:
        rows.append({"name": None, "value": top, "values": [] if top is None else [top], "n": 0, "n_flagged": 0})
    return rows


def histograms(records: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[str]:
    """One histogram per threshold row: passed and flagged images' normalised scores."""
    out = []
    for row in rows:
        recs = [r for r in records if r.get("category") == row["name"]]
        series = [Series("passed", [r["normalized_score"] for r in recs if not r["is_anomalous"]], "pass"),
                  Series("flagged", [r["normalized_score"] for r in recs if r["is_anomalous"]], "flag")]
        lines = [("threshold", v) for v in row["values"]]
        title = f"normalised scores{' of ' + row['name'] if row['name'] else ''}"
        out.append(histogram_svg(series, lines, title=title, xlabel=SCORE_AXIS))
    return out


def predict_page(results: PredictResults, *, progress: bool = False) -> dict[str, Any]:
    """The page model of a predict folder (see the module docstring)."""
    data, records = results.data, results.records
    rows = threshold_rows(records, data.get("threshold"))
    ordered = by_score(records)
    bar, cards = progress_bar(len(ordered), "report: thumbnails", progress), []
    for i, rec in enumerate(ordered):
        cards.append(image_card(i + 1, rec, heatmap=heatmap_file(results, rec)))
        bar.update()
    bar.close()
    n_flagged = sum(r["is_anomalous"] for r in records)
    nonfinite = sum(not math.isfinite(r["normalized_score"]) for r in records)
    notes = file_notes(cards)
    if nonfinite:
        notes.append(f"{nonfinite} images have a non-finite normalised score; they are not in the histogram.")
    return {
        "kind": "predict", "folder": str(results.folder), "model": data.get("model"),
        "n_images": len(records), "n_flagged": n_flagged,
        "flagged_share": n_flagged / len(records) if records else 0.0,
        "thresholds": rows, "multi": any(row["name"] is not None for row in rows),
        "routing": data.get("routing"), "heatmaps": data.get("heatmaps"),
        "histograms": histograms(records, rows), "cards": cards, "notes": notes,
    }
