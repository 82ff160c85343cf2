"""The StructCore study tables (structure_study) and the routed-vs-oracle evaluation (routing_eval)."""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import FAST
from patchbank.studies.structure import fig2_counts, study, subsets, variants

SMALL = {k: v for k, v in FAST.items()}


def _data():
    rng = np.random.default_rng(0)
    return {"labels": [0, 0, 0, 1, 1], "base": [1.0, 1.2, 0.9, 1.1, 2.0],
            "descriptors": rng.uniform(0, 1, (5, 3)).tolist(),
            "cal_base": [1.0, 1.1, 0.95, 1.05], "cal_descriptors": rng.uniform(0, 1, (4, 3)).tolist()}


def test_variants_match_numpy_by_hand():
    d = _data()
    v = variants(d)
    assert len(subsets()) == 7 and ("std", "topk_mean", "tv") in subsets()
    phi, cal = np.array(d["descriptors"]), np.array(d["cal_descriptors"])
    mu, sd = cal.mean(0), cal.std(0)
    dist = lambda p: np.sqrt((((p - mu) / (sd + 1e-6)) ** 2).sum(1))  # noqa: E731
    lam = np.std(d["cal_base"]) / (dist(cal).std() + 1e-12)
    assert v["struct"] == pytest.approx(dist(phi), rel=1e-9)
    assert v["hybrid"] == pytest.approx(np.array(d["base"]) + lam * dist(phi), rel=1e-9)
    assert v["base"].tolist() == d["base"]
    # a single-component subset: |phi - mu| / (sd + eps) of that column
    tv = np.abs(phi[:, 2] - mu[2]) / (sd[2] + 1e-6)
    assert v["struct[tv]"] == pytest.approx(tv, rel=1e-9)
    # the Chebyshev distance on standardised deviations
    z = (phi - mu) / (sd + 1e-6)
    lam_c = np.std(d["cal_base"]) / (np.abs((cal - mu) / (sd + 1e-6)).max(1).std() + 1e-12)
    assert v["hybrid{chebyshev_std}"] == pytest.approx(np.array(d["base"]) + lam_c * np.abs(z).max(1), rel=1e-9)
    # fixed lambda 0: the hybrid is the base
    assert variants(d, lam=0.0)["hybrid"] == pytest.approx(d["base"])


def test_fig2_counts_by_hand():
    d = _data()
    res = fig2_counts(d, lam=0.0, quantile=1.0)   # lambda 0: hybrid == base; thresholds = max train-good
    assert res["base_threshold"] == res["hybrid_threshold"] == 1.1
    # test scores 1.0 1.2 0.9 (good) 1.1 2.0 (defective): > 1.1 flags 1.2 and 2.0
    assert res["counts"]["good"] == {"both_flag": 1, "only_base_flags": 0, "only_hybrid_flags": 0, "neither": 2}
    assert res["counts"]["defective"] == {"both_flag": 1, "only_base_flags": 0, "only_hybrid_flags": 0,
                                          "neither": 1}


def test_study_end_to_end_and_resume(synthetic_root, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "part").symlink_to(synthetic_root, target_is_directory=True)
    out = tmp_path / "out"
    table = study([root], preset="lmf-core", overrides=SMALL, seeds=[0], out_dir=out, progress=False)
    assert set(table["variants"]) >= {"base", "struct", "hybrid", "hybrid{cosine}", "struct[std+tv]"}
    run = json.loads((out / "runs" / "part__seed0.json").read_text())["data"]
    # the table's base AUROC is that of the stored base scores
    from sklearn.metrics import roc_auc_score
    assert table["variants"]["base"]["part"]["image_auroc"][0] == pytest.approx(
        roc_auc_score(run["labels"], run["base"]))
    assert (out / "fig2_part.png").stat().st_size > 1000
    assert "hybrid[std+topk_mean+tv]" in (out / "structure.md").read_text()
    # resume: the run file is reused, not recomputed
    mtime = (out / "runs" / "part__seed0.json").stat().st_mtime_ns
    study([root], preset="lmf-core", overrides=SMALL, seeds=[0], out_dir=out, progress=False, plot=False)
    assert (out / "runs" / "part__seed0.json").stat().st_mtime_ns == mtime


def test_study_recomputes_a_run_of_other_data(synthetic_root, tmp_path, capsys):
    # another dataset written to the same -o: the stored run is not reused (data fingerprint)
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root / "part")
    out = tmp_path / "out"
    study([root], preset="lmf-core", overrides=SMALL, seeds=[0], out_dir=out, progress=False, plot=False)
    run_file = out / "runs" / "part__seed0.json"
    first = json.loads(run_file.read_text())
    assert "data_fingerprint" in first
    study([root], preset="lmf-core", overrides=SMALL, seeds=[0], out_dir=out, progress=False, plot=False)
    assert "reusing stored run" in capsys.readouterr().err
    (root / "part" / "test" / "good" / "000.png").unlink()
    study([root], preset="lmf-core", overrides=SMALL, seeds=[0], out_dir=out, progress=False, plot=False)
    assert "was computed on different data (files, sizes or dates changed); recomputing" in capsys.readouterr().err
    second = json.loads(run_file.read_text())
    assert len(second["data"]["labels"]) == len(first["data"]["labels"]) - 1
    assert second["device"] == "cpu" and len(second["backbone_sha256"]) == 64


def test_study_recomputes_a_run_of_other_backbone_weights(synthetic_root, tmp_path, capsys):
    """Session 31: a stored run was reused after the --weights file was rewritten (its table kept
    the old weights' AUROC); the run records the weights' sha256 and device, as evaluate's do."""
    import shutil

    from conftest import seeded_weights_file

    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root / "part")
    out, weights = tmp_path / "out", tmp_path / "w.safetensors"
    seeded_weights_file(weights, 0)
    kw = dict(preset="lmf-core", overrides={**SMALL, "weights": str(weights)}, seeds=[0], out_dir=out,
              progress=False, plot=False)
    study([root], **kw)
    first = json.loads((out / "runs" / "part__seed0.json").read_text())
    seeded_weights_file(weights, 1)                  # the same path, other weights
    study([root], **kw)
    assert "was computed with other backbone weights" in capsys.readouterr().err
    second = json.loads((out / "runs" / "part__seed0.json").read_text())
    assert second["backbone_sha256"] != first["backbone_sha256"] and second["data"] != first["data"]


def _stripes_category(root, seed=0, size=96):
    """An MVTec-layout category of tilted stripes; defects are a dark square (with masks)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]

    def img():
        v = 0.5 + 0.4 * np.sin(2 * np.pi * (xx + 0.5 * yy) / 8 + rng.uniform(0, 6.28)) + rng.normal(0, 0.03, (size, size))
        return np.clip(np.stack([v, v * 0.8, v * 0.3], -1), 0, 1)

    for split, n in (("train/good", 12), ("test/good", 4)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            Image.fromarray((img() * 255).astype(np.uint8)).save(root / split / f"{i:03d}.png")
    (root / "test/square").mkdir(parents=True)
    (root / "ground_truth/square").mkdir(parents=True)
    for i in range(4):
        a = img()
        y, x = rng.integers(10, size - 30, 2)
        a[y:y + 16, x:x + 16] = 0.05
        m = np.zeros((size, size), np.uint8)
        m[y:y + 16, x:x + 16] = 255
        Image.fromarray((a * 255).astype(np.uint8)).save(root / "test/square" / f"{i:03d}.png")
        Image.fromarray(m).save(root / "ground_truth/square" / f"{i:03d}_mask.png")


def test_route_eval_on_two_synthetic_products(synthetic_root, tmp_path):
    from patchbank.studies.routing import evaluate_routing

    root = tmp_path / "data"
    root.mkdir()
    (root / "part").symlink_to(synthetic_root, target_is_directory=True)
    _stripes_category(root / "stripes")
    res = evaluate_routing([root], preset="lmf-core", overrides=SMALL, seeds=[0], out_dir=tmp_path / "r",
                           progress=False, n_prototypes=16)
    run = res["runs"][0]
    assert run["routing_accuracy"] == 1.0
    assert run["confusion"]["stripes"] == {"part": 0, "stripes": 8}
    for name in ("part", "stripes"):
        cat = run["categories"][name]
        assert cat["max_score_rel_diff"] < 1e-4
        assert cat["routed"] == pytest.approx(cat["oracle"], abs=1e-6)
    assert "routing accuracy" in (tmp_path / "r" / "routing.md").read_text()


@pytest.mark.parametrize("which", ["route-eval", "structure"])
def test_a_category_without_defective_test_images_is_refused_before_any_fit(synthetic_root, tmp_path,
                                                                             monkeypatch, which):
    """Session 30: ``route-eval`` fitted every category, predicted, and only then failed with an
    AUROC error naming no category; ``structure`` checked each category just before its own fit."""
    import shutil

    from patchbank.detector import Detector
    from patchbank.errors import PatchbankError
    from patchbank.studies.routing import evaluate_routing

    root = tmp_path / "data"
    (root / "zz_notest" / "test").mkdir(parents=True)
    shutil.copytree(synthetic_root / "train", root / "zz_notest" / "train")
    shutil.copytree(synthetic_root / "test" / "good", root / "zz_notest" / "test" / "good")
    (root / "part").symlink_to(synthetic_root, target_is_directory=True)
    monkeypatch.setattr(Detector, "fit", lambda *a, **k: pytest.fail("a category was fitted"))
    run = (lambda: evaluate_routing([root], preset="lmf-core", overrides=SMALL, seeds=[0],
                                    out_dir=tmp_path / "r", progress=False, n_prototypes=4)) \
        if which == "route-eval" else \
        (lambda: study([root], preset="lmf-core", overrides=SMALL, seeds=[0], out_dir=tmp_path / "r",
                       progress=False))
    with pytest.raises(PatchbankError, match="category 'zz_notest': the test set needs both good and defective"):
        run()
