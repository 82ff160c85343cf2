"""How many training images does the default preset need, and does its 1% bank starve on few?

An inspection engineer often has tens of good images, not hundreds.  The default preset was
chosen on MTD's 761 and KSDD's 261 training images, where its greedy 1% bank holds 9,863 and
3,508 rows; on 25 images the same ratio keeps about 400.  This study fits the preset on seeded
random subsets of a category's training images and scores the whole test set each time:

    python benchmarks/few_images.py ../shared/data/ksdd --counts 10,25,50,100 --seeds 0,1,2 \\
        --fit default: --fit r10:coreset_ratio=0.1 -o benchmarks/results/few_images/few_ksdd.json

For each count N, seed and ``--fit`` setting (``NAME:FIELD=V,...`` on top of ``--preset``):
the subset is ``N`` training images drawn without replacement by ``numpy.random.default_rng(seed)``
(the same subset for every setting of that count and seed), the fit uses that seed too, and
:func:`patchbank.evaluation.runner.run_category` gives the seven metrics, the share of good
test images flagged at the calibrated threshold (``good_fpr``; the fit warns below 100 images at
a 1% target, where the conformal rank exceeds n and the threshold is the largest training score)
and the bank's size.  Counts at or above the training set's size use every image (one draw).

The settings compared, the counts and the seeds were fixed before the first run: the preset
(1% greedy bank) and a 10% bank (the ``patchcore`` preset's and anomalib's default ratio).
Nothing is chosen on the test split here; the study reports.

Writes one JSON (every run, the machine, the command) and prints a mean-over-seeds table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from levers import parse_fields
from patchbank.config import Config
from patchbank.evaluation.runner import run_category
from patchbank.io.datasets import read_dataset
from patchbank.runtime.threads import set_threads
from patchbank.studies.speed import machine

METRICS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")


def subset(train: list, count: int, seed: int) -> list:
    """``count`` of ``train`` drawn by ``default_rng(seed)``, in their original order (all of
    them when ``count >= len(train)``)."""
    if count >= len(train):
        return list(train)
    pick = np.sort(np.random.default_rng(seed).choice(len(train), size=count, replace=False))
    return [train[i] for i in pick]


def main(argv=None) -> dict:
    """Run the study, write the JSON, print the table; returns the result."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, help="one MVTec-layout category folder")
    ap.add_argument("--preset", default="patchbank")
    ap.add_argument("--counts", default="10,25,50,100", help="training images per fit")
    ap.add_argument("--fit", action="append", metavar="NAME:FIELD=V,...",
                    help="a setting on top of --preset (repeatable) [default: the preset]")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--out", type=Path, required=True, help="the JSON file to write")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    category, = read_dataset(args.root)
    fits = [spec.partition(":") for spec in (args.fit or ["default:"])]
    rows = []
    for count in [int(c) for c in args.counts.split(",")]:
        seeds = [int(s) for s in args.seeds.split(",")]
        if count >= len(category.train):
            count, seeds = len(category.train), seeds[:1]
        for seed in seeds:
            cat = replace(category, train=subset(category.train, count, seed))
            for name, _, fields in fits:
                config = Config.preset(args.preset, **{**parse_fields(fields), "seed": seed})
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)   # few images: the fit warns
                    result = run_category(cat, config, progress=False)
                m = result["metrics"]
                rows.append({"count": count, "seed": seed, "fit": name, "overrides": fields,
                             "metrics": m, "run_s": time.perf_counter() - t0})
                print(f"n={count} seed {seed} {name}: " + " ".join(
                    f"{k} {m[k]:.3f}" for k in (*METRICS, "good_fpr", "defect_tpr")) +
                    f" bank {m['bank_mb']:.2f} MB fit {m['fit_s']:.1f} s", flush=True)
    result = {"root": str(args.root), "preset": args.preset, "train_images": len(category.train),
              "test_images": len(category.test), "rows": rows, "machine": machine(),
              "command": "python benchmarks/few_images.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print_table(rows)
    return result


def print_table(rows: list[dict]) -> None:
    """Mean (and seed-std of image AUROC) over seeds per count and setting, as a Markdown table."""
    keys = (*METRICS, "good_fpr", "defect_tpr")
    print("| n | setting | " + " | ".join(keys) + " | bank MB | fit s |")
    print("|" + "---|" * (len(keys) + 4))
    for count, name in sorted({(r["count"], r["fit"]) for r in rows}, key=lambda t: (t[0], t[1] != "default", t[1])):
        ms = [r["metrics"] for r in rows if r["count"] == count and r["fit"] == name]
        cells = [f"{np.mean([m[k] for m in ms]):.3f}" for k in keys]
        cells[0] += f" +- {np.std([m['image_auroc'] for m in ms]):.3f}"
        print(f"| {count} | {name} | " + " | ".join(cells) +
              f" | {np.mean([m['bank_mb'] for m in ms]):.2f} | {np.mean([m['fit_s'] for m in ms]):.1f} |")


if __name__ == "__main__":
    main()
