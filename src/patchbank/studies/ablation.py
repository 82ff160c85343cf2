"""LMF-Core's module ablation (paper Table 5) as three evaluate runs.

Each step is ``(name, overrides)``: Config fields replaced on top of the ``lmf-core`` preset.
The steps add one module at a time to an equal-weight, greedy-coreset baseline:

1. ``equal+greedy``: equal-weight concatenation of the two layers, no channel pruning
   (the paper's special case w2 = w3 = 0.5, kappa = 1), greedy k-center coreset -- PatchCore-like.
2. ``+vg-fusion``: Variance-Guided Fusion (kappa 0.5, inverse-variance layer weights), still greedy.
3. ``+rp-coreset``: the random-projection coreset (uniform subsampling), i.e. full ``lmf-core``.

Choices the paper leaves implicit (its text is garbled around Table 5):

* Every step keeps the preset's Gaussian projection to d' = 128 *before* the bank.  The paper's
  baseline stores 16.4k entries in 8.4 MB, i.e. 512 bytes = 128 float32 per entry, so its greedy
  rows store projected features too.  The ``patchcore`` preset, which stores the unprojected
  features, is therefore not the same as step 1.
* Greedy and uniform use the same ratio r = 0.10 (``coreset_size`` rounds alike for both), so the
  banks have identical sizes -- the paper's "comparable bank size".
* The greedy selection distances are computed in the stored 128-d space
  (``greedy_proxy_dim`` = 128 >= d' means no further projection).
"""
from __future__ import annotations

import os
import re
from typing import Any, Sequence

from patchbank.errors import PatchbankError
from patchbank.evaluation.inputs import out_folder, preset_config, say
from patchbank.evaluation.runner import categories_to_score, evaluate
from patchbank.evaluation.reports import write_comparison

BASE_PRESET = "lmf-core"

STEPS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("equal+greedy", {"fusion": "equal", "kappa": 1.0, "sampler": "greedy"}),
    ("+vg-fusion", {"sampler": "greedy"}),
    ("+rp-coreset", {}),
)


def step_fields(steps: Sequence[tuple[str, dict[str, Any]]] = STEPS) -> set[str]:
    """The Config fields some step sets; the command line may not override them."""
    return {k for _, overrides in steps for k in overrides}


def step_dir(index: int, name: str) -> str:
    """Folder of step ``index`` (1-based): ``1_equal-greedy``, ``2_vg-fusion``, ..."""
    return f"{index}_{re.sub(r'[^A-Za-z0-9]+', '-', name).strip('-')}"


def _text(overrides: dict[str, Any]) -> str:
    """``field=value`` pairs of a step, or ``(preset)`` for none."""
    return " ".join(f"{k}={v}" for k, v in overrides.items()) or "(preset)"


def ablate(root: str | os.PathLike, overrides: dict[str, Any] | None = None,
           categories: Sequence[str] | None = None, seeds: Sequence[int] = (0,),
           out_dir: str | os.PathLike = "ablation", resume: bool = True, progress: bool = True, *,
           steps: Sequence[tuple[str, dict[str, Any]]] = STEPS, kind: str = "auto",
           device: str = "cpu", command: str | None = None) -> dict[str, Any]:
    """Run :func:`~patchbank.evaluation.runner.evaluate` once per step into ``out_dir/<step_dir>``.

    ``overrides`` apply to every step (backbone, image size, ...); they may not touch a field a
    step sets.  Runs already stored with the same config are loaded (``resume``).  Writes
    ``ablation.csv``, ``ablation.json`` and ``ablation.md`` in ``out_dir`` (see
    :func:`~patchbank.evaluation.reports.write_comparison`) and returns ``{"rows", "markdown", "files"}``.
    """
    overrides = dict(overrides or {})
    clash = sorted(step_fields(steps) & set(overrides))
    if clash:
        raise PatchbankError(f"the ablation steps set {', '.join(clash)} themselves; "
                             f"do not override {'it' if len(clash) == 1 else 'them'}")
    seeds = [int(s) for s in seeds]
    for _, step in steps:  # every step's config is valid before the first (long) fit
        preset_config(BASE_PRESET, {**overrides, **step})
    categories_to_score(root, categories, kind)   # before the folder is made
    out = out_folder(out_dir)
    if command is None:
        command = (f"patchbank.studies.ablation.ablate({str(root)!r}, overrides={overrides!r}, "
                   f"categories={categories!r}, seeds={tuple(seeds)!r}, out_dir={str(out)!r})")
    rows = []
    for i, (name, step) in enumerate(steps, start=1):
        say(progress, f"[ablation {i}/{len(steps)}] {name}: {_text(step)}")
        sub = step_dir(i, name)
        res = evaluate(root, BASE_PRESET, {**overrides, **step}, categories=categories, seeds=seeds,
                       out_dir=out / sub, resume=resume, progress=progress, kind=kind,
                       device=device, command=command)
        rows.append({"label": name, "detail": _text(step), "dir": sub, "overrides": dict(step),
                     "config": res["summary"]["config"], "summary": res["summary"]})
    meta = {"kind": "ablation", "base_preset": BASE_PRESET, "common_overrides": overrides,
            "seeds": seeds, "command": command, "dataset_root": str(root)}
    files = write_comparison(out, "ablation", "step", rows, meta)
    markdown = files.pop("markdown")
    return {"rows": rows, "markdown": markdown, "files": files}
