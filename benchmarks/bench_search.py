"""Recall and speed of the search kinds on one category's bank (exact, faiss-ivf, faiss-ivfpq).

Fits the preset on ``ROOT/train/good`` (or loads ``--model``), embeds ``--images`` test images
(784 patch queries each at 224 px), and reports for each search kind: recall@1 against the exact
search, the ratio of mean nearest-neighbour distances (approximate / exact), the FAISS index size
and the search time per image at batch 16 (queries of 16 images per call).  The accuracy cost of
each kind on the full test set is measured separately with ``bench_core.py --set search=...``.

    python benchmarks/bench_search.py ../shared/data/mtd --out benchmarks/results/search_mtd_lmf-core.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from patchbank.benchmark import machine, test_images
from patchbank.config import Config
from patchbank.detector import Detector
from patchbank.images import list_images
from patchbank.search import ExactSearch, FaissSearch
from patchbank.threads import set_threads


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--preset", default="lmf-core")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    if args.model:
        det = Detector.load(args.model, progress=False)
    else:
        det = Detector(Config.preset(args.preset), progress=False).fit(list_images(args.root / "train" / "good"))
    items, _ = test_images(args.root)
    pick = np.linspace(0, len(items) - 1, min(args.images, len(items))).round().astype(int)
    embs = []
    with torch.inference_mode():
        for x, _ in det._stream([items[i] for i in pick], 16):
            layers, _ = det._layers(x)
            embs.append(det._embed(layers))
    q = torch.cat(embs)
    per_image = q.shape[0] // len(pick)
    bank = det.bank_
    cfg = det.config
    exact = ExactSearch(bank)
    ed, ei = exact.search(q, 1)
    rows = []
    for name, search in (("exact", exact),
                         ("faiss-ivf", FaissSearch(bank, "ivf", nprobe=cfg.ivf_probe, seed=cfg.seed)),
                         ("faiss-ivfpq", FaissSearch(bank, "ivfpq", nprobe=cfg.ivf_probe, seed=cfg.seed,
                                                     refine=cfg.pq_refine))):
        t0 = time.perf_counter()
        outs = [search.search(chunk, 1) for chunk in q.split(16 * per_image)]
        dt = time.perf_counter() - t0
        d = torch.cat([o[0] for o in outs])
        i = torch.cat([o[1] for o in outs])
        row = {"search": name, "recall_at_1": float((i[:, 0] == ei[:, 0]).float().mean()),
               "nn_distance_ratio": float(d[:, 0].sqrt().mean() / ed[:, 0].sqrt().mean()),
               "search_ms_per_image_b16": dt / len(pick) * 1000}
        if isinstance(search, FaissSearch):
            import faiss

            row["index_mb"] = faiss.serialize_index(search.index).nbytes / 1e6
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"root": str(args.root), "preset": args.preset, "bank": list(bank.shape),
              "queries": int(q.shape[0]), "images": len(pick), "ivf_probe": cfg.ivf_probe,
              "pq_refine": cfg.pq_refine, "rows": rows, "machine": machine(),
              "command": "python benchmarks/bench_search.py " + " ".join(argv or [])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
