"""Accuracy and speed of one preset on one MVTec-layout category, against the backbone floor.

The floor is what every memory-bank detector must do: read, resize and crop the images and run
the backbone's forward pass on them (same loader, same threads, same batch size as the detector).
The script reports

* fit time / floor over the training images,
* predict time per image / floor per test image (batch ``--batch-size``),
* image AUROC / AP / F1-max, pixel AUROC / AP / F1-max and AUPRO at the network input resolution,
* bank size,

and writes them as JSON (with the machine description) to ``--out``.

    python benchmarks/bench_core.py ../shared/data/mtd --preset lmf-core
    python benchmarks/bench_core.py ../shared/data/mtd --preset lmf-core --set image_score=topk_mean
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import click
import numpy as np

from patchbank.cli.config_options import field_value_type
from patchbank.config import FIELD_SPECS, Config
from patchbank.detector import Detector
from patchbank.evaluation.scoring import score_category
from patchbank.io.datasets import read_dataset
from patchbank.io.images import list_images
from patchbank.studies.speed import floor_seconds, machine  # the floor lives in the package

KEYS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")


def parse_value(field: str, text: str):
    """A ``--set`` value, read as the CLI reads ``--<field>`` (``none`` means what the field's
    metadata says: the choice "none" or None)."""
    if field not in FIELD_SPECS:
        raise SystemExit(f"--set: unknown config field {field!r}")
    try:
        return field_value_type(field).convert(text, None, None)
    except click.BadParameter as exc:
        raise SystemExit(f"--set {field}={text}: {exc.message}") from None


def study_parser(description: str, root_help: str) -> argparse.ArgumentParser:
    """The options of a seeded study over one category: ROOT, ``--preset`` (default: the
    default preset), ``--set FIELD=VALUE`` (an override of every fit, repeatable), ``--seeds``,
    ``--threads`` and ``-o``; a script adds its own before parsing."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("root", type=Path, help=root_help)
    ap.add_argument("--preset", default="patchbank")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="an override of the preset for every fit (repeatable)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--out", type=Path, required=True)
    return ap


def open_study(args: argparse.Namespace) -> tuple:
    """For :func:`study_parser`'s arguments: set the threads; return (the category, its training
    images, the ``--set`` overrides, the seeds)."""
    from patchbank.runtime.threads import set_threads

    set_threads(args.threads)
    category, = read_dataset(args.root)
    train = list_images(args.root / "train" / "good")
    overrides = {k: parse_value(k, v) for k, v in (s.split("=", 1) for s in args.set)}
    return category, train, overrides, [int(s) for s in args.seeds.split(",")]


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, help="one MVTec-layout category folder")
    ap.add_argument("--preset", default="lmf-core")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="config overrides")
    ap.add_argument("--batch-size", type=int, default=16, help="predict batch size")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--tag", default=None, help="name of the result file")
    ap.add_argument("--no-timing", action="store_true", help="skip the floor measurements (accuracy only)")
    ap.add_argument("--roundtrip", action="store_true",
                    help="save the model and predict with the reloaded file (e.g. to test bank_dtype=float16)")
    return ap.parse_args(argv)


def timed_fit_predict(det: Detector, train: list, items: list, args) -> tuple[Detector, list, dict]:
    """Fit and predict between floor measurements; the (possibly reloaded) detector, the
    predictions and the timing fields of the result."""
    config = det.config
    floor = (lambda *a: float("nan")) if args.no_timing else floor_seconds
    floor_seconds(det, train[:config.batch_size], config.batch_size)          # warm-up
    floor_fit = floor(det, train, config.batch_size)
    t0 = time.perf_counter()
    det.fit(train)
    fit_s = time.perf_counter() - t0
    floor_fit_after = floor(det, train, config.batch_size)
    if args.roundtrip:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            det.save(Path(tmp) / "m.patchbank")
            det = Detector.load(Path(tmp) / "m.patchbank", device=args.device, progress=False)
    floor_test = floor(det, items, args.batch_size)
    t0 = time.perf_counter()
    preds = det.predict(items, batch_size=args.batch_size)
    predict_s = time.perf_counter() - t0
    floor_test_after = floor(det, items, args.batch_size)
    n = len(items)
    return det, preds, {
        "fit_s": fit_s, "floor_fit_s": [floor_fit, floor_fit_after],
        "fit_ratio": fit_s / ((floor_fit + floor_fit_after) / 2),
        "predict_ms_per_image": predict_s / n * 1000,
        "floor_ms_per_image": [floor_test / n * 1000, floor_test_after / n * 1000],
        "predict_ratio": predict_s / ((floor_test + floor_test_after) / 2), "predict_batch_size": args.batch_size,
        "predict_split_ms": {k: v / n * 1000 for k, v in det.last_timings_.items()},
    }


def main(argv=None) -> dict:
    """Run the benchmark, write ``<tag>.json`` and print a summary; returns the result."""
    args = parse_args(argv)
    if args.threads:
        from patchbank.runtime.threads import set_threads

        set_threads(args.threads)
    if not (args.root / "train" / "good").is_dir():
        sys.exit(f"error: {args.root} is not an MVTec-layout category (no train/good); "
                 "the real datasets live in ../shared/data/")
    overrides = dict(kv.split("=", 1) for kv in args.set)
    config = Config.preset(args.preset, **{k: parse_value(k, v) for k, v in overrides.items()})
    det = Detector(config, device=args.device, progress=False)
    train = list_images(args.root / "train" / "good")
    category, = read_dataset(args.root)
    items = [str(p) for p in category.test]
    det, preds, timing = timed_fit_predict(det, train, items, args)

    result = {"root": str(args.root), "preset": args.preset, "overrides": overrides,
              "config": config.to_dict(), "n_train": len(train), "n_test": len(items)}
    result.update(score_category(category, preds, config))
    info = det.info()
    result.update({"bank_entries": info["bank_entries"], "bank_dim": info["bank_dim"],
                   "bank_mb": info["bank_bytes"] / 1e6, "search": info["search"], **timing,
                   "machine": machine(),
                   "command": "python benchmarks/bench_core.py " + " ".join(argv if argv is not None else sys.argv[1:])})
    args.out.mkdir(parents=True, exist_ok=True)
    tag = args.tag or f"core_{args.root.name}_{args.preset}"
    (args.out / f"{tag}.json").write_text(json.dumps(result, indent=2))
    print(" ".join(f"{k}={result[k]:.4f}" for k in KEYS))
    print(f"bank {result['bank_entries']}x{result['bank_dim']} = {result['bank_mb']:.2f} MB ({result['search']}); "
          f"fit {result['fit_s']:.1f}s / floor {np.mean(result['floor_fit_s']):.1f}s = {result['fit_ratio']:.2f}; "
          f"predict {result['predict_ms_per_image']:.1f} ms/img / floor {np.mean(result['floor_ms_per_image']):.1f} "
          f"= {result['predict_ratio']:.2f}; split ms/img "
          f"{json.dumps({k: round(v, 1) for k, v in result['predict_split_ms'].items()})}")
    return result


if __name__ == "__main__":
    main()
