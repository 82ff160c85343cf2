"""The exact search's FAISS kernel (patchbank.search.faiss_kernel) against its torch kernel, and the
refinement that makes their answers the same (patchbank.search.exact.refine)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FAST

from patchbank.detector import Detector
from patchbank.linalg import sq_dists, sq_norms
from patchbank.search import ExactSearch, LeaveGroupOut
from patchbank.search import faiss_kernel

faiss = pytest.importorskip("faiss")


def _data(n_bank=3000, width=376, map_dim=168, n_queries=1300, seed=0):
    g = torch.Generator().manual_seed(seed)
    wide = torch.randn(n_bank, width, generator=g)
    return wide[:, :map_dim], torch.randn(n_queries, map_dim, generator=g)


@pytest.fixture
def calls(monkeypatch):
    """Counts the calls that reach FAISS's kernel."""
    seen = []
    real = faiss_kernel.knn

    def spy(*args, **kwargs):
        seen.append(args[0].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(faiss_kernel, "knn", spy)
    return seen


@pytest.mark.parametrize("k", [1, 3])
def test_faiss_kernel_finds_the_torch_kernels_neighbours(k, calls):
    bank, q = _data()                       # a column view of wider rows, as with context taps
    fast, plain = ExactSearch(bank), ExactSearch(bank, kernel="torch")
    assert fast.kernel_rows is not None and fast.kernel_rows.flags["C_CONTIGUOUS"]
    assert fast.all_rows().data_ptr() == bank.data_ptr()       # rows() still reads the view
    (d1, i1), (d2, i2) = fast.search(q, k), plain.search(q, k)
    assert calls == [q.shape[0]]            # the call went through FAISS
    assert torch.equal(i1, i2) and torch.equal(d1, d2)         # refined: the same bits
    assert bool((d1 >= 0).all()) and bool((d1[:, :-1] <= d1[:, 1:]).all())
    exact = torch.cdist(q.double(), bank.double()).pow(2).topk(k, largest=False)
    assert torch.equal(i1, exact.indices)
    torch.testing.assert_close(d1.double(), exact.values, rtol=2e-6, atol=0)


def test_faiss_kernel_keeps_the_subsets_mask(calls):
    bank, q = _data(n_bank=2000)
    keep = torch.ones(2000, dtype=torch.bool)
    keep[torch.randperm(2000, generator=torch.Generator().manual_seed(3))[:1500]] = False
    d1, i1 = ExactSearch(bank).subset(keep).search(q, 2)
    d2, i2 = ExactSearch(bank, kernel="torch").subset(keep).search(q, 2)
    assert calls and bool(keep[i1].all())
    assert torch.equal(i1, i2) and torch.equal(d1, d2)


def test_leave_one_image_out_through_the_faiss_kernel(calls):
    # the calibration's call: each image's block of queries against the bank without its rows
    bank, q = _data(n_bank=1200, n_queries=2 * 900)
    owner = torch.arange(1200) % 7
    groups = torch.tensor([2, 5])
    d, i = LeaveGroupOut(ExactSearch(bank), owner, 4).for_queries(groups).search(q, 1)
    assert calls == [900, 900]
    for j, grp in enumerate(groups.tolist()):
        block = slice(900 * j, 900 * (j + 1))
        dm, im = ExactSearch(bank, kernel="torch").subset(owner != grp).search(q[block], 1)
        assert bool((owner[i[block]] != grp).all())
        assert torch.equal(i[block], im) and torch.equal(d[block], dm)


def test_small_calls_use_the_torch_kernel(calls):
    # below the size at which FAISS takes its matrix-product path (which alone honours the
    # masking norms) the torch kernel answers, bit for bit the plain one's answer
    bank, q = _data(n_queries=700)
    assert not faiss_kernel.usable(q) and not faiss_kernel.usable(q[:65])
    keep = torch.arange(bank.shape[0]) % 2 == 0
    (d1, i1), (d2, i2) = (ExactSearch(bank).subset(keep).search(q, 1),
                          ExactSearch(bank, kernel="torch").subset(keep).search(q, 1))
    assert calls == []
    assert torch.equal(i1, i2) and torch.equal(d1, d2)


def test_nan_and_infinite_queries_get_the_torch_kernels_answer(calls):
    bank, q = _data()
    q = q.clone()
    q[5, 3] = float("nan")
    q[7, 0] = float("inf")
    d1, i1 = ExactSearch(bank).search(q, 1)
    d2, i2 = ExactSearch(bank, kernel="torch").search(q, 1)
    assert calls
    assert bool(torch.isnan(d1[5]).all()) and bool(torch.isnan(d2[5]).all())
    assert not bool(torch.isfinite(d1[7]).any())
    assert bool((i1 >= 0).all())            # never FAISS's -1 (it would index the last row)
    ok = torch.ones(q.shape[0], dtype=torch.bool)
    ok[[5, 7]] = False
    assert torch.equal(i1[ok], i2[ok])


def test_a_masked_row_from_faiss_is_searched_again(monkeypatch):
    # should a FAISS version ignore the norms on its fast path, the masked rows it returns are
    # caught and those queries searched again with the torch kernel
    bank, q = _data(n_bank=500)
    keep = torch.arange(500) >= 100
    real = faiss_kernel.knn
    returned = []

    def ignores_the_mask(queries, rows, sqnorm, k):
        d, i = real(queries, rows, torch.from_numpy((rows ** 2).sum(1)), k)   # every row unmasked
        returned.append(i.copy())
        return d, i

    monkeypatch.setattr(faiss_kernel, "knn", ignores_the_mask)
    d1, i1 = ExactSearch(bank).subset(keep).search(q, 1)
    d2, i2 = ExactSearch(bank, kernel="torch").subset(keep).search(q, 1)
    assert not bool(keep[torch.from_numpy(returned[0])].all())   # FAISS did return masked rows
    assert bool(keep[i1].all())
    assert torch.equal(i1, i2) and torch.equal(d1, d2)


def test_the_torch_kernel_and_no_faiss_never_call_faiss(monkeypatch):
    bank, q = _data(n_bank=300)

    def refuse(*args, **kwargs):
        raise AssertionError("FAISS's kernel was called")

    monkeypatch.setattr(faiss_kernel, "knn", refuse)
    ExactSearch(bank, kernel="torch").search(q, 1)
    monkeypatch.setattr(faiss_kernel, "_faiss", lambda: None)     # FAISS not installed
    search = ExactSearch(bank)
    assert search.kernel_rows is None
    search.search(q, 1)
    with pytest.raises(ValueError, match="kernel"):
        ExactSearch(bank, kernel="auto")


def test_the_kernel_follows_torchs_thread_count(calls):
    bank, q = _data(n_bank=800)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ExactSearch(bank).search(q, 1)
        assert calls and faiss.omp_get_max_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_query_gets_the_same_bits_in_any_call_and_thread_count(calls):
    # FAISS's own distances round by a query's position in its call and by the thread count;
    # the refined answer must not: the same query alone, shifted inside another call, and with
    # one thread gives bitwise the same distance and row
    bank, q = _data(n_bank=2000, n_queries=1100)
    search = ExactSearch(bank)
    alone = search.search(q[300:], 1)
    shifted = search.search(torch.cat([q[:37], q[300:]]), 1)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = search.search(q[300:], 1)
    finally:
        torch.set_num_threads(before)
    assert calls == [800, 837, 800]
    for d, i in (shifted[0][37:], shifted[1][37:]), one_thread:
        assert torch.equal(d, alone[0]) and torch.equal(i, alone[1])


def test_refinement_measures_a_far_bank_without_cancellation():
    # rows far from the origin: the expansion's ||q||^2 + ||m||^2 - 2 q.m cancels ~4 digits,
    # the refined distance keeps float32's relative accuracy (float64 cdist as reference); the
    # neighbours are still apart by more than the expansion's rounding, so both kernels find them
    g = torch.Generator().manual_seed(4)
    bank = 30.0 + torch.randn(1500, 64, generator=g)
    q = 30.0 + torch.randn(900, 64, generator=g)
    exact = torch.cdist(q.double(), bank.double()).pow(2).min(1).values
    expansion = sq_dists(q, bank, sq_norms(bank), sq_norms(q)).min(1).values.double()
    for kernel in ("faiss", "torch"):
        d, _ = ExactSearch(bank, kernel=kernel).search(q, 1)
        torch.testing.assert_close(d[:, 0].double(), exact, rtol=1e-6, atol=0)
    assert float(((expansion - exact).abs() / exact).max()) > 1e-4      # what the refinement fixes


@pytest.mark.parametrize("apart", [True, False])
def test_a_fit_and_its_predictions_through_the_faiss_kernel_equal_the_torch_kernels(calls, monkeypatch,
                                                                                    synthetic_root, apart):
    # the synthetic images are small, so FAISS is let take its matrix-product path for small
    # calls too; calibration's calls (one per image, or one per batch of images: ``apart``) and
    # prediction's batches then run FAISS's kernel, and the model and the scores are the torch
    # kernel's bit for bit (FAISS not installed)
    monkeypatch.setattr(faiss_kernel, "MIN_QUERIES", 1)
    monkeypatch.setattr(faiss.cvar, "distance_compute_blas_threshold", 0)
    monkeypatch.setattr("patchbank.search.exact.GROUP_BLOCK_ELEMENTS", 0 if apart else 10 ** 12)
    train = synthetic_root / "train" / "good"
    tests = sorted((synthetic_root / "test").rglob("*.png"))
    fast = Detector.from_preset("patchbank", progress=False, **FAST).fit(train)
    fitted_calls = len(calls)
    n_train = len(list(train.glob("*.png")))
    assert fitted_calls >= (n_train if apart else -(-n_train // FAST["batch_size"]))   # the map's calls
    got = fast.predict(tests)
    assert len(calls) > fitted_calls
    monkeypatch.setattr(faiss_kernel, "_faiss", lambda: None)
    plain = Detector.from_preset("patchbank", progress=False, **FAST).fit(train)
    assert torch.equal(fast.bank_, plain.bank_)
    np.testing.assert_array_equal(fast.calibration_.base_scores_, plain.calibration_.base_scores_)
    assert fast.threshold_ == plain.threshold_
    assert [p.score for p in got] == [p.score for p in plain.predict(tests)]


def test_concurrent_searches_give_the_sequential_answers(calls):
    # the service runs one thread per model: two searches through FAISS's kernel at once (its
    # OpenMP OpenBLAS called from two Python threads) answer what they answer one at a time
    from concurrent.futures import ThreadPoolExecutor

    (bank_a, q_a), (bank_b, q_b) = _data(n_bank=1500, seed=1), _data(n_bank=1200, seed=2)
    jobs = [(ExactSearch(bank_a), q_a), (ExactSearch(bank_b), q_b)] * 4
    alone = [search.search(q, 1) for search, q in jobs[:2]]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda job: job[0].search(job[1], 1), jobs))
    assert len(calls) == 2 + len(jobs)
    for j, (d, i) in enumerate(together):
        assert torch.equal(d, alone[j % 2][0]) and torch.equal(i, alone[j % 2][1])
