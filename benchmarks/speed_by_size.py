"""Fit / floor and predict / floor of the default preset against the number of training images.

Issue 14's speed targets (fit <= 3x the backbone floor, predict <= 1.3x) were measured on MTD's
761 and KSDD's 261 training images; the products it is checked on have about 210.  At a fixed
coreset ratio the bank grows with the number of images N, so the greedy selection (N patches
against a bank of ratio x N) and the leave-one-image-out calibration (every training patch
searched against that bank) grow like N^2 while the floor grows like N, and the search per
predicted image grows like N while its floor stays put.  This study measures how the ratios move
with N on one category:

    python benchmarks/speed_by_size.py ../shared/data/mtd --counts 100,200,400,761 --seeds 0 \\
        -o benchmarks/results/speed_by_size/speed_mtd.json

For each count and seed: the first-level subset of ``few_images.subset`` (``N`` training images
drawn by ``default_rng(seed)``; every image at or above the set's size) is linked into a
temporary MVTec-layout folder beside the category's test images, and
:func:`patchbank.studies.speed.run_benchmark` (what ``patchbank benchmark`` runs) times it:
``--repeats`` fits interleaved with floors, predictions at ``--batch-sizes`` on at most
``--max-test`` test images.  Nothing is chosen here; the study reports.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

from few_images import subset
from patchbank.config import DEFAULT_PRESET
from patchbank.io.images import list_images
from patchbank.runtime.threads import set_threads
from patchbank.studies.speed import machine, run_benchmark, write_json


def linked_category(root: Path, train: list[Path], where: Path) -> Path:
    """An MVTec-layout folder under ``where``: ``train/good`` links to ``train``, ``test`` to
    ``root``'s test folder."""
    good = where / "train" / "good"
    good.mkdir(parents=True)
    for p in train:
        (good / p.name).symlink_to(p.resolve())
    (where / "test").symlink_to((root / "test").resolve())
    return where


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, help="one MVTec-layout category folder")
    ap.add_argument("--preset", default=DEFAULT_PRESET)
    ap.add_argument("--counts", default="100,200,400")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--batch-sizes", default="1,16")
    ap.add_argument("--max-test", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    train = list_images(args.root / "train" / "good")
    rows = []
    for count in [int(c) for c in args.counts.split(",")]:
        seeds = [int(s) for s in args.seeds.split(",")]
        if count >= len(train):
            count, seeds = len(train), seeds[:1]
        for seed in seeds:
            with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                cat = linked_category(args.root, subset(train, count, seed), Path(tmp) / args.root.name)
                res = run_benchmark(cat, preset=args.preset, overrides={"seed": seed},
                                    batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
                                    max_test=args.max_test, repeats=args.repeats)
            run = res["runs"][0]
            row = {"train_images": count, "seed": seed, "bank_entries": run["bank"]["entries"],
                   "fit_s": run["fit"]["fit_s"], "floor_s": min(run["fit"]["floor_s"]),
                   "fit_ratio": run["fit"]["fit_ratio"], "split_s": run["fit"]["split_s"],
                   "predict": [{k: p[k] for k in ("batch_size", "ms_per_image", "floor_ms_per_image",
                                                  "predict_ratio", "split_ms_per_image")}
                               for p in run["predict"]]}
            rows.append(row)
            pr = ", ".join(f"b{p['batch_size']} {p['predict_ratio']:.2f} (search "
                           f"{p['split_ms_per_image']['search']:.1f} ms)" for p in row["predict"])
            sp = row["split_s"]
            print(f"N={count:4d} seed {seed}: bank {row['bank_entries']:6d}  fit {row['fit_s']:6.1f} s / "
                  f"floor {row['floor_s']:5.1f} s = {row['fit_ratio']:.2f} (features {sp['features']:.1f}, "
                  f"bank {sp['bank']:.1f}, calibration {sp['calibration']:.1f})  predict/floor {pr}",
                  flush=True)
    out = {"root": str(args.root), "preset": args.preset, "rows": rows, "machine": machine(),
           "command": " ".join(sys.argv)}
    write_json(out, args.out)
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
