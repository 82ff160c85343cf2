"""Evaluation of fitted detectors on labelled test sets.

Layer: imports the detector and everything below it (pipeline, io, config), never ``multi``,
``studies`` or the CLI.

* :mod:`~patchbank.evaluation.metrics`   exact image / pixel AUROC, AP, F1-max and AUPRO
* :mod:`~patchbank.evaluation.scoring`   :func:`~patchbank.evaluation.scoring.score_category`:
  the one loop pairing predictions with a category's labels and cropped masks
* :mod:`~patchbank.evaluation.inputs`    configs, seeds, category selection, output folders
* :mod:`~patchbank.evaluation.run_store` one JSON file per category x seed: atomic save, resume
* :mod:`~patchbank.evaluation.reports`   mean ± std, CSV / JSON / Markdown tables
* :mod:`~patchbank.evaluation.plots`     PNG figures (matplotlib, imported lazily)
* :mod:`~patchbank.evaluation.runner`    ``evaluate``: fit per category and seed, score, aggregate
"""
