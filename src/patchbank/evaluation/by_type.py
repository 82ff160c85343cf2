"""Image metrics per defect type: which kinds of defect a run finds and which it misses.

For every category and defect type, the type's defective test images are ranked against all of
the category's good test images (the other types left out), by the raw image score of each run's
image records (:func:`patchbank.evaluation.runner.image_records`, which carry each image's
``defect_type``); the image AUROC, AP and F1-max of each seed are then averaged over seeds
(population std, as everywhere in the evaluate outputs).  Runs whose records carry no defect
type (run files written before the field existed) are left out.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from patchbank.evaluation.metrics import image_metrics

BY_TYPE_METRICS = ("image_auroc", "image_ap", "image_f1_max")


def run_by_type(images: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{defect type: {metric: value, "n_images": count}}`` of one run's image records; empty
    when the records carry no ``defect_type`` or the run has no good image."""
    if not images or any("defect_type" not in r for r in images):
        return {}
    labels = np.array([int(r["label"]) for r in images])
    scores = np.array([float(r["score"]) for r in images], dtype=np.float64)
    types = np.array([str(r["defect_type"]) for r in images])
    good = labels == 0
    if not good.any():
        return {}
    out = {}
    for t in sorted({str(x) for x in types[~good]}):
        keep = good | ((types == t) & ~good)
        out[t] = {**image_metrics(labels[keep], scores[keep]), "n_images": int(((types == t) & ~good).sum())}
    return out


def by_type_rows(runs: Sequence[dict[str, Any]], mean_std) -> list[dict[str, Any]]:
    """One row per (category, defect type) over ``runs`` (records with ``category``, ``seed``,
    ``images``): ``category``, ``defect_type``, ``n_images``, ``n_seeds`` and ``mean_std`` of
    each of :data:`BY_TYPE_METRICS` over the seeds."""
    per: dict[tuple[str, str], list[dict[str, float]]] = {}
    for run in runs:
        for t, m in run_by_type(run.get("images") or []).items():
            per.setdefault((run["category"], t), []).append(m)
    return [{"category": cat, "defect_type": t, "n_images": ms[0]["n_images"], "n_seeds": len(ms),
             **{k: mean_std([m[k] for m in ms]) for k in BY_TYPE_METRICS}}
            for (cat, t), ms in per.items()]
