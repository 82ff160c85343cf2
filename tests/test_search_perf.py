"""IVF-PQ search, the "auto" rule, and the matrix form of the anomaly maps."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from patchbank.pipeline.anomaly_map import anomaly_maps, anomaly_maps_reference
from patchbank.config import Config
from patchbank.search import (ExactSearch, FaissSearch, ivf_train_ids, make_search, pq_subquantizers,
                              resolve_search)


@pytest.mark.parametrize("shape,size,sigma", [((4, 28, 28), (224, 224), 4.0), ((2, 14, 20), (100, 140), 2.0),
                                              ((1, 3, 5), (40, 60), 4.0), ((2, 28, 28), (224, 224), 0.0)])
def test_anomaly_maps_matrix_form_equals_reference(shape, size, sigma):
    torch.manual_seed(0)
    s = torch.rand(shape) * 5
    a, b = anomaly_maps(s, size, sigma), anomaly_maps_reference(s, size, sigma)
    assert a.shape == b.shape == (shape[0], *size)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_ivfpq_returns_exact_distances_of_good_neighbours():
    pytest.importorskip("faiss")
    torch.manual_seed(0)
    lift = torch.randn(6, 32)                 # patch features have a low intrinsic dimension
    bank = torch.randn(8000, 6) @ lift + 0.05 * torch.randn(8000, 32)
    queries = torch.randn(300, 6) @ lift + 0.05 * torch.randn(300, 32)
    s = FaissSearch(bank, "ivfpq", nprobe=8, refine=8)
    d, i = s.search(queries, 3)
    assert d.shape == i.shape == (300, 3) and (i >= 0).all()
    exact_d = ((queries[:, None] - bank[i]) ** 2).sum(2)
    assert torch.allclose(d, exact_d, rtol=1e-4, atol=1e-3)            # re-ranked exactly
    assert (d[:, 1:] >= d[:, :-1] - 1e-4).all()
    ref_d, ref_i = ExactSearch(bank).search(queries, 1)
    assert (i[:, 0] == ref_i[:, 0]).float().mean() > 0.3                # recall@1
    assert d[:, 0].sqrt().mean() / ref_d[:, 0].sqrt().mean() < 1.05     # near-neighbour distances
    sub = s.subset(torch.arange(8000) % 2 == 0)
    assert len(sub) == 4000 and len(s) == 8000
    d2, i2 = sub.search(queries, 3)
    assert (i2 >= 0).all() and (i2 % 2 == 0).all()                      # kept rows, whole-bank ids
    assert torch.allclose(d2, ((queries[:, None] - bank[i2]) ** 2).sum(2), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("kind", ["exact", "exact-blocks", "flat", "ivf", "ivfpq"])
def test_subset_is_the_search_over_the_kept_rows(kind):
    """subset(keep) shares the index (no copy) and must return what a search over bank[keep]
    returns, with indices into the whole bank.  IVF kinds probe every list here, so the
    reference is the exact search over the kept rows.  ``exact-blocks`` reads the bank in
    blocks of 256 rows: a subset once read only the blocks starting below its number of kept
    rows (1,800 of 3,000 here), missing the kept rows after them."""
    if not kind.startswith("exact"):
        pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(1)
    bank = torch.randn(3000, 16, generator=g)
    queries = torch.randn(200, 16, generator=g)
    keep = torch.rand(3000, generator=g) > 0.4
    ids = torch.nonzero(keep)[:, 0]
    if kind.startswith("exact"):
        s = ExactSearch(bank, bank_chunk=256 if kind == "exact-blocks" else 131072)
    else:
        s = FaissSearch(bank, kind, nlist=20, nprobe=20, refine=512)  # ivfpq: re-rank every row
    before = s.search(queries, 2)
    sub = s.subset(keep)
    assert len(sub) == int(keep.sum()) and len(s) == 3000
    ref_d, ref_i = ExactSearch(bank[keep]).search(queries, 4)
    d, i = sub.search(queries, 4)
    assert torch.equal(i, ids[ref_i])
    assert torch.allclose(d, ref_d, rtol=1e-4, atol=1e-4)
    # the full search is unaffected by its subset
    after = s.search(queries, 2)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    # k larger than the kept rows: only kept rows come back
    few = s.subset(torch.arange(3000) < 3)
    d3, i3 = few.search(queries[:5], 10)
    assert i3.shape == (5, 3) and set(i3.flatten().tolist()) <= {0, 1, 2}


def test_only_a_subset_is_refined_with_its_mask():
    # refine skips the masked-row look-up for a bank with no row masked out (one launch less per
    # block on a GPU); a subset, and a subset of a subset, keep it and never return a masked row
    from patchbank.search.exact import refine
    g = torch.Generator().manual_seed(4)
    bank, queries = torch.randn(500, 8, generator=g), torch.randn(60, 8, generator=g)
    whole = ExactSearch(bank, kernel="torch")
    assert not whole.masked
    d, i = whole.search(queries, 3)
    cand = whole.search(queries, 4)[1]
    for masked in (True, False):
        dm, im = refine(queries, bank, whole.bank_sqnorm, cand, 3, masked)
        assert torch.equal(dm, d) and torch.equal(im, i)
    first = whole.subset(torch.arange(500) % 3 != 0)
    second = first.subset(torch.arange(500) % 2 != 0)
    assert first.masked and second.masked and not whole.masked
    _, i2 = second.search(queries, 5)
    assert bool(((i2 % 3 != 0) & (i2 % 2 != 0)).all())
    # a masked candidate (row 0, forced in front of the subset's own four) stays at +inf only
    # where the mask is read
    forced = torch.cat([torch.zeros(60, 1, dtype=torch.long), second.search(queries, 4)[1]], 1)
    read = refine(queries, bank, second.bank_sqnorm, forced, 5, True)
    assert not bool(torch.isinf(read[0][:, :4]).any()) and bool(torch.isinf(read[0][:, 4]).all())
    assert bool((read[1][:, 4] == 0).all())
    assert bool(torch.isfinite(refine(queries, bank, second.bank_sqnorm, forced, 5, False)[0]).all())


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_small_calls_probe_the_same_lists_as_faiss(kind):
    """A call of fewer than SMALL_CALL queries finds its inverted lists with torch (_coarse) and
    scans them with search_preassigned; one big call goes through FAISS's own search.  With
    nprobe < nlist both must probe the same lists, so return the same neighbours, for the whole
    index and for a subset (ID selector), and leave the index's parallel mode as it was."""
    pytest.importorskip("faiss")
    from patchbank.search import faiss as S

    g = torch.Generator().manual_seed(2)
    lift = torch.randn(6, 32, generator=g)
    bank = torch.randn(9000, 6, generator=g) @ lift + 0.05 * torch.randn(9000, 32, generator=g)
    queries = torch.randn(S.SMALL_CALL + 400, 6, generator=g) @ lift
    s = FaissSearch(bank, kind, nlist=60, nprobe=5, refine=4)
    mode = s.index.parallel_mode
    for search in (s, s.subset(torch.rand(9000, generator=g) > 0.3)):
        big_d, big_i = search.search(queries, 2)                 # FAISS's search
        parts = [search.search(q, 2) for q in queries.split(300)]  # torch lists + preassigned
        assert torch.equal(torch.cat([p[1] for p in parts]), big_i)
        assert torch.allclose(torch.cat([p[0] for p in parts]), big_d, rtol=1e-5, atol=1e-5)
    assert s.index.parallel_mode == mode
    # the lists _coarse picks are the quantizer's nprobe nearest
    q = queries[:50].contiguous()
    dq, iq = s._coarse(q)
    ref_d, ref_i = s.faiss.downcast_index(s.index.quantizer).search(q.numpy(), 5)
    assert (iq == ref_i).all() and abs(dq - ref_d).max() < 1e-3


def test_pq_subquantizers():
    assert pq_subquantizers(128) == 32 and pq_subquantizers(84) == 21 and pq_subquantizers(6) == 3
    assert pq_subquantizers(7) == 7


def test_auto_rule_picks_ivfpq_for_huge_banks():
    pytest.importorskip("faiss")
    cfg = Config()
    assert resolve_search(cfg, 100) == "exact"
    assert resolve_search(cfg, cfg.ivf_min_bank) == "faiss-ivf"
    assert resolve_search(cfg, cfg.ivfpq_min_bank) == "faiss-ivfpq"
    assert resolve_search(cfg.replace(search="faiss-ivfpq"), 10) == "faiss-ivfpq"
    s = make_search(torch.randn(3000, 16), cfg.replace(search="faiss-ivfpq", ivf_probe=4), "faiss-ivfpq")
    assert isinstance(s, FaissSearch) and s.kind == "ivfpq"


def test_detector_with_ivfpq(synthetic_root):
    pytest.importorskip("faiss")
    from conftest import FAST, split_items
    from patchbank.detector import Detector

    det = Detector.from_preset("lmf-core", progress=False, search="faiss-ivfpq", **FAST)
    det.fit(synthetic_root / "train" / "good")
    assert det.info()["search"] == "faiss-ivfpq"
    items, _ = split_items(synthetic_root)
    preds = det.predict(items)
    assert len(preds) == len(items) and all(p.anomaly_map.shape == (96, 96) for p in preds)


def test_auto_is_exact_torch_search_on_gpu():
    """On a CUDA device "auto" searches exactly with torch on the device (FAISS here is CPU-only)."""
    cfg = Config()
    assert resolve_search(cfg, 5_000_000, "cuda") == "exact"
    assert resolve_search(cfg, 5_000_000, "cuda:0") == "exact"
    assert resolve_search(cfg.replace(search="faiss-ivf"), 5_000_000, "cuda") == "faiss-ivf"


def test_ivf_lists_sized_exactly_hold_what_faiss_add_gives():
    """FaissSearch(bank, "ivf") adds through _add_exact_lists (lists allocated at their final
    size, add_core with FAISS's own assignment): the lists must hold the same ids and vectors, in
    the same order, as FAISS's plain add, and search the same."""
    faiss = pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(3)
    bank = torch.randn(6000, 16, generator=g)
    s = FaissSearch(bank, "ivf", nlist=30, nprobe=4)
    ref = faiss.IndexIVFFlat(faiss.IndexFlatL2(16), 16, 30)
    ref.cp.seed, ref.cp.niter, ref.cp.max_points_per_centroid = 0, 5, 40
    ref.train(bank[ivf_train_ids(6000, 30, 0)].numpy())     # the sample FaissSearch trains on
    ref.add(bank.numpy())
    ref.nprobe = 4
    a, b = (faiss.downcast_InvertedLists(i.invlists) for i in (s.index, ref))
    assert s.index.ntotal == ref.ntotal == 6000
    for list_no in range(30):
        n = a.list_size(list_no)
        assert n == b.list_size(list_no)
        ids = (faiss.rev_swig_ptr(x.get_ids(list_no), n).copy() for x in (a, b))
        assert np.array_equal(*ids)
        codes = (faiss.rev_swig_ptr(x.get_codes(list_no), n * 64).copy() for x in (a, b))
        assert np.array_equal(*codes)
    q = torch.randn(500, 16, generator=g)
    d, i = s.search(q, 3)
    rd, ri = ref.search(q.numpy(), 3)
    assert np.array_equal(i.numpy(), ri) and np.allclose(d.numpy(), rd)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ivf_index_memory_is_the_bank_not_a_doubled_copy():
    # a 131,072 x 128 float32 bank is 64 MiB; FAISS's plain add grows each list by doubling
    # (~1.3x the vectors, benchmarks/bench_index_memory.py); lists sized up front hold ~1.0x
    pytest.importorskip("faiss")
    code = r'''
import sys, numpy as np, torch
from patchbank.runtime.malloc import trim_malloc
from patchbank.search import FaissSearch
def rss():
    trim_malloc()                       # freed temporaries (the k-means sample) do not count
    return int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) / 1024
bank = torch.from_numpy(np.random.default_rng(0).standard_normal((131072, 128), dtype=np.float32))
train = FaissSearch(bank[:4000], "ivf", nlist=100)            # warm up FAISS / BLAS
before = rss()
s = FaissSearch(bank, "ivf")
print(rss() - before)
'''
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) < 1.18 * 64
