"""The same preset fitted and predicted on the CPU and on another torch device (a GPU): do the two
give the same bank, threshold, image scores, maps and decisions?  Also the fit and predict
wall times of each (one run each, so only a rough comparison).

    python benchmarks/device_parity.py DATA --device cuda -o benchmarks/results/device_parity.json

DATA is an MVTec-layout category folder.  Reported: whether the greedy selection chose the same
rows, the largest score and map differences on the test images, the thresholds, how many
pass / fail decisions differ, and the image AUROC of each side (``patchbank.evaluation.metrics``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from patchbank.config import DEFAULT_PRESET
from patchbank.detector import Detector
from patchbank.evaluation.metrics import auroc
from patchbank.io.datasets import read_mvtec


def fit_and_predict(data: Path, preset: str, device: str, overrides: dict) -> dict:
    """Fit ``preset`` on DATA's training images on ``device`` and predict its test images."""
    (category,) = read_mvtec(data.parent, [data.name])
    t0 = time.perf_counter()
    det = Detector.from_preset(preset, device=device, progress=False, **overrides).fit(category.train)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    preds = det.predict(category.test)
    predict_s = time.perf_counter() - t0
    return {"det": det, "preds": preds, "labels": category.labels, "fit_s": fit_s,
            "predict_ms_per_image": 1e3 * predict_s / len(preds)}


def compare_predictions(a: list, b: list) -> dict:
    """The largest differences between two prediction lists of the same images: image score
    (absolute, relative), anomaly map (absolute), and the pass / fail decisions that differ."""
    sa = np.array([p.score for p in a])
    sb = np.array([p.score for p in b])
    return {
        "score_max_abs_diff": float(np.abs(sa - sb).max()),
        "score_max_rel_diff": float((np.abs(sa - sb) / np.maximum(np.abs(sa), 1e-12)).max()),
        "map_max_abs_diff": max(float(np.abs(p.anomaly_map - q.anomaly_map).max()) for p, q in zip(a, b)),
        "decisions_differ": int(sum(p.is_anomalous != q.is_anomalous for p, q in zip(a, b))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default=DEFAULT_PRESET)
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="Config overrides (JSON values, e.g. context_taps=0)")
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    cpu = fit_and_predict(args.data, args.preset, "cpu", overrides)
    dev = fit_and_predict(args.data, args.preset, args.device, overrides)
    a, b = cpu["det"], dev["det"]
    sa = np.array([p.score for p in cpu["preds"]])
    sb = np.array([p.score for p in dev["preds"]])
    labels = np.asarray(cpu["labels"])
    out = {
        "data": str(args.data), "preset": args.preset, "overrides": overrides,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
        "torch": torch.__version__, "n_test": len(sa),
        "bank_rows": [int(a.bank_.shape[0]), int(b.bank_.shape[0])],
        "bank_bitwise_equal": bool(a.bank_.shape == b.bank_.shape and torch.equal(a.bank_.cpu(), b.bank_.cpu())),
        "bank_max_abs_diff": (float((a.bank_.cpu() - b.bank_.cpu()).abs().max())
                              if a.bank_.shape == b.bank_.shape else None),
        "threshold": [a.threshold_, b.threshold_],
        **compare_predictions(cpu["preds"], dev["preds"]),
        "image_auroc": [auroc(labels, sa), auroc(labels, sb)],
        "fit_s": [cpu["fit_s"], dev["fit_s"]],
        "predict_ms_per_image": [cpu["predict_ms_per_image"], dev["predict_ms_per_image"]],
        "command": " ".join(sys.argv),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
