"""Could an exact search prune the bank with a lower bound from its principal axes?

    python benchmarks/pruned_search.py MODEL DATA_ROOT --per-type 8 --dims 24,32,48,64 --candidates 4,8,16 -o OUT.json

Issue #14's CPU predict target needs the map's search well under the backbone's time; at batch 1
it is a matrix product of the patches against the whole bank.  The idea measured here: project
bank rows and queries on the bank's top d' principal axes and append the norm of the residual;
the squared distance between two such (d' + 1)-vectors, ``||P(q - m)||^2 + (||Rq|| - ||Rm||)^2``,
is a lower bound of the true squared distance.  FAISS finds each query's c nearest by the bound;
their true distances are measured; the answer is exact for a query whose nearest true distance is
at most its c-th bound (else it would need the full search).  Printed and written per (d', c):
the share of queries the check proves exact, the share whose nearest bank row was among the c
candidates anyway, and the time of the bound's search for one image's queries against the full
search's (FAISS's ``knn_L2sqr``, the kernel prediction uses).

The queries are the map rows of the model's own predictions on ``--per-type`` test images of each
of the dataset's folders under test/ (captured from the exact search's calls).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def capture_queries(model_path: str, root: Path, per_type: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(queries [n, d], the map's bank [m, d], queries per image) from the model's predictions."""
    from patchbank.detector import Detector
    from patchbank.io.images import list_images
    from patchbank.search import exact

    det = Detector.load(model_path, progress=False)
    caught: list[tuple[torch.Tensor, torch.Tensor]] = []
    search = exact.ExactSearch.search

    def spy(self, queries, k=1):
        if queries.shape[0] >= 256:          # the map's calls (the context taps' are smaller)
            caught.append((queries.detach().clone(), self.bank))
        return search(self, queries, k)

    exact.ExactSearch.search = spy
    try:
        for folder in sorted(p for p in (root / "test").iterdir() if p.is_dir()):
            for image in list_images(folder)[:per_type]:
                det.predict([str(image)], batch_size=1)
    finally:
        exact.ExactSearch.search = search
    queries = torch.cat([q for q, _ in caught]).float().numpy()
    bank = caught[0][1].float().contiguous().numpy()
    return np.ascontiguousarray(queries), np.ascontiguousarray(bank), caught[0][0].shape[0]


def knn(faiss, q: np.ndarray, b: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    n = q.shape[0]
    dist, ids = np.empty((n, k), np.float32), np.empty((n, k), np.int64)
    norms = (b * b).sum(1).astype(np.float32)
    ptr = faiss.swig_ptr
    faiss.knn_L2sqr(ptr(q), ptr(b), b.shape[1], n, b.shape[0], k, ptr(dist), ptr(ids), ptr(norms))
    return dist, ids


def fastest_ms(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("data_root", type=Path)
    ap.add_argument("--per-type", type=int, default=8)
    ap.add_argument("--dims", default="24,32,48,64")
    ap.add_argument("--candidates", default="4,8,16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-queries", type=int, default=10368, help="queries checked (8 images at 36 x 36)")
    ap.add_argument("-o", "--output", required=True, type=Path)
    args = ap.parse_args()
    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    queries, bank, per_image = capture_queries(args.model, args.data_root, args.per_type)
    q = queries[:args.max_queries]
    d_true, i_true = knn(faiss, q, bank, 2)
    truth = ((q[:, None, :] - bank[i_true]) ** 2).sum(2).min(1)
    one = np.ascontiguousarray(queries[:per_image])
    result = {"model": args.model, "data_root": str(args.data_root), "bank": list(bank.shape),
              "queries_checked": int(q.shape[0]), "queries_per_image": per_image,
              "full_search_ms_per_image": fastest_ms(lambda: knn(faiss, one, bank, 2)), "rows": []}
    mean = bank.mean(0)
    _, s, vt = np.linalg.svd(bank - mean, full_matrices=False)
    share = (s ** 2) / (s ** 2).sum()
    for dim in map(int, args.dims.split(",")):
        axes = vt[:dim].T.astype(np.float32)

        def lifted(x: np.ndarray) -> np.ndarray:
            centred = x - mean
            p = centred @ axes
            residual = np.sqrt(np.maximum((centred * centred).sum(1) - (p * p).sum(1), 0.0))
            return np.ascontiguousarray(np.concatenate([p, residual[:, None]], 1).astype(np.float32))

        lifted_bank, lifted_q, lifted_one = lifted(bank), lifted(q), lifted(one)
        for c in map(int, args.candidates.split(",")):
            bound, ids = knn(faiss, lifted_q, lifted_bank, c)
            best = ((q[:, None, :] - bank[ids]) ** 2).sum(2).min(1)
            row = {"dims": dim, "variance_share": float(share[:dim].sum()), "candidates": c,
                   "proved_exact": float((best <= bound[:, -1] * (1 - 1e-4)).mean()),
                   "nearest_among_candidates": float(np.isclose(best, truth, rtol=1e-6, atol=0).mean()),
                   "bound_search_ms_per_image": fastest_ms(lambda: knn(faiss, lifted_one, lifted_bank, c))}
            result["rows"].append(row)
            print(f"d'={dim} (variance {row['variance_share']:.3f}) c={c}: proved exact "
                  f"{row['proved_exact']:.4f}, nearest among candidates {row['nearest_among_candidates']:.4f}, "
                  f"bound search {row['bound_search_ms_per_image']:.1f} ms/img "
                  f"(full {result['full_search_ms_per_image']:.1f})")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
