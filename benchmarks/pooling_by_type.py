"""Image metrics per defect type for each pooling of the patch scores: does the default's top-5%
mean lose small defects that the max would catch?

    python benchmarks/pooling_by_type.py ../shared/data/mtd --seeds 0,1,2 \\
        -o benchmarks/results/levers/pooling_by_type_mtd_s13.json

Fits ``--preset`` (default: the default preset) once per seed, embeds the test images once, and
scores them with each pooling in ``--poolings`` over the same bank (as ``levers.py`` does; with
context taps ``max`` re-searches the top patch, ``topk_mean`` the top 5%).  For every defect type
it reports image AUROC / AP / F1-max over the good test images plus that type's images, and the
share of the image each type's defect covers (mean of its masks at the network input, where
masks exist), so small-defect types can be told from large ones.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import torch

from bench_core import open_study, study_parser
from levers import embed_test
from patchbank.config import Config
from patchbank.detector import Detector
from patchbank.evaluation.by_type import BY_TYPE_METRICS, run_by_type
from patchbank.evaluation.metrics import image_metrics
from patchbank.evaluation.scoring import category_masks
from patchbank.pipeline.scoring import PatchScorer
from patchbank.studies.speed import machine


@torch.inference_mode()
def pooled_scores(det: Detector, emb: torch.Tensor, pooling: str, batch: int = 16) -> np.ndarray:
    """[N] image scores of the test embeddings with ``pooling`` over the fitted bank."""
    base = det.scorer_
    scorer = PatchScorer(det.config.replace(image_score=pooling), base.embedding, base.search,
                         base.grid, base.radius, base.context)
    return np.concatenate([scorer.score(emb[i:i + batch])[0].numpy() for i in range(0, len(emb), batch)])


def by_type(category, scores: np.ndarray) -> dict:
    """Image metrics over all test images and per defect type (good images + that type), by
    :func:`patchbank.evaluation.by_type.run_by_type` on records like ``evaluate``'s."""
    records = [{"label": y, "score": float(s), "defect_type": t}
               for y, s, t in zip(category.labels, scores, category.defect_types)]
    per_type = {t: {k: m[k] for k in BY_TYPE_METRICS} for t, m in run_by_type(records).items()}
    return {"all": image_metrics(np.asarray(category.labels), scores), **per_type}


def defect_area(category, config) -> dict:
    """Mean share of the network-input image that each defect type's masks cover."""
    if not category.has_masks:
        return {}
    shares: dict[str, list[float]] = {}
    for mask, t, y in zip(category_masks(category, config), category.defect_types, category.labels):
        if y == 1:
            shares.setdefault(t, []).append(float(np.mean(mask > 0)))
    return {t: float(np.mean(v)) for t, v in shares.items()}


def main() -> None:
    ap = study_parser(__doc__.split("\n\n")[0], "one MVTec-layout category folder")
    ap.add_argument("--poolings", default="max,topk_mean")
    args = ap.parse_args()
    category, train, overrides, seeds = open_study(args)
    poolings = args.poolings.split(",")
    rows, area = [], None
    for seed in seeds:
        det = Detector(Config.preset(args.preset, **{**overrides, "seed": seed}), progress=False).fit(train)
        area = defect_area(category, det.config) if area is None else area
        emb = embed_test(det, [str(p) for p in category.test])
        res = {p: by_type(category, pooled_scores(det, emb, p)) for p in poolings}
        rows.append({"seed": seed, "results": res})
        for p in poolings:
            print(f"seed {seed} {p:10s} " + "  ".join(f"{t} {m['image_auroc']:.3f}" for t, m in res[p].items()),
                  flush=True)
    mean = {p: {t: {k: float(np.mean([r["results"][p][t][k] for r in rows])) for k in rows[0]["results"][p][t]}
                for t in rows[0]["results"][p]} for p in poolings}
    print("mean over seeds (image AUROC / AP):")
    for p in poolings:
        print(f"  {p:10s} " + "  ".join(f"{t} {m['image_auroc']:.3f}/{m['image_ap']:.3f}" for t, m in mean[p].items()))
    print("defect area share: " + ", ".join(f"{t} {a:.4f}" for t, a in (area or {}).items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"root": str(args.root), "preset": args.preset, "overrides": args.set,
                                    "defect_area": area, "rows": rows, "mean": mean, "machine": machine(),
                                    "command": "python benchmarks/pooling_by_type.py " + " ".join(sys.argv[1:])},
                                   indent=1))


if __name__ == "__main__":
    main()
