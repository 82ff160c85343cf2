"""Greedy k-center coreset: the pruned sampler must select exactly what the brute force selects."""
from __future__ import annotations

import math

import pytest
import torch

from patchbank.sampling.greedy import (
    GreedySampler,
    NaiveGreedySampler,
    _Coords,
    _dist,
    _lower_all,
    _pair_dist,
    coreset_size,
    covering_radius,
    greedy_fast,
    greedy_reference,
    entries_below,
    pairs_below,
    sampled_dots,
)
from patchbank.sampling import greedy as greedy_module


def _clustered(n: int, d: int, k: int, seed: int, rank: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, d, generator=g) * 5
    lab = torch.randint(k, (n,), generator=g)
    axes = torch.randn(k, rank, d, generator=g) / math.sqrt(d)
    z = torch.randn(n, 1, rank, generator=g)
    return means[lab] + (z @ axes[lab])[:, 0] + 0.05 * torch.randn(n, d, generator=g)


def _datasets():
    g = torch.Generator().manual_seed(0)
    gauss = torch.randn(700, 12, generator=g)
    dup = torch.randn(150, 6, generator=g)
    dup = torch.cat([dup, dup[:100], dup[:40]])[torch.randperm(290, generator=g)]
    grid = torch.stack(torch.meshgrid(torch.arange(15.0), torch.arange(15.0), indexing="ij"), -1).view(-1, 2)
    grid = grid[torch.randperm(225, generator=g)]  # many exactly tied distances
    return {
        "gauss": gauss,
        "clustered": _clustered(900, 10, 12, 1),
        "clustered_lowdim_bound": _clustered(800, 64, 9, 2),  # D >= 64: PCA lower bound active
        "duplicates": dup,
        "grid_ties": grid,
        "constant": torch.ones(50, 4),
        "offset": _clustered(400, 8, 5, 3) + 1000.0,
        # tiny spread far from the origin: distances ~1e-2 next to norms ~1e4
        "far_tiny": _clustered(300, 16, 4, 10) * 1e-3 + 1e4,
        # +-3 e_i and copies: every pairwise distance is 3*sqrt(2), 6 or 0 -- ties everywhere,
        # including at the pool threshold
        "axis_ties": torch.cat([torch.eye(16) * 3, -torch.eye(16) * 3] * 3),
    }


# Knobs of greedy_fast that must never change the result: tiny pools force hundreds of
# batches (and pools made of ties), low_dim=1 makes the first filter weak, tiny tiles give
# many row blocks, two workers split the update pass.
VARIANTS = {
    "default": {},
    "pool1": {"pool": 1},
    "pool7_low1": {"pool": 7, "low_dim": 1, "cells": 64},
    "pool64_tiles_workers": {"pool": 64, "cells": 256, "workers": 2},
    "low_full_dim": {"pool": 33, "low_dim": 128},
    "no_lazy": {"pool": 16, "freeze": None},
    "lazy_tight": {"pool": 5, "freeze": 0.99, "workers": 2, "cells": 128},
    "lazy_loose": {"pool": 9, "freeze": 0.3},
}


@pytest.mark.parametrize("name", list(_datasets()))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fast_matches_reference(name, variant):
    x = _datasets()[name].float().contiguous()
    n = x.shape[0] if name in ("duplicates", "grid_ties", "constant", "axis_ties") else x.shape[0] // 3
    start = 5
    ref = greedy_reference(x, n, start)
    got = greedy_fast(x, n, start, **VARIANTS[variant])
    assert torch.equal(got, ref)
    assert len(set(got.tolist())) == n  # never the same row twice


def test_fast_under_inference_mode_with_worker_threads():
    # Detector.fit runs under torch.inference_mode, which is thread-local: the update pass's
    # worker threads must still be allowed to update r in place (lazy and eager paths)
    x = _clustered(3000, 16, 20, 4)
    ref = greedy_reference(x, 300, 7)
    for freeze in (0.9, None):
        with torch.inference_mode():
            got = greedy_fast(x.clone(), 300, 7, pool=32, cells=256, workers=2, freeze=freeze)
        assert torch.equal(got, ref)


def test_exact_kernel_is_call_independent():
    # The fast sampler computes exact distances in three call shapes; the brute force in one.
    # Equal selections rely on the kernel giving a pair the same bits in all of them.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 128, generator=g) * 4 + 2
    c = x[17:18]
    ref = _dist(x, c)
    rows = torch.randint(3000, (500,), generator=g)
    assert torch.equal(_dist(x[rows], c), ref[rows])
    assert torch.equal(_pair_dist(x[rows], c.expand(500, -1)), ref[rows])
    cent = torch.randint(3000, (500,), generator=g)
    full = torch.cdist(x, x[cent], compute_mode="donot_use_mm_for_euclid_dist")
    assert torch.equal(_pair_dist(x[rows], x[cent]), full[rows, torch.arange(500)])


def test_sampled_dots_equal_the_dot_products_of_the_pairs():
    greedy_module.quiet_sparse_csr()  # what greedy_fast does before its threads start
    g = torch.Generator().manual_seed(3)
    a, c = torch.randn(40, 128, generator=g) * 7, torch.randn(300, 128, generator=g) + 2
    pairs = torch.nonzero(torch.rand(40, 300, generator=g) < 0.05)
    want = (a.double()[pairs[:, 0]] * c.double()[pairs[:, 1]]).sum(1)
    got = sampled_dots(a, c, pairs[:, 0], pairs[:, 1])
    assert got.dtype == torch.float32 and got.shape == want.shape
    # float32 rounding of a 128-term sum, far inside filter 2's slack (_E_REL = 2**-14)
    scale = (a.double()[pairs[:, 0]].square().sum(1) + c.double()[pairs[:, 1]].square().sum(1))
    assert float(((got.double() - want).abs() / scale).max()) < 2.0**-18
    assert sampled_dots(a, c, pairs[:0, 0], pairs[:0, 1]).shape == (0,)   # no pairs: no values
    seven = pairs[pairs[:, 0] == 7]                                      # rows with no pair in between
    assert torch.equal(sampled_dots(a, c, seven[:, 0], seven[:, 1]), got[pairs[:, 0] == 7])


@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (1, 5), (57, 300), (0, 4), (4, 0)])
def test_pairs_below_is_torch_nonzero_of_the_comparison(shape):
    # the filters' comparisons run in NumPy: the same pairs in the same (row-major) order as
    # torch.nonzero, NaN never below, the bound broadcast per row or as a scalar
    g = torch.Generator().manual_seed(sum(shape))
    a = torch.randn(*shape, generator=g)
    if a.numel():
        a.view(-1)[:: 7] = float("nan")
        a.view(-1)[1:: 11] = float("inf")
    for b in (torch.randn(shape[0], 1, generator=g), torch.tensor(0.25), torch.tensor(float("nan"))):
        want = torch.nonzero(a < b)
        i, j = pairs_below(a, b)
        assert i.dtype == j.dtype == torch.int64
        assert torch.equal(i, want[:, 0]) and torch.equal(j, want[:, 1])
        flat = a.reshape(-1)
        assert torch.equal(entries_below(flat, b.reshape(-1)[:1]), torch.nonzero(flat < b.reshape(-1)[:1])[:, 0])


def test_sparse_filter_two_is_used_and_keeps_the_selection(monkeypatch):
    # Structured rows in 128 dimensions: filter 1 passes a few percent of the pairs, so filter 2
    # takes its sparse form (the sampled products) in many blocks; the selection must stay the
    # brute force's, with one and with two worker threads.
    x = _clustered(6000, 128, 40, 12) + 1.0
    calls = []

    def counted(a, c, i, j):
        calls.append(i.numel())
        return sampled_dots(a, c, i, j)

    monkeypatch.setattr(greedy_module, "sampled_dots", counted)
    ref = greedy_reference(x, 400, 11)
    for workers in (1, 2):
        calls.clear()
        assert torch.equal(greedy_fast(x, 400, 11, pool=64, cells=4096, workers=workers), ref)
        assert len(calls) > 10 and sum(calls) > 0


@pytest.mark.parametrize("low_dim", [1, 8, 128])
def test_update_pass_keeps_boundary_pairs(low_dim):
    # r set exactly at, one ulp above and one ulp below the exact distance to a centre: the
    # filters must pass every pair whose exact distance is below r, and r must end up equal
    # to the brute-force minimum bit for bit.
    x = _clustered(4000, 128, 30, 11) + 3.0
    co = _Coords(x, low_dim)
    cent = torch.tensor([3, 500, 1200, 3999])
    d = torch.cdist(x, x[cent], compute_mode="donot_use_mm_for_euclid_dist")
    dmin = d.amin(1)
    for r0 in (dmin, torch.nextafter(dmin, torch.full_like(dmin, math.inf)),
               torch.nextafter(dmin, torch.zeros_like(dmin)), dmin * 1.5):
        for workers, cells in ((1, 1 << 18), (2, 64)):
            r = r0.clone()
            _lower_all(x, co, r, cent, workers, cells)
            assert torch.equal(r, torch.minimum(r0, dmin))


def test_sampler_matches_naive_with_projection():
    x = _clustered(1500, 40, 20, 4)
    for proxy_dim in (16, None, 64):
        a = GreedySampler(0.1, proxy_dim=proxy_dim, seed=3).run(x)
        b = NaiveGreedySampler(0.1, proxy_dim=proxy_dim, seed=3).run(x)
        assert torch.equal(a, b)
        assert a.dtype == torch.long and a.numel() == 150


def test_config_proxy_dim_none_selects_on_the_rows_themselves():
    """``greedy_proxy_dim`` None (``--greedy-proxy-dim none``) and any width >= the rows' both
    select on the rows as they are: greedy_reference on the unprojected rows, from the seeded start
    row; a narrower width projects, and chooses other rows here."""
    from patchbank.config import Config
    from patchbank.sampling import make_sampler

    x = _clustered(1200, 40, 20, 4)
    picks = {dim: make_sampler(Config(sampler="greedy", coreset_ratio=0.05, greedy_proxy_dim=dim,
                                      seed=5)).run(x) for dim in (None, 40, 4096, 8)}
    start = int(torch.randint(1200, (1,), generator=torch.Generator().manual_seed(5)))
    assert torch.equal(picks[None], greedy_reference(x, 60, start))
    assert torch.equal(picks[None], picks[40]) and torch.equal(picks[None], picks[4096])
    assert not torch.equal(picks[None], picks[8])
    assert Config.from_dict({"greedy_proxy_dim": None}).greedy_proxy_dim is None


def test_count_rule():
    assert coreset_size(100, 0.1) == 10
    assert coreset_size(100, 0.001) == 1  # at least one
    assert coreset_size(7, 1.0) == 7
    assert coreset_size(100, 0.29) == 29  # rounds (PatchCore's int() would truncate 28.999... to 28)
    assert coreset_size(600_000, 0.01) == 6000
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            coreset_size(10, bad)
    x = torch.randn(57, 5)
    assert GreedySampler(0.1, proxy_dim=None).run(x).numel() == 6  # round(5.7)


def test_single_point_and_full_ratio():
    one = torch.randn(1, 7)
    assert GreedySampler(0.5).run(one).tolist() == [0]
    assert GreedySampler(1.0).run(one).tolist() == [0]
    x = _datasets()["duplicates"]
    full = GreedySampler(1.0, proxy_dim=None, seed=1).run(x)
    assert sorted(full.tolist()) == list(range(x.shape[0]))  # a permutation
    assert torch.equal(full, NaiveGreedySampler(1.0, proxy_dim=None, seed=1).run(x))


def test_seed_determinism():
    x = _clustered(800, 20, 10, 5)
    a = GreedySampler(0.05, proxy_dim=8, seed=11).run(x)
    b = GreedySampler(0.05, proxy_dim=8, seed=11).run(x)
    assert torch.equal(a, b)
    others = [GreedySampler(0.05, proxy_dim=8, seed=s).run(x) for s in (12, 13, 14)]
    assert any(not torch.equal(a, o) for o in others)


def test_covering_radius_equals_reference():
    x = _clustered(1200, 16, 15, 6)
    n, start = 60, 17
    fast = greedy_fast(x, n, start)
    ref = greedy_reference(x, n, start)
    assert covering_radius(x, fast) == covering_radius(x, ref)
    assert covering_radius(x, fast, block=5000) == covering_radius(x, fast)  # blocked
    # and it is the k-center 2-approximation: no worse than a random subset of the same size
    rand = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:n]
    assert covering_radius(x, fast) <= covering_radius(x, rand)


def test_large_n_is_linear_memory():
    # An N x N float32 matrix here would be 160 GB; this must finish in seconds.
    x = _clustered(200_000, 8, 50, 7)
    sel = greedy_fast(x, 200, 0)
    assert sel.numel() == 200 and len(set(sel.tolist())) == 200
    assert torch.equal(sel[:40], greedy_reference(x, 40, 0))


def test_thread_setting_restored():
    before = torch.get_num_threads()
    greedy_fast(torch.randn(300, 4), 30, 0, workers=2)
    assert torch.get_num_threads() == before


def test_progress_bar(capsys):
    GreedySampler(0.1, proxy_dim=None, progress=True).run(torch.randn(200, 3))
    assert "greedy coreset" in capsys.readouterr().err


def test_bad_inputs():
    with pytest.raises(ValueError):
        GreedySampler(0.1).run(torch.randn(10))
    x = torch.randn(10, 3)
    x[2, 1] = float("nan")
    with pytest.raises(ValueError):
        GreedySampler(0.1).run(x)
    with pytest.raises(ValueError):
        GreedySampler(0.1).run(torch.full((5, 2), 1e20))
    with pytest.raises(ValueError):
        GreedySampler(0.1, proxy_dim=0)
    with pytest.raises(ValueError):
        greedy_fast(torch.randn(10, 3), 11, 0)
    for freeze in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="freeze"):
            greedy_fast(torch.randn(10, 3), 3, 0, freeze=freeze)
    with pytest.raises(ValueError):
        greedy_reference(torch.randn(10, 3), 3, 10)


def test_float64_and_noncontiguous_input():
    x = _clustered(300, 6, 4, 8).double()
    a = GreedySampler(0.2, proxy_dim=None).run(x)
    b = GreedySampler(0.2, proxy_dim=None).run(x.float())
    assert torch.equal(a, b)
    xt = torch.randn(6, 300).T  # non-contiguous view
    assert torch.equal(GreedySampler(0.1, proxy_dim=None).run(xt), NaiveGreedySampler(0.1, proxy_dim=None).run(xt))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_dense_loop():
    x = _clustered(3000, 32, 10, 9)
    gpu = GreedySampler(0.05, proxy_dim=16).run(x.cuda())
    cpu = GreedySampler(0.05, proxy_dim=16).run(x)
    assert gpu.device.type == "cpu" and gpu.numel() == cpu.numel()
    assert len(set(gpu.tolist())) == gpu.numel()


def _simplex_copies(copies: int) -> torch.Tensor:
    # the origin and 3 * e_i (i < 64), each `copies` times: from row 0 every other point is at
    # distance 3 (one tie), and after those 64 are selected every remaining row is a duplicate
    base = torch.cat([torch.zeros(1, 64), 3.0 * torch.eye(64)])
    return base.repeat(copies, 1).contiguous()


@pytest.mark.parametrize("pool", [None, 5000])
def test_batch_ending_at_compaction_step_regression(pool):
    # Issue 14: _batch compacts its pool (> 1024 rows) after every 64th selection to the rows
    # still >= tau.  When the batch was over exactly then -- here after 64 selections every
    # pool row is a duplicate of a centre, r = 0 -- the compacted pool was empty and the next
    # argmax raised IndexError.  pool=None: the 1280 tied rows form one pool with tau = 3 > 0;
    # pool=5000 >= N: tau <= 0, the pool is the rows with r > 0.
    x = _simplex_copies(20)
    n = x.shape[0]
    got = greedy_fast(x, n, 0, pool=pool)
    assert torch.equal(got, greedy_reference(x, n, 0))


def test_batch_ending_at_compaction_step_without_duplicates():
    # The same crash with tau > 0 and distinct rows: 64 anchors at 10.5 e_i, 1036 satellites
    # within ~0.1 of 10 e_i and 100 rows near the start.  The 1100-row pool's batch selects the
    # 64 anchors, after which every satellite is far below tau.
    g = torch.Generator().manual_seed(0)
    sat = 10.0 * torch.eye(64)[torch.arange(1036) % 64] + 0.01 * torch.randn(1036, 64, generator=g)
    x = torch.cat([0.01 * torch.randn(100, 64, generator=g), 10.5 * torch.eye(64), sat]).contiguous()
    for kw in ({"pool": 1100}, {"pool": 1100, "freeze": None}):
        assert torch.equal(greedy_fast(x, 300, 0, **kw), greedy_reference(x, 300, 0))


@pytest.mark.parametrize("scale_exp", [-70, -75, -80])
def test_subnormal_squared_distances(scale_exp):
    # Coordinates k * 2**-75 (|k| <= 8): squared differences are float32 subnormals (or round
    # to 0) in the exact kernel and in the filters' estimates, where purely relative rounding
    # slack does not hold; the filters' absolute floor must keep every pair that lowers r.
    g = torch.Generator().manual_seed(4)
    for d in (4, 16, 64):
        x = (torch.randint(-8, 9, (300, d), generator=g).float() * 2.0**scale_exp).contiguous()
        ref = greedy_reference(x, 100, 0)
        for kw in ({}, {"pool": 7}, {"pool": 7, "freeze": None}):
            assert torch.equal(greedy_fast(x, 100, 0, **kw), ref)


def test_fast_rejects_rows_whose_squares_overflow():
    for v in (float("nan"), float("inf"), -2.0**61 * 1.01):
        x = torch.randn(10, 3)
        x[3, 1] = v
        with pytest.raises(ValueError, match="norm"):
            greedy_fast(x, 3, 0)
    x = torch.randn(10, 3)
    x[3, 1] = -2.0**61  # the largest accepted row norm (1e37 squared distances)
    x[5, 0] = 2.0**60
    assert torch.equal(greedy_fast(x, 10, 0), greedy_reference(x, 10, 0))


@pytest.mark.parametrize("pool", [5, 16])
def test_lazy_thaw_when_tau_drops_below_zero_regression(pool):
    # Once fewer unselected rows are left than the pool size, tau (the pool-th largest r) is
    # -1, a selected row's.  The lazy updates had frozen selected rows with the others, so the
    # thaw at tau <= 0 (theta = 0, thaw rows with r >= 0) always left a group behind, tau <
    # theta stayed true and _Lazy.settle looped forever -- e.g. GreedySampler(1.0) on Gaussian
    # rows.  Selected rows are no longer frozen; the thaw empties every group.
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy_fast(x, 40, 0, pool=pool), greedy_reference(x, 40, 0))


def test_full_ratio_on_distinct_rows():
    x = torch.randn(2000, 8, generator=torch.Generator().manual_seed(0))
    got = GreedySampler(1.0, proxy_dim=None).run(x)
    assert torch.equal(got, NaiveGreedySampler(1.0, proxy_dim=None).run(x))
