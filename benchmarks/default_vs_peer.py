"""Markdown table: the default preset against the peer and our paper presets, per dataset.

Reads ``patchbank evaluate`` folders (their ``summary.json``: mean and std over seeds) and the
peer's stored result JSON (one seed; its image AP is computed here from its per-image scores with
our metric code; it reports no pixel AP), and marks each of the seven metrics where the default's
mean is below the peer's or below the ``patchcore`` preset's.

    python benchmarks/default_vs_peer.py \\
        --dataset MTD ../shared/data/mtd ../shared/peers/results/peer_mtd_1pct_seed0.json \\
            benchmarks/results/eval_mtd_patchbank_s7 benchmarks/results/eval_mtd_patchcore_s6 \\
        --dataset KSDD ../shared/data/ksdd ../shared/peers/results/peer_ksdd_1pct_seed0.json \\
            benchmarks/results/eval_ksdd_patchbank_s7 benchmarks/results/eval_ksdd_patchcore_s6
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from peer_parity import PEER_KEYS, peer_scores
from patchbank.evaluation.metrics import image_metrics
from patchbank.evaluation.scoring import IMAGE_KEYS, PIXEL_KEYS
from patchbank.io.datasets import read_dataset

KEYS = IMAGE_KEYS + PIXEL_KEYS
EXTRA = ("good_fpr", "fit_s")


def peer_row(root: Path, peer_json: Path) -> dict:
    """The peer's seven metrics (pixel AP None) and its fit seconds."""
    peer = json.loads(peer_json.read_text())
    category, = read_dataset(root)
    out = {PEER_KEYS[k]: v for k, v in peer["metrics"].items() if k in PEER_KEYS}
    out["image_ap"] = image_metrics(np.asarray(category.labels),
                                    peer_scores(peer, list(category.test)))["image_ap"]
    out["fit_s"] = peer["timing"]["fit_wall_s"]
    return out


def eval_row(folder: Path) -> tuple[dict, dict]:
    """(means, stds) of an evaluate folder's single category."""
    summary = json.loads((folder / "summary.json").read_text())
    entry = summary["mean"]
    return ({k: (entry.get(k) or {}).get("mean") for k in KEYS + EXTRA},
            {k: (entry.get(k) or {}).get("std") for k in KEYS + EXTRA})


def cell(value, std=None, worse=False) -> str:
    if value is None:
        return "-"
    text = f"{value:.3f}" if std is None else f"{value:.3f} +- {std:.3f}"
    return f"**{text}** (below)" if worse else text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", nargs=5, action="append", required=True,
                    metavar=("NAME", "ROOT", "PEER_JSON", "DEFAULT_EVAL", "PATCHCORE_EVAL"))
    args = ap.parse_args(argv)
    head = "| dataset | system | " + " | ".join(KEYS) + " | good flagged | fit s |"
    print(head)
    print("|" + "---|" * (len(KEYS) + 4))
    for name, root, peer_json, default_dir, pc_dir in args.dataset:
        peer = peer_row(Path(root), Path(peer_json))
        mean, std = eval_row(Path(default_dir))
        pc_mean, pc_std = eval_row(Path(pc_dir))
        print(f"| {name} | peer (anomalib PatchCore 1%, seed 0) | "
              + " | ".join(cell(peer.get(k)) for k in KEYS) + f" | - | {peer['fit_s']:.0f} |")
        print(f"| {name} | `patchcore` preset (5 seeds) | "
              + " | ".join(cell(pc_mean[k], pc_std[k]) for k in KEYS)
              + f" | {cell(pc_mean['good_fpr'])} | {pc_mean['fit_s']:.0f} |")
        below = {k: (peer.get(k) is not None and mean[k] < peer[k]) or mean[k] < pc_mean[k] for k in KEYS}
        print(f"| {name} | default `patchbank` (5 seeds) | "
              + " | ".join(cell(mean[k], std[k], below[k]) for k in KEYS)
              + f" | {cell(mean['good_fpr'], std['good_fpr'])} | {mean['fit_s']:.0f} |")


if __name__ == "__main__":
    main()
