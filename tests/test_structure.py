"""StructCore's structural descriptor, statistics, auto-lambda, hybrid score, and local density."""
import math

import numpy as np
import pytest
import torch

from patchbank.errors import PatchbankError
from patchbank.pipeline.structure import (COMPONENTS, DISTANCES, StructStats, bank_local_radius, descriptor,
                                 lambda_auto, local_density_calibration)


def test_descriptor_exact_on_3x3_ramp():
    # S = [[1,2,3],[4,5,6],[7,8,9]]
    # std: mean 5, squared deviations 16+9+4+1+0+1+4+9+16 = 60 -> var 60/9 = 20/3 (ddof=0)
    # topk (r = 0.2): k = ceil(9 * 0.2) = ceil(1.8) = 2 -> (9 + 8) / 2 = 8.5
    # tv: vertical |S[i+1,j]-S[i,j]| = 3, 2 rows x 3 cols = 6 terms -> 18;
    #     horizontal |S[i,j+1]-S[i,j]| = 1, 3 rows x 2 cols = 6 terms -> 6; (18 + 6) / 9 = 8/3
    s = torch.arange(1, 10, dtype=torch.float32).view(1, 3, 3)
    phi = descriptor(s, topk_ratio=0.2)
    assert phi.shape == (1, 3)
    assert phi[0].tolist() == pytest.approx([math.sqrt(20 / 3), 8.5, 8 / 3], rel=1e-12)
    # default r = 0.01: k = max(1, ceil(0.09)) = 1 -> the max
    assert descriptor(s)[0, 1].item() == 9.0


def test_descriptor_exact_on_3x3_spike_and_numpy_input():
    # S = 9 at the centre, 0 elsewhere: mean 1, var = (8 * 1 + 8^2) / 9 = 8 -> std 2*sqrt(2)
    # topk (k = 1) = 9; tv: column 1 gives |9-0| + |0-9| = 18, row 1 another 18 -> 36 / 9 = 4
    s = np.zeros((3, 3), dtype=np.float32)
    s[1, 1] = 9
    phi = descriptor(s)                       # one [H, W] map -> batch of 1
    assert phi[0].tolist() == pytest.approx([2 * math.sqrt(2), 9.0, 4.0], rel=1e-12)
    # a spike at a corner keeps only the in-map differences: 9 (down) + 9 (right) -> 18 / 9 = 2
    c = np.zeros((1, 3, 3))
    c[0, 2, 2] = 9
    assert descriptor(c, ("tv",))[0, 0].item() == pytest.approx(2.0)


def test_descriptor_on_rectangular_map_matches_numpy():
    rng = np.random.default_rng(0)
    m = rng.random((4, 5, 7))
    phi = descriptor(torch.as_tensor(m, dtype=torch.float32), topk_ratio=0.1).numpy()
    f = m.reshape(4, -1)
    k = math.ceil(35 * 0.1)   # 4
    tv = (np.abs(np.diff(m, axis=1)).sum((1, 2)) + np.abs(np.diff(m, axis=2)).sum((1, 2))) / 35
    ref = np.stack([f.std(1), np.sort(f, 1)[:, -k:].mean(1), tv], 1)
    assert np.allclose(phi, ref, rtol=1e-6)


def _spike_blob_noise(n=32):
    spike = torch.zeros(n, n)
    spike[n // 2, n // 2] = 1.0
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    blob = torch.exp(-((yy - n // 2) ** 2 + (xx - n // 2) ** 2) / (2 * 4.0 ** 2))
    noise = torch.rand(n, n, generator=torch.Generator().manual_seed(0))
    noise = noise / noise.max()
    return torch.stack([spike, blob, noise])


def test_descriptor_orders_spike_blob_noise():
    # All three maps have max 1 on a 32 x 32 grid (HW = 1024, k = ceil(10.24) = 11).
    # spike: std = sqrt(p (1 - p)), p = 1/1024 -> 0.0312; topk = 1/11 = 0.0909; tv = 4/1024.
    # blob (Gaussian, sigma 4): std ~ 0.20, topk ~ 0.95, tv ~ 2 * 2 sqrt(2 pi) 4 / 1024 ~ 0.039.
    # noise (uniform [0, 1]): std ~ 1/sqrt(12) = 0.289, topk ~ 0.99,
    # tv ~ (1/3) * 1984 / 1024 ~ 0.65.
    spike, blob, noise = descriptor(_spike_blob_noise())
    assert spike.tolist() == pytest.approx([math.sqrt(1023) / 1024, 1 / 11, 4 / 1024], rel=1e-9)
    for col in range(3):   # std, topk_mean and tv all rise spike < blob < noise
        assert spike[col] < blob[col] < noise[col]
    assert 0.15 < blob[0] < 0.25 and 0.9 < blob[1] < 0.97 and 0.03 < blob[2] < 0.05
    assert 0.27 < noise[0] < 0.31 and noise[1] > 0.98 and 0.55 < noise[2] < 0.75
    # tail concentration relative to dispersion: the smooth blob is the most peaked
    ratio = [p[1] / p[0] for p in (spike, blob, noise)]
    assert ratio[1] > ratio[2] > ratio[0]
    # roughness relative to dispersion: noise (~2.2) >> blob (~0.2) > spike (4 / sqrt(1023) = 0.125)
    rough = [p[2] / p[0] for p in (spike, blob, noise)]
    assert rough[2] > 10 * rough[1] and rough[1] > rough[0]
    assert rough[0] == pytest.approx(4 / math.sqrt(1023))


def test_descriptor_components_subset_and_order():
    maps = _spike_blob_noise()
    full = descriptor(maps)
    assert descriptor(maps, ("tv", "std")).tolist() == full[:, [2, 0]].tolist()
    assert descriptor(maps, "topk_mean").tolist() == full[:, [1]].tolist()
    assert descriptor(maps, COMPONENTS).shape == (3, 3)


@pytest.mark.parametrize("bad", [("std", "max"), (), ("tv", "tv")])
def test_descriptor_rejects_bad_components(bad):
    with pytest.raises(PatchbankError):
        descriptor(torch.zeros(1, 2, 2), bad)


def test_descriptor_rejects_bad_ratio_and_shape():
    with pytest.raises(PatchbankError):
        descriptor(torch.zeros(1, 2, 2), topk_ratio=0.0)
    with pytest.raises(PatchbankError):
        descriptor(torch.zeros(2, 1, 2, 2))


def _train_test():
    rng = np.random.default_rng(1)
    train = rng.normal([1.0, 5.0, 0.2], [0.1, 2.0, 0.05], size=(50, 3))
    test = rng.normal([1.2, 4.0, 0.3], [0.3, 3.0, 0.1], size=(8, 3))
    return train, test


def test_struct_stats_every_distance_matches_numpy():
    train, test = _train_test()
    st = StructStats(eps=1e-6).fit(train)
    mu, sd = train.mean(0), train.std(0)          # ddof = 0
    assert np.allclose(st.mean_.numpy(), mu) and np.allclose(st.std_.numpy(), sd)
    z = (test - mu) / (sd + 1e-6)
    raw = test - mu
    ref = {
        "mahalanobis": np.sqrt((z ** 2).sum(1)),
        "l1_std": np.abs(z).sum(1),
        "chebyshev_std": np.abs(z).max(1),
        "l1": np.abs(raw).sum(1),
        "l2": np.sqrt((raw ** 2).sum(1)),
        "chebyshev": np.abs(raw).max(1),
        "cosine": 1 - test @ mu / (np.linalg.norm(test, axis=1) * np.linalg.norm(mu)),
    }
    assert set(ref) == set(DISTANCES)
    for kind, expected in ref.items():
        got = st.distance(torch.as_tensor(test, dtype=torch.float32), kind)
        assert got.shape == (8,)
        assert np.allclose(got.numpy(), expected, rtol=1e-5, atol=1e-7), kind
    # default kind is the diagonal Mahalanobis of Eq. 10; the train mean itself is at distance 0
    assert np.allclose(st.distance(test).numpy(), ref["mahalanobis"])
    assert st.distance(mu[None]).item() == pytest.approx(0.0, abs=1e-9)


def test_mahalanobis_by_hand():
    # train phi = (0, 0), (2, 4): mu = (1, 2), population sigma = (1, 2)
    st = StructStats(eps=0.0).fit(torch.tensor([[0.0, 0.0], [2.0, 4.0]]))
    assert st.std_.tolist() == [1.0, 2.0]
    # phi = (4, 6): z = (3, 2) -> sqrt(13); L1 5; Chebyshev 3; raw (3, 4) -> L2 5, L1 7, Cheb 4
    phi = torch.tensor([[4.0, 6.0]])
    assert st.distance(phi).item() == pytest.approx(math.sqrt(13))
    assert st.distance(phi, "l1_std").item() == pytest.approx(5.0)
    assert st.distance(phi, "chebyshev_std").item() == pytest.approx(3.0)
    assert st.distance(phi, "l2").item() == pytest.approx(5.0)
    assert st.distance(phi, "l1").item() == pytest.approx(7.0)
    assert st.distance(phi, "chebyshev").item() == pytest.approx(4.0)
    # cosine between (4, 6) and (1, 2): 1 - 16 / (sqrt(52) sqrt(5))
    assert st.distance(phi, "cosine").item() == pytest.approx(1 - 16 / math.sqrt(260))


def test_struct_stats_errors():
    st = StructStats()
    with pytest.raises(PatchbankError):
        st.distance(torch.zeros(1, 3))
    st.fit(torch.rand(5, 3))
    with pytest.raises(PatchbankError):
        st.distance(torch.zeros(1, 3), "euclid")
    with pytest.raises(PatchbankError):
        st.distance(torch.zeros(1, 2))
    with pytest.raises(PatchbankError):
        StructStats().fit(torch.zeros(0, 3))


def test_lambda_auto():
    rng = np.random.default_rng(2)
    base, d = rng.normal(3, 0.5, 40), rng.normal(2, 4.0, 40)
    assert lambda_auto(base, d) == pytest.approx(base.std() / (d.std() + 1e-12), rel=1e-12)
    assert lambda_auto(torch.as_tensor(base), torch.as_tensor(d), eps=1.0) == \
        pytest.approx(base.std() / (d.std() + 1.0), rel=1e-12)
    # hand example: base std ddof=0 of (1, 3) = 1, D std of (0, 4) = 2 -> 0.5
    assert lambda_auto([1.0, 3.0], [0.0, 4.0]) == pytest.approx(0.5)


def test_bank_local_radius_by_hand():
    # bank on a line: 0, 1, 3, 7.  k = 2 nearest other entries:
    # 0 -> {1, 3}: (1 + 3)/2 = 2;  1 -> {0, 3}: (1 + 2)/2 = 1.5;
    # 3 -> {1, 0}: (2 + 3)/2 = 2.5;  7 -> {3, 1}: (4 + 6)/2 = 5
    bank = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [7.0, 0.0]], dtype=torch.float64)
    spread = torch.tensor([2.0, 1.5, 2.5, 5.0], dtype=torch.float64)
    for chunk in (None, 1, 3):
        assert torch.allclose(bank_local_radius(bank, k=2, chunk=chunk), spread)
    # k = 1: nearest other entry; k larger than N - 1 is clipped to 3
    k1 = torch.tensor([1.0, 1, 2, 4], dtype=torch.float64)
    assert torch.allclose(bank_local_radius(bank, k=1), k1)
    assert torch.allclose(bank_local_radius(bank.numpy(), k=10),
                          torch.tensor([11 / 3, 9 / 3, 9 / 3, 17 / 3]).double())
    # duplicates count at distance 0 (the entry itself is excluded by index)
    dup = torch.tensor([[1.0], [1.0], [4.0]])
    assert (bank_local_radius(dup, k=1)[:2] == 0).all()
    with pytest.raises(PatchbankError):
        bank_local_radius(torch.zeros(1, 3))


def test_bank_local_radius_matches_brute_force():
    g = torch.Generator().manual_seed(3)
    bank = torch.randn(300, 8, generator=g, dtype=torch.float64)
    full = torch.cdist(bank, bank)
    full.fill_diagonal_(math.inf)
    ref = full.topk(5, dim=1, largest=False).values.mean(1)
    assert torch.allclose(bank_local_radius(bank, k=5, chunk=64), ref, rtol=1e-9)


def test_local_density_calibration_divides_by_radius():
    bank = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [7.0, 0.0]], dtype=torch.float64)
    radius = bank_local_radius(bank, k=2)          # 2, 1.5, 2.5, 5
    nn_dist = torch.tensor([[1.0, 3.0], [0.5, 4.0]], dtype=torch.float64)
    nn_index = torch.tensor([[0, 1], [2, 3]])
    out = local_density_calibration(nn_dist, nn_index, radius, eps=0.0)
    assert out.shape == (2, 2)
    assert torch.allclose(out, torch.tensor([[0.5, 2.0], [0.2, 0.8]], dtype=torch.float64))
    out_np = local_density_calibration(nn_dist.numpy(), nn_index.numpy(), radius.numpy(), eps=0.0)
    assert torch.allclose(out_np, out)
    with pytest.raises(PatchbankError):
        local_density_calibration(nn_dist, nn_index[0], radius)
