"""StructCore's tables from one fit per category and seed: base vs struct vs hybrid (Table 3-4
style), descriptor subsets (Tables 5 and 7), distances (Table 6) and the Fig. 2 scatter.

The structural score never changes the anomaly map, so every variant shares one fit and one
pass over the test images: the run keeps, per test image, the base score S_base and the full
descriptor phi(S) (Eq. 7), and per calibration (train-good) image the same two values; each variant
is then a :class:`~patchbank.pipeline.structure.StructScorer` fitted on the train-good values.  Pixel
metrics are computed once per run and are the same for every variant by construction.

Outputs in ``out_dir``: ``runs/<category>__seed<seed>.json`` (resumable, like ``evaluate``:
:class:`~patchbank.evaluation.run_store.RunStore`, payload ``data``, one compact line),
``structure.csv`` / ``structure.json`` / ``structure.md`` (mean ± std over seeds of image AUROC,
AP and F1-max per variant, per category and over categories), and ``fig2_<category>.png``.
"""
from __future__ import annotations

import itertools
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from patchbank.config import STRUCT_COMPONENTS, STRUCT_DISTANCES, Config
from patchbank.evaluation import plots
from patchbank.evaluation.inputs import load_categories, out_folder, preset_config, say
from patchbank.evaluation.metrics import image_metrics
from patchbank.evaluation.reports import format_mean_std, mean_std, pipe_table, write_csv, write_json, write_text
from patchbank.evaluation.run_store import RUN_FORMAT, STORED_RUN_PROBLEMS, RunStore, data_fingerprint
from patchbank.evaluation.runner import BackboneCache, run_expectations
from patchbank.evaluation.scoring import PIXEL_KEYS, check_test_set, pixel_scores
from patchbank.io.datasets import Category
from patchbank.io.output_files import file_lock
from patchbank.pipeline.structure import StructScorer

IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1_max")
FIG2_QUANTILE = 0.995   # StructCore Fig. 2: thresholds at the 99.5% quantile of train-good scores


def _hybrid(scorer: StructScorer, base, phi) -> np.ndarray:
    """Eq. 12 with a fitted scorer: S_hyb = S_base + lambda * D_struct (float64)."""
    return np.asarray(base, dtype=np.float64) + scorer.lambda_ * scorer.struct(phi).numpy()


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
        out[f"hybrid[{tag}]"] = _hybrid(sc, base, phi)
    full = "+".join(STRUCT_COMPONENTS)
    out["struct"], out["hybrid"] = out[f"struct[{full}]"], out[f"hybrid[{full}]"]
    for dist in STRUCT_DISTANCES:
        sc = StructScorer(STRUCT_COMPONENTS, dist, lam).fit(cal_phi, cal_base)
        out[f"hybrid{{{dist}}}"] = _hybrid(sc, base, phi)
    return out


def _run_category(category: Category, config: Config, device: str, progress: bool,
                  backbones: BackboneCache) -> dict[str, Any]:
    """Fit once, predict the test images once; the per-image values every variant is scored from."""
    det = backbones.detector(config, device, progress)
    t0 = time.perf_counter()
    det.fit([str(p) for p in category.train])
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    preds = det.predict([str(p) for p in category.test])
    ms = 1000 * (time.perf_counter() - t0) / len(preds)
    pixel = pixel_scores(category, [p.anomaly_map for p in preds], det.config) if category.has_masks else None
    state = det.state_tensors()   # the calibration images' values, as a model file stores them
    return {"labels": [int(v) for v in category.labels],
            "base": [p.base_score for p in preds],
            "descriptors": [p.descriptor.tolist() for p in preds],
            "cal_base": state["calibration_base_scores"].numpy().tolist(),
            "cal_descriptors": state["calibration_descriptors"].numpy().tolist(),
            "lambda_auto": det.info()["structure_lambda"] if config.hybrid_lambda is None else None,
            "pixel": pixel, "fit_s": fit_s, "ms_per_img": ms}


def _stored_or_new(store: RunStore, cat: Category, seed: int, config: Config, resume: bool,
                   device: str, progress: bool, backbones: BackboneCache) -> dict[str, Any]:
    """The stored values of ``cat`` x ``seed`` (with ``resume``, when config, data, device and
    backbone weights match, as :func:`~patchbank.evaluation.runner.evaluate` checks), else a
    new run, saved with its data fingerprint, device and weights' sha256.  Reuse, and why a
    stored run is not reused, are said on stderr even when quiet."""
    fingerprint = data_fingerprint(cat)
    expect = run_expectations(store, cat.name, seed, config, device, resume, backbones)
    old, why = store.lookup(cat.name, seed, config, "data", fingerprint, expect) if resume else (None, "")
    if old is not None:
        print(f"[structure] reusing stored run {store.path(cat.name, seed)}", file=sys.stderr, flush=True)
        return old["data"]
    if why in STORED_RUN_PROBLEMS:
        print(f"[structure] stored run {store.path(cat.name, seed)} {STORED_RUN_PROBLEMS[why]}; recomputing",
              file=sys.stderr, flush=True)
    say(progress, f"[structure] {cat.name} seed {seed}")
    data = _run_category(cat, config, device, progress, backbones)
    store.save(cat.name, seed, {"format": RUN_FORMAT, "config": config.to_dict(), "device": str(device),
                                "backbone_sha256": backbones.weights_sha256(config, device),
                                "data_fingerprint": fingerprint, "data": data}, indent=None)
    return data


def study(roots: Sequence[str | Path], preset: str = "structcore", overrides: dict[str, Any] | None = None,
          categories: Iterable[str] | None = None, seeds: Sequence[int] = (0,),
          out_dir: str | Path = "structure", resume: bool = True, progress: bool = True,
          device: str = "cpu", plot: bool = True) -> dict[str, Any]:
    """Fit and test every category x seed once, then score all variants; write the tables.

    ``roots``: dataset roots (every category of each, then ``categories`` selected).  Returns
    the table of :func:`summarize`; writes the files of the module docstring in ``out_dir``.
    """
    base_cfg = preset_config(preset, overrides)
    cats = load_categories(list(roots), categories)
    for cat in cats:            # every category's test set before the first fit
        check_test_set(cat)
    out = out_folder(out_dir, "runs")
    store, backbones = RunStore(out / "runs"), BackboneCache()
    with file_lock(out, what=f"the structure study in {out}"):   # two studies into one folder wait
        runs = {(cat.name, int(seed)): _stored_or_new(store, cat, int(seed), base_cfg.replace(seed=int(seed)),
                                                      resume, device, progress, backbones)
                for cat in cats for seed in seeds}
    table = summarize(runs, [c.name for c in cats], [int(s) for s in seeds], base_cfg.hybrid_lambda)
    write_tables(out, table)
    if plot:
        for cat in cats:
            fig2(runs[(cat.name, int(seeds[0]))], out / f"fig2_{cat.name}.png", title=cat.name)
    return table


def _pair(values: Sequence[float]) -> tuple[float, float]:
    """(mean, population std) of ``values``."""
    m = mean_std(values)
    return (m["mean"], m["std"])


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
            row[cat] = {k: _pair(v) for k, v in cats[cat].items()}
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
            pixel[cat] = {k: _pair([v[k] for v in vals]) for k in vals[0]}
    table["pixel"] = pixel
    table["lambda_auto"] = {cat: float(np.mean([runs[(cat, s)]["lambda_auto"] or math.nan for s in seeds]))
                            for cat in categories}
    return table


def _variant_cell(cell: dict[str, tuple[float, float]]) -> str:
    """``AUROC / AP / F1-max (±std of AUROC)`` of one variant and category."""
    return " / ".join(f"{cell[k][0]:.3f}" for k in IMAGE_METRICS) + f" (±{cell['image_auroc'][1]:.3f})"


def _markdown(table: dict[str, Any], cols: list[str]) -> list[str]:
    """structure.md: one table per group of variants, the pixel metrics, lambda_auto."""
    groups = [("Scores (Eqs. 6, 10, 12)", ["base", "struct", "hybrid"]),
              ("Descriptor subsets, hybrid (Tables 5 and 7)",
               [f"hybrid[{'+'.join(s)}]" for s in subsets()]),
              ("Descriptor subsets, struct only", [f"struct[{'+'.join(s)}]" for s in subsets()]),
              ("Distances, hybrid with all components (Table 6)",
               [f"hybrid{{{d}}}" for d in STRUCT_DISTANCES])]
    lines = [f"seeds {', '.join(map(str, table['seeds']))}; cells mean ± std over seeds "
             f"(image AUROC / AP / F1-max)", ""]
    for title, names in groups:
        rows = [[n] + [_variant_cell(table["variants"][n][c]) for c in cols] for n in names]
        lines += [f"**{title}**", ""] + pipe_table(["variant"] + cols, rows) + [""]
    if table["pixel"]:
        rows = [[c] + [format_mean_std(*v[k]) for k in PIXEL_KEYS] for c, v in table["pixel"].items()]
        lines += ["**Pixel metrics** (one per run, identical for every variant)", ""]
        lines += pipe_table(["category", "pixel AUROC", "pixel AP", "pixel F1-max", "AUPRO"], rows) + [""]
    lines.append("lambda_auto (mean over seeds): " + ", ".join(f"{c} {v:.4g}" for c, v in table["lambda_auto"].items()))
    return lines


def write_tables(out: Path, table: dict[str, Any]) -> None:
    """Write ``structure.json``, ``structure.csv`` and ``structure.md`` of :func:`summarize`'s table."""
    cols = table["categories"] + (["mean"] if len(table["categories"]) > 1 else [])
    write_json(out / "structure.json", table, indent=1, newline=False)
    write_csv(out / "structure.csv",
              ["variant", "category", *[f"{k}_{s}" for k in IMAGE_METRICS for s in ("mean", "std")]],
              ([name, c, *[f"{v:.6f}" for k in IMAGE_METRICS for v in row[c][k]]]
               for name, row in table["variants"].items() for c in cols))
    write_text(out / "structure.md", "\n".join(_markdown(table, cols)) + "\n")


def fig2_counts(data: dict[str, Any], lam: float | None = None,
                quantile: float = FIG2_QUANTILE) -> dict[str, Any]:
    """Thresholds at the ``quantile`` of train-good scores for base and hybrid, and the counts of
    the four cross-over regions per label (StructCore Fig. 2)."""
    sc = StructScorer(STRUCT_COMPONENTS, "mahalanobis", lam).fit(data["cal_descriptors"], data["cal_base"])
    cal_base = np.asarray(data["cal_base"])
    cal_hyb = _hybrid(sc, cal_base, data["cal_descriptors"])
    tb, th = float(np.quantile(cal_base, quantile)), float(np.quantile(cal_hyb, quantile))
    base = np.asarray(data["base"])
    hyb = _hybrid(sc, base, data["descriptors"])
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
    res = fig2_counts(data, lam)
    fig, ax = plots.new_axes(figsize=(5.5, 4.5), dpi=110)
    plots.labelled_scatter(ax, res["base"], res["hybrid"], res["labels"],
                           ((0, "tab:blue", "good"), (1, "tab:red", "defective")))
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
    plots.save(fig, path)
    return res
