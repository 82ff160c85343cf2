"""Unit tests of the small pipeline parts on hand-made tensors."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from patchbank.pipeline.anomaly_map import anomaly_maps, gaussian_blur
from patchbank.pipeline.features import aggregate, to_patches
from patchbank.pipeline.fusion import EqualFusion, L2Fusion, Moments, VGFusion
from patchbank.pipeline.projection import GaussianProjection
from patchbank.sampling import NoSampler, UniformSampler, coreset_size
from patchbank.pipeline.calibration import NormalStats
from patchbank.pipeline.conformal import conformal_rank, conformal_rate, conformal_threshold
from patchbank.pipeline.scoring import patch_scores, reweighted_max
from patchbank.search import ExactSearch, FaissSearch


def test_aggregate_is_local_mean_and_aligns_grids():
    a = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    b = torch.ones(1, 2, 2, 2)
    out = aggregate([a, b], 3)
    assert out[0].shape == (1, 1, 4, 4) and out[1].shape == (1, 2, 4, 4)
    # interior: mean of the 3x3 block; corner: mean of the 4 existing neighbours
    assert out[0][0, 0, 1, 1].item() == pytest.approx(a[0, 0, 0:3, 0:3].mean().item())
    assert out[0][0, 0, 0, 0].item() == pytest.approx(a[0, 0, 0:2, 0:2].mean().item())
    assert torch.allclose(out[1], torch.ones_like(out[1]))
    rows = to_patches(out)
    assert rows[0].shape == (16, 1) and rows[0][5, 0] == out[0][0, 0, 1, 1]


def test_aggregate_zero_border_counts_the_padding():
    a = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4) + 1.0
    out = aggregate([a], 3, border="zero")[0]
    # corner: the 4 existing neighbours summed, divided by all 9 window positions (zeros count)
    assert out[0, 0, 0, 0].item() == pytest.approx(a[0, 0, 0:2, 0:2].sum().item() / 9)
    assert out[0, 0, 0, 1].item() == pytest.approx(a[0, 0, 0:2, 0:3].sum().item() / 9)
    # interior positions do not depend on the border rule
    valid = aggregate([a], 3, border="valid")[0]
    assert out[0, 0, 1, 1].item() == valid[0, 0, 1, 1].item()
    assert out[0, 0, 0, 0].item() < valid[0, 0, 0, 0].item()


@pytest.mark.parametrize("p", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("border", ["valid", "zero"])
def test_aggregate_against_a_window_by_window_oracle(p, border):
    """Every position of a 5 x 6 map against numpy: the p x p window starting p // 2 cells up
    and left (for even p one cell more below and right, PatchCore's output cropped to the map),
    clipped to the map; "valid" divides by the cells that exist, "zero" by p * p."""
    g = torch.Generator().manual_seed(p)
    a = torch.rand(1, 2, 5, 6, generator=g) + 0.5
    out = aggregate([a], p, border=border)[0]
    assert out.shape == a.shape
    x = a[0].numpy().astype(np.float64)
    want = np.empty_like(x)
    for i in range(5):
        for j in range(6):
            r0, c0 = i - p // 2, j - p // 2
            win = x[:, max(r0, 0):max(r0 + p, 0), max(c0, 0):max(c0 + p, 0)]
            want[:, i, j] = win.sum((1, 2)) / (win.shape[1] * win.shape[2] if border == "valid" else p * p)
    np.testing.assert_allclose(out[0].numpy(), want, rtol=1e-5)


def test_moments_match_numpy():
    # float32 rows: per-batch sums in float32, accumulated in float64; the shift (the first row)
    # keeps a large offset from cancelling the small variances (0.01^2 on top of 10,000)
    std = torch.tensor([1.0, 5.0, 0.1, 0.01])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 4, generator=g) * std + torch.tensor([100.0, 100.0, 100.0, 1e4])
    m = Moments()
    for chunk in x.split(77):
        m.update([chunk])
    ref = x.double().numpy()
    # the mean's error is float32 rounding of the batch sums of deviations from the shift: a
    # fraction of the channel's std (6e-8 of it at worst over 300 seeds), not of the offset
    err = np.abs(m.mean()[0].numpy() - ref.mean(0))
    assert np.all(err <= 1e-6 * std.double().numpy())
    assert np.allclose(m.var()[0].numpy(), ref.var(0), rtol=1e-5, atol=0)


def test_vg_fusion_equation_1_on_hand_example():
    # layer 1: channel stds 1, 2, 3, 4 ; layer 2: channel stds 10, 20
    base = torch.tensor([[-1.0], [1.0]]).repeat(50, 1)          # mean 0, population std 1
    l1 = torch.cat([base * s for s in (1.0, 2.0, 3.0, 4.0)], 1) + 5
    l2 = torch.cat([base * s for s in (10.0, 20.0)], 1)
    m = Moments()
    m.update([l1, l2])
    f = VGFusion(kappa=0.5).fit(m)
    v1, v2 = np.mean([1, 4, 9, 16]), np.mean([100, 400])
    w1, w2 = (1 / v1) / (1 / v1 + 1 / v2), (1 / v2) / (1 / v1 + 1 / v2)
    assert f.layer_weights_ == pytest.approx([w1, w2])
    assert f.keep_[0].tolist() == [2, 3] and f.keep_[1].tolist() == [1]
    out = f.transform([l1, l2])
    # kept channels standardised (values +-1) then scaled by the layer weight
    assert out.shape == (100, 3)
    assert torch.allclose(out[0], torch.tensor([-w1, -w1, -w2], dtype=torch.float32), atol=1e-6)
    state = f.state()
    g = VGFusion(0.5).load_state(state)
    assert torch.equal(g.transform([l1, l2]), out)


def test_equal_and_l2_fusion():
    a, b = torch.randn(5, 3), torch.randn(5, 2) * 10
    assert torch.equal(EqualFusion().transform([a, b]), torch.cat([a, b], 1))
    out = L2Fusion().transform([a, b])
    assert torch.allclose(out[:, :3].norm(dim=1), torch.ones(5)) and torch.allclose(out[:, 3:].norm(dim=1), torch.ones(5))


def test_projection_preserves_distances_within_jl_bounds():
    torch.manual_seed(0)
    x = torch.randn(200, 1000)
    proj = GaussianProjection(512, seed=3).fit(1000)
    z = proj.transform(x)
    d_x, d_z = torch.pdist(x), torch.pdist(z)
    ratio = d_z / d_x
    # JL: eps ~ sqrt(8 ln n / d') ~ 0.41 for n=200 pairs-bound; observed spread is far tighter
    assert ratio.min() > 1 - 0.41 and ratio.max() < 1 + 0.41
    assert abs(ratio.pow(2).mean().item() - 1) < 0.02      # unbiased squared norms
    assert torch.equal(GaussianProjection(512, seed=3).fit(1000).matrix_, proj.matrix_)
    assert not torch.equal(GaussianProjection(512, seed=4).fit(1000).matrix_, proj.matrix_)


def test_samplers_pick_the_right_count():
    x = torch.randn(1003, 4)
    for r in (0.01, 0.1, 0.5, 1.0):
        idx = UniformSampler(r, seed=1).run(x)
        assert len(idx) == coreset_size(1003, r) == min(1003, max(1, round(r * 1003)))
        assert len(set(idx.tolist())) == len(idx) and idx.min() >= 0 and idx.max() < 1003
    assert torch.equal(UniformSampler(0.1, 5).indices(1003), UniformSampler(0.1, 5).indices(1003))
    assert coreset_size(5, 0.01) == 1
    assert torch.equal(NoSampler().run(x), torch.arange(1003))


@pytest.mark.parametrize("k", [1, 3])
def test_chunked_search_equals_brute_force(k):
    torch.manual_seed(1)
    bank, q = torch.randn(1000, 16), torch.randn(300, 16)
    s = ExactSearch(bank, query_chunk=64, bank_chunk=128)
    d, i = s.search(q, k)
    ref = torch.cdist(q.double(), bank.double()) ** 2
    ref_d, ref_i = ref.topk(k, dim=1, largest=False)
    assert torch.equal(i, ref_i)
    assert torch.allclose(d.double(), ref_d, atol=1e-3)


def test_faiss_flat_matches_exact():
    pytest.importorskip("faiss")
    torch.manual_seed(2)
    bank, q = torch.randn(500, 8), torch.randn(50, 8)
    d1, i1 = ExactSearch(bank).search(q, 2)
    d2, i2 = FaissSearch(bank, "flat").search(q, 2)
    assert torch.equal(i1, i2) and torch.allclose(d1, d2, atol=1e-4)


def test_patch_scores_min_and_mean():
    sq = torch.tensor([[4.0, 9.0, 16.0]])
    assert patch_scores(sq, "euclidean", "min").item() == 2.0
    assert patch_scores(sq, "squared", "mean").item() == pytest.approx(29 / 3)
    assert patch_scores(sq, "euclidean", "mean").item() == pytest.approx(3.0)


def test_reweighted_max_by_hand():
    bank = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    queries = torch.tensor([[[0.0, 0.1], [0.0, 2.0]]])        # patch 1 scores highest (2.0)
    search = ExactSearch(bank)
    sq, idx = search.search(queries[0], 1)
    scores = sq[:, 0].sqrt().view(1, 2)
    out = reweighted_max(scores, queries, idx[:, 0].view(1, 2), search, b=2)
    # m* = bank[0]; N_2(m*) = {bank[0], bank[1]}; distances from (0,2): 2 and sqrt(5)
    d = np.array([2.0, math.sqrt(5.0)])
    w = 1 - np.exp(d[0]) / np.exp(d).sum()
    assert out.item() == pytest.approx(w * 2.0, rel=1e-6)


def test_normal_stats_threshold_is_the_conformal_rank():
    scores = np.arange(1, 101, dtype=float)[::-1].copy()       # any order
    st = NormalStats().fit(scores, target_fpr=0.05)
    z = (scores - scores.mean()) / scores.std(ddof=1)
    # by hand: ceil(101 * 0.95) = ceil(95.95) = 96 -> the 96th smallest score, 96
    assert st.threshold_ == pytest.approx((96 - scores.mean()) / scores.std(ddof=1))
    assert np.mean(st.normalize(scores) > st.threshold_) == pytest.approx(0.04)
    assert st.threshold_ > np.quantile(z, 0.95)               # the plain quantile sits lower
    # (n + 1)(1 - a) an integer (99 * (1 - 1/99) = 98: no rounding up past it), the cap at n
    # (61 * 0.99 = 60.39 -> 61 > 60), and the floor at 1
    assert conformal_rank(98, 1 / 99) == 98 and conformal_rank(99, 0.01) == 99
    assert conformal_rank(261, 0.01) == 260 and conformal_rank(60, 0.01) == 60
    assert conformal_rank(5, 0.99) == 1
    # (n + 1)(1 - target) a whole number below n: exactly that rank, whatever the float product's
    # last bit (200 x 0.99, 40 x 0.95, 20 x 0.75)
    assert conformal_rank(199, 0.01) == 198 and conformal_rank(39, 0.05) == 38 and conformal_rank(19, 0.25) == 15
    assert conformal_threshold([3.0, 1.0, 2.0], 0.01) == 3.0   # rank beyond n: the largest
    assert conformal_rate(261, 0.01) == pytest.approx(2 / 262) and conformal_rate(10, 0.01) == pytest.approx(1 / 11)


def test_calibration_names_the_images_above_its_threshold():
    from patchbank.config import PRESETS
    from patchbank.errors import PatchbankError
    from patchbank.pipeline.calibration import ScoreCalibration

    base = np.array([1.0, 5.0, 2.0, 9.0, 3.0, 2.5, 1.5, 2.2, 8.0, 1.2])
    phi = np.ones((10, 3))
    images = np.arange(100, 110)
    cfg = PRESETS["lmf-core"].replace(target_fpr=0.3, image_score="max")
    cal = ScoreCalibration(cfg).fit(base, phi, images)
    # rank ceil(11 * 0.7) = 8 of 10 -> threshold at the 8th smallest (5.0): 9.0 and 8.0 above it
    got = cal.above_threshold()
    assert [i for i, _ in got] == [103, 108]
    assert [z for _, z in got] == pytest.approx(list(cal.stats_.normalize([9.0, 8.0])))
    with pytest.raises(PatchbankError, match="does not record which training images"):
        ScoreCalibration(cfg).fit(base, phi).above_threshold()


@pytest.mark.parametrize("n, target", [(40, 0.1), (261, 0.01), (19, 0.05)])
def test_conformal_threshold_keeps_its_false_positive_promise(n, target):
    # Monte Carlo over exchangeable normal scores: n calibration scores and one new score per
    # trial.  The rate of new > threshold is (n + 1 - rank) / (n + 1): at most target, and above
    # target - 1 / (n + 1).  The plain linearly interpolated quantile exceeds the target.
    rng = np.random.default_rng(0)
    trials = 200_000
    cal = rng.standard_normal((trials, n))
    new = rng.standard_normal(trials)
    k = conformal_rank(n, target)
    rate = np.mean(new > np.sort(cal, axis=1)[:, k - 1])
    exact = (n + 1 - k) / (n + 1)
    assert rate == pytest.approx(exact, abs=4 * np.sqrt(exact * (1 - exact) / trials))
    assert exact <= target + 1e-12 and exact > target - 1 / (n + 1)
    plain = np.mean(new > np.quantile(cal, 1 - target, axis=1))
    assert plain > target


def test_anomaly_map_upsamples_and_blurs_like_scipy():
    grid = torch.zeros(1, 7, 7)
    grid[0, 3, 3] = 1.0
    maps = anomaly_maps(grid, (56, 56), 4.0)
    assert maps.shape == (1, 56, 56)
    assert np.unravel_index(maps[0].argmax().item(), (56, 56)) in [(27, 27), (27, 28), (28, 27), (28, 28)]
    x = np.random.default_rng(0).random((3, 30, 20)).astype(np.float32)
    ref = np.stack([ndimage.gaussian_filter(a, 4.0, mode="reflect", truncate=4.0) for a in x])
    assert np.abs(gaussian_blur(torch.from_numpy(x), 4.0).numpy() - ref).max() < 1e-5


def test_anomaly_map_nearest_upsampling_is_blocky_before_the_blur():
    grid = torch.arange(12, dtype=torch.float32).view(1, 3, 4)
    maps = anomaly_maps(grid, (6, 8), 0.0, mode="nearest")
    # each patch score fills its own 2 x 2 pixel block
    assert torch.equal(maps[0], grid[0].repeat_interleave(2, 0).repeat_interleave(2, 1))
    blurred = anomaly_maps(grid, (6, 8), 1.0, mode="nearest")
    block = grid[0].repeat_interleave(2, 0).repeat_interleave(2, 1).numpy()
    ref = ndimage.gaussian_filter(block, 1.0, mode="reflect", truncate=4.0)
    assert np.abs(blurred[0].numpy() - ref).max() < 1e-5
    assert not torch.allclose(anomaly_maps(grid, (6, 8), 0.0), maps)


def test_exact_search_query_blocks_fill_the_gpu_block_budget():
    # CPU: the measured fixed chunk; elsewhere (meta stands in for a GPU): as many queries as fill
    # the distance-block budget, at least the fixed chunk, never more than the budget allows.
    cpu = ExactSearch(torch.zeros(1000, 8), query_chunk=512)
    assert cpu.query_rows() == 512
    gpu = ExactSearch(torch.zeros(1000, 8, device="meta"), query_chunk=512)
    assert gpu.query_rows() == ExactSearch.cuda_block_bytes // (4 * 1000)
    assert gpu.query_rows() * 1000 * 4 <= ExactSearch.cuda_block_bytes
    huge = ExactSearch(torch.zeros(1 << 20, 8, device="meta"), query_chunk=512, bank_chunk=1 << 20)
    assert huge.query_rows() == 512
