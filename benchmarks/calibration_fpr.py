"""The calibrated threshold on real test images: false-positive rate on test-good images against
target_fpr, and image-level metrics, for the base, struct and hybrid image scores.

Per seed, two fits of the lmf-core preset: the default (image score = re-weighted max: "base")
and ``image_score=hybrid`` (S_base = max, D_struct, S_hyb; the "struct" decision uses the same
fit's calibration refitted with ``image_score=struct``, which is exactly what a struct fit
computes from the same calibration base scores and descriptors).  Works with the patchbank
versions whose ``ScoreCalibration.image_scores`` takes the map means (session 25 on; run another
checkout with ``PYTHONPATH=<checkout>/src`` and that checkout's copy of this script) so a
calibration change can be compared before / after.

    python benchmarks/calibration_fpr.py /work/shared/data/mtd --seeds 0,1,2,3,4 --label after \\
        -o benchmarks/results/calibration_fpr_s7_loo
"""
from __future__ import annotations

import argparse
import csv
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from patchbank.config import Config
from patchbank.detector import Detector
from patchbank.evaluation.metrics import image_metrics
from patchbank.io.images import list_images
from patchbank.pipeline.calibration import ScoreCalibration


def _test_items(root: Path) -> tuple[list[Path], np.ndarray]:
    items, labels = [], []
    for sub in sorted(p for p in (root / "test").iterdir() if p.is_dir()):
        found = list_images(sub)
        items += found
        labels += [0 if sub.name == "good" else 1] * len(found)
    return items, np.array(labels)


def _decisions(cal: ScoreCalibration, preds) -> tuple[np.ndarray, np.ndarray]:
    """(final scores, anomalous) of ``preds`` under calibration ``cal``."""
    base = np.array([p.base_score for p in preds])
    phi = np.stack([p.descriptor for p in preds])
    out = cal.image_scores(base, phi, np.array([p.map_mean for p in preds]),
                           np.array([p.blurriness for p in preds]))
    return out.final, out.anomalous


def run_seed(root: Path, seed: int, out_dir: Path, label: str) -> dict:
    train = root / "train" / "good"
    items, labels = _test_items(root)
    record = {"seed": seed, "n_test_good": int((labels == 0).sum()), "n_test_defect": int(labels.sum())}
    per_image = {"path": [str(p) for p in items], "label": labels.tolist()}
    for name, overrides in (("base", {}), ("hybrid", {"image_score": "hybrid"})):
        det = Detector(Config.preset("lmf-core", seed=seed, **overrides), progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            det.fit(train)
            fit_s = time.perf_counter() - t
        preds = det.predict(items)
        cal = det.calibration_
        kinds = {name: cal} if name == "base" else {
            "hybrid": cal,
            "struct": ScoreCalibration(det.config.replace(image_score="struct")).fit(
                cal.base_scores_, cal.descriptors_, cal.images_, cal.map_means_, cal.training_blurriness_)}
        for kind, c in kinds.items():
            scores, flagged = _decisions(c, preds)
            if kind == name:   # the fit's own decisions
                assert np.array_equal(flagged, np.array([p.is_anomalous for p in preds]))
            record[kind] = {
                "n_calibration_images": int(c.scores_.size), "n_train_images": det.n_train_images_,
                "target_fpr": det.config.target_fpr, "mean": c.stats_.mean_, "std": c.stats_.std_,
                "threshold": c.threshold_, "lambda": c.struct_.lambda_,
                "fpr_test_good": float(flagged[labels == 0].mean()),
                "n_flagged_test_good": int(flagged[labels == 0].sum()),
                "tpr_test_defect": float(flagged[labels == 1].mean()),
                "fit_s": fit_s, **image_metrics(labels, scores)}
            per_image[f"{kind}_score"] = scores.tolist()
            per_image[f"{kind}_flagged"] = flagged.astype(int).tolist()
    with open(out_dir / f"{root.name}_{label}_seed{seed}.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        keys = list(per_image)
        w.writerow(keys)
        w.writerows(zip(*(per_image[k] for k in keys)))
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--label", required=True, help="before / after: names the output files")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.output.mkdir(parents=True, exist_ok=True)
    records = []
    for seed in (int(s) for s in args.seeds.split(",")):
        records.append(run_seed(args.root, seed, args.output, args.label))
        r = records[-1]
        print(f"{args.root.name} {args.label} seed {seed}: " + ", ".join(
            f"{k} FPR {r[k]['fpr_test_good']:.3f} AUROC {r[k]['image_auroc']:.4f}"
            for k in ("base", "struct", "hybrid")), flush=True)
    summary = {}
    for kind in ("base", "struct", "hybrid"):
        summary[kind] = {key: [float(np.mean([r[kind][key] for r in records])),
                               float(np.std([r[kind][key] for r in records]))]
                         for key in ("fpr_test_good", "tpr_test_defect", "image_auroc", "image_ap",
                                     "image_f1_max", "threshold", "n_calibration_images")}
    out = {"root": str(args.root), "label": args.label, "seeds": args.seeds,
           "patchbank_module": __import__("patchbank").__file__, "summary_mean_std": summary,
           "runs": records}
    (args.output / f"{args.root.name}_{args.label}.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
