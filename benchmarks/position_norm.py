"""Lever study: normalise each patch-grid position by the normal images' scores at that position.

    python benchmarks/position_norm.py ../shared/data/ksdd --seeds 0,1,2 \\
        -o benchmarks/results/levers/position_norm_ksdd_s13.json

The idea (PaDiM's per-position statistics, applied to the nearest-neighbour patch scores): the
leave-one-image-out patch-score grids of the training images, which calibration computes anyway,
give a mean mu_p and standard deviation sigma_p at every grid position p.  A test image's patch
scores s_p are then mapped before the upsampling and blur by one of

* ``plain``: s_p (the preset's map);
* ``pos_z``: (s_p - mu_p) / sigma_p;
* ``pos_sub``: s_p - mu_p;
* ``pos_div``: s_p / mu_p;
* ``pos_mu_globalsd``: (s_p - mu_p) / mean_p(sigma_p) (``pos_sub`` rescaled: the same ranking);
* ``ring_z`` / ``ring_sub``: as ``pos_z`` / ``pos_sub``, with mu and sigma pooled over the
  positions of one border class: a position's class is its distance to the top or bottom edge
  and to the left or right edge in grid cells, each capped at ``RING_DEPTH`` (3), so the interior
  is one class (an increasing affine map there: its ranking is unchanged) and only the cells near
  the edges, where padding shapes the features, get their own statistics.
* ``ring_z_pos_sub``: ``ring_z``, then minus the per-position mean of the ``ring_z`` grids: the
  border's scale corrected, then each position's offset removed without rescaling it.

Only the map changes; the image score is the preset's.  The ``topk_*`` columns are the image
metrics of the top-5% mean of the transformed grid (without the context taps), for reference.

How the grids are read: the library keeps no per-patch calibration output, so this script records
what ``patchbank.pipeline.calibration.leave_one_out_scores`` returns during each fit (the fit's
own leave-one-image-out scoring, computed once); the calibration then runs unchanged.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from bench_core import open_study, study_parser
from levers import embed_test
from patchbank.config import Config
from patchbank.detector import Detector
from patchbank.evaluation.metrics import image_metrics
from patchbank.evaluation.scoring import pixel_scores
from patchbank.pipeline import calibration
from patchbank.pipeline.scoring import topk_mean
from patchbank.studies.speed import machine


def fit_with_grids(det: Detector, train: list) -> torch.Tensor:
    """Fit ``det`` and return its calibration images' leave-one-image-out grids [n, P], as the
    fit's own calibration computed them (:func:`~patchbank.pipeline.calibration.leave_one_out_scores`
    is recorded while the fit runs)."""
    kept = {}
    original = calibration.leave_one_out_scores

    def recorded(scorer, rows, bank_source, progress=False):
        base, grids = original(scorer, rows, bank_source, progress)
        kept["grids"] = torch.cat(grids).cpu()
        return base, grids

    calibration.leave_one_out_scores = recorded
    try:
        det.fit(train)
    finally:
        calibration.leave_one_out_scores = original
    return kept["grids"]


RING_DEPTH = 3


def border_classes(h: int, w: int, depth: int = RING_DEPTH) -> torch.Tensor:
    """[h * w] class of each grid position: min(distance to the nearer horizontal edge, depth)
    * (depth + 1) + min(distance to the nearer vertical edge, depth)."""
    i, j = torch.arange(h), torch.arange(w)
    ri = torch.minimum(torch.minimum(i, h - 1 - i), torch.tensor(depth))
    cj = torch.minimum(torch.minimum(j, w - 1 - j), torch.tensor(depth))
    return (ri[:, None] * (depth + 1) + cj[None, :]).reshape(-1)


def transforms(grids: torch.Tensor, grid: tuple[int, int]) -> dict:
    """The variants of the module docstring, each a function of [B, P] patch scores."""
    g = grids.double()
    mu, sd = g.mean(0).float(), g.std(0).float()
    cls = border_classes(*grid)
    ring_mu, ring_sd = torch.empty_like(mu), torch.empty_like(sd)
    for c in cls.unique():
        vals = g[:, cls == c]
        ring_mu[cls == c], ring_sd[cls == c] = float(vals.mean()), float(vals.std())
    ring = lambda s: (s - ring_mu) / ring_sd
    ring_offset = ring(g.float()).mean(0)
    return {"plain": lambda s: s,
            "ring_z": ring,
            "ring_z_pos_sub": lambda s: ring(s) - ring_offset,
            "ring_sub": lambda s: s - ring_mu,
            "pos_z": lambda s: (s - mu) / sd,
            "pos_sub": lambda s: s - mu,
            "pos_div": lambda s: s / mu,
            "pos_mu_globalsd": lambda s: (s - mu) / sd.mean()}


@torch.inference_mode()
def evaluate(det: Detector, category, emb: torch.Tensor, grids: torch.Tensor, batch: int = 16) -> dict:
    """Pixel metrics (and the top-5% image metrics) of every variant on the test embeddings."""
    scorer, labels, out = det.scorer_, np.asarray(category.labels), {}
    for name, f in transforms(grids, scorer.grid).items():
        maps, images = [], []
        for i in range(0, len(emb), batch):
            _, patch = scorer.score(emb[i:i + batch])
            z = f(patch)
            maps.extend(m.numpy() for m in scorer.anomaly_map(z)[0])
            images.append(topk_mean(z, det.config.topk_ratio).numpy())
        out[name] = {**pixel_scores(category, maps, det.config),
                     **{"topk_" + k: v for k, v in image_metrics(labels, np.concatenate(images)).items()}}
        print(f"  {name:16s} " + " ".join(f"{k} {v:.4f}" for k, v in out[name].items()), flush=True)
    return out


def run_grid_study(doc: str, evaluate, script: str) -> None:
    """The command line of a study over the fit's leave-one-image-out grids: for each seed fit the
    preset (:func:`fit_with_grids`), embed the test images, ``evaluate(det, category, emb, grids)``
    -> (variant -> metrics, extra facts of the seed); print the mean over seeds and write every
    seed's results with the machine and ``script``'s command line to ``-o``."""
    args = study_parser(doc.split("\n\n")[0], "one MVTec-layout category folder with masks").parse_args()
    category, train, overrides, seeds = open_study(args)
    rows = []
    for seed in seeds:
        det = Detector(Config.preset(args.preset, **{**overrides, "seed": seed}), progress=False)
        t0 = time.perf_counter()
        grids = fit_with_grids(det, train)
        print(f"seed {seed}: fit {time.perf_counter() - t0:.0f} s, {grids.shape[0]} grids", flush=True)
        res, extra = evaluate(det, category, embed_test(det, [str(p) for p in category.test]), grids)
        rows.append({"seed": seed, "results": res, **extra})
    mean = {v: {k: float(np.mean([r["results"][v][k] for r in rows])) for k in rows[0]["results"][v]}
            for v in rows[0]["results"]}
    print("mean over seeds:")
    for v, m in mean.items():
        print(f"  {v:16s} " + " ".join(f"{k} {x:.4f}" for k, x in m.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"root": str(args.root), "preset": args.preset, "overrides": args.set,
                                    "rows": rows, "mean": mean, "machine": machine(),
                                    "command": f"python benchmarks/{script} " + " ".join(sys.argv[1:])},
                                   indent=1))


def main() -> None:
    run_grid_study(__doc__, lambda *a: (evaluate(*a), {}), "position_norm.py")


if __name__ == "__main__":
    main()
