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

import json
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from patchbank.config import Config
from patchbank.io.datasets import Category, load_mask, read_dataset
from patchbank.errors import PatchbankError
from patchbank.evaluation.metrics import PixelMetrics, image_metrics

KEYS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "aupro")


def _metrics(cat: Category, preds, config: Config) -> dict[str, float | None]:
    from patchbank.io.images import crop_mask

    out: dict[str, float | None] = dict.fromkeys(KEYS)
    out.update({k: float(v) for k, v in image_metrics(cat.labels, [p.score for p in preds]).items()})
    if cat.has_masks:
        with PixelMetrics() as pm:
            for img, mask_path, pred in zip(cat.test, cat.masks, preds):
                mask = (np.zeros(config.input_size, dtype=bool) if mask_path is None
                        else crop_mask(load_mask(mask_path, img), config))
                pm.update(pred.anomaly_map, mask)
            px = pm.compute()
        out["pixel_auroc"], out["aupro"] = float(px["pixel_auroc"]), float(px["aupro"])
    return out


def evaluate_routing(roots: Sequence[str | Path], preset: str = "lmf-core",
                     overrides: dict[str, Any] | None = None, categories: Iterable[str] | None = None,
                     seeds: Sequence[int] = (0,), out_dir: str | Path = "routing",
                     progress: bool = True, device: str = "cpu", n_prototypes: int = 64) -> dict[str, Any]:
    from patchbank.multi import MultiDetector

    cfg0 = Config.preset(preset, **(overrides or {}))
    cats: list[Category] = [c for r in roots for c in read_dataset(r)]
    if categories:
        wanted = list(categories)
        cats = [c for c in cats if c.name in wanted]
    names = [c.name for c in cats]
    if len(names) < 2:
        raise PatchbankError(f"routing needs at least two categories, got {names}")
    if len(set(names)) != len(names):
        raise PatchbankError(f"category names repeat across the roots: {names}")
    runs = []
    for seed in seeds:
        cfg = cfg0.replace(seed=int(seed))
        if progress:
            print(f"[routing] seed {seed}: fitting {', '.join(names)}", file=sys.stderr, flush=True)
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
        confusion = {t: {c: 0 for c in names} for t in names}
        for t, c in zip(truth, chosen):
            confusion[t][c] += 1
        per_cat = {}
        pos = 0
        oracle_time = 0.0
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
        runs.append({"seed": int(seed), "fit_s": fit_s,
                     "routing_accuracy": float(np.mean([t == c for t, c in zip(truth, chosen)])),
                     "confusion": confusion, "categories": per_cat,
                     "ms_per_img_routed": routed_ms, "ms_per_img_oracle": 1000 * oracle_time / len(items),
                     "route_ms_per_img": route_ms})
    result = {"preset": preset, "overrides": overrides or {}, "config": cfg0.to_dict(),
              "categories": names, "seeds": [int(s) for s in seeds], "runs": runs}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "routing.json").write_text(json.dumps(result, indent=1))
    (out / "routing.md").write_text(markdown(result))
    return result


def _ms(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def markdown(result: dict[str, Any]) -> str:
    runs = result["runs"]
    lines = [f"categories {', '.join(result['categories'])}; seeds {', '.join(map(str, result['seeds']))}; "
             f"mean ± std over seeds", "",
             f"routing accuracy (all test images): {_ms([r['routing_accuracy'] for r in runs])}; "
             f"latency routed {_ms([r['ms_per_img_routed'] for r in runs])} ms/img, oracle "
             f"{_ms([r['ms_per_img_oracle'] for r in runs])} ms/img, routing step "
             f"{_ms([r['route_ms_per_img'] for r in runs])} ms/img", "",
             "| category | routing acc. | system | " + " | ".join(KEYS) + " |",
             "|---|---|---|" + "---|" * len(KEYS)]
    for c in result["categories"]:
        acc = _ms([r["categories"][c]["routing_accuracy"] for r in runs])
        for system in ("routed", "oracle"):
            cells = []
            for k in KEYS:
                vals = [r["categories"][c][system][k] for r in runs]
                cells.append("–" if any(v is None for v in vals) else _ms(vals))
            lines.append(f"| {c} | {acc if system == 'routed' else ''} | {system} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
