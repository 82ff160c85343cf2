"""Leave-one-image-out search: one call per image, or one call for a batch of images.

The calibration searches each training image's queries in the bank without that image's rows
(:class:`patchbank.search.LeaveGroupOut`).  The exact search can do it either way, with the same
neighbours: one masked call per image, or one call over a batch's images with extra neighbours
whose own-image rows are dropped.  Which is faster depends on the block an image contributes
(its queries x the columns): ``ExactSearch.groups_apart`` picks per block.  This times both ways
on random rows of the default preset's shapes (MTD: 9,863 bank rows, 168 map columns, 376 with the
context taps; KSDD: 3,508 rows), for blocks from 33 to 1,296 queries an image, 16 images a call,
and checks that both find the same rows.

    python benchmarks/leave_out_calls.py -o benchmarks/results/leave_out_s21/leave_out_calls.json
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from patchbank.search.exact import GROUP_BLOCK_ELEMENTS, ExactSearch
from patchbank.search.leave_out import LeaveGroupOut

EXTRA = 16     # patchbank.pipeline.calibration.LOO_EXTRA


class OneCall(ExactSearch):
    """The exact search, every block searched in one call with extra neighbours."""

    def groups_apart(self, block: int) -> bool:
        return False


class Apart(ExactSearch):
    """The exact search, every block searched on its own (masked)."""

    def groups_apart(self, block: int) -> bool:
        return True


def timed(view, queries, repeats: int) -> tuple[float, tuple]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = view.search(queries, 1)
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=16, help="images a call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--blocks", default="33,65,130,260,520,1296")
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for entries, dim in ((9863, 168), (9863, 376), (3508, 168), (3508, 376)):
        bank = torch.randn(entries, dim)
        owner = torch.randint(0, 761, (entries,))
        groups = torch.arange(args.images) * 47
        for block in map(int, args.blocks.split(",")):
            q = torch.randn(args.images * block, dim)
            ms = {}
            found = {}
            for name, cls in (("apart", Apart), ("one_call", OneCall)):
                view = LeaveGroupOut(cls(bank), owner, EXTRA).for_queries(groups)
                s, found[name] = timed(view, q, args.repeats)
                ms[name] = 1000 * s / args.images
            same = bool(torch.equal(found["apart"][1], found["one_call"][1]))
            chosen = "apart" if ExactSearch(bank).groups_apart(block) else "one_call"
            rows.append({"entries": entries, "dim": dim, "block": block, "ms_per_image": ms,
                         "same_rows": same, "chosen": chosen})
            print(f"{entries} x {dim}, {block:5d} queries an image: apart {ms['apart']:7.2f} ms, "
                  f"one call {ms['one_call']:7.2f} ms, chosen {chosen}, same rows {same}", flush=True)
    out = {"rows": rows, "images_per_call": args.images, "repeats": args.repeats,
           "group_block_elements": GROUP_BLOCK_ELEMENTS, "threads": torch.get_num_threads(),
           "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__}}
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
