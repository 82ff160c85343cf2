"""Prediction on a GPU with and without CUDA graphs (patchbank.runtime.cuda_graphs): the same
fitted model, the same images, timed alternately on one machine, and the answers compared.

    python benchmarks/cuda_graphs.py DATA -o benchmarks/results/cuda_graphs.json

DATA is an MVTec-layout category folder.  One fit on the GPU (``cuda_graphs=False``); a second
detector shares its bank, calibration and backbone with graphs on.  Each batch size is timed
``--repeats`` times per side, alternating (eager, graphed, eager, ...) after a warm-up pass that
also captures the graphs, with the backbone floor (read + resize + backbone,
``patchbank.studies.speed.floor_seconds``) timed between them; a time is the fastest pass.
Reported per batch size: ms per image of each side and of the floor, the ratios to the floor,
and the largest score, map and descriptor differences and the decisions that differ.

``--multi``: the same for a two-category :class:`~patchbank.multi.MultiDetector` (the training
images split into halves, "a" and "b"; each test image routed), whose shared extraction is
replayed as a graph and whose per-category scoring runs eagerly; the two sides are the saved model
loaded twice, with ``cuda_graphs`` False and True.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from patchbank.config import DEFAULT_PRESET
from patchbank.detector import Detector
from patchbank.io.datasets import read_mvtec
from patchbank.multi import MultiDetector
from patchbank.studies.speed import floor_seconds, machine

from device_parity import compare_predictions   # benchmarks/, beside this script


def timed(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def compare(eager: list, graphed: list) -> dict:
    """:func:`device_parity.compare_predictions` of the two sides, and their descriptors."""
    return {**compare_predictions(eager, graphed),
            "descriptor_max_abs_diff": max(float(np.abs(p.descriptor - q.descriptor).max())
                                           for p, q in zip(eager, graphed)),
            "bitwise_equal_scores": bool(np.array_equal([p.score for p in eager], [p.score for p in graphed]))}


def single_pair(preset: str, train: list) -> tuple:
    """(eager, graphed) detectors: one fit on the GPU, the second sharing its state and backbone."""
    eager = Detector.from_preset(preset, device="cuda", progress=False, cuda_graphs=False).fit(train)
    graphed = Detector.from_state(eager.state_tensors(), eager.info(), "the eager model", device="cuda",
                                  progress=False, backbone=eager.backbone, cuda_graphs=True)
    return eager, graphed


def multi_pair(preset: str, train: list) -> tuple:
    """(eager, graphed) two-category models ("a", "b": the halves of ``train``), the saved fit
    loaded twice."""
    half = len(train) // 2
    fitted = MultiDetector.from_preset(preset, device="cuda", progress=False).fit(
        {"a": train[:half], "b": train[half:]})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "multi.patchbank"
        fitted.save(path)
        return tuple(MultiDetector.load(path, device="cuda", progress=False, cuda_graphs=flag)
                     for flag in (False, True))


def graph_call(model):
    """The GraphedCall a detector's or a multi-category model's prediction replays."""
    return model.graphs if isinstance(model, MultiDetector) else model.model_.graphs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--preset", default=DEFAULT_PRESET)
    ap.add_argument("--batch-sizes", default="1,16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--multi", action="store_true", help="a two-category MultiDetector instead of a Detector")
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU here")
    (category,) = read_mvtec(args.data.parent, [args.data.name])
    eager, graphed = (multi_pair if args.multi else single_pair)(args.preset, category.train)
    items = list(category.test)
    runs = []
    for b in (int(v) for v in args.batch_sizes.split(",")):
        want = eager.predict(items, batch_size=b)                   # warm-up
        for _ in range(2):                                          # first pass eager, second captures
            got = graphed.predict(items, batch_size=b)
        times = {"eager": [], "graphed": [], "floor": []}
        for _ in range(args.repeats):
            times["floor"].append(timed(lambda: floor_seconds(eager, items, b)))
            times["eager"].append(timed(lambda: eager.predict(items, batch_size=b)))
            times["graphed"].append(timed(lambda: graphed.predict(items, batch_size=b)))
        ms = {k: 1e3 * min(v) / len(items) for k, v in times.items()}
        runs.append({"batch_size": b, "images": len(items),
                     "ms_per_image": ms, "all_s": times,
                     "ratio_to_floor": {k: ms[k] / ms["floor"] for k in ("eager", "graphed")},
                     "captured_shapes": [list(k[0]) for k in graph_call(graphed).captured],
                     **compare(want, got)})
        print(f"batch {b:3d}: eager {ms['eager']:.2f} ms/img ({ms['eager'] / ms['floor']:.2f}x the floor), "
              f"graphed {ms['graphed']:.2f} ({ms['graphed'] / ms['floor']:.2f}x), floor {ms['floor']:.2f}; "
              f"scores within {runs[-1]['score_max_rel_diff']:.1e} relative, maps within "
              f"{runs[-1]['map_max_abs_diff']:.1e}, decisions differing {runs[-1]['decisions_differ']}")
    out = {"data": str(args.data), "preset": args.preset, "multi": args.multi, "device": torch.cuda.get_device_name(),
           "torch": torch.__version__, "n_train": len(category.train), "runs": runs,
           "machine": machine(), "command": " ".join(sys.argv)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
