"""A map lever: subtract each test image's own baseline (a low quantile of its map) before the
pixel metrics, so that images whose normal pixels all score high (exposure, texture) stop
outranking weak defects of other images in the pooled pixel ranking.

    python benchmarks/map_baseline.py ../shared/data/mtd --seeds 0,1,2 -o benchmarks/results/levers/map_baseline_mtd_s14.json

Variants, fixed before any result was seen: ``plain`` (the preset's maps), ``q10`` and ``q50``
(the map minus its 10% / 50% quantile).  One fit per seed of the default preset; image metrics do
not depend on the map, so only the pixel metrics (``patchbank.evaluation.scoring.pixel_scores``,
as ``patchbank evaluate`` computes them) are reported, per seed and as means.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from patchbank.config import DEFAULT_PRESET
from patchbank.detector import Detector
from patchbank.evaluation.scoring import pixel_scores
from patchbank.io.datasets import read_dataset
from patchbank.runtime.threads import set_threads
from patchbank.studies.speed import machine

VARIANTS = {"plain": None, "q10": 0.10, "q50": 0.50}


def variant_maps(maps: list[np.ndarray], q: float | None) -> list[np.ndarray]:
    """Each map minus its own ``q`` quantile (None: unchanged)."""
    return maps if q is None else [m - np.quantile(m, q) for m in maps]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    set_threads(args.threads)
    (category,) = read_dataset(args.root)
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        det = Detector.from_preset(DEFAULT_PRESET, progress=False, seed=seed).fit(
            [str(p) for p in category.train])
        maps = [p.anomaly_map for p in det.predict([str(p) for p in category.test])]
        row = {"seed": seed, **{name: pixel_scores(category, variant_maps(maps, q), det.config)
                                for name, q in VARIANTS.items()}}
        print(json.dumps(row), flush=True)
        runs.append(row)
    keys = list(runs[0]["plain"])
    means = {name: {k: float(np.mean([r[name][k] for r in runs])) for k in keys} for name in VARIANTS}
    out = {"root": str(args.root), "preset": DEFAULT_PRESET, "variants": VARIANTS, "runs": runs,
           "means": means, "machine": machine(), "command": " ".join(sys.argv)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    for name, m in means.items():
        print(name, " ".join(f"{k} {v:.4f}" for k, v in m.items()))


if __name__ == "__main__":
    main()
