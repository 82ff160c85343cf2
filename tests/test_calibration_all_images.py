"""Calibration on every training image, leave-one-image-out (issue 14, part 3).

Oracles are independent of the module: each training image is embedded through the predict
path, the bank rows' source images come from the sampler's own draw (``indices // P``), and
the scores are a plain ``torch.cdist`` against the bank rows of the *other* images."""
import warnings

import numpy as np
import pytest
import torch

from conftest import FAST
from patchbank.config import Config
from patchbank.detector import Detector
from patchbank.io.images import list_images
from patchbank.io.synthetic import make_dataset
from patchbank.pipeline import calibration as cal_mod
from patchbank.pipeline.calibration import CALIBRATION_MIN_SUBSET, calibration_images
from patchbank.sampling import make_sampler
from patchbank.search import ExactSearch, FaissSearch, LeaveGroupOut

N_TRAIN = 12


def _cdist(a, b):
    """Plain pairwise Euclidean distances (no matrix-product shortcut: exact near 0)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


@pytest.fixture(scope="module")
def product(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("loo"), n_train=N_TRAIN, n_test_good=8,
                        n_test_defect=0, size=96, seed=5)


def _embedded_images(det, items):
    """[N, P, d] bank-space rows of each image through the predict-time path."""
    out = []
    with torch.inference_mode():
        for x, _ in det.stream(items):
            layers, grid = det.extractor(x)
            out.append(det.embed(layers).view(x.shape[0], grid[0] * grid[1], -1))
    return torch.cat(out)


def _bank_sources(det, n_images):
    """Source image of each bank row, from the sampler's draw (streaming samplers only)."""
    p = det.grid_[0] * det.grid_[1]
    return make_sampler(det.config).indices(n_images * p) // p


def _brute_force_base_scores(det, emb, source):
    """Each image's S_base against the bank rows of the other images, by torch.cdist."""
    cfg, bank = det.config, det.bank_.double()
    out = []
    for i in range(emb.shape[0]):
        others = bank[source != i]
        d = _cdist(emb[i].double(), others)                     # [P, entries - own]
        dk, nn = d.topk(cfg.k, dim=1, largest=False)
        dk = dk.pow(2) if cfg.distance == "squared" else dk
        s = dk[:, 0] if cfg.knn_reduce == "min" else dk.mean(1)
        if cfg.image_score == "max":
            out.append(float(s.max()))
        elif cfg.image_score == "reweighted_max":                    # PatchCore Eq. 7
            t = int(s.argmax())
            m_star = others[nn[t, 0]]
            b = min(cfg.reweight_neighbors, others.shape[0])
            support = _cdist(m_star[None], others)[0].topk(b, largest=False).indices
            dist = (emb[i, t].double() - others[support]).norm(dim=1)
            out.append(float((1.0 - torch.softmax(dist, 0)[0]) * s[t]))
        else:
            raise AssertionError(cfg.image_score)
    return np.array(out)


def _fit_quietly(product, **overrides):
    """An lmf-core detector (FAST sizes + ``overrides``) fit on the product's training images
    (the few-images warning silenced); returns (detector, the training image paths)."""
    det = Detector.from_preset("lmf-core", progress=False, **{**FAST, **overrides})
    items = list_images(product / "train" / "good")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det.fit(items)
    return det, items


@pytest.mark.parametrize("overrides", [
    dict(image_score="max"),
    dict(image_score="reweighted_max"),
    dict(image_score="max", k=3, distance="squared", knn_reduce="mean"),
])
def test_leave_one_image_out_scores_equal_brute_force(product, overrides):
    det, items = _fit_quietly(product, search="exact", **overrides)
    emb = _embedded_images(det, items)
    source = _bank_sources(det, len(items))
    assert source.numel() == det.bank_.shape[0]
    expected = _brute_force_base_scores(det, emb, source)
    cal = det.calibration_
    # statistics from all N images, in image order
    assert cal.base_scores_.shape == (N_TRAIN,)
    np.testing.assert_allclose(cal.base_scores_, expected, rtol=1e-4, atol=1e-6)
    assert cal.stats_.n_ == N_TRAIN
    assert cal.stats_.mean_ == pytest.approx(expected.mean(), rel=1e-4)
    assert cal.stats_.std_ == pytest.approx(expected.std(ddof=1), rel=1e-3)
    # the descriptors are those of the maps of the same leave-one-out patch scores (max pooling)
    if overrides["image_score"] == "max" and det.config.k == 1:
        bank = det.bank_.double()
        scores = torch.stack([_cdist(emb[i].double(), bank[source != i]).min(1).values
                              for i in range(N_TRAIN)]).float()
        phi = det.scorer_.anomaly_map(scores)[1]
        np.testing.assert_allclose(cal.descriptors_, phi, rtol=1e-3, atol=1e-6)


def test_no_self_match_when_every_patch_is_in_the_bank(product):
    # sampler "none": every patch of every training image is a bank row, so scoring a training
    # image against the whole bank matches each patch with itself (score ~0)
    det, items = _fit_quietly(product, sampler="none", search="exact", image_score="max")
    own = np.array([p.score for p in det.predict(items)])
    assert own.max() < 1e-2                                   # self-matched: near zero
    cal = det.calibration_.base_scores_
    fresh = np.array([p.score for p in det.predict(list_images(product / "test" / "good"))])
    # left out of the bank, each training image scores like a fresh normal image
    assert cal.min() > 0.5 * np.median(fresh)
    assert cal.min() > 100 * own.max()
    emb = _embedded_images(det, items)
    expected = _brute_force_base_scores(det, emb, _bank_sources(det, len(items)))
    np.testing.assert_allclose(cal, expected, rtol=1e-4, atol=1e-6)


def test_a_model_calibrated_on_every_image_saves_and_loads(product, tmp_path):
    det, _ = _fit_quietly(product)
    assert det.info()["n_calibration_images"] == det.n_train_images_ == N_TRAIN
    det.save(tmp_path / "m.patchbank")
    back = Detector.load(tmp_path / "m.patchbank", progress=False)
    assert back.threshold_ == det.threshold_
    test = list_images(product / "test" / "good")
    assert [p.normalized_score for p in back.predict(test)] == [p.normalized_score for p in det.predict(test)]


def test_greedy_bank_calibrates_on_every_image_from_its_embedded_rows(product):
    det, items = _fit_quietly(product, sampler="greedy", search="exact", image_score="max")
    emb = _embedded_images(det, items)
    # greedy keeps bank rows bit-exactly: their source is the image whose row they equal
    p = emb.shape[1]
    flat = emb.reshape(-1, emb.shape[2])
    d = _cdist(det.bank_, flat)
    source = d.argmin(1) // p
    assert d.min(1).values.max() < 1e-4
    expected = _brute_force_base_scores(det, emb, source)
    np.testing.assert_allclose(det.calibration_.base_scores_, expected, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ the leave-one-group-out search
def _groups(n=600, d=8, groups=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    bank = torch.randn(n, d, generator=g)
    owner = torch.randint(0, groups, (n,), generator=g)
    # cluster each group's rows so a query's nearest rows are mostly its own group's
    centres = torch.randn(groups, d, generator=g) * 4
    return bank * 0.3 + centres[owner], owner, centres


@pytest.mark.parametrize("extra", [0, 2, 16])
@pytest.mark.parametrize("kind", ["exact", "exact_one_call", "flat", "ivf"])
def test_leave_group_out_equals_a_masked_search_per_group(kind, extra, monkeypatch):
    # "exact": blocks counted as large enough for one call per group (ExactSearch.groups_apart);
    # "exact_one_call": these small blocks as they are, all groups' queries in one call with
    # extra neighbours (the calibration's context-taps call)
    if not kind.startswith("exact"):
        pytest.importorskip("faiss")
    if kind == "exact":
        monkeypatch.setattr("patchbank.search.exact.GROUP_BLOCK_ELEMENTS", 0)
    bank, owner, centres = _groups()
    search = ExactSearch(bank) if kind.startswith("exact") else FaissSearch(bank, kind, nprobe=3)
    assert search.groups_apart(5) == (kind == "exact")
    q_groups = torch.tensor([3, 0, 7, 3])
    g = torch.Generator().manual_seed(1)
    queries = (centres[q_groups].repeat_interleave(5, 0) + 0.3 * torch.randn(20, 8, generator=g))
    view = LeaveGroupOut(search, owner, extra).for_queries(q_groups)
    short_lists = 0
    for k in (1, 4):
        d, i = view.search(queries, k)
        for j, grp in enumerate(q_groups.tolist()):
            block = slice(5 * j, 5 * j + 5)
            dm, im = search.subset(owner != grp).search(queries[block], k)
            # IVF: -1 where the probed lists hold fewer than k rows outside the group; the view
            # then searches those queries exactly against the other groups' rows
            found = (im >= 0).all(1)
            short_lists += int((~found).sum())
            assert torch.equal(i[block][found], im[found])
            torch.testing.assert_close(d[block][found], dm[found])
            others = bank[owner != grp]
            exact = torch.cdist(queries[block][~found], others).topk(k, largest=False).values.pow(2)
            torch.testing.assert_close(d[block][~found], exact, rtol=1e-4, atol=1e-4)
            assert bool((i[block] >= 0).all()) and not bool((owner[i[block]] == grp).any())
    assert (short_lists > 0) == (kind == "ivf")   # 3 of ~40 lists probed: some run short
    if kind == "exact":
        assert view.n_fallback == 0         # each group searched in the bank without its rows
    elif extra == 0:
        assert view.n_fallback > 0          # clustered groups: the nearest rows are the own group's
    # one query per group (the re-weighting's call): the same blocks rule
    d1, i1 = view.search(queries[::5], 2)
    assert bool((i1 >= 0).all()) and not bool((owner[i1] == q_groups[:, None]).any())


def test_one_call_per_group_only_for_blocks_at_the_kernels_full_speed():
    # 128,000 values a block: an image's 1,296 map queries of 168 columns search apart, the
    # context taps' 65 queries of 376 columns go in one call with every image's
    assert ExactSearch(torch.randn(50, 168)).groups_apart(762)
    assert not ExactSearch(torch.randn(50, 168)).groups_apart(761)
    assert ExactSearch(torch.randn(50, 376)).groups_apart(341)
    assert not ExactSearch(torch.randn(50, 376)).groups_apart(65)


@pytest.mark.parametrize("preset", ["patchbank", "patchcore"])
def test_the_calibration_is_the_same_whichever_way_the_groups_are_searched(product, preset, monkeypatch):
    # the default preset's context taps and the patchcore preset's re-weighting: the calibration
    # scores, bit for bit, with every block searched apart and with every block in one call
    fits = []
    for elements in (0, 10 ** 12):
        monkeypatch.setattr("patchbank.search.exact.GROUP_BLOCK_ELEMENTS", elements)
        det = Detector.from_preset(preset, progress=False, **{**FAST, "crop_at": "image", "aspect": "fixed",
                                                              "crop_size": None})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            det.fit(list_images(product / "train" / "good"))
        fits.append(det.state_tensors())
    for key in ("calibration_base_scores", "calibration_descriptors"):
        assert torch.equal(fits[0][key], fits[1][key]), key


def test_leave_group_out_caps_k_at_the_rows_outside_the_largest_group():
    bank = torch.randn(10, 4)
    owner = torch.tensor([0] * 6 + [1] * 3 + [2])
    view = LeaveGroupOut(ExactSearch(bank), owner, 4).for_queries(torch.tensor([0, 1]))
    assert len(view) == 4 and view.shape == (10, 4)
    d, i = view.search(bank[:2], 9)
    assert d.shape == (2, 4)
    assert set(i[0].tolist()) == {6, 7, 8, 9}               # every row outside group 0
    with pytest.raises(ValueError, match="equal blocks"):
        view.search(bank[:3], 1)


# ------------------------------------------------------------------ which images
def _cfg(**kw):
    from types import SimpleNamespace
    return SimpleNamespace(**{"seed": 0, "calibration_max_mb": Config().calibration_max_mb, **kw})


def test_every_image_within_the_budget_and_a_seeded_subset_beyond():
    mb = 2**20
    budget = int(Config().calibration_max_mb * mb)
    assert calibration_images(761, 527 * 1024, _cfg()).tolist() == list(range(761))   # MTD
    assert calibration_images(5000, 0, _cfg()).size == 5000       # rows held anyway (greedy)
    n, per = 3000, budget // 1000                                   # 1000 images fit
    sub = calibration_images(n, per, _cfg())
    assert sub.size == 1000 and np.all(np.diff(sub) > 0) and sub.max() < n
    assert np.array_equal(sub, calibration_images(n, per, _cfg()))              # seeded
    assert not np.array_equal(sub, calibration_images(n, per, _cfg(seed=1)))
    # never fewer than CALIBRATION_MIN_SUBSET images (or all of them)
    assert calibration_images(3000, budget, _cfg()).size == CALIBRATION_MIN_SUBSET
    assert calibration_images(60, budget, _cfg()).size == 60
    # the Config field calibration_max_mb is the budget
    assert calibration_images(100, mb, _cfg(calibration_max_mb=50.0)).size == 100
    assert calibration_images(200, mb, _cfg(calibration_max_mb=150.0)).size == 150


def test_a_fit_over_the_budget_calibrates_on_a_subset_leave_one_image_out(product, monkeypatch):
    monkeypatch.setattr(cal_mod, "CALIBRATION_MIN_SUBSET", 7)
    budget = {"calibration_max_mb": 1e-6}
    det, items = _fit_quietly(product, search="exact", image_score="max", **budget)
    chosen = np.sort(np.random.default_rng(det.config.seed + 1).choice(N_TRAIN, 7, replace=False))
    emb = _embedded_images(det, items)
    expected = _brute_force_base_scores(det, emb, _bank_sources(det, N_TRAIN))[chosen]
    np.testing.assert_allclose(det.calibration_.base_scores_, expected, rtol=1e-4, atol=1e-6)


def test_five_images_fit_each_against_the_other_four(tmp_path):
    root = make_dataset(tmp_path, n_train=5, n_test_good=0, n_test_defect=0, size=96, seed=2)
    det = Detector.from_preset("lmf-core", progress=False, **FAST)
    with pytest.warns(UserWarning, match="calibrated on only 5 normal training images"):
        det.fit(root / "train" / "good")
    assert det.calibration_.scores_.size == 5
    assert np.all(det.calibration_.base_scores_ > 0)
