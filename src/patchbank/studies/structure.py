"""StructCore's tables from one fit per category and seed: base vs struct vs hybrid (Table 3-4
style), descriptor subsets (Tables 5 and 7), distances (Table 6) and the Fig. 2 scatter.

The structural score never changes the anomaly map, so every variant shares one fit and one
pass over the test images: the run keeps, per test image, the base score S_base and the full
descriptor phi(S) (Eq. 7), and per held-out train-good image the same two values; each variant
is then a :class:`~patchbank.pipeline.structure.StructScorer` fitted on the train-good values.  Pixel
metrics are computed once per run and are the same for every variant by construction.

Outputs in ``out_dir``: ``runs/<category>__seed<seed>.json`` (resumable, like ``evaluate``),
``structure.csv`` / ``structure.json`` / ``structure.md`` (mean ± std over seeds of image AUROC,
AP and F1-max per variant, per category and over categories), and ``fig2_<category>.png``.
"""
from __future__ import annotations

import csv
import itertools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from patchbank.config import STRUCT_COMPONENTS, STRUCT_DISTANCES, Config
from patchbank.io.datasets import Category, read_dataset
from patchbank.errors import PatchbankError
from patchbank.evaluation.metrics import image_metrics
from patchbank.pipeline.structure import StructScorer

IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1_max")
RUN_FORMAT = 1
FIG2_QUANTILE = 0.995   # StructCore Fig. 2: thresholds at the 99.5% quantile of train-good scores


def subsets() -> list[tuple[str, ...]]:
    """All non-empty subsets of the descriptor components, in the order of Tables 5 and 7."""
    return [c for r in range(1, len(STRUCT_COMPONENTS) + 1)
            for c in itertools.combinations(STRUCT_COMPONENTS, r)]


def variants(data: dict[str, Any], lam: float | None = None) -> dict[str, np.ndarray]:
    """Every variant's test-image scores from one run's stored values.

    Keys: ``base``; ``struct`` and ``hybrid`` (all components, Mahalanobis, Eq. 10-12);
    ``hybrid[<subset>]`` / ``struct[<subset>]`` for each descriptor subset; ``hybrid{<distance>}``
    for each Table 6 distance (all components).
    """
    cal_phi, cal_base = np.asarray(data["cal_descriptors"]), np.asarray(data["cal_base"])
    phi, base = np.asarray(data["descriptors"]), np.asarray(data["base"])
    out = {"base": base}
    for comps in subsets():
        sc = StructScorer(comps, "mahalanobis", lam).fit(cal_phi, cal_base)
        tag = "+".join(comps)
        out[f"struct[{tag}]"] = sc.struct(phi).numpy()
        out[f"hybrid[{tag}]"] = sc.hybrid(base, phi).numpy()
    full = "+".join(STRUCT_COMPONENTS)
    out["struct"], out["hybrid"] = out[f"struct[{full}]"], out[f"hybrid[{full}]"]
    for dist in STRUCT_DISTANCES:
        sc = StructScorer(STRUCT_COMPONENTS, dist, lam).fit(cal_phi, cal_base)
        out[f"hybrid{{{dist}}}"] = sc.hybrid(base, phi).numpy()
    return out


def _run_category(category: Category, config: Config, device: str, progress: bool) -> dict[str, Any]:
    from patchbank.detector import Detector
    from patchbank.io.images import crop_mask
    from patchbank.io.datasets import load_mask
    from patchbank.evaluation.metrics import PixelMetrics

    if len(set(category.labels)) < 2:
        raise PatchbankError(f"category {category.name!r}: the test set needs both good and "
                             f"defective images")
    det = Detector(config, device=device, progress=progress)
    t0 = time.perf_counter()
    det.fit([str(p) for p in category.train])
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    preds = det.predict([str(p) for p in category.test])
    ms = 1000 * (time.perf_counter() - t0) / len(preds)
    pixel = None
    if category.has_masks:
        with PixelMetrics() as pm:
            for img, mask_path, pred in zip(category.test, category.masks, preds):
                mask = (np.zeros(config.input_size, dtype=bool) if mask_path is None
                        else crop_mask(load_mask(mask_path, img), config))
                pm.update(pred.anomaly_map, mask)
            pixel = {k: float(v) for k, v in pm.compute().items()}
    return {"labels": [int(v) for v in category.labels],
            "base": [p.base_score for p in preds],
            "descriptors": [p.descriptor.tolist() for p in preds],
            "cal_base": det.calibration_base_scores_.tolist(),
            "cal_descriptors": det.calibration_descriptors_.tolist(),
            "lambda_auto": det.struct_.lambda_ if config.hybrid_lambda is None else None,
            "pixel": pixel, "fit_s": fit_s, "ms_per_img": ms}


def study(roots: Sequence[str | Path], preset: str = "structcore", overrides: dict[str, Any] | None = None,
          categories: Iterable[str] | None = None, seeds: Sequence[int] = (0,),
          out_dir: str | Path = "structure", resume: bool = True, progress: bool = True,
          device: str = "cpu", plot: bool = True) -> dict[str, Any]:
    """Fit and test every category x seed once, then score all variants; write the tables."""
    base_cfg = Config.preset(preset, **(overrides or {}))
    cats: list[Category] = []
    wanted = list(categories) if categories else None
    for root in roots:
        cats.extend(read_dataset(root))
    if wanted:
        missing = sorted(set(wanted) - {c.name for c in cats})
        if missing:
            raise PatchbankError(f"unknown categor{'y' if len(missing) == 1 else 'ies'} "
                                 f"{', '.join(missing)}; available: {', '.join(c.name for c in cats)}")
        cats = [c for c in cats if c.name in wanted]
    out = Path(out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    for cat in cats:
        for seed in seeds:
            cfg = base_cfg.replace(seed=int(seed))
            path = out / "runs" / f"{cat.name}__seed{seed}.json"
            data = None
            if resume and path.is_file():
                old = json.loads(path.read_text())
                if old.get("config") == cfg.to_dict() and old.get("format") == RUN_FORMAT:
                    data = old["data"]
            if data is None:
                if progress:
                    print(f"[structure] {cat.name} seed {seed}", file=sys.stderr, flush=True)
                data = _run_category(cat, cfg, device, progress)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps({"format": RUN_FORMAT, "config": cfg.to_dict(), "data": data}))
                tmp.replace(path)
            runs[(cat.name, int(seed))] = data
    table = summarize(runs, [c.name for c in cats], [int(s) for s in seeds], base_cfg.hybrid_lambda)
    write_tables(out, table)
    if plot:
        for cat in cats:
            fig2(runs[(cat.name, int(seeds[0]))], out / f"fig2_{cat.name}.png", title=cat.name)
    return table


def summarize(runs: dict[tuple[str, int], dict[str, Any]], categories: Sequence[str],
              seeds: Sequence[int], lam: float | None = None) -> dict[str, Any]:
    """{variant: {category | "mean": {metric: (mean, std)}}} plus the pixel metrics per category."""
    per: dict[str, dict[str, dict[str, list[float]]]] = {}
    for (cat, seed), data in runs.items():
        for name, scores in variants(data, lam).items():
            m = image_metrics(data["labels"], scores)
            slot = per.setdefault(name, {}).setdefault(cat, {k: [] for k in IMAGE_METRICS})
            for k in IMAGE_METRICS:
                slot[k].append(float(m[k]))
    table: dict[str, Any] = {"variants": {}, "categories": list(categories), "seeds": list(seeds)}
    for name, cats in per.items():
        row = {}
        for cat in categories:
            row[cat] = {k: (float(np.mean(v)), float(np.std(v))) for k, v in cats[cat].items()}
        # mean row: mean over categories; std over seeds of the per-seed category mean
        row["mean"] = {}
        for k in IMAGE_METRICS:
            per_seed = np.mean([[cats[c][k][i] for c in categories] for i in range(len(seeds))], axis=1)
            row["mean"][k] = (float(per_seed.mean()), float(per_seed.std()))
        table["variants"][name] = row
    pixel = {}
    for cat in categories:
        vals = [runs[(cat, s)]["pixel"] for s in seeds if runs[(cat, s)]["pixel"] is not None]
        if vals:
            pixel[cat] = {k: (float(np.mean([v[k] for v in vals])), float(np.std([v[k] for v in vals])))
                          for k in vals[0]}
    table["pixel"] = pixel
    table["lambda_auto"] = {cat: float(np.mean([runs[(cat, s)]["lambda_auto"] or math.nan for s in seeds]))
                            for cat in categories}
    return table


def _fmt(cell: tuple[float, float]) -> str:
    return f"{cell[0]:.3f} ± {cell[1]:.3f}"


def write_tables(out: Path, table: dict[str, Any]) -> None:
    cols = table["categories"] + (["mean"] if len(table["categories"]) > 1 else [])
    (out / "structure.json").write_text(json.dumps(table, indent=1))
    with open(out / "structure.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["variant", "category", *[f"{k}_{s}" for k in IMAGE_METRICS for s in ("mean", "std")]])
        for name, row in table["variants"].items():
            for c in cols:
                w.writerow([name, c, *[f"{v:.6f}" for k in IMAGE_METRICS for v in row[c][k]]])
    groups = [("Scores (Eqs. 6, 10, 12)", ["base", "struct", "hybrid"]),
              ("Descriptor subsets, hybrid (Tables 5 and 7)",
               [f"hybrid[{'+'.join(s)}]" for s in subsets()]),
              ("Descriptor subsets, struct only", [f"struct[{'+'.join(s)}]" for s in subsets()]),
              ("Distances, hybrid with all components (Table 6)",
               [f"hybrid{{{d}}}" for d in STRUCT_DISTANCES])]
    lines = [f"seeds {', '.join(map(str, table['seeds']))}; cells mean ± std over seeds "
             f"(image AUROC / AP / F1-max)", ""]
    for title, names in groups:
        lines += [f"**{title}**", "", "| variant | " + " | ".join(cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for n in names:
            row = table["variants"][n]
            lines.append(f"| {n} | " + " | ".join(
                " / ".join(f"{row[c][k][0]:.3f}" for k in IMAGE_METRICS) + f" (±{row[c]['image_auroc'][1]:.3f})"
                for c in cols) + " |")
        lines.append("")
    if table["pixel"]:
        lines += ["**Pixel metrics** (one per run, identical for every variant)", "",
                  "| category | pixel AUROC | pixel AP | pixel F1-max | AUPRO |", "|---|---|---|---|---|"]
        for c, v in table["pixel"].items():
            lines.append(f"| {c} | " + " | ".join(_fmt(v[k]) for k in
                                                   ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")) + " |")
        lines.append("")
    lines.append("lambda_auto (mean over seeds): " + ", ".join(f"{c} {v:.4g}" for c, v in table["lambda_auto"].items()))
    (out / "structure.md").write_text("\n".join(lines) + "\n")


def fig2_counts(data: dict[str, Any], lam: float | None = None,
                quantile: float = FIG2_QUANTILE) -> dict[str, Any]:
    """Thresholds at the ``quantile`` of train-good scores for base and hybrid, and the counts of
    the four cross-over regions per label (StructCore Fig. 2)."""
    sc = StructScorer(STRUCT_COMPONENTS, "mahalanobis", lam).fit(data["cal_descriptors"], data["cal_base"])
    cal_base = np.asarray(data["cal_base"])
    cal_hyb = sc.hybrid(cal_base, data["cal_descriptors"]).numpy()
    tb, th = float(np.quantile(cal_base, quantile)), float(np.quantile(cal_hyb, quantile))
    base = np.asarray(data["base"])
    hyb = sc.hybrid(base, data["descriptors"]).numpy()
    labels = np.asarray(data["labels"])
    counts = {}
    for lab, name in ((1, "defective"), (0, "good")):
        b, h = base[labels == lab] > tb, hyb[labels == lab] > th
        counts[name] = {"both_flag": int((b & h).sum()), "only_base_flags": int((b & ~h).sum()),
                        "only_hybrid_flags": int((~b & h).sum()), "neither": int((~b & ~h).sum())}
    return {"base_threshold": tb, "hybrid_threshold": th, "lambda": sc.lambda_, "counts": counts,
            "base": base, "hybrid": hyb, "labels": labels}


def fig2(data: dict[str, Any], path: str | Path, title: str = "", lam: float | None = None) -> dict[str, Any]:
    """Scatter base (x) vs hybrid (y) score per test image, coloured by label, with both
    thresholds; returns :func:`fig2_counts`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = fig2_counts(data, lam)
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=110)
    for lab, colour, name in ((0, "tab:blue", "good"), (1, "tab:red", "defective")):
        m = res["labels"] == lab
        ax.scatter(res["base"][m], res["hybrid"][m], s=10, c=colour, alpha=0.6, label=name)
    ax.axvline(res["base_threshold"], color="gray", ls="--", lw=1)
    ax.axhline(res["hybrid_threshold"], color="black", ls=":", lw=1)
    c = res["counts"]
    ax.set_title(f"{title}: defects caught only by hybrid {c['defective']['only_hybrid_flags']}, "
                 f"only by base {c['defective']['only_base_flags']}\n"
                 f"good flagged only by base {c['good']['only_base_flags']}, "
                 f"only by hybrid {c['good']['only_hybrid_flags']}", fontsize=8)
    ax.set_xlabel("base score (max)")
    ax.set_ylabel(f"hybrid score (lambda {res['lambda']:.3g})")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return res
