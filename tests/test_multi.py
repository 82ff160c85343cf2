"""Multi-category models: routing (StructCore Eqs. 3-4), oracle equality, --add byte-identity."""
import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import FAST, split_items, stripes_images
from patchbank.detector import Detector
from patchbank.errors import PatchbankError
from patchbank.multi import MultiDetector, load_any
from patchbank.pipeline.routing import Router, routing_embedding, spherical_kmeans


@pytest.fixture(scope="module")
def two_categories(synthetic_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("stripes")
    train = stripes_images(root / "train", 12, seed=1)
    test = stripes_images(root / "test", 4, seed=2)
    return {"part": synthetic_root / "train" / "good", "stripes": train}, test


@pytest.fixture(scope="module")
def multi(two_categories):
    cats, _ = two_categories
    return MultiDetector.from_preset("lmf-core", progress=False, n_prototypes=16, **FAST).fit(cats)


def test_routing_picks_the_right_category_and_matches_oracle(multi, two_categories, synthetic_root):
    _, stripes_test = two_categories
    part_test, _ = split_items(synthetic_root)
    items = part_test[:5] + stripes_test
    truth = ["part"] * 5 + ["stripes"] * len(stripes_test)
    routed = multi.predict(items)
    assert [p.category for p in routed] == truth
    assert multi.route(items) == truth
    # the routed system's outputs equal the oracle's (category given) outputs
    for name in ("part", "stripes"):
        sel = [i for i, t in enumerate(truth) if t == name]
        oracle = multi.predict([items[i] for i in sel], category=name)
        for i, o in zip(sel, oracle):
            # (equal up to float rounding: the backbone sees batches of other sizes)
            assert routed[i].score == pytest.approx(o.score, rel=1e-4)
            assert np.allclose(routed[i].anomaly_map, o.anomaly_map, rtol=1e-4, atol=1e-5)
    # and equal a single-category detector fitted alone on the same images
    alone = Detector.from_preset("lmf-core", progress=False, **FAST).fit(synthetic_root / "train" / "good")
    for p, a in zip(routed[:5], alone.predict(items[:5])):
        assert p.score == pytest.approx(a.score, rel=1e-4)


def test_route_scores_match_eq3_by_hand():
    g = torch.Generator().manual_seed(0)
    router = Router(n_prototypes=3)
    a = torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=1)
    b = torch.nn.functional.normalize(torch.randn(2, 4, generator=g), dim=1)
    router.set("a", a)
    router.set("b", b)
    z = torch.nn.functional.normalize(torch.randn(2, 5, 4, generator=g), dim=2)
    ref = torch.stack([torch.stack([torch.cdist(z[i], protos).pow(2).min(1).values.mean()
                                    for protos in (a, b)]) for i in range(2)])
    assert torch.allclose(router.scores(z), ref, atol=1e-5)
    assert router.route(z) == [["a", "b"][j] for j in ref.argmin(1).tolist()]


def test_spherical_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(1)
    centres = torch.eye(4)
    x = torch.nn.functional.normalize(centres.repeat_interleave(50, 0) + 0.05 * torch.randn(200, 4, generator=g), dim=1)
    protos = spherical_kmeans(x, 4, seed=0)
    assert protos.shape == (4, 4)
    assert torch.allclose(protos.norm(dim=1), torch.ones(4), atol=1e-5)
    # every true centre has a prototype within a small angle
    assert (protos @ centres.T).max(0).values.min() > 0.99
    assert torch.equal(protos, spherical_kmeans(x, 4, seed=0))       # deterministic
    assert spherical_kmeans(x[:3], 10).shape == (3, 4)                 # k clipped to n


def test_routing_embedding_is_unit_norm_and_layer_balanced():
    a, b = torch.randn(7, 3) * 100, torch.randn(7, 5) * 0.01
    z = routing_embedding([a, b])
    assert torch.allclose(z.norm(dim=1), torch.ones(7), atol=1e-6)
    # each layer contributes half the squared norm after per-layer normalisation
    assert torch.allclose(z[:, :3].pow(2).sum(1), torch.full((7,), 0.5), atol=1e-5)


def test_save_load_and_add_keeps_other_categories_byte_identical(multi, two_categories, synthetic_root, tmp_path):
    cats, stripes_test = two_categories
    path = tmp_path / "two.patchbank"
    multi.save(path)
    loaded = load_any(path, progress=False)
    assert isinstance(loaded, MultiDetector) and loaded.categories == ["part", "stripes"]
    items = stripes_test[:2]
    assert [p.score for p in loaded.predict(items)] == pytest.approx([p.score for p in multi.predict(items)], rel=1e-6)
    # add a third category (the stripes at another period) and save to a new file
    third = stripes_images(tmp_path / "fine", 8, seed=5, period=3)
    loaded.add("fine", third)
    path2 = tmp_path / "three.patchbank"
    loaded.save(path2)
    with safe_open(str(path), "pt") as f1, safe_open(str(path2), "pt") as f2:
        old_keys = set(f1.keys())
        assert old_keys < set(f2.keys())
        assert any(k.startswith("fine/") for k in f2.keys())
        for key in old_keys:
            t1, t2 = f1.get_tensor(key), f2.get_tensor(key)
            assert t1.dtype == t2.dtype and t1.shape == t2.shape
            assert t1.numpy().tobytes() == t2.numpy().tobytes(), key
    three = MultiDetector.load(path2, progress=False)
    assert three.route(third[:2]) == ["fine", "fine"]
    with pytest.raises(PatchbankError, match="already exists"):
        three.save(path2)


def test_clear_errors(multi, tmp_path, two_categories):
    _, stripes_test = two_categories
    with pytest.raises(PatchbankError, match="unknown category 'bottle'.*part, stripes"):
        multi.predict(stripes_test[:1], category="bottle")
    with pytest.raises(PatchbankError, match="already in this model"):
        multi.add("part", stripes_test)
    with pytest.raises(PatchbankError, match="invalid category name"):
        multi.add("a/b", stripes_test)
    path = tmp_path / "m.patchbank"
    multi.save(path)
    with pytest.raises(PatchbankError, match="multi-category model"):
        Detector.load(path)
    with pytest.raises(PatchbankError, match="not fitted"):
        MultiDetector().predict(stripes_test)
    # session 30: wrong types were tracebacks, or (n_prototypes 16.0) a file that could not be loaded
    for bad in (16.0, True, 0, "8"):
        with pytest.raises(PatchbankError, match="n_prototypes must be an integer >= 1"):
            MultiDetector(n_prototypes=bad)
    for bad in (["a", "b"], "folder"):
        with pytest.raises(PatchbankError, match="categories must be a mapping"):
            MultiDetector(progress=False).fit(bad)
    with pytest.raises(PatchbankError, match="category must be a category name"):
        multi.predict(stripes_test[:1], category=["part"])


def test_a_loaded_category_has_the_fixed_shape_it_was_fitted_with(two_categories, tmp_path):
    """Session 30: a category read from a file got the shared config (aspect "auto"), not the
    one it was fitted with ("fixed"), so the Ray engine's fit printed a reshape that never
    happened ("aspect auto: ... reshaped to it")."""
    from patchbank.cli.fit_report import input_line

    cats, _ = two_categories
    multi = MultiDetector.from_preset("patchbank", progress=False, n_prototypes=4, **FAST).fit(cats)
    assert multi.config.aspect == "auto"          # the preset's; each category is fitted "fixed"
    path = tmp_path / "m.patchbank"
    multi.save(path)
    loaded = MultiDetector.load(path, progress=False)
    for name, det in loaded.detectors_.items():
        assert det.config == multi.detectors_[name].config and det.config.aspect == "fixed"
        assert "aspect" not in input_line(det, [])


def test_cli_fit_several_categories_add_and_predict(two_categories, synthetic_root, tmp_path):
    import csv

    from test_cli import SMALL, assert_one_line_error, run

    cats, stripes_test = two_categories
    stripes_dir = stripes_test[0].parent.parent / "train"
    model = tmp_path / "m.patchbank"
    r = run("fit", f"part={cats['part']}", "--quiet", "-o", model, *SMALL)
    assert r.exit_code == 0, r.output
    assert_one_line_error(run("fit", "--add", f"part={stripes_dir}", "-o", model, "--quiet"),
                          "multi-category")          # a single-category model cannot take --add
    r = run("fit", f"part={cats['part']}", "--multi", "--quiet", "-o", model, "--overwrite", *SMALL,
            "--image-score", "hybrid")
    assert r.exit_code == 0, r.output
    before = model.read_bytes()
    assert_one_line_error(run("fit", "--add", f"stripes={stripes_dir}", "-o", model, "--kappa", "1.0"),
                          "--kappa")
    assert_one_line_error(run("fit", "--add", f"part={stripes_dir}", "-o", model), "already has", "part")
    assert model.read_bytes() == before                 # refused commands leave the file alone
    r = run("fit", "--add", f"stripes={stripes_dir}", "-o", model, "--quiet")
    assert r.exit_code == 0, r.output
    assert "2 categories" in r.output
    # the added category's threshold line (the category already in the file is not refitted)
    n_stripes = len(list(stripes_dir.glob("*.png")))
    assert f"[stripes] threshold: 0 of {n_stripes} training images above it" in r.output, r.output
    assert "[part]" not in r.output
    out = tmp_path / "pred"
    r = run("predict", model, stripes_test[0].parent, synthetic_root / "test" / "good", "-o", out, "--quiet")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [row["category"] for row in rows] == ["stripes"] * len(stripes_test) + ["part"] * 6
    assert all(row["routed"] == "1" for row in rows)
    r = run("predict", model, stripes_test[0], "-o", tmp_path / "p2", "--category", "part", "--quiet")
    rows = list(csv.DictReader(open(tmp_path / "p2" / "predictions.csv")))
    assert rows[0]["category"] == "part" and rows[0]["routed"] == "0"
    assert_one_line_error(run("predict", model, stripes_test[0], "-o", tmp_path / "p3", "--category", "nut"),
                          "unknown category 'nut'")
    r = run("info", model)
    assert "part, stripes" in r.output and "[stripes]" in r.output


def test_package_exports_the_estimators():
    import patchbank

    assert patchbank.Detector is Detector and patchbank.MultiDetector is MultiDetector
    assert patchbank.load_any is load_any
    with pytest.raises(AttributeError):
        patchbank.NoSuchThing
