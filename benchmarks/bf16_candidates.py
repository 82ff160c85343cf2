"""A lead for issue #14's predict time, not used by the library: nearest-neighbour search with a
bfloat16 candidate pass and an exact float32 re-rank.

On CPUs with AVX512-BF16 a bfloat16 matrix product runs several times faster than float32 (MKL
on AMD is slow in float32).  bfloat16 alone is too coarse for patch distances, so this
measures, on a fitted default-preset model and real test images: how often the exact nearest
bank row is among the k bfloat16 candidates (rows centred on the bank mean first), the largest
relative error of the re-ranked distance, and the time per block of ``--block`` queries (one
320 / 288 image has 1,296) of the exact float32 product against the two-stage search.

    python benchmarks/bf16_candidates.py ../shared/data/mtd -o benchmarks/results/bf16_candidates_mtd.json
"""
from __future__ import annotations

import argparse
import glob
import json
import time
import warnings
from pathlib import Path

import torch

from levers import embed_test
from patchbank.config import Config
from patchbank.detector import Detector
from patchbank.io.images import list_images
from patchbank.studies.speed import machine


def exact_nn(q: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(squared distance, index) of each query's nearest bank row, float32 expanded form."""
    d2 = (q * q).sum(1, keepdim=True) - 2 * q @ bank.T + bank_sq
    return d2.clamp_min(0).min(1)


def two_stage_nn(q: torch.Tensor, bank_c: torch.Tensor, bank_bf_t: torch.Tensor, bank_c_sq: torch.Tensor,
                 mu: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k candidates from a bfloat16 product on mean-centred rows, re-ranked exactly in float32."""
    qc = q - mu
    approx = bank_c_sq - 2 * (qc.bfloat16() @ bank_bf_t).float()   # ||q||^2 is the same for every row
    cand = approx.topk(k, dim=1, largest=False).indices
    d2 = ((qc.unsqueeze(1) - bank_c[cand]) ** 2).sum(-1)
    best, j = d2.min(1)
    return best, cand.gather(1, j.unsqueeze(1)).squeeze(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--images", type=int, default=80, help="test images (evenly spaced)")
    ap.add_argument("--ks", default="1,4,8,16")
    ap.add_argument("--block", type=int, default=1296)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    test = sorted(glob.glob(str(args.root / "test" / "*" / "*")))
    test = test[::max(1, len(test) // args.images)][:args.images]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = Detector(Config.preset("patchbank"), progress=False).fit(list_images(args.root / "train" / "good"))
    bank = det.bank_.float()
    q_all = embed_test(det, test).reshape(-1, bank.shape[1]).float()
    blocks = list(q_all.split(args.block))
    bank_sq = (bank * bank).sum(1)
    mu = bank.mean(0)
    bank_c = bank - mu
    bank_bf_t = bank_c.bfloat16().T.contiguous()
    bank_c_sq = (bank_c * bank_c).sum(1)
    exact_nn(blocks[0], bank, bank_sq)                                    # warm
    t0 = time.perf_counter()
    ex = [exact_nn(b, bank, bank_sq) for b in blocks]
    res = {"root": str(args.root), "bank": list(bank.shape), "queries": q_all.shape[0], "block": args.block,
           "exact_ms_per_block": 1000 * (time.perf_counter() - t0) / len(blocks), "k": {}, "machine": machine()}
    ex_d = torch.cat([d for d, _ in ex]).sqrt()
    ex_i = torch.cat([i for _, i in ex])
    for k in (int(v) for v in args.ks.split(",")):
        two_stage_nn(blocks[0], bank_c, bank_bf_t, bank_c_sq, mu, k)   # warm
        t0 = time.perf_counter()
        got = [two_stage_nn(b, bank_c, bank_bf_t, bank_c_sq, mu, k) for b in blocks]
        ms = 1000 * (time.perf_counter() - t0) / len(blocks)
        d = torch.cat([v for v, _ in got]).sqrt()
        i = torch.cat([j for _, j in got])
        res["k"][k] = {"ms_per_block": ms, "same_nn_share": float((i == ex_i).float().mean()),
                       "max_abs_distance_error": float((d - ex_d).abs().max())}
        print(f"k={k}: same nearest row {res['k'][k]['same_nn_share']:.5f}, max |distance error| "
              f"{res['k'][k]['max_abs_distance_error']:.2e}, {ms:.1f} ms/block (exact "
              f"{res['exact_ms_per_block']:.1f})", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
