"""Why an exported runtime's image score can differ from the torch path's by more than rounding.

The top-5% pooling averages the context re-measurement of the ``ceil(r * P)`` patches with the
highest map scores.  When the last of them and the next one have map scores within float rounding,
another runtime may take the other patch, and the image score moves by that patch's share of the
mean.  This finds the image whose exported score differs most from the torch path's and prints
the map scores around the pooling's edge for it (torch path), with their relative gap.

    python benchmarks/topk_tie.py ../shared/data/mtd --work /tmp/rt_mtd_s16 --runtime openvino

``--work`` is a ``bench_runtimes.py`` work folder (``model.patchbank`` and ``export/``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pixel_breakdown import patch_score_batches
from patchbank.detector import Detector
from patchbank.export.runtimes import ExportedModel
from patchbank.io.datasets import read_dataset
from patchbank.pipeline.scoring import topk_count
from patchbank.runtime.threads import set_threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, help="one MVTec-layout category folder")
    ap.add_argument("--work", type=Path, required=True, help="a bench_runtimes.py work folder")
    ap.add_argument("--runtime", default="openvino", choices=("onnx", "openvino"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    set_threads(args.threads)
    (cat,) = read_dataset(args.root)
    det = Detector.load(args.work / "model.patchbank", progress=False)
    items = [str(p) for p in cat.test]
    ref = det.predict(items, batch_size=16)
    other = ExportedModel(args.work / "export", args.runtime, threads=args.threads,
                          progress=False).predict(items, batch_size=16)
    diff = np.array([abs(a.score - b.score) for a, b in zip(other, ref)])
    worst = int(diff.argmax())
    print(f"largest |raw score difference| {diff[worst]:.6g} at test image {worst} ({items[worst]}), "
          f"torch raw score {ref[worst].score:.6g}, normalised {ref[worst].normalized_score:.4g} "
          f"against the threshold {det.threshold_:.4g} ({args.runtime}: {other[worst].normalized_score:.4g}); "
          f"the next largest difference {np.sort(diff)[-2]:.3g}")
    (patch,) = patch_score_batches(det, [items[worst]])
    n = topk_count(patch.shape[1], det.config.topk_ratio)
    top = patch[0].sort(descending=True).values
    print(f"pooled patches {n}; map scores {n - 2}..{n + 1}: {[round(float(v), 6) for v in top[n - 3:n + 1]]}")
    print(f"relative gap between patch {n} and {n + 1}: {float((top[n - 1] - top[n]) / top[n - 1]):.3g}")


if __name__ == "__main__":
    main()
