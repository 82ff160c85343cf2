"""A lead for issue #14's predict time, not used by the library: nearest-neighbour search with a
bfloat16 candidate pass and an exact float32 re-rank.

On CPUs with AVX512-BF16 a bfloat16 matrix product runs several times faster than float32 (MKL
on AMD is slow in float32).  bfloat16 alone is too coarse for patch distances, so this
measures, on a fitted default-preset model and real test images: how often the exact nearest
bank row is among the k bfloat16 candidates (rows centred on the bank mean first), the largest
relative error of the re-ranked distance, and the time per block of ``--block`` queries (one
320 / 288 image has 1,296) of the exact float32 product against the two-stage search.

    python benchmarks/bf16_candidates.py ../shared/data/mtd -o benchmarks/results/bf16_candidates_mtd.json

``--certified`` measures instead a search that is exact by construction (session 10, not
adopted: docs/performance.md, "A certified bfloat16 screen"):
Exact k-nearest neighbours with a bfloat16 screen: the same neighbours as the float32 search,
for about a third of the matrix-product work on CPUs with native bfloat16 (AVX512-BF16, AMX).

For queries ``q`` and bank rows ``b``, both centred on the bank mean ``mu``:

1. **Screen.** ``a_ij = bf16(||b_j||^2) - 2 bf16(q_i) . bf16(b_j)`` by one bfloat16
   ``addmm`` (float32 accumulation, bfloat16 result).  Rounding error analysis (Higham,
   *Accuracy and Stability of Numerical Algorithms*, Sec. 3.1; unit roundoff ``u = 2^-8``,
   Cauchy-Schwarz for ``sum |q b| <= ||q|| ||b||``, ``B = max_j ||b_j||``): rounding the inputs
   and accumulating ``d`` products in float32 err by ``(2u + u^2 + d 2^-23) ||q_i|| B`` on the
   dot product, the norm's rounding by ``u B^2``, the result's rounding by
   ``u |a_ij| <= u (B^2 + 2 ||q_i|| B)``.  So
   ``|a_ij - (||b_j||^2 - 2 q_i . b_j)| <= 2u B^2 + 2 rel ||q_i|| B`` with
   ``rel = 3u + 4u^2 + (d + 4) 2^-23``, and ``L_ij = a_ij + ||q_i||^2 - slack_i``
   (``slack_i`` that bound plus a margin for the float32 norms) is a **lower bound** of the true
   squared distance ``d_ij``.
2. **Candidates.** The ``k`` rows with the smallest ``a_ij``; their exact distances (float32,
   ``sum (q - b)^2`` in the original coordinates) give ``tau_i``, the largest of the ``k``: the
   true k-th nearest distance is at most ``tau_i``.
3. **Certified re-rank.** Every row that could be among the true ``k`` nearest has
   ``L_ij <= d_ij <= tau_i``.  Those rows (the ``k`` candidates and typically a few more) get
   exact distances, and the ``k`` smallest are the answer: the same rows the float32 search
   finds, up to ties within float rounding.  Nothing is approximated; the screen only decides
   which exact distances to compute.

A query chunk whose bound admits too many rows (all-identical rows, a bank of near-duplicates:
more than ``MAX_PAIRS_PER_QUERY`` per query on average) would be searched by the float32
product instead; the benchmark counts such chunks.

    python benchmarks/bf16_candidates.py ../shared/data/mtd --certified -o benchmarks/results/bf16_certified_mtd.json
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
from patchbank.linalg import sq_norms
from patchbank.search import ExactSearch
from patchbank.studies.speed import machine

UNIT = 2.0 ** -8
"""bfloat16's unit roundoff (8 significant bits)."""

MAX_PAIRS_PER_QUERY = 64
"""Average exact distances per query above which a chunk is searched by the float32 product."""


def relative_error(dim: int) -> float:
    """``rel`` of the module docstring: the bound on |bfloat16 dot - exact dot| / (||q|| ||b||)."""
    return 3 * UNIT + 4 * UNIT * UNIT + (dim + 4) * 2.0 ** -23


class Bf16Screen:
    """The bank prepared for screening: its mean, centred rows in bfloat16 (transposed), their
    squared norms and the largest norm."""

    def __init__(self, bank: torch.Tensor):
        self.mean = bank.mean(0)
        centred = bank - self.mean
        self.rows_t = centred.bfloat16().T.contiguous()          # [d, m]
        self.sqnorm = sq_norms(centred)
        self.max_norm = float(self.sqnorm.max().sqrt()) if bank.shape[0] else 0.0
        self.rel = relative_error(bank.shape[1])

    def nearest(self, q: torch.Tensor, bank: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(squared distances [n, k] ascending, row ids [n, k]) of queries ``q`` [n, d] among
        ``bank``'s admitted rows (see the module docstring), or None when the bound admits more
        than :data:`MAX_PAIRS_PER_QUERY` rows per query (the caller searches in float32)."""
        n = q.shape[0]
        qc = q - self.mean
        qn2 = sq_norms(qc)
        screen = torch.addmm(self.sqnorm.bfloat16(), qc.bfloat16(), self.rows_t, alpha=-2.0)
        cand = screen.min(1, keepdim=True).indices if k == 1 else screen.topk(k, dim=1, largest=False).indices
        tau = exact_pairs(q, bank, torch.arange(n).unsqueeze(1).expand(n, k), cand).amax(1)
        qn = qn2.sqrt()
        big = self.max_norm ** 2
        slack = 2 * UNIT * big + 2 * self.rel * qn * self.max_norm + 2.0 ** -16 * (qn2 + big)
        # admit L_ij <= tau_i; comparing bfloat16 values with the limit rounded to bfloat16
        # admits every row the float comparison admits (rounding up can only admit more)
        limit = (tau * (1 + 2.0 ** -12) - qn2 + slack).bfloat16()
        admit = screen <= limit.unsqueeze(1)
        admit.scatter_(1, cand, True)                         # the candidates themselves, always
        qi, bi = admit.nonzero(as_tuple=True)
        if qi.numel() > MAX_PAIRS_PER_QUERY * n:
            return None
        return smallest_per_query(exact_pairs(q, bank, qi, bi), qi, bi, n, k)


def exact_pairs(q: torch.Tensor, bank: torch.Tensor, qi: torch.Tensor, bi: torch.Tensor) -> torch.Tensor:
    """Squared distances ``||q[qi] - bank[bi]||^2`` (float32, difference form) for index
    tensors of one shape."""
    return (q[qi] - bank[bi]).square().sum(-1)


def smallest_per_query(dist: torch.Tensor, qi: torch.Tensor, bi: torch.Tensor, n: int,
                       k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest ``dist`` of each query ``0..n-1`` among (query ``qi``, row ``bi``)
    pairs, every query having at least ``k``: ([n, k] ascending, row ids [n, k])."""
    order = torch.sort(dist, stable=True).indices
    order = order[torch.sort(qi[order], stable=True).indices]   # by query, ascending distance
    counts = torch.bincount(qi, minlength=n)
    starts = torch.cumsum(counts, 0) - counts
    take = (starts.unsqueeze(1) + torch.arange(k)).reshape(-1)
    pick = order[take]
    return dist[pick].view(n, k), bi[pick].view(n, k)


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
    ap.add_argument("--certified", action="store_true", help="measure the certified screen (k = 1 "
                    "and 17) against ExactSearch instead")
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
    if args.certified:
        res = certified(bank, q_all)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1) + "\n")
        return
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


def certified(bank: torch.Tensor, queries: torch.Tensor, chunk: int = 256) -> dict:
    """Time per 1,296 queries (one 320 / 288 image) of ExactSearch and of the certified screen
    (query chunks of ``chunk``), for k = 1 (predict) and 17 (calibration's k + LOO_EXTRA); the
    share of equal neighbour ids, the largest relative distance difference, exact pairs per
    query, chunks that needed the float32 fallback."""
    exact, screen = ExactSearch(bank), Bf16Screen(bank)
    per_image = queries.shape[0] / 1296
    res = {"bank": list(bank.shape), "queries": queries.shape[0], "machine": machine(), "k": {}}
    for k in (1, 17):
        exact.search(queries[:1296], k)
        t0 = time.perf_counter()
        ed, ei = exact.search(queries, k)
        t_exact = (time.perf_counter() - t0) / per_image
        blocks = list(queries.split(chunk))
        screen.nearest(blocks[0], bank, k)
        t0 = time.perf_counter()
        got = [screen.nearest(b, bank, k) for b in blocks]
        t_screen = (time.perf_counter() - t0) / per_image
        fallback = sum(g is None for g in got)
        got = [g if g is not None else exact.search(b, k) for g, b in zip(got, blocks)]
        gd, gi = torch.cat([g[0] for g in got]), torch.cat([g[1] for g in got])
        res["k"][k] = {"exact_ms_per_image": 1000 * t_exact, "screen_ms_per_image": 1000 * t_screen,
                       "same_ids_share": float((gi == ei).float().mean()),
                       "max_rel_distance_diff": float(((gd - ed).abs() / ed.clamp_min(1e-12)).max()),
                       "fallback_chunks": fallback}
        print(f"k={k}: exact {1000 * t_exact:.1f} ms/img, certified screen {1000 * t_screen:.1f} ms/img, "
              f"same ids {res['k'][k]['same_ids_share']:.5f}, max rel diff "
              f"{res['k'][k]['max_rel_distance_diff']:.1e}, fallback chunks {fallback}", flush=True)
    return res


if __name__ == "__main__":
    main()
