"""Lever study for the default preset: fit-level settings x scoring variants, seeds, datasets.

For each fit-level configuration (``--fit NAME:FIELD=V,FIELD=V`` on top of ``--preset``) and
seed, the detector is fitted once; the test images are embedded once; then every scoring
variant is a :class:`~patchbank.pipeline.scoring.PatchScorer` over the *same* bank with a config
that differs only in scoring fields (``image_score`` from ``--poolings``, ``map_upsample`` from
``--upsamples``) and, with ``--searches``, another search over the same rows, so image metrics are reported per pooling and pixel metrics per upsampling
without refitting.  The prediction path of the library is unchanged: this script only builds
scorers the way the detector does and calls ``score`` / ``anomaly_map``.

    python benchmarks/levers.py ../shared/data/ksdd --preset patchcore \\
        --base coreset_ratio=0.01 --fit parity:patch_border=zero --fit valid:patch_border=valid \\
        --seeds 0,1,2 --tag levers_ksdd

Writes ``benchmarks/results/levers/<tag>.json`` (every seed, variant and metric) and prints a
mean-over-seeds table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench_core import parse_value
from patchbank.config import Config
from patchbank.detector import Detector
from patchbank.evaluation.metrics import image_metrics
from patchbank.evaluation.scoring import IMAGE_KEYS, PIXEL_KEYS, pixel_scores
from patchbank.io.datasets import read_dataset
from patchbank.io.images import list_images
from patchbank.pipeline.scoring import PatchScorer
from patchbank.runtime.threads import set_threads
from patchbank.search import make_search
from patchbank.studies.speed import machine


def parse_fields(text: str) -> dict:
    """``FIELD=V,FIELD=V`` (or space-separated pairs) -> overrides, values read as the CLI does;
    a comma-separated value (``layers=2,3,4``) keeps its commas: a piece without ``=`` continues
    the value before it."""
    pairs: list[str] = []
    for piece in (p for p in text.replace(" ", ",").split(",") if p):
        if "=" in piece or not pairs:
            pairs.append(piece)
        else:
            pairs[-1] += "," + piece
    return {k: parse_value(k, v) for k, v in (kv.split("=", 1) for kv in pairs)}


@torch.inference_mode()
def embed_test(det: Detector, items: list[str]) -> torch.Tensor:
    """[N, P, d] bank-space embeddings of the test images."""
    out = []
    for x, _ in det.stream(items):
        rows, _ = det.extractor(x)
        emb = det.embed(rows)
        out.append(emb.view(x.shape[0], -1, emb.shape[1]))
    return torch.cat(out)


@torch.inference_mode()
def variants(det: Detector, emb: torch.Tensor, poolings: list[str], upsamples: list[str],
             searches: list[str], category, batch: int = 16, blurs: list[float] | None = None) -> dict:
    """Image metrics per pooling and pixel metrics per upsampling (and per map blur sigma in
    ``blurs``, the fitted config's when None), over one fitted bank, searched by the fitted search
    and by each other kind in ``searches`` (built over the same rows)."""
    base = det.scorer_
    labels = np.asarray(category.labels)
    out = {}
    for kind in [det.search_kind_] + [k for k in searches if k and k != det.search_kind_]:
        search = base.search if kind == det.search_kind_ else make_search(
            base.search.all_rows(), det.config.replace(search=kind), kind)
        tag = "" if kind == det.search_kind_ else f"@{kind}"
        for pooling in poolings:
            cfg = det.config.replace(image_score=pooling)
            scorer = PatchScorer(cfg, base.embedding, search, base.grid, base.radius, base.context)
            scores = np.concatenate([scorer.score(emb[i:i + batch])[0] for i in range(0, len(emb), batch)])
            out[f"image:{pooling}{tag}"] = image_metrics(labels, scores)
        if category.has_masks:
            for mode in upsamples:
                for sigma in blurs or [det.config.blur_sigma]:
                    cfg = det.config.replace(map_upsample=mode, blur_sigma=sigma)
                    scorer = PatchScorer(cfg, base.embedding, search, base.grid, base.radius, base.context)
                    maps = []
                    for i in range(0, len(emb), batch):
                        _, patch = scorer.score(emb[i:i + batch])
                        maps.extend(m.numpy() for m in scorer.anomaly_map(patch)[0])
                    blur = "" if sigma == det.config.blur_sigma else f":blur{sigma:g}"
                    out[f"pixel:{mode}{blur}{tag}"] = pixel_scores(category, maps, cfg)
    return out


def main(argv=None) -> dict:
    """Run the study, write the JSON, print the table; returns the result."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, help="one MVTec-layout category folder")
    ap.add_argument("--preset", default="patchcore")
    ap.add_argument("--base", default="", help="FIELD=V,... applied to every fit configuration")
    ap.add_argument("--fit", action="append", required=True, metavar="NAME:FIELD=V,...",
                    help="a fit-level configuration (repeatable)")
    ap.add_argument("--poolings", default="reweighted_max,max,topk_mean")
    ap.add_argument("--upsamples", default="nearest,bilinear")
    ap.add_argument("--searches", default="", help="other search kinds to score with over the same bank")
    ap.add_argument("--blurs", default="", help="map blur sigmas to score pixel metrics with [the config's]")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", required=True)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/levers"))
    args = ap.parse_args(argv)
    set_threads(args.threads)
    category, = read_dataset(args.root)
    train = list_images(args.root / "train" / "good")
    items = [str(p) for p in category.test]
    base = parse_fields(args.base)
    poolings, upsamples = args.poolings.split(","), args.upsamples.split(",")
    rows = []
    for spec in args.fit:
        name, _, fields = spec.partition(":")
        overrides = {**base, **parse_fields(fields)}
        for seed in [int(s) for s in args.seeds.split(",")]:
            config = Config.preset(args.preset, **{**overrides, "seed": seed})
            det = Detector(config, progress=False)
            t0 = time.perf_counter()
            det.fit(train)
            fit_s = time.perf_counter() - t0
            res = variants(det, embed_test(det, items), poolings, upsamples,
                           args.searches.split(","), category,
                           blurs=[float(b) for b in args.blurs.split(",") if b] or None)
            rows.append({"fit": name, "overrides": {k: str(v) for k, v in overrides.items()},
                         "seed": seed, "fit_s": fit_s, "bank_entries": int(det.scorer_.search.shape[0]),
                         "results": res})
            print(f"{name} seed {seed} fit {fit_s:.0f} s bank {rows[-1]['bank_entries']}: " + "  ".join(
                f"{v}: " + " ".join(f"{m[k]:.3f}" for k in m) for v, m in res.items()), flush=True)
    result = {"root": str(args.root), "preset": args.preset, "rows": rows, "machine": machine(),
              "command": "python benchmarks/levers.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.tag}.json").write_text(json.dumps(result, indent=1))
    print_table(rows)
    return result


def print_table(rows: list[dict]) -> None:
    """Mean over seeds of every (fit, variant, metric)."""
    keys = sorted({(r["fit"], v) for r in rows for v in r["results"]})
    for fit, var in keys:
        ms = [r["results"][var] for r in rows if r["fit"] == fit]
        names = IMAGE_KEYS if var.startswith("image") else PIXEL_KEYS
        print(f"{fit:24s} {var:22s} " + " ".join(
            f"{k} {np.mean([m[k] for m in ms]):.3f}" for k in names if k in ms[0]))


if __name__ == "__main__":
    main()
