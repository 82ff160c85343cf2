"""Benchmark evaluation end to end on tiny synthetic MVTec-layout data: outputs, aggregation,
resume, errors, and the ``patchbank evaluate`` command."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from patchbank.cli import cli
from patchbank.detector import Detector
from patchbank.errors import PatchbankError
from patchbank.evaluation.runner import METRICS, evaluate
from patchbank.io.synthetic import make_dataset

FAST = dict(backbone="efficientnet_lite0", image_size=64, crop_size=None)
FAST_ARGS = ["--backbone", "efficientnet_lite0", "--image-size", "64", "--crop-size", "none"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvtec")
    for i, name in enumerate(("alpha", "beta")):
        make_dataset(root / name, n_train=8, n_test_good=3, n_test_defect=2, size=64, seed=i)
    return root


@pytest.fixture(scope="module")
def evaluated(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    result = evaluate(data_root, "lmf-core", FAST, seeds=(0, 1), out_dir=out, progress=False)
    return out, result


def test_outputs_and_aggregation(evaluated):
    out, result = evaluated
    for name in ("results.csv", "summary.csv", "summary.json", "summary.md"):
        assert (out / name).is_file(), name
    runs = sorted(p.name for p in (out / "runs").glob("*.json"))
    assert runs == ["alpha__seed0.json", "alpha__seed1.json", "beta__seed0.json", "beta__seed1.json"]

    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2
    assert {(r["category"], r["seed"]) for r in rows} == {(c, s) for c in ("alpha", "beta") for s in ("0", "1")}
    for r in rows:
        for m in METRICS:
            assert r[m] != "", m
        assert 0.0 <= float(r["image_auroc"]) <= 1.0 and 0.0 <= float(r["aupro"]) <= 1.0
        assert float(r["bank_mb"]) > 0 and float(r["ms_per_img"]) > 0

    summary = json.loads((out / "summary.json").read_text())
    for cat in ("alpha", "beta"):
        for m in METRICS:
            vals = [float(r[m]) for r in rows if r["category"] == cat]
            assert summary["categories"][cat][m]["mean"] == pytest.approx(np.mean(vals), rel=1e-12)
            assert summary["categories"][cat][m]["std"] == pytest.approx(np.std(vals), rel=1e-9, abs=1e-15)
    for m in METRICS:
        cat_means = [summary["categories"][c][m]["mean"] for c in ("alpha", "beta")]
        assert summary["mean"][m]["mean"] == pytest.approx(np.mean(cat_means), rel=1e-12)

    with open(out / "summary.csv", newline="") as fh:
        srows = {r["category"]: r for r in csv.DictReader(fh)}
    assert set(srows) == {"alpha", "beta", "mean"}
    assert float(srows["alpha"]["pixel_auroc_mean"]) == pytest.approx(summary["categories"]["alpha"]["pixel_auroc"]["mean"])

    md = (out / "summary.md").read_text()
    assert md.strip() == result["markdown"]
    lines = md.strip().splitlines()
    assert len(lines) == 2 + 2 + 1
    assert lines[0].startswith("| category | image AUROC | image AP | image F1-max | pixel AUROC")
    assert "AUPRO" in lines[0] and "bank MB" in lines[0] and "ms/img" in lines[0]
    assert lines[-1].startswith("| **mean** |") and " ± " in lines[-1]

    run = json.loads((out / "runs" / "beta__seed1.json").read_text())
    assert run["config"]["seed"] == 1 and run["config"]["backbone"] == "efficientnet_lite0"
    assert run["command"] and run["category"] == "beta" and run["n_test"] == 3 + 4
    assert set(run["metrics"]) == set(METRICS)


def test_resume_loads_and_no_resume_recomputes(evaluated, data_root, monkeypatch, tmp_path):
    # a copy of the shared results folder: this test rewrites it, others read it
    import shutil

    first = evaluated[1]
    out = tmp_path / "results"
    shutil.copytree(evaluated[0], out, copy_function=shutil.copy2)
    files = sorted((out / "runs").glob("*.json"))
    mtimes = {p: p.stat().st_mtime_ns for p in files}

    def no_fit(self, images):
        raise AssertionError("fit called on resume")

    with monkeypatch.context() as m:
        m.setattr(Detector, "fit", no_fit)
        again = evaluate(data_root, "lmf-core", FAST, seeds=(0, 1), out_dir=out, progress=False)
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes
    assert again["summary"]["categories"] == first["summary"]["categories"]

    calls = []
    real_fit = Detector.fit

    def counting_fit(self, images):
        calls.append(self.config.seed)
        return real_fit(self, images)

    monkeypatch.setattr(Detector, "fit", counting_fit)
    target = out / "runs" / "alpha__seed0.json"
    evaluate(data_root, "lmf-core", FAST, categories=["alpha"], seeds=(0,), out_dir=out,
             resume=False, progress=False)
    assert calls == [0]
    assert target.stat().st_mtime_ns != mtimes[target]
    assert all(p.stat().st_mtime_ns == mtimes[p] for p in files if p != target)
    # a run stored with another config is recomputed even with resume=True
    evaluate(data_root, "lmf-core", {**FAST, "coreset_ratio": 0.2}, categories=["alpha"], seeds=(0,),
             out_dir=out, progress=False)
    assert calls == [0, 0]
    assert json.loads(target.read_text())["config"]["coreset_ratio"] == 0.2
    # the results of that call cover only what it was asked for
    with open(out / "results.csv", newline="") as fh:
        assert [(r["category"], r["seed"]) for r in csv.DictReader(fh)] == [("alpha", "0")]
    # a re-evaluation that fails after recomputing a run (session 31 audit: the old tables stayed
    # beside the new run file, and report showed their numbers for it): no table is left
    from patchbank.evaluation.reports import SUMMARY_TABLES

    def fail_on_beta(self, images):
        if "beta" in str(images[0]):
            raise PatchbankError("simulated failure in beta")
        return real_fit(self, images)

    monkeypatch.setattr(Detector, "fit", fail_on_beta)
    with pytest.raises(PatchbankError, match="simulated"):
        evaluate(data_root, "lmf-core", FAST, seeds=(0,), out_dir=out, resume=False, progress=False)
    assert not [name for name in SUMMARY_TABLES if (out / name).exists()]


def test_mask_size_mismatch_names_both_sizes(tmp_path):
    root = make_dataset(tmp_path / "cat", n_train=4, n_test_good=1, n_test_defect=1, size=64)
    Image.fromarray(np.zeros((40, 50), np.uint8), "L").save(root / "ground_truth" / "spot" / "000_mask.png")
    with pytest.raises(PatchbankError, match=r"000_mask\.png is 50x40 .*000\.png is 64x64"):
        evaluate(root, "lmf-core", FAST, out_dir=tmp_path / "out", progress=False)


def test_evaluate_bad_inputs(tmp_path, data_root):
    with pytest.raises(PatchbankError, match="dataset root not found"):
        evaluate(tmp_path / "missing", out_dir=tmp_path / "o", progress=False)
    with pytest.raises(PatchbankError, match="available: alpha, beta"):
        evaluate(data_root, categories=["gamma"], out_dir=tmp_path / "o", progress=False)
    with pytest.raises(PatchbankError, match="duplicate seeds"):
        evaluate(data_root, seeds=(1, 1), out_dir=tmp_path / "o", progress=False)
    with pytest.raises(PatchbankError, match="coreset_ratio"):
        evaluate(data_root, overrides={"coreset_ratio": 2.0}, out_dir=tmp_path / "o", progress=False)


# ------------------------------------------------------------------ CLI

def test_cli_evaluate_end_to_end(data_root, tmp_path):
    out = tmp_path / "res"
    result = CliRunner().invoke(cli, ["evaluate", str(data_root), "--categories", "beta", "--seeds", "3",
                                      "-o", str(out), "--quiet", *FAST_ARGS])
    assert result.exit_code == 0, result.output
    assert "| **mean** |" in result.stdout and "| beta |" in result.stdout
    run = json.loads((out / "runs" / "beta__seed3.json").read_text())
    assert run["config"]["seed"] == 3
    assert run["command"].startswith("patchbank evaluate ") and "--seeds 3" in run["command"]
    assert "--backbone efficientnet_lite0" in run["command"]
    with open(out / "results.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 1


@pytest.mark.parametrize("args, needle", [
    (["evaluate", "{missing}", "-o", "{out}"], "dataset root not found"),
    (["evaluate", "{root}", "-o", "{out}", "--seeds", "a,b"], "--seeds"),
    (["evaluate", "{root}", "-o", "{out}", "--categories", "nope", "-q"], "available: alpha, beta"),
    (["evaluate", "{root}", "-o", "{out}", "--coreset-ratio", "5"], "--coreset-ratio"),
])
def test_cli_evaluate_errors_are_one_line(data_root, tmp_path, args, needle):
    fill = {"missing": str(tmp_path / "missing"), "out": str(tmp_path / "o"), "root": str(data_root)}
    result = CliRunner().invoke(cli, [a.format(**fill) for a in args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert needle in lines[0]


def test_by_type_table_equals_scikit_learn_per_defect_type(evaluated):
    # by_type.csv: each defect type's images against the good ones, mean / std over seeds of
    # scikit-learn's values on the run files' own image records (score, label, defect type)
    sk = pytest.importorskip("sklearn.metrics")
    from test_metrics import sk_f1_max

    out, result = evaluated
    assert result["files"]["by_type_csv"] == out / "by_type.csv"
    with open(out / "by_type.csv", newline="") as fh:
        rows = {(r["category"], r["defect_type"]): r for r in csv.DictReader(fh)}
    assert set(rows) == {(c, t) for c in ("alpha", "beta") for t in ("scratch", "spot")}
    for (cat, t), row in rows.items():
        per_seed = {"image_auroc": [], "image_ap": [], "image_f1_max": []}
        for seed in (0, 1):
            images = json.loads((out / "runs" / f"{cat}__seed{seed}.json").read_text())["images"]
            assert {r["defect_type"] for r in images} == {"good", "scratch", "spot"}
            keep = [r for r in images if r["defect_type"] in ("good", t)]
            y, score = [r["label"] for r in keep], [r["score"] for r in keep]
            assert sum(y) == int(row["n_images"]) == 2 and len(y) - sum(y) == 3
            per_seed["image_auroc"].append(sk.roc_auc_score(y, score))
            per_seed["image_ap"].append(sk.average_precision_score(y, score))
            per_seed["image_f1_max"].append(sk_f1_max(y, score))
        assert row["n_seeds"] == "2"
        for m, vals in per_seed.items():
            assert float(row[f"{m}_mean"]) == pytest.approx(np.mean(vals), rel=1e-6), (cat, t, m)
            assert float(row[f"{m}_std"]) == pytest.approx(np.std(vals), rel=1e-5, abs=1e-9), (cat, t, m)


def test_resumed_runs_written_before_defect_types_still_give_the_by_type_table(evaluated, data_root,
                                                                             monkeypatch, tmp_path):
    # run files whose image records have no defect_type (written before the field): on resume
    # the types come from the (fingerprint-matched) category; the stored files stay as they were
    import shutil

    out = tmp_path / "results"
    shutil.copytree(evaluated[0], out, copy_function=shutil.copy2)
    for path in (out / "runs").glob("*.json"):
        run = json.loads(path.read_text())
        run["images"] = [{k: v for k, v in r.items() if k != "defect_type"} for r in run["images"]]
        path.write_text(json.dumps(run))
    before = {p: p.read_bytes() for p in (out / "runs").glob("*.json")}
    monkeypatch.setattr(Detector, "fit", lambda self, images: pytest.fail("fit called on resume"))
    evaluate(data_root, "lmf-core", FAST, seeds=(0, 1), out_dir=out, progress=False)
    assert {p: p.read_bytes() for p in before} == before
    assert (out / "by_type.csv").read_bytes() == (evaluated[0] / "by_type.csv").read_bytes()


def test_generic_category_without_masks(tmp_path, data_root):
    from patchbank.io.datasets import read_generic

    src = data_root / "alpha"
    cat = read_generic(src / "test" / "good", [src / "test" / "spot"], train_dir=src / "train" / "good",
                       name="part")
    result = evaluate([cat], "lmf-core", FAST, out_dir=tmp_path / "out", progress=False)
    metrics = result["runs"][0]["metrics"]
    assert metrics["image_auroc"] is not None
    assert metrics["pixel_auroc"] is None and metrics["aupro"] is None
    last = result["markdown"].splitlines()[-1]
    assert last.startswith("| **mean** |") and "–" in last
    with pytest.raises(PatchbankError, match="no categories selected"):
        evaluate(data_root, categories=[], out_dir=tmp_path / "o", progress=False)


def test_written_metrics_equal_scikit_learn_on_the_same_predictions(data_root, tmp_path, recorded_predictions):
    """The run file's metrics are the scikit-learn (and brute-force AUPRO) values of the very
    predictions evaluate made: a negated or shuffled score would fail here, not only range checks."""
    sk = pytest.importorskip("sklearn.metrics")
    from test_metrics import reference_aupro, sk_f1_max

    captured = recorded_predictions
    result = evaluate(data_root, "lmf-core", FAST, categories=["beta"], seeds=(0,), out_dir=tmp_path / "o",
                      progress=False)
    (items, preds), = captured
    written = json.loads((tmp_path / "o" / "runs" / "beta__seed0.json").read_text())["metrics"]
    assert written == result["runs"][0]["metrics"]

    labels = [0 if "/good/" in p.replace("\\", "/") else 1 for p in items]
    scores = [p.score for p in preds]
    assert 0 < sum(labels) < len(labels)
    assert written["image_auroc"] == pytest.approx(sk.roc_auc_score(labels, scores), rel=1e-12, abs=1e-12)
    assert written["image_ap"] == pytest.approx(sk.average_precision_score(labels, scores), rel=1e-12, abs=1e-12)
    assert written["image_f1_max"] == pytest.approx(sk_f1_max(labels, scores), rel=1e-12, abs=1e-12)

    maps, masks = [], []
    for path, pred in zip(items, preds):
        path = Path(path)
        mask_path = data_root / "beta" / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
        # image_size 64 = the data's size and no crop: the mask is used as it is
        mask = (np.asarray(Image.open(mask_path).convert("L")) > 0 if labels[len(maps)]
                else np.zeros(pred.anomaly_map.shape, bool))
        assert mask.shape == pred.anomaly_map.shape
        maps.append(pred.anomaly_map)
        masks.append(mask)
    flat_y = np.concatenate([m.ravel() for m in masks])
    flat_s = np.concatenate([a.ravel() for a in maps]).astype(np.float32)
    assert written["pixel_auroc"] == pytest.approx(sk.roc_auc_score(flat_y, flat_s), rel=1e-9)
    assert written["pixel_ap"] == pytest.approx(sk.average_precision_score(flat_y, flat_s), rel=1e-9)
    assert written["pixel_f1_max"] == pytest.approx(sk_f1_max(flat_y, flat_s), rel=1e-9)
    assert written["aupro"] == pytest.approx(reference_aupro(maps, masks), rel=1e-9)


def test_flagged_shares_are_the_decisions_on_good_and_defective_images(data_root, recorded_predictions):
    from patchbank.evaluation.runner import evaluate_category
    from patchbank.io.datasets import read_dataset

    category = read_dataset(data_root, categories=["alpha"])[0]
    # a threshold quantile of 0.5 flags some good images too, so both shares are informative
    from patchbank.config import Config

    config = Config.preset("lmf-core", **FAST, target_fpr=0.5)
    metrics = evaluate_category(category, config, progress=False)
    (images, preds), = recorded_predictions
    assert images == [str(p) for p in category.test]
    labels = np.asarray(category.labels)
    flagged = np.array([p.is_anomalous for p in preds])
    assert metrics["good_fpr"] == pytest.approx(flagged[labels == 0].sum() / (labels == 0).sum())
    assert metrics["defect_tpr"] == pytest.approx(flagged[labels == 1].sum() / (labels == 1).sum())
