"""patchbank on Ray: the same pipeline past one machine (the optional extra ``patchbank[ray]``).

* :func:`predict` (:mod:`~patchbank.distributed.scoring`): a Ray Data pipeline -- inputs listed
  on the driver, images decoded in CPU tasks, scored in a pool of actors that each load the
  model once and call its own ``predict`` -- writing ``predictions.parquet``, ``.csv`` and
  ``.json`` with the local ``predict``'s columns (:mod:`~patchbank.distributed.outputs`).
* :func:`fit_categories` (:mod:`~patchbank.distributed.fitting`): every category fitted as one
  Ray task, assembled into one multi-category model or kept one file per category.
* :func:`run_map` (:mod:`~patchbank.distributed.evaluation`): an evaluation's category x seed
  runs as Ray tasks, for :func:`patchbank.evaluation.runner.evaluate`'s ``map_runs``.

Ray is imported only when one of these runs (:mod:`~patchbank.distributed.engine`); without it
they stop with a one-line error saying ``pip install 'patchbank[ray]'``.  How the work splits and
what it costs: ``docs/scaling.md``.
"""
from __future__ import annotations

from typing import Any

__all__ = ["predict", "fit_categories", "run_map"]


def __getattr__(name: str) -> Any:
    if name == "predict":
        from patchbank.distributed.scoring import predict
        return predict
    if name == "fit_categories":
        from patchbank.distributed.fitting import fit_categories
        return fit_categories
    if name == "run_map":
        from patchbank.distributed.evaluation import run_map
        return run_map
    raise AttributeError(f"module 'patchbank.distributed' has no attribute {name!r}")
