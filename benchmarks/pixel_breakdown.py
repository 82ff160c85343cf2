"""Pixel metrics per defect type: which kind of defect holds a dataset's pooled pixel AUROC down.

    python benchmarks/pixel_breakdown.py ../shared/data/mtd --seed 0 --set patch_size=5 --blurs 4,8 \\
        -o benchmarks/results/pixel_breakdown_mtd.json

Fits ``--preset`` (with ``--set FIELD=VALUE`` overrides; one fit without them first, the
preset's own row) once per setting, predicts the test images, and reports for each map blur
sigma in ``--blurs`` the pooled pixel metrics (every test image, as ``patchbank evaluate``
computes them) and, per defect type, the same metrics over the good test images plus that type's
images.  It also reports each type's share of all defective pixels (at the network input, masks
resized and cropped like the images) and the mean map value of the normal and defective pixels
of each type's images.  The pooled pixel AUROC ranks every pixel of every image together, so the
type with the most defective pixels dominates it.

``--border PX`` also reports the pooled metrics without the band of ``PX`` pixels along the
map's edges (the crop's edge), and the mean map value of the normal pixels in that band and
inside it: whether a change of the pooled metrics lives at the crop's edge.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from bench_core import parse_value
from patchbank.config import Config
from patchbank.detector import Detector
from patchbank.evaluation.metrics import auroc, average_precision, f1_max
from patchbank.evaluation.scoring import category_masks, pixel_scores
from patchbank.io.datasets import Category, read_dataset
from patchbank.io.images import list_images
from patchbank.pipeline.scoring import PatchScorer
from patchbank.runtime.threads import set_threads
from patchbank.studies.speed import machine


def subset(category: Category, keep: list[int]) -> Category:
    """``category`` restricted to the test images ``keep``."""
    pick = lambda xs: [xs[i] for i in keep]  # noqa: E731
    return dataclasses.replace(category, test=pick(category.test), labels=pick(category.labels),
                               masks=pick(category.masks), defect_types=pick(category.defect_types))


@torch.inference_mode()
def patch_score_batches(det: Detector, paths: list[str]) -> Iterator[torch.Tensor]:
    """The map's patch scores [B, P] of ``paths``, batch by batch, by the torch path's own steps
    (extract, embed, score)."""
    for x, _ in det.stream(paths):
        rows, _ = det.extractor(x)
        emb = det.embed(rows).view(x.shape[0], -1, det.scorer_.bank_search.shape[1])
        yield det.scorer_.score(emb)[1]


@torch.inference_mode()
def test_maps(det: Detector, category: Category, blurs: list[float]) -> dict[float, np.ndarray]:
    """The maps of the test images, one stack per blur sigma, from one embedding pass."""
    base = det.scorer_
    scorers = {s: PatchScorer(det.config.replace(blur_sigma=s), base.embedding, base.search, base.grid,
                              base.radius, base.context) for s in blurs}
    out: dict[float, list] = {s: [] for s in blurs}
    for patch in patch_score_batches(det, [str(p) for p in category.test]):
        for s, scorer in scorers.items():
            out[s].extend(m.numpy() for m in scorer.anomaly_map(patch)[0])
    return {s: np.stack(v) for s, v in out.items()}


def defect_masks(category: Category, config: Config) -> np.ndarray:
    """The test images' masks [N, H, W] (bool) on the maps' grid."""
    return np.stack(list(category_masks(category, config))).astype(bool)


def breakdown(category: Category, maps: np.ndarray, masks: np.ndarray, config: Config) -> dict:
    """Pooled and per-defect-type pixel metrics of ``maps`` (``masks``: :func:`defect_masks`),
    and per type the defective-pixel share and the mean map value over normal / defective pixels
    of its images."""
    types = np.asarray(category.defect_types)
    total = masks.sum()
    out = {"all": pixel_scores(category, list(maps), config), "types": {}}
    for t in category.defects:
        keep = [i for i, d in enumerate(types) if d in ("good", t)]
        own = types == t
        out["types"][t] = {
            **pixel_scores(subset(category, keep), [maps[i] for i in keep], config),
            "images": int(own.sum()),
            "defect_pixel_share": float(masks[own].sum() / total),
            "mean_map_normal_pixels": float(maps[own][~masks[own]].mean()),
            "mean_map_defect_pixels": float(maps[own][masks[own]].mean()),
        }
    out["mean_map_good_images"] = float(maps[types == "good"].mean())
    return out


def without_border(maps: np.ndarray, masks: np.ndarray, px: int) -> dict:
    """Pooled pixel AUROC / AP / F1-max over the pixels at least ``px`` from every edge of the
    maps, and the mean map value of the normal pixels in the band and inside it."""
    if not 0 < 2 * px < min(maps.shape[1:]):
        raise SystemExit(f"error: --border {px} leaves no pixel inside a {maps.shape[1]} x {maps.shape[2]} map")
    inner = np.zeros(maps.shape[1:], dtype=bool)
    inner[px:maps.shape[1] - px, px:maps.shape[2] - px] = True
    keep = np.broadcast_to(inner, maps.shape)
    labels, scores = masks[keep], maps[keep]
    return {"border_px": px, "inner_pixel_auroc": auroc(labels, scores),
            "inner_pixel_ap": average_precision(labels, scores), "inner_pixel_f1_max": f1_max(labels, scores),
            "band_share_of_defect_pixels": float(masks[~keep].sum() / masks.sum()),
            "mean_map_normal_band": float(maps[~keep & ~masks].mean()),
            "mean_map_normal_inner": float(maps[keep & ~masks].mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, help="one MVTec-layout category folder with masks")
    ap.add_argument("--preset", default="patchbank")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a setting fitted besides the preset (repeatable; one field each)")
    ap.add_argument("--blurs", default="4", help="map blur sigmas (pixel metrics only)")
    ap.add_argument("--border", type=int, default=0, help="also report metrics without this edge band (px)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    set_threads(args.threads)
    category, = read_dataset(args.root)
    train = list_images(args.root / "train" / "good")
    blurs = [float(b) for b in args.blurs.split(",")]
    rows = []
    for spec in [None] + args.set:
        overrides = {} if spec is None else dict([(spec.split("=", 1)[0], parse_value(*spec.split("=", 1)))])
        det = Detector(Config.preset(args.preset, seed=args.seed, **overrides), progress=False)
        t0 = time.perf_counter()
        det.fit(train)
        fit_s = time.perf_counter() - t0
        masks = defect_masks(category, det.config)
        for sigma, maps in test_maps(det, category, blurs).items():
            res = breakdown(category, maps, masks, det.config)
            if args.border:
                res["border"] = without_border(maps, masks, args.border)
                print(f"{spec or 'preset'} without the {args.border}-px band: "
                      + " ".join(f"{k} {v:.4f}" for k, v in res["border"].items()), flush=True)
            rows.append({"setting": spec or "preset", "blur_sigma": sigma, "fit_s": fit_s, **res})
            print(f"{spec or 'preset'} blur {sigma:g}: all " + " ".join(f"{k} {v:.3f}" for k, v in res["all"].items()))
            for t, r in res["types"].items():
                print(f"    {t:10s} share {r['defect_pixel_share']:.3f} pixel_auroc {r['pixel_auroc']:.3f} "
                      f"aupro {r['aupro']:.3f} map normal / defect {r['mean_map_normal_pixels']:.2f} / "
                      f"{r['mean_map_defect_pixels']:.2f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"root": str(args.root), "preset": args.preset, "seed": args.seed,
                                    "rows": rows, "machine": machine(),
                                    "command": "python benchmarks/pixel_breakdown.py " + " ".join(sys.argv[1:])},
                                   indent=1))


if __name__ == "__main__":
    main()
