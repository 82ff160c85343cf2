"""Evaluate a routed multi-category model against the oracle system (StructCore Sec. 3.4).

For each seed: one :class:`~patchbank.multi.MultiDetector` is fitted on every category's training
images; all test images of all categories are pooled and predicted with routing (the model picks
the category), then each category's test images are predicted with the category given (oracle).
Reported: routing accuracy (overall and per true category, with the confusion counts), and per
category the image metrics (AUROC, AP, F1-max) and pixel metrics (AUROC, AUPRO) of the routed and
of the oracle system, plus per-image latency of both and the routing share of it.

Outputs in ``out_dir``: ``routing.json`` and ``routing.md``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from patchbank.config import Config
from patchbank.errors import PatchbankError
from patchbank.evaluation.inputs import load_categories, out_folder, preset_config, say
from patchbank.evaluation.reports import MISSING, format_mean_std, pipe_table, write_json, write_text
from patchbank.evaluation.scoring import check_test_set, score_category
from patchbank.io.datasets import Category
from patchbank.io.output_files import file_lock

KEYS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "aupro")


def _metrics(cat: Category, preds, config: Config) -> dict[str, float | None]:
    """The :data:`KEYS` of :func:`~patchbank.evaluation.scoring.score_category`."""
    scores = score_category(cat, preds, config)
    return {k: scores[k] for k in KEYS}


def _confusion(truth: list[str], chosen: list[str], names: list[str]) -> dict[str, dict[str, int]]:
    """``{true category: {chosen category: count}}``."""
    confusion = {t: {c: 0 for c in names} for t in names}
    for t, c in zip(truth, chosen):
        confusion[t][c] += 1
    return confusion


def _per_category(model, cats: list[Category], routed: list, confusion: dict, cfg: Config) -> tuple[dict, float]:
    """Per category: routing accuracy, routed and oracle metrics; and the oracle predict seconds."""
    per_cat, pos, oracle_time = {}, 0, 0.0
    for c in cats:
        r_preds = routed[pos:pos + len(c.test)]
        pos += len(c.test)
        t0 = time.perf_counter()
        o_preds = model.predict([str(p) for p in c.test], category=c.name)
        oracle_time += time.perf_counter() - t0
        per_cat[c.name] = {
            "routing_accuracy": confusion[c.name][c.name] / len(c.test),
            "routed": _metrics(c, r_preds, cfg),
            "oracle": _metrics(c, o_preds, cfg),
            # routed and oracle batches differ in size, so the backbone's float rounding
            # differs: report the largest relative score difference, not bit equality
            "max_score_rel_diff": max(abs(a.score - b.score) / max(abs(b.score), 1e-12)
                                      for a, b in zip(r_preds, o_preds)),
        }
    return per_cat, oracle_time


def _one_seed(cats: list[Category], cfg: Config, device: str, progress: bool, n_prototypes: int) -> dict[str, Any]:
    """Fit one routed model on every category; route all test images, then the oracle run."""
    from patchbank.multi import MultiDetector

    names = [c.name for c in cats]
    say(progress, f"[routing] seed {cfg.seed}: fitting {', '.join(names)}")
    model = MultiDetector(cfg, device=device, progress=progress, n_prototypes=n_prototypes)
    t0 = time.perf_counter()
    model.fit({c.name: [str(p) for p in c.train] for c in cats})
    fit_s = time.perf_counter() - t0
    items = [str(p) for c in cats for p in c.test]
    truth = [c.name for c in cats for _ in c.test]
    t0 = time.perf_counter()
    routed = model.predict(items)
    routed_ms = 1000 * (time.perf_counter() - t0) / len(items)
    route_ms = 1000 * model.last_timings_["route"] / len(items)
    chosen = [p.category for p in routed]
    confusion = _confusion(truth, chosen, names)
    per_cat, oracle_time = _per_category(model, cats, routed, confusion, cfg)
    return {"seed": int(cfg.seed), "fit_s": fit_s,
            "routing_accuracy": float(np.mean([t == c for t, c in zip(truth, chosen)])),
            "confusion": confusion, "categories": per_cat,
            "ms_per_img_routed": routed_ms, "ms_per_img_oracle": 1000 * oracle_time / len(items),
            "route_ms_per_img": route_ms}


def evaluate_routing(roots: Sequence[str | Path], preset: str = "lmf-core",
                     overrides: dict[str, Any] | None = None, categories: Iterable[str] | None = None,
                     seeds: Sequence[int] = (0,), out_dir: str | Path = "routing",
                     progress: bool = True, device: str = "cpu", n_prototypes: int = 64) -> dict[str, Any]:
    """Routed vs oracle evaluation of one multi-category model per seed (module docstring).

    Args:
        roots: dataset roots; all their categories (or those named in ``categories``) are used.
        n_prototypes: routing prototypes per category (StructCore Eq. 3).

    Returns:
        ``{"preset", "overrides", "config", "categories", "seeds", "runs"}`` (one run per seed),
        also written to ``out_dir/routing.json``; ``routing.md`` holds :func:`markdown`.
    """
    cfg0 = preset_config(preset, overrides)
    cats = load_categories(list(roots), categories)
    names = [c.name for c in cats]
    if len(names) < 2:
        raise PatchbankError(f"routing needs at least two categories, got {names}")
    for cat in cats:            # every category's test set before the first fit
        check_test_set(cat)
    out = out_folder(out_dir)   # a folder that cannot be written: before the work (audit, session 31)
    with file_lock(out, what=f"the routing study in {out}"):   # two into one folder: one after the other
        runs = [_one_seed(cats, cfg0.replace(seed=int(seed)), device, progress, n_prototypes) for seed in seeds]
        result = {"preset": preset, "overrides": overrides or {}, "config": cfg0.to_dict(),
                  "categories": names, "seeds": [int(s) for s in seeds], "runs": runs}
        write_json(out / "routing.json", result, indent=1, newline=False)
        write_text(out / "routing.md", markdown(result))
    return result


def _ms(values: list[float]) -> str:
    """``mean ± std`` of ``values`` (3 decimals); ``–`` when one is missing."""
    if any(v is None for v in values):
        return MISSING
    return format_mean_std(float(np.mean(values)), float(np.std(values)))


def markdown(result: dict[str, Any]) -> str:
    """``routing.md``: routing accuracy and latency, then routed and oracle metrics per category,
    mean ± std over seeds."""
    runs = result["runs"]
    lines = [f"categories {', '.join(result['categories'])}; seeds {', '.join(map(str, result['seeds']))}; "
             f"mean ± std over seeds", "",
             f"routing accuracy (all test images): {_ms([r['routing_accuracy'] for r in runs])}; "
             f"latency routed {_ms([r['ms_per_img_routed'] for r in runs])} ms/img, oracle "
             f"{_ms([r['ms_per_img_oracle'] for r in runs])} ms/img, routing step "
             f"{_ms([r['route_ms_per_img'] for r in runs])} ms/img", ""]
    rows = []
    for c in result["categories"]:
        acc = _ms([r["categories"][c]["routing_accuracy"] for r in runs])
        for system in ("routed", "oracle"):
            cells = [_ms([r["categories"][c][system][k] for r in runs]) for k in KEYS]
            rows.append([c, acc if system == "routed" else "", system] + cells)
    lines += pipe_table(["category", "routing acc.", "system", *KEYS], rows)
    return "\n".join(lines) + "\n"
