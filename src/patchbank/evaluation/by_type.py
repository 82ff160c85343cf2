"""Image metrics per defect type: which kinds of defect a run finds and which it misses.

For every category and defect type, the type's defective test images are ranked against all of
the category's good test images (the other types left out), by the raw image score of each run's
image records (:func:`patchbank.evaluation.runner.image_records`, which carry each image's
``defect_type``): :func:`run_by_type`.  The table over seeds is
:func:`patchbank.evaluation.reports.by_type_rows`.  Runs whose records carry no defect type (run
files written before the field existed) are left out.
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
