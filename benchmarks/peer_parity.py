"""patchbank against the peer (anomalib 2.7 PatchCore, ../shared/peers), image by image.

Fits one configuration per seed on an MVTec-layout category, predicts its test set and compares
with a stored peer result JSON (``../shared/peers/results/peer_<name>_1pct_seed0.json``, which
holds the peer's per-image scores):

* all seven metrics per seed and their mean / std over seeds, next to the peer's (the peer's
  image AP is computed here from its per-image scores with the same code as ours; it reports no
  pixel AP);
* per image: the Spearman rank correlation of our scores with the peer's, and each side's rank
  of every defective image among the good ones (which defects one side misses and the other
  does not).

    python benchmarks/peer_parity.py ../shared/data/ksdd \\
        --peer ../shared/peers/results/peer_ksdd_1pct_seed0.json --preset patchcore \\
        --set coreset_ratio=0.01 patch_border=zero map_upsample=nearest --seeds 0,1,2,3,4 \\
        --tag peer_parity_ksdd

Writes ``benchmarks/results/peer/<tag>.json`` and prints a summary.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from bench_core import parse_value
from patchbank.config import Config
from patchbank.detector import Detector
from patchbank.evaluation.metrics import image_metrics
from patchbank.evaluation.scoring import IMAGE_KEYS, PIXEL_KEYS, score_category
from patchbank.io.datasets import read_dataset
from patchbank.io.images import list_images
from patchbank.runtime.threads import set_threads
from patchbank.studies.speed import machine

KEYS = IMAGE_KEYS + PIXEL_KEYS
PEER_KEYS = {"image_AUROC": "image_auroc", "image_F1Max": "image_f1_max", "pixel_AUROC": "pixel_auroc",
             "pixel_AUPRO": "aupro", "pixel_F1Max": "pixel_f1_max"}


def peer_scores(peer: dict, test: list[Path]) -> np.ndarray:
    """The peer's image scores in the order of ``test`` (matched on the last three path parts)."""
    by_key = {tuple(Path(r["path"]).parts[-3:]): r["score"] for r in peer["per_image"]}
    missing = [p for p in test if tuple(p.parts[-3:]) not in by_key]
    if missing:
        sys.exit(f"error: the peer JSON has no score for {len(missing)} test images, e.g. {missing[0]}")
    return np.array([by_key[tuple(p.parts[-3:])] for p in test], dtype=np.float64)


def defect_ranks(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """For each defective image, the share of good images scoring at least as high (0 = found)."""
    good = np.sort(scores[labels == 0])
    return 1.0 - np.searchsorted(good, scores[labels == 1], side="left") / good.size


def main(argv=None) -> dict:
    """Run the comparison, write the JSON and print a summary; returns the result."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, help="one MVTec-layout category folder")
    ap.add_argument("--peer", type=Path, required=True, help="the peer's result JSON (per-image scores)")
    ap.add_argument("--preset", default="patchcore")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="config overrides")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", required=True, help="name of the result file")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/peer"))
    args = ap.parse_args(argv)
    set_threads(args.threads)
    overrides = {k: parse_value(k, v) for k, v in (kv.split("=", 1) for kv in args.set)}
    peer = json.loads(args.peer.read_text())
    category, = read_dataset(args.root)
    labels = np.asarray(category.labels)
    theirs = peer_scores(peer, list(category.test))
    peer_metrics = {PEER_KEYS[k]: v for k, v in peer["metrics"].items() if k in PEER_KEYS}
    peer_metrics["image_ap"] = image_metrics(labels, theirs)["image_ap"]
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        config = Config.preset(args.preset, seed=seed, **overrides)
        det = Detector(config, progress=False)
        t0 = time.perf_counter()
        det.fit(list_images(args.root / "train" / "good"))
        fit_s = time.perf_counter() - t0
        preds = det.predict([str(p) for p in category.test])
        ours = np.array([p.score for p in preds], dtype=np.float64)
        metrics = score_category(category, preds, config)
        runs.append({"seed": seed, "metrics": metrics, "fit_s": fit_s,
                     "bank_entries": int(det.scorer_.search.shape[0]),
                     "spearman_vs_peer": float(spearmanr(ours, theirs).statistic),
                     "defect_ranks": defect_ranks(labels, ours).round(4).tolist(),
                     "scores": ours.tolist()})
        print(f"seed {seed}: " + " ".join(f"{k} {metrics[k]:.3f}" for k in KEYS if metrics[k] is not None)
              + f"  spearman {runs[-1]['spearman_vs_peer']:.3f}  fit {fit_s:.0f} s", flush=True)
    mean = {k: float(np.mean([r["metrics"][k] for r in runs])) for k in KEYS
            if runs[0]["metrics"][k] is not None}
    std = {k: float(np.std([r["metrics"][k] for r in runs], ddof=1)) if len(runs) > 1 else 0.0 for k in mean}
    result = {"root": str(args.root), "peer": str(args.peer), "preset": args.preset,
              "overrides": {k: str(v) for k, v in overrides.items()},
              "config": Config.preset(args.preset, **overrides).to_dict(),
              "peer_metrics": peer_metrics, "peer_fit_s": peer["timing"]["fit_wall_s"],
              "peer_defect_ranks": defect_ranks(labels, theirs).round(4).tolist(),
              "mean": mean, "std": std, "runs": runs, "machine": machine(),
              "command": "python benchmarks/peer_parity.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.tag}.json").write_text(json.dumps(result, indent=1))
    print("metric        peer    ours (mean +- std over seeds)")
    for k in mean:
        p = peer_metrics.get(k)
        print(f"{k:13s} {'  -  ' if p is None else f'{p:.3f}'}   {mean[k]:.3f} +- {std[k]:.3f}")
    return result


if __name__ == "__main__":
    main()
