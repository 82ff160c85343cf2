"""StructCore scoring wired into the Detector: base / struct / hybrid, subsets, local density."""
import numpy as np
import pytest
import torch

from conftest import FAST, split_items
from patchbank.config import Config
from patchbank.detector import Detector
from patchbank.errors import PatchbankError
from patchbank.pipeline.structure import bank_local_radius, descriptor


@pytest.fixture(scope="module")
def hybrid_fitted(synthetic_root):
    return Detector.from_preset("lmf-core", progress=False, image_score="hybrid",
                                **FAST).fit(synthetic_root / "train" / "good")


def test_hybrid_leaves_maps_and_base_scores_untouched(fitted, hybrid_fitted, synthetic_root):
    items, _ = split_items(synthetic_root)
    plain = fitted.predict(items)
    hyb = hybrid_fitted.predict(items)
    for a, b in zip(plain, hyb):
        # same bank (same seed), so the maps must be bit-identical: pixel metrics cannot change
        assert np.array_equal(a.anomaly_map, b.anomaly_map)
    # the hybrid model's base pooling is "max" (base_score), the plain model's reweighted max
    for b in hyb:
        assert b.score == pytest.approx(b.base_score + hybrid_fitted.calibration_.struct_.lambda_ * b.struct_score,
                                        rel=1e-12)
        assert b.hybrid_score == pytest.approx(b.score, rel=1e-12)


def test_descriptor_is_computed_on_the_returned_map(hybrid_fitted, synthetic_root):
    items, _ = split_items(synthetic_root)
    for p in hybrid_fitted.predict(items[:3]):
        ref = descriptor(p.anomaly_map, topk_ratio=0.01)[0].numpy()
        assert np.allclose(p.descriptor, ref, rtol=1e-5)


def test_struct_statistics_and_lambda_match_numpy(hybrid_fitted):
    det = hybrid_fitted
    phi = det.calibration_.descriptors_
    base = det.calibration_.base_scores_
    mu, sd = phi.mean(0), phi.std(0)                          # ddof=0
    d = np.sqrt((((phi - mu) / (sd + 1e-6)) ** 2).sum(1))     # Eq. 10
    assert det.calibration_.struct_.struct(phi).numpy() == pytest.approx(d, rel=1e-9)
    assert det.calibration_.struct_.lambda_ == pytest.approx(base.std() / (d.std() + 1e-12), rel=1e-9)  # Eq. 11
    # the normal-score statistics are those of the hybrid calibration scores
    assert det.calibration_.stats_.mean_ == pytest.approx((base + det.calibration_.struct_.lambda_ * d).mean(), rel=1e-9)
    assert len(base) == len(phi) >= 2


def test_struct_only_score_and_fixed_lambda_and_subset(synthetic_root, hybrid_fitted):
    train = synthetic_root / "train" / "good"
    items, labels = split_items(synthetic_root)
    det = Detector.from_preset("lmf-core", progress=False, image_score="struct",
                               struct_components=("topk_mean", "tv"), struct_distance="l1_std",
                               **FAST).fit(train)
    preds = det.predict(items)
    phi = np.stack([p.descriptor for p in preds])[:, [1, 2]]
    cal = det.calibration_.descriptors_[:, [1, 2]]
    ref = np.abs((phi - cal.mean(0)) / (cal.std(0) + 1e-6)).sum(1)
    assert np.array([p.score for p in preds]) == pytest.approx(ref, rel=1e-9)
    fixed = Detector.from_preset("lmf-core", progress=False, image_score="hybrid", hybrid_lambda=0.0,
                                 **FAST).fit(train)
    for p in fixed.predict(items[:3]):
        assert p.score == pytest.approx(p.base_score, rel=1e-12)


def test_structure_state_survives_save_and_load(hybrid_fitted, synthetic_root, tmp_path):
    items, _ = split_items(synthetic_root)
    hybrid_fitted.save(tmp_path / "m.patchbank")
    back = Detector.load(tmp_path / "m.patchbank", progress=False)
    assert back.calibration_.struct_.lambda_ == pytest.approx(hybrid_fitted.calibration_.struct_.lambda_, rel=1e-12)
    a, b = hybrid_fitted.predict(items[:4]), back.predict(items[:4])
    assert [p.score for p in a] == pytest.approx([p.score for p in b], rel=1e-6)
    assert back.info()["structure_lambda"] == pytest.approx(hybrid_fitted.calibration_.struct_.lambda_)


def test_local_density_divides_by_matched_entry_radius(fitted, synthetic_root):
    det = Detector.from_preset("lmf-core", progress=False, local_density=True, density_neighbors=3,
                               image_score="max", search="exact", **FAST)
    det.fit(synthetic_root / "train" / "good")
    assert torch.allclose(det.scorer_.radius, bank_local_radius(det.bank_, 3))
    items, _ = split_items(synthetic_root)
    x = det.predict(items[:2])
    # by hand for one image: nearest-neighbour distance / radius of the matched entry
    from patchbank.io.images import as_items
    xb, _ = next(iter(det.stream(as_items(items[:1]))))
    emb = det.embed(det.extractor(xb)[0])
    d2 = torch.cdist(emb, det.bank_)
    dist, idx = d2.min(1)
    ref = (dist / (det.scorer_.radius[idx] + 1e-12)).max()
    assert x[0].base_score == pytest.approx(float(ref), rel=1e-4)


@pytest.mark.parametrize("bad", [dict(struct_components=()), dict(struct_components=("std", "max")),
                                 dict(struct_distance="manhattan"), dict(image_score="hybrid2"),
                                 dict(struct_topk_ratio=0.0), dict(hybrid_lambda=-1.0),
                                 dict(base_score="hybrid")])
def test_bad_structure_options_are_refused(bad):
    with pytest.raises(ValueError) as info:
        Config.preset("structcore", **bad)
    assert next(iter(bad)) in str(info.value)
    with pytest.raises(PatchbankError):
        Detector.from_preset("lmf-core", **bad)


def test_structcore_preset_defaults_to_hybrid():
    cfg = Config.preset("structcore")
    assert cfg.image_score == "hybrid" and cfg.base_score == "max"
    assert cfg.struct_components == ("std", "topk_mean", "tv") and cfg.struct_topk_ratio == 0.01
