"""What the structure-aware score and routing add to per-image latency (issue: < 5% together).

    python benchmarks/bench_structure_cost.py                       # mtd + ksdd, lmf-core + hybrid
    python benchmarks/bench_structure_cost.py --roots A B --batch-size 1

Fits one routed multi-category model over the given dataset roots (training images), then
predicts the test images of the first root three ways and reports ms per image:

* ``routed``   the full multi-category predict (routing, scoring, maps, descriptor, hybrid);
* ``route``    the routing step alone (from ``MultiDetector.last_timings_``);
* ``structure`` the descriptor phi(S) (Eq. 7) recomputed on the same maps, timed alone, plus the
  hybrid arithmetic (negligible);
* ``plain``    = routed - route - structure: what a single-category model without the
  structural score costs.

Overhead = (route + structure) / plain.  Writes a JSON with the machine description to
benchmarks/results/structure_cost.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from patchbank.config import Config
from patchbank.evaluation.inputs import load_categories
from patchbank.multi import MultiDetector
from patchbank.pipeline.structure import COMPONENTS, descriptor
from patchbank.studies.speed import machine

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"


def main() -> None:
    """Fit the routed model, time the predict passes, print and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--roots", nargs="+", default=[str(SHARED / "mtd"), str(SHARED / "ksdd")])
    ap.add_argument("--preset", default="lmf-core")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=2, help="timed predict passes (best is kept)")
    ap.add_argument("--out", default=str(HERE / "results" / "structure_cost.json"))
    args = ap.parse_args()

    cfg = Config.preset(args.preset, image_score="hybrid")
    cats = load_categories(list(args.roots))
    model = MultiDetector(cfg, progress=False)
    t0 = time.perf_counter()
    model.fit({c.name: [str(p) for p in c.train] for c in cats})
    fit_s = time.perf_counter() - t0
    test = [str(p) for p in cats[0].test]
    model.predict(test[: args.batch_size], batch_size=args.batch_size)  # warm-up

    best = None
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        preds = model.predict(test, batch_size=args.batch_size)
        total = time.perf_counter() - t0
        route = model.last_timings_["route"]
        maps = torch.from_numpy(np.stack([p.anomaly_map for p in preds]))
        t0 = time.perf_counter()
        for chunk in maps.split(args.batch_size):
            descriptor(chunk, COMPONENTS, cfg.struct_topk_ratio)
        struct = time.perf_counter() - t0
        row = {"routed_ms": 1000 * total / len(test), "route_ms": 1000 * route / len(test),
               "structure_ms": 1000 * struct / len(test)}
        if best is None or row["routed_ms"] < best["routed_ms"]:
            best = row
    best["plain_ms"] = best["routed_ms"] - best["route_ms"] - best["structure_ms"]
    best["overhead"] = (best["route_ms"] + best["structure_ms"]) / best["plain_ms"]
    best["routing_accuracy"] = sum(p.category == cats[0].name for p in preds) / len(preds)
    result = {"roots": args.roots, "categories": [c.name for c in cats], "preset": args.preset,
              "image_score": "hybrid", "batch_size": args.batch_size, "n_test": len(test),
              "fit_s": fit_s, **best, "machine": machine()}
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
