"""Studies built on :mod:`patchbank.evaluation`: each answers one question of the papers.

Layer: may import evaluation, multi, the detector and everything below; never the CLI.

* :mod:`~patchbank.studies.ablation`  LMF-Core Table 5: one evaluate run per module step
* :mod:`~patchbank.studies.sweep`     one-factor sweeps (LMF-Core Table 6, Figs. 2-3) with a plot
* :mod:`~patchbank.studies.structure` StructCore base / struct / hybrid tables and the Fig. 2 scatter
* :mod:`~patchbank.studies.routing`   routed multi-category model against the oracle system
* :mod:`~patchbank.studies.speed`     fit / predict timings against the backbone floor
  (``patchbank benchmark``)
"""
