"""``patchbank report``: the HTML page of a real predict run and a real evaluate run (tiny synthetic
data, efficientnet_lite0 at 64 px), its content checked against the run files and scikit-learn,
rendered in headless Chromium; bad inputs; no overwriting; evaluate's per-image run records."""
from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import assert_one_line_error
from patchbank.cli import cli
from patchbank.evaluation.reports import metric_cell
from patchbank.evaluation.runner import evaluate
from patchbank.io.synthetic import make_dataset
from patchbank.report import build_report, write_report
from patchbank.report.curves import image_curves, operating_point
from patchbank.report.render import num
from patchbank.report.results import NO_IMAGES

FAST = dict(backbone="efficientnet_lite0", image_size=64, crop_size=None)
FAST_ARGS = ["--preset", "lmf-core", "--backbone", "efficientnet_lite0", "--image-size", "64",
             "--crop-size", "none"]


# ------------------------------------------------------------------------------------------------
# fixtures: one real predict run, one real evaluate run
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_data")
    for i, name in enumerate(("alpha", "beta")):
        make_dataset(root / name, n_train=8, n_test_good=4, n_test_defect=2, size=64, seed=i)  # 4 good, 2 x 2 defective
    return root


def run_cli(args: list[str]):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def predict_dir(data_root, tmp_path_factory):
    """``patchbank fit`` + ``patchbank predict --heatmaps`` on alpha's test split."""
    base = tmp_path_factory.mktemp("report_predict")
    model = base / "m.patchbank"
    res = run_cli(["fit", str(data_root / "alpha" / "train" / "good"), "-o", str(model), "--quiet", *FAST_ARGS])
    assert res.exit_code == 0, res.output
    res = run_cli(["predict", str(model), str(data_root / "alpha" / "test"), "-o", str(base / "pred"),
                   "--heatmaps", "--quiet"])
    assert res.exit_code == 0, res.output
    return base / "pred"


@pytest.fixture(scope="module")
def evaluate_dir(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("report_evaluate")
    evaluate(data_root, "lmf-core", FAST, seeds=(0, 1), out_dir=out, progress=False)
    return out


@pytest.fixture(scope="module")
def predict_html(predict_dir):
    res = run_cli(["report", str(predict_dir), "--quiet"])
    assert res.exit_code == 0, res.output
    assert f"wrote {predict_dir / 'report.html'}" in res.output
    return predict_dir / "report.html"


@pytest.fixture(scope="module")
def evaluate_html(evaluate_dir):
    res = run_cli(["report", str(evaluate_dir), "--quiet"])
    assert res.exit_code == 0, res.output
    return evaluate_dir / "report.html"


# ------------------------------------------------------------------------------------------------
# reading the page
# ------------------------------------------------------------------------------------------------

class Elements(HTMLParser):
    """Every start tag of a document as ``(tag, attrs)``, and each element's text (its children's
    included) by index."""

    def __init__(self, text: str):
        super().__init__()
        self.items: list[tuple[str, dict[str, str]]] = []
        self.text: dict[int, str] = {}
        self._open: list[int] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.items.append((tag, dict(attrs)))
        if tag not in ("img", "br", "meta", "line", "rect", "polyline", "circle"):
            self._open.append(len(self.items) - 1)

    def handle_endtag(self, tag):
        while self._open:
            i = self._open.pop()
            if self.items[i][0] == tag:
                break

    def handle_data(self, data):
        for i in self._open:   # every open element's text includes its children's
            self.text[i] = self.text.get(i, "") + data

    def find(self, tag: str, cls: str | None = None, **attrs) -> list[dict[str, str]]:
        """Attributes of every ``tag`` whose class list holds ``cls`` and whose attributes equal ``attrs``."""
        out = []
        for t, a in self.items:
            if t != tag or (cls is not None and cls not in a.get("class", "").split()):
                continue
            if all(a.get(k.replace("_", "-")) == v for k, v in attrs.items()):
                out.append(a)
        return out

    def row_cells(self, row: int) -> list[str]:
        """The texts of the ``td`` cells of the ``tr`` at index ``row``."""
        cells = []
        for j in range(row + 1, len(self.items)):
            if self.items[j][0] == "tr":
                break
            if self.items[j][0] == "td":
                cells.append(self.text.get(j, "").strip())
        return cells

    def texts(self, tag: str, cls: str) -> list[str]:
        """The text of every ``tag`` of class ``cls``."""
        return [self.text.get(i, "").strip() for i, (t, a) in enumerate(self.items)
                if t == tag and cls in a.get("class", "").split()]


def floats(text: str) -> np.ndarray:
    return np.array([float(v) for v in text.split()])


def descending(records):
    return sorted(records, key=lambda r: -r["normalized_score"])


# ------------------------------------------------------------------------------------------------
# evaluate's run files
# ------------------------------------------------------------------------------------------------

def test_run_files_record_every_test_image(evaluate_dir, data_root):
    sk = pytest.importorskip("sklearn.metrics")
    from patchbank.io.datasets import read_dataset

    cats = {c.name: c for c in read_dataset(data_root)}
    for path in sorted((evaluate_dir / "runs").glob("*.json")):
        run = json.loads(path.read_text())
        cat = cats[run["category"]]
        images = run["images"]
        assert [r["path"] for r in images] == [str(p) for p in cat.test]
        assert [r["label"] for r in images] == list(cat.labels)
        assert len({r["threshold"] for r in images}) == 1
        labels = np.array([r["label"] for r in images])
        scores = np.array([r["score"] for r in images])
        flagged = np.array([r["is_anomalous"] for r in images])
        norm = np.array([r["normalized_score"] for r in images])
        assert (flagged == (norm > images[0]["threshold"])).all()
        assert run["metrics"]["image_auroc"] == pytest.approx(sk.roc_auc_score(labels, scores), abs=1e-12)
        assert run["metrics"]["good_fpr"] == pytest.approx(flagged[labels == 0].mean())
        assert run["metrics"]["defect_tpr"] == pytest.approx(flagged[labels == 1].mean())
        # the normalised score is an increasing affine map of the score: same ranking
        assert (np.argsort(scores, kind="stable") == np.argsort(norm, kind="stable")).all()


def test_old_run_file_without_images_resumes_and_the_report_says_so(evaluate_dir, data_root, tmp_path,
                                                                    monkeypatch):
    from patchbank.detector import Detector

    out = tmp_path / "old"
    shutil.copytree(evaluate_dir, out)
    (out / "report.html").unlink(missing_ok=True)
    target = out / "runs" / "beta__seed1.json"
    old = json.loads(target.read_text())
    del old["images"]
    target.write_text(json.dumps(old, indent=2))
    monkeypatch.setattr(Detector, "fit", lambda self, images: pytest.fail("fit called on resume"))
    again = evaluate(data_root, "lmf-core", FAST, seeds=(0, 1), out_dir=out, progress=False)
    assert "images" not in json.loads(target.read_text())
    assert [r["metrics"] for r in again["runs"]] == [
        json.loads((out / "runs" / f"{c}__seed{s}.json").read_text())["metrics"]
        for c in ("alpha", "beta") for s in (0, 1)]

    page = Elements(build_report(out))
    assert len(page.find("tr", data_category="beta")) == 1        # the metric table is there
    (run,) = page.find("details", "run", data_category="beta", data_seed="1")
    assert NO_IMAGES in page.texts("p", "problem")
    assert "--no-resume" in NO_IMAGES
    assert len(page.find("polyline", "curve")) == 2 * 3           # the other three runs' ROC and PR


def test_a_folder_written_before_run_files_carried_a_hash_is_read(evaluate_dir, tmp_path):
    """Session 30: a category named outside ``A-Za-z0-9_.-`` ("beta 2") had its run file named
    ``beta_2__seed0.json`` before session 29 and ``beta_2-<sha>__seed0.json`` since; the report
    of an older folder said the run was missing.  It reads the old name, and the category the
    file records is still checked."""
    from patchbank.evaluation.run_store import legacy_run_file_name, run_file_name
    from patchbank.report.results import read_evaluate

    out = tmp_path / "old"
    shutil.copytree(evaluate_dir, out)
    summary = json.loads((out / "summary.json").read_text())
    summary["categories"] = {("beta 2" if c == "beta" else c): v for c, v in summary["categories"].items()}
    (out / "summary.json").write_text(json.dumps(summary))
    for seed in (0, 1):
        run = json.loads((out / "runs" / f"beta__seed{seed}.json").read_text())
        (out / "runs" / f"beta__seed{seed}.json").unlink()
        name = legacy_run_file_name("beta 2", seed)
        assert name == f"beta_2__seed{seed}.json" != run_file_name("beta 2", seed)
        (out / "runs" / name).write_text(json.dumps({**run, "category": "beta 2"}))
    runs = {(r.category, r.seed): r for r in read_evaluate(out).runs}
    assert runs["beta 2", 0].problem is None and runs["beta 2", 1].problem is None
    assert runs["beta 2", 0].path.name == "beta_2__seed0.json"
    # a legacy file that holds another category (the collision the hash ended) says so
    (out / "runs" / "beta_2__seed1.json").write_text(json.dumps({**run, "category": "beta_2"}))
    assert "holds the run of 'beta_2'" in read_evaluate(out).runs[-1].problem


# ------------------------------------------------------------------------------------------------
# the predict page
# ------------------------------------------------------------------------------------------------

def test_predict_report_shows_counts_threshold_and_every_image_by_score(predict_html, predict_dir):
    data = json.loads((predict_dir / "predictions.json").read_text())
    html = predict_html.read_text(encoding="utf-8")
    page = Elements(html)
    n, flagged = len(data["predictions"]), sum(r["is_anomalous"] for r in data["predictions"])
    assert n == 8 and data["n_flagged"] == flagged
    (stat_n,) = [i for i, (t, a) in enumerate(page.items) if a.get("data-key") == "n_images"]
    assert page.text[stat_n + 1].strip() == str(n)
    (stat_f,) = [i for i, (t, a) in enumerate(page.items) if a.get("data-key") == "n_flagged"]
    assert page.text[stat_f + 1].strip() == str(flagged)
    (stat_t,) = [i for i, (t, a) in enumerate(page.items) if a.get("data-key") == "threshold"]
    assert page.text[stat_t + 1].strip() == num(data["threshold"])
    assert "normalised score" in html

    cards = page.find("figure", "card")
    assert [c["data-path"] for c in cards] == [r["path"] for r in descending(data["predictions"])]
    assert [c["data-flagged"] == "true" for c in cards] == [r["is_anomalous"] for r in descending(data["predictions"])]
    assert [float(c["data-normalized-score"]) for c in cards] == pytest.approx(
        sorted((r["normalized_score"] for r in data["predictions"]), reverse=True), rel=1e-9)
    imgs = page.find("img")
    assert len(imgs) == n and all(i["src"].startswith("data:image/jpeg;base64,") for i in imgs)
    assert all(i["alt"].startswith("heatmap overlay") for i in imgs)
    assert all(max(int(i["width"]), int(i["height"])) <= 176 for i in imgs)

    (hist,) = page.find("svg", "histogram")
    (line,) = page.find("line", "threshold")
    assert float(line["data-value"]) == pytest.approx(data["threshold"])
    counts = sum(floats(g["data-counts"]).sum() for g in page.find("g", "bars"))
    assert counts == n
    # self-contained: nothing fetched from anywhere
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html and "downscaled" in html


def test_missing_heatmaps_and_images_are_noted_not_fatal(predict_dir, tmp_path):
    pred = tmp_path / "pred"
    shutil.copytree(predict_dir, pred)
    (pred / "report.html").unlink(missing_ok=True)
    data = json.loads((pred / "predictions.json").read_text())
    for rec in data["predictions"]:   # as if the folder had moved: heatmaps are found in it
        rec["heatmap"] = str(tmp_path / "old place" / "heatmaps" / Path(rec["heatmap"]).name)
    heatmaps = sorted((pred / "heatmaps").glob("*.png"))
    heatmaps[0].unlink()                                    # the image itself is shown instead
    gone = next(r for r in data["predictions"] if Path(r["heatmap"]).name != heatmaps[0].name)
    (pred / "heatmaps" / Path(gone["heatmap"]).name).unlink()
    gone["path"] = str(tmp_path / "nowhere" / "lost.png")   # neither heatmap nor image
    (pred / "predictions.json").write_text(json.dumps(data))

    page = Elements(write_report(pred).read_text(encoding="utf-8"))
    notes = " ".join(page.texts("div", "note"))
    assert "heatmap file missing" in notes and "image not found" in notes and "lost.png" in notes
    html = (pred / "report.html").read_text(encoding="utf-8")
    assert "2 of 8 heatmap files are missing" in html and "1 of 8 images could not be shown" in html
    assert len(page.find("img")) == len(data["predictions"]) - 1
    assert sum(i["alt"].startswith("image of") for i in page.find("img")) == 1


def test_multi_category_predictions_get_a_threshold_and_histogram_per_category(predict_dir, tmp_path):
    """A routed model's predictions.json: no top-level threshold, one per category and record."""
    pred = tmp_path / "multi"
    shutil.copytree(predict_dir, pred)
    (pred / "report.html").unlink(missing_ok=True)
    data = json.loads((pred / "predictions.json").read_text())
    data.update(threshold=None, categories=["left", "right"], routing="routed")
    for i, rec in enumerate(data["predictions"]):
        rec.update(category="left" if i % 2 else "right", routed=True, threshold=1.5 if i % 2 else 2.5)
        rec["is_anomalous"] = rec["normalized_score"] > rec["threshold"]
    (pred / "predictions.json").write_text(json.dumps(data))

    page = Elements(build_report(pred))
    rows = page.find("tr", data_category="left") + page.find("tr", data_category="right")
    assert len(rows) == 2
    assert sorted(float(a["data-value"]) for a in page.find("line", "threshold")) == [1.5, 2.5]
    assert len(page.find("svg", "histogram")) == 2
    assert page.texts("span", "category").count("left") == len(data["predictions"]) // 2


# ------------------------------------------------------------------------------------------------
# the evaluate page
# ------------------------------------------------------------------------------------------------

def test_evaluate_report_table_and_curves_match_the_runs_and_scikit_learn(evaluate_html, evaluate_dir):
    sk = pytest.importorskip("sklearn.metrics")
    summary = json.loads((evaluate_dir / "summary.json").read_text())
    page = Elements(evaluate_html.read_text(encoding="utf-8"))

    for cat in ("alpha", "beta", "mean"):
        (row,) = [i for i, (t, a) in enumerate(page.items) if t == "tr" and a.get("data-category") == cat]
        cells = page.row_cells(row)[1:]
        entry = summary["mean"] if cat == "mean" else summary["categories"][cat]
        assert cells == [metric_cell(entry[m], m) for m in summary["metrics"]]

    runs = page.find("details", "run")
    assert [(r["data-category"], r["data-seed"]) for r in runs] == [("alpha", "0"), ("alpha", "1"),
                                                                     ("beta", "0"), ("beta", "1")]
    rocs, prs = page.find("polyline", "curve", data_kind="roc"), page.find("polyline", "curve", data_kind="pr")
    ops = page.find("circle", "op")
    assert len(rocs) == len(prs) == 4
    for k, (cat, seed) in enumerate([("alpha", 0), ("alpha", 1), ("beta", 0), ("beta", 1)]):
        run = json.loads((evaluate_dir / "runs" / f"{cat}__seed{seed}.json").read_text())
        y = [r["label"] for r in run["images"]]
        s = [r["score"] for r in run["images"]]
        fpr, tpr, _ = sk.roc_curve(y, s, drop_intermediate=False)
        assert floats(rocs[k]["data-x"]) == pytest.approx(fpr, abs=1e-9)
        assert floats(rocs[k]["data-y"]) == pytest.approx(tpr, abs=1e-9)
        precision, recall, _ = sk.precision_recall_curve(y, s)
        assert floats(prs[k]["data-x"]) == pytest.approx(recall[:-1][::-1], abs=1e-9)
        assert floats(prs[k]["data-y"]) == pytest.approx(precision[:-1][::-1], abs=1e-9)
        op = operating_point(y, [r["is_anomalous"] for r in run["images"]])
        roc_op = ops[2 * k] if op.precision is not None else ops[k]
        assert float(roc_op["data-x"]) == pytest.approx(run["metrics"]["good_fpr"])
        assert float(roc_op["data-y"]) == pytest.approx(run["metrics"]["defect_tpr"])
        assert _auroc(image_curves(y, s)) == pytest.approx(run["metrics"]["image_auroc"], abs=1e-12)
        assert _ap(image_curves(y, s)) == pytest.approx(run["metrics"]["image_ap"], abs=1e-12)


def test_evaluate_report_has_the_by_type_table(evaluate_html, evaluate_dir):
    import csv

    page = Elements(evaluate_html.read_text(encoding="utf-8"))
    with open(evaluate_dir / "by_type.csv", newline="") as fh:
        want = list(csv.DictReader(fh))
    rows = [i for i, (t, a) in enumerate(page.items) if t == "tr" and "type" in a.get("class", "").split()]
    assert len(rows) == len(want) == 4          # two categories x (scratch, spot)
    for i, w in zip(rows, want):
        attrs = page.items[i][1]
        assert (attrs["data-type-category"], attrs["data-type"]) == (w["category"], w["defect_type"])
        cells = [" ".join(c.split()) for c in page.row_cells(i)]
        assert cells[:3] == [w["category"], w["defect_type"], w["n_images"]]
        assert cells[3:] == [f"{float(w[m + '_mean']):.3f} ± {float(w[m + '_std']):.3f}"
                             for m in ("image_auroc", "image_ap", "image_f1_max")]


def test_evaluate_report_shows_the_worst_good_and_defective_images(evaluate_html, evaluate_dir):
    page = Elements(evaluate_html.read_text(encoding="utf-8"))
    run = json.loads((evaluate_dir / "runs" / "alpha__seed0.json").read_text())
    good = sorted((r for r in run["images"] if r["label"] == 0), key=lambda r: -r["score"])
    bad = sorted((r for r in run["images"] if r["label"] == 1), key=lambda r: r["score"])
    # the first run's strips are the first good / defective cards on the page
    cards = page.find("figure", "card")
    assert [c["data-path"] for c in cards[:4]] == [r["path"] for r in good]
    assert [c["data-path"] for c in cards[4:8]] == [r["path"] for r in bad]
    assert len(cards) == 4 * 8 and len(page.find("img")) == 4 * 8


# ------------------------------------------------------------------------------------------------
# curves, against scikit-learn on data with ties
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_curve_points_equal_scikit_learn_with_ties(seed):
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 80)
    y[:2] = [0, 1]
    s = np.round(rng.normal(size=80) + y, 1)          # many ties
    c = image_curves(y, s)
    fpr, tpr, thr = sk.roc_curve(y, s, drop_intermediate=False)
    assert c.fpr == pytest.approx(fpr) and c.tpr == pytest.approx(tpr)
    assert c.thresholds == pytest.approx(thr[1:])
    precision, recall, _ = sk.precision_recall_curve(y, s)
    assert c.precision == pytest.approx(precision[:-1][::-1]) and c.recall == pytest.approx(recall[:-1][::-1])
    assert _auroc(c) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)
    assert _ap(c) == pytest.approx(sk.average_precision_score(y, s), abs=1e-12)
    op = operating_point(y, s > 0.5)
    k = int(np.flatnonzero(c.thresholds > 0.5)[-1]) + 1     # the last curve point above 0.5
    assert (op.fpr, op.tpr) == pytest.approx((c.fpr[k], c.tpr[k]))


# ------------------------------------------------------------------------------------------------
# bad input, overwriting
# ------------------------------------------------------------------------------------------------

def test_a_folder_that_is_no_results_folder_is_one_line(tmp_path, predict_dir):
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(cli, ["report", str(tmp_path / "empty")])
    assert_one_line_error(res.exit_code, res.stderr, "predictions.json", "summary.json", "empty")
    res = CliRunner().invoke(cli, ["report", str(tmp_path / "missing")])
    assert_one_line_error(res.exit_code, res.stderr, "not found")
    # a folder holding the results one level down (demo's layout) names it
    (tmp_path / "demo" / "predictions").mkdir(parents=True)
    shutil.copy(predict_dir / "predictions.json", tmp_path / "demo" / "predictions")
    res = CliRunner().invoke(cli, ["report", str(tmp_path / "demo")])
    assert_one_line_error(res.exit_code, res.stderr, str(tmp_path / "demo" / "predictions"))
    assert not (tmp_path / "empty" / "report.html").exists()


@pytest.mark.parametrize("name, text, needle", [
    ("predictions.json", '{"predictions": [', "corrupt JSON"),
    ("predictions.json", '[1, 2]', "not a patchbank predictions file"),
    ("predictions.json", '{"predictions": [{"path": "a.png"}]}', "lacks score"),
    ("summary.json", '{"categories": ', "corrupt JSON"),
    ("summary.json", '{"categories": {}}', "not a patchbank evaluate summary"),
])
def test_corrupt_json_is_one_line(tmp_path, name, text, needle):
    (tmp_path / name).write_text(text)
    res = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert_one_line_error(res.exit_code, res.stderr, needle, name)
    assert not (tmp_path / "report.html").exists()


def test_corrupt_run_file_is_one_line(evaluate_dir, tmp_path):
    out = tmp_path / "ev"
    shutil.copytree(evaluate_dir, out)
    (out / "report.html").unlink(missing_ok=True)
    (out / "runs" / "alpha__seed1.json").write_text('{"format": 1, ')
    res = CliRunner().invoke(cli, ["report", str(out)])
    assert_one_line_error(res.exit_code, res.stderr, "alpha__seed1.json", "corrupt JSON")
    assert not (out / "report.html").exists()


def test_a_metric_edited_into_text_is_one_line(evaluate_dir, tmp_path):
    """Session 31 audit: a summary mean or a run's metric edited into text was a ValueError
    traceback (``Unknown format code 'f'``)."""
    for where in ("summary", "run"):
        out = tmp_path / where
        shutil.copytree(evaluate_dir, out)
        (out / "report.html").unlink(missing_ok=True)
        if where == "summary":
            summary = json.loads((out / "summary.json").read_text())
            summary["mean"]["image_auroc"]["mean"] = "x"
            (out / "summary.json").write_text(json.dumps(summary))
        else:
            run = json.loads((out / "runs" / "alpha__seed1.json").read_text())
            run["metrics"]["image_auroc"] = "high"
            (out / "runs" / "alpha__seed1.json").write_text(json.dumps(run))
        res = CliRunner().invoke(cli, ["report", str(out), "--quiet"])
        assert_one_line_error(res.exit_code, res.stderr, "is not a number")
        assert not (out / "report.html").exists()


def test_never_overwrites_without_overwrite(predict_dir, tmp_path):
    target = tmp_path / "r.html"
    target.write_text("keep me")
    res = CliRunner().invoke(cli, ["report", str(predict_dir), "-o", str(target), "--quiet"])
    assert_one_line_error(res.exit_code, res.stderr, str(target), "--overwrite")
    assert target.read_text() == "keep me"
    res = CliRunner().invoke(cli, ["report", str(predict_dir), "-o", str(target), "--quiet", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]   # no temporary file left
    res = CliRunner().invoke(cli, ["report", str(predict_dir), "-o", str(tmp_path / "new" / "r.html"), "-q"])
    assert res.exit_code == 0 and (tmp_path / "new" / "r.html").is_file(), res.output


# ------------------------------------------------------------------------------------------------
# in a real browser
# ------------------------------------------------------------------------------------------------

def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium binary found (chromium, chromium-browser or google-chrome on PATH)")


def browser(page: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           *args, page.resolve().as_uri()], capture_output=True, text=True, timeout=120)


def screenshot(page: Path, out: Path) -> np.ndarray:
    res = browser(page, f"--screenshot={out}", "--window-size=1280,2000")
    assert out.is_file(), res.stderr[-2000:]
    pixels = np.asarray(Image.open(out).convert("RGB"), dtype=np.float64)
    assert pixels.shape == (2000, 1280, 3)
    assert pixels.std() > 20, "the screenshot is blank"
    return pixels


def dom(page: Path) -> Elements:
    res = browser(page, "--dump-dom")
    assert res.returncode == 0 and "</html>" in res.stdout, res.stderr[-2000:]
    return Elements(res.stdout)


def test_predict_report_renders_in_chromium(predict_html, predict_dir, tmp_path):
    data = json.loads((predict_dir / "predictions.json").read_text())
    pixels = screenshot(predict_html, tmp_path / "predict.png")
    # the heatmap thumbnails were decoded and drawn: jet's blue-to-cyan colours (normal areas,
    # below the region level, the middle of the model's fixed range) are on screen
    cool = (pixels[..., 2] > 120) & (pixels[..., 0] < 90) & (pixels[..., 2] - pixels[..., 0] > 60)
    assert cool.mean() > 0.01
    page = dom(predict_html)
    assert len(page.find("figure", "card")) == len(data["predictions"])
    assert len(page.find("svg", "histogram")) == 1 and page.find("line", "threshold")
    assert [c["data-path"] for c in page.find("figure", "card")] == [r["path"] for r in descending(data["predictions"])]


def test_evaluate_report_renders_in_chromium(evaluate_html, tmp_path):
    screenshot(evaluate_html, tmp_path / "evaluate.png")
    page = dom(evaluate_html)
    assert len(page.find("details", "run")) == 4
    assert len(page.find("svg", "roc")) == len(page.find("svg", "pr")) == 4
    assert len(page.find("circle", "op")) >= 4
    assert page.find("tr", "mean") and len(page.find("figure", "card")) == 32


def _auroc(c) -> float:
    """Trapezoidal area under the curve points (fpr, tpr)."""
    return float(np.sum(np.diff(c.fpr) * (c.tpr[1:] + c.tpr[:-1]) / 2.0))


def _ap(c) -> float:
    """Step-wise area under the PR points: sum_k (R_k - R_{k-1}) Prec_k."""
    return float(np.sum(np.diff(np.concatenate(([0.0], c.recall))) * c.precision))


def test_a_frame_flagged_as_a_whole_says_so_on_its_card(predict_dir, tmp_path):
    """A record flagged by the whole-image check (whatever its score) carries a note on its
    card; the others, and records written before the check (no such key), do not."""
    pred = tmp_path / "pred"
    shutil.copytree(predict_dir, pred)
    (pred / "report.html").unlink(missing_ok=True)
    data = json.loads((pred / "predictions.json").read_text())
    assert all("whole_image_anomalous" in rec for rec in data["predictions"])
    for i, rec in enumerate(data["predictions"]):
        rec["whole_image_anomalous"] = i == 0
        if i == 1:
            del rec["whole_image_anomalous"]
    (pred / "predictions.json").write_text(json.dumps(data))
    page = Elements(write_report(pred).read_text(encoding="utf-8"))
    whole = page.texts("div", "whole")
    assert len(whole) == 1 and "flagged as a whole" in whole[0]


def test_a_run_of_another_configuration_than_the_summary_is_marked_not_mixed_in(evaluate_dir, tmp_path):
    """Session 29: after an evaluation that failed part-way (a category re-fitted with a new
    configuration, then an error), summary.json and a run file disagreed, and the page showed
    the summary's table beside the other run's curves without a word."""
    from patchbank.report.results import NOT_THE_SUMMARYS

    from patchbank.config import Config

    out = tmp_path / "mixed"
    shutil.copytree(evaluate_dir, out)
    (out / "report.html").unlink(missing_ok=True)
    target = out / "runs" / "alpha__seed0.json"
    run = json.loads(target.read_text())
    # a run reused from before a Config field existed (the field at its default) is the summary's
    dropped = next(f for f, d in Config().to_dict().items() if f != "seed" and run["config"].get(f) == d)
    target.write_text(json.dumps(dict(run, config={k: v for k, v in run["config"].items() if k != dropped})))
    assert NOT_THE_SUMMARYS not in Elements(build_report(out)).texts("p", "problem")
    run["config"] = dict(run["config"], image_size=[32, 32])
    target.write_text(json.dumps(run))
    page = Elements(build_report(out))
    assert NOT_THE_SUMMARYS in page.texts("p", "problem")
    moved = out / "runs" / "beta__seed1.json"                      # a file holding another run
    moved.write_text((out / "runs" / "beta__seed0.json").read_text())
    page = Elements(build_report(out))
    assert any("holds the run of 'beta' seed 0, not this one" in t for t in page.texts("p", "problem"))
