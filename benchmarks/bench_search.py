"""Recall and speed of the search kinds on one category's bank (exact, faiss-ivf, faiss-ivfpq).

Fits the preset on ``ROOT/train/good`` (or loads ``--model``), embeds ``--images`` test images
(784 patch queries each at 224 px), and reports for each search kind: recall@1 against the exact
search, the ratio of mean nearest-neighbour distances (approximate / exact), the FAISS index size
and the search time per image at batch 16 and batch 1 (queries of 16 / 1 images per call; the
fastest of ``--repeats`` passes).  ``--kinds`` adds other IVF list / probe counts and FAISS
HNSW, to see what any search would cost here.  The accuracy cost of each kind on the full test
set is measured separately with ``bench_core.py --set search=...``.

    python benchmarks/bench_search.py ../shared/data/mtd --out benchmarks/results/search_mtd_lmf-core.json
    python benchmarks/bench_search.py ../shared/data/mtd --model MODEL --kinds faiss-ivf faiss-ivfpq \
        ivf:977:4 ivf:512:6 ivf:256:4 hnsw:16:16 hnsw:16:8 hnsw:32:32 --out benchmarks/results/search_grid_mtd.json
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from patchbank.studies.speed import machine, test_images
from patchbank.config import Config
from patchbank.detector import Detector
from patchbank.io.images import list_images
from patchbank.search import ExactSearch, FaissSearch, ivf_nlist
from patchbank.runtime.threads import set_threads


class _Hnsw:
    """FAISS HNSW-Flat over the bank (an alternative measured here, not a patchbank option)."""

    def __init__(self, bank: torch.Tensor, m: int, ef: int):
        import faiss

        self.index = faiss.IndexHNSWFlat(bank.shape[1], m)
        self.index.hnsw.efConstruction = 40
        self.index.add(bank.float().numpy())
        self.index.hnsw.efSearch = ef

    def search(self, q: torch.Tensor, k: int = 1):
        d, i = self.index.search(q.float().numpy(), k)
        return torch.from_numpy(d), torch.from_numpy(i).long()


def _make(spec: str, bank: torch.Tensor, cfg):
    """(name, search) for one --kinds entry."""
    kind, *nums = spec.split(":")
    if kind == "exact":
        return spec, ExactSearch(bank)
    if kind == "faiss-ivf" and not nums:
        return spec, FaissSearch(bank, "ivf", nprobe=cfg.ivf_probe, seed=cfg.seed)
    if kind == "faiss-ivfpq":
        return spec, FaissSearch(bank, "ivfpq", nprobe=cfg.ivf_probe, seed=cfg.seed, refine=cfg.pq_refine)
    if kind == "ivf":
        nlist, nprobe = map(int, nums)
        return spec, FaissSearch(bank, "ivf", nlist=nlist, nprobe=nprobe, seed=cfg.seed)
    if kind == "hnsw":
        m, ef = map(int, nums)
        return spec, _Hnsw(bank, m, ef)
    raise SystemExit(f"unknown --kinds entry {spec!r}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--preset", default="lmf-core")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per kind (fastest kept)")
    ap.add_argument("--kinds", nargs="+", default=["exact", "faiss-ivf", "faiss-ivfpq"],
                    help="exact, faiss-ivf, faiss-ivfpq (the product's settings), ivf:NLIST:NPROBE, "
                         "hnsw:M:EF_SEARCH (FAISS HNSW-Flat, not a patchbank option)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {args.repeats}")
    set_threads(args.threads)
    if args.model:
        det = Detector.load(args.model, progress=False)
    else:
        det = Detector(Config.preset(args.preset), progress=False).fit(list_images(args.root / "train" / "good"))
    items, _ = test_images(args.root)
    pick = np.linspace(0, len(items) - 1, min(args.images, len(items))).round().astype(int)
    embs = []
    with torch.inference_mode():
        for x, _ in det.stream([items[i] for i in pick], 16):
            layers, _ = det.extractor(x)
            embs.append(det.embed(layers))
    q = torch.cat(embs)
    per_image = q.shape[0] // len(pick)
    bank = det.bank_
    cfg = det.config
    exact = ExactSearch(bank)
    ed, ei = exact.search(q, 1)
    rows = []
    for spec in args.kinds:
        name, search = _make(spec, bank, cfg)
        d, i = search.search(q, 1)
        row = {"search": name, "recall_at_1": float((i[:, 0] == ei[:, 0]).float().mean()),
               "nn_distance_ratio": float(d[:, 0].sqrt().mean() / ed[:, 0].sqrt().mean())}
        for bs in (16, 1):
            # fastest of --repeats passes over the queries, bs images' queries per call
            best = math.inf
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                for chunk in q.split(bs * per_image):
                    search.search(chunk, 1)
                best = min(best, time.perf_counter() - t0)
            row[f"search_ms_per_image_b{bs}"] = best / len(pick) * 1000
        if isinstance(search, FaissSearch):
            import faiss

            row["index_mb"] = faiss.serialize_index(search.index).nbytes / 1e6
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"root": str(args.root), "preset": args.preset, "bank": list(bank.shape),
              "queries": int(q.shape[0]), "images": len(pick), "ivf_probe": cfg.ivf_probe,
              "ivf_nlist": ivf_nlist(bank.shape[0]), "repeats": args.repeats,
              "pq_refine": cfg.pq_refine, "rows": rows, "machine": machine(),
              "command": "python benchmarks/bench_search.py " + " ".join(argv or [])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
