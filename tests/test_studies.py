"""``patchbank ablate`` and ``patchbank sweep`` on a tiny synthetic MVTec-layout dataset: the
combined tables agree with the per-run JSONs, the PNG is written, resume works, and bad input is
a one-line error."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from patchbank.studies.ablation import STEPS, ablate, step_dir
from patchbank.cli import cli
from patchbank.config import Config
from patchbank.detector import Detector
from patchbank.errors import PatchbankError
from patchbank.evaluation.runner import METRICS
from patchbank.studies.sweep import plot_sweep, value_dir, value_text
from patchbank.io.synthetic import make_dataset

FAST = dict(backbone="efficientnet_lite0", image_size=96, crop_size=None, batch_size=8)
FAST_ARGS = ["--backbone", "efficientnet_lite0", "--image-size", "96", "--crop-size", "none",
             "--batch-size", "8"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("studies") / "part", n_train=10, n_test_good=4,
                        n_test_defect=2, size=96, seed=0)


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def runs_of(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((folder / "runs").glob("*.json"))]


def check_row_against_runs(row: dict, runs: list[dict], seeds) -> None:
    """One table row (CSV strings) = mean / population std over the seeds of the run JSONs."""
    assert sorted(r["seed"] for r in runs) == sorted(seeds)
    for m in METRICS:
        vals = [r["metrics"][m] for r in runs]
        assert all(v is not None for v in vals), m
        assert float(row[f"{m}_mean"]) == pytest.approx(np.mean(vals), rel=1e-12), m
        assert float(row[f"{m}_std"]) == pytest.approx(np.std(vals), rel=1e-9, abs=1e-12), m


def forbid_fit(monkeypatch):
    def no_fit(self, images):
        raise AssertionError("fit called although every run is stored")

    monkeypatch.setattr(Detector, "fit", no_fit)


# ------------------------------------------------------------------ ablate

@pytest.fixture(scope="module")
def ablated(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation")
    result = invoke("ablate", data_root, "-o", out, "--seeds", "0,1", "-q", *FAST_ARGS)
    assert result.exit_code == 0, result.output
    return out, result


def test_ablate_table_matches_runs(ablated):
    out, result = ablated
    rows = read_csv(out / "ablation.csv")
    assert [r["step"] for r in rows] == [name for name, _ in STEPS]
    assert [r["dir"] for r in rows] == [step_dir(i, name) for i, (name, _) in enumerate(STEPS, 1)]
    assert [r["dir"] for r in rows] == ["1_equal-greedy", "2_vg-fusion", "3_rp-coreset"]
    for row, (name, step) in zip(rows, STEPS):
        runs = runs_of(out / row["dir"])
        check_row_against_runs(row, runs, [0, 1])
        for run in runs:  # each run is lmf-core + the fast settings + the step's overrides
            expected = Config.preset("lmf-core", **{**FAST, **step, "seed": run["seed"]})
            assert run["config"] == expected.to_dict()
            assert run["command"].startswith("patchbank ablate ")
        # the step's own evaluate summary agrees with the combined table
        summary = json.loads((out / row["dir"] / "summary.json").read_text())
        assert float(row["image_auroc_mean"]) == pytest.approx(summary["mean"]["image_auroc"]["mean"])
    # the full step is the unchanged preset; greedy and uniform banks have the same size
    assert STEPS[-1][1] == {}
    assert rows[0]["bank_mb_mean"] == rows[1]["bank_mb_mean"] == rows[2]["bank_mb_mean"]

    data = json.loads((out / "ablation.json").read_text())
    assert data["kind"] == "ablation" and data["base_preset"] == "lmf-core" and data["seeds"] == [0, 1]
    assert [r["step"] for r in data["rows"]] == [name for name, _ in STEPS]
    assert data["rows"][0]["overrides"] == {"fusion": "equal", "kappa": 1.0, "sampler": "greedy"}
    assert data["rows"][0]["config"]["sampler"] == "greedy"
    for jrow, crow in zip(data["rows"], rows):
        for m in METRICS:
            assert jrow["mean"][m]["mean"] == pytest.approx(float(crow[f"{m}_mean"]), rel=1e-12)

    md = (out / "ablation.md").read_text().strip().splitlines()
    assert len(md) == 2 + len(STEPS)
    assert md[0].startswith("| step | overrides | image AUROC |") and md[0].endswith("| ms/img |")
    assert md[2].startswith("| equal+greedy | `fusion=equal kappa=1.0 sampler=greedy` | ")
    assert md[-1].startswith("| +rp-coreset | `(preset)` | ")
    cell = f"{float(rows[2]['image_auroc_mean']):.3f} ± {float(rows[2]['image_auroc_std']):.3f}"
    assert cell in md[-1]
    assert "\n".join(md) in result.stdout


def test_ablate_resume(ablated, data_root, monkeypatch):
    out, _ = ablated
    files = sorted(out.glob("*/runs/*.json"))
    assert len(files) == len(STEPS) * 2
    mtimes = [p.stat().st_mtime_ns for p in files]
    before = read_csv(out / "ablation.csv")
    forbid_fit(monkeypatch)
    result = invoke("ablate", data_root, "-o", out, "--seeds", "0,1", "-q", *FAST_ARGS)
    assert result.exit_code == 0, result.output
    assert [p.stat().st_mtime_ns for p in files] == mtimes
    assert read_csv(out / "ablation.csv") == before
    # the Python API loads the same runs
    again = ablate(data_root, FAST, seeds=(0, 1), out_dir=out, progress=False)
    assert [r["label"] for r in again["rows"]] == [name for name, _ in STEPS]


@pytest.mark.parametrize("args, needle", [
    (["--fusion", "equal"], "--fusion: set by the ablation steps"),
    (["--kappa", "0.5", "--sampler", "uniform"], "--kappa, --sampler"),
    (["--seeds", "0,x"], "--seeds"),
    (["--coreset-ratio", "3"], "--coreset-ratio"),
    (["--categories", "nosuch"], "nosuch"),     # session 30: left an empty -o folder
    (["--categories", "part,part"], "categories named twice: part"),   # session 30: accepted
])
def test_ablate_errors_are_one_line(data_root, tmp_path, args, needle):
    result = invoke("ablate", data_root, "-o", tmp_path / "o", *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert needle in lines[0]
    assert not (tmp_path / "o").exists()


def test_ablate_api_refuses_step_fields(data_root, tmp_path):
    with pytest.raises(PatchbankError, match="sampler"):
        ablate(data_root, {"sampler": "none"}, out_dir=tmp_path / "o", progress=False)


# ------------------------------------------------------------------ sweep

@pytest.fixture(scope="module")
def swept(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    result = invoke("sweep", data_root, "--param", "kappa=0.25,0.5,1.0", "-o", out, "--seeds", "0,1",
                    "--preset", "lmf-core", "-q", *FAST_ARGS)   # kappa acts through VG-Fusion
    assert result.exit_code == 0, result.output
    return out, result


def test_sweep_table_matches_runs(swept):
    out, result = swept
    rows = read_csv(out / "sweep.csv")
    assert [r["kappa"] for r in rows] == ["0.25", "0.5", "1.0"]
    assert [r["dir"] for r in rows] == ["kappa-0.25", "kappa-0.5", "kappa-1.0"]
    for row, kappa in zip(rows, (0.25, 0.5, 1.0)):
        runs = runs_of(out / row["dir"])
        check_row_against_runs(row, runs, [0, 1])
        for run in runs:
            assert run["config"] == Config.preset("lmf-core", **{**FAST, "kappa": kappa,
                                                                "seed": run["seed"]}).to_dict()
            assert run["command"].startswith("patchbank sweep ")
            assert "--param kappa=0.25,0.5,1.0" in run["command"]
    data = json.loads((out / "sweep.json").read_text())
    assert data["param"] == "kappa" and data["values"] == [0.25, 0.5, 1.0]
    assert data["preset_value"] == 0.5 and data["seeds"] == [0, 1]
    md = (out / "sweep.md").read_text().strip().splitlines()
    assert len(md) == 2 + 3 and md[0].startswith("| kappa | image AUROC |")
    assert md[3].startswith("| 0.5 | ")
    assert "\n".join(md) in result.stdout and "sweep.png" in result.stdout

    png = out / "sweep.png"
    assert png.is_file() and png.stat().st_size > 5000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        assert im.size[0] > 300 and im.size[1] > 200
        # not a blank canvas: several colours (lines, error bars, text)
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 10


def test_sweep_resume_and_new_value(swept, data_root, monkeypatch, tmp_path):
    # a copy of the shared sweep folder: this test rewrites sweep.csv, the others read it
    import shutil

    out = tmp_path / "sweep"
    shutil.copytree(swept[0], out, copy_function=shutil.copy2)
    files = sorted(out.glob("*/runs/*.json"))
    mtimes = [p.stat().st_mtime_ns for p in files]
    before = read_csv(out / "sweep.csv")
    with monkeypatch.context() as m:
        forbid_fit(m)
        result = invoke("sweep", data_root, "--param", "kappa=0.25,0.5,1.0", "-o", out,
                        "--seeds", "0,1", "--preset", "lmf-core", "-q", *FAST_ARGS)
        assert result.exit_code == 0, result.output
    assert [p.stat().st_mtime_ns for p in files] == mtimes
    assert read_csv(out / "sweep.csv") == before

    # a new value list: 0.5 is loaded, only 0.75 is fitted (once per seed)
    seen = []
    real_fit = Detector.fit

    def counting_fit(self, images):
        seen.append((self.config.kappa, self.config.seed))
        return real_fit(self, images)

    monkeypatch.setattr(Detector, "fit", counting_fit)
    result = invoke("sweep", data_root, "--param", "kappa=0.5,0.75", "-o", out, "--seeds", "0,1",
                    "--preset", "lmf-core", "-q", *FAST_ARGS)
    assert result.exit_code == 0, result.output
    assert seen == [(0.75, 0), (0.75, 1)]
    rows = read_csv(out / "sweep.csv")
    assert [r["kappa"] for r in rows] == ["0.5", "0.75"]
    assert rows[0] == before[1]
    # session 31: a sweep of another parameter (or preset) replaced these tables without a word
    tables = {p.name: p.read_bytes() for p in out.glob("sweep.*")}
    with monkeypatch.context() as m:
        forbid_fit(m)
        for args in (["--param", "blur_sigma=2,8", "--preset", "lmf-core"], ["--param", "kappa=0.5", "--preset", "patchcore"]):
            result = invoke("sweep", data_root, *args, "-o", out, "--seeds", "0", "-q", *FAST_ARGS)
            assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
            assert "holds a sweep of kappa" in result.stderr or "with preset lmf-core" in result.stderr
            assert "write it to another folder" in result.stderr
    assert {p.name: p.read_bytes() for p in out.glob("sweep.*")} == tables
    other = tmp_path / "other_data"            # the same sweep of other data (audit, session 31)
    shutil.copytree(data_root, other)
    with monkeypatch.context() as m:
        forbid_fit(m)
        result = invoke("sweep", other, "--param", "kappa=0.5,0.75", "-o", out, "--seeds", "0,1",
                        "--preset", "lmf-core", "-q", *FAST_ARGS)
    assert result.exit_code == 2 and "holds a sweep of the data in" in result.stderr, result.output
    assert {p.name: p.read_bytes() for p in out.glob("sweep.*")} == tables


def test_sweep_non_numeric_values(data_root, tmp_path):
    out = tmp_path / "s"
    result = invoke("sweep", data_root, "--param", "projection_dim=none,32", "-o", out, "-q",
                    *FAST_ARGS, "--context-taps", "0")    # a projection mixes the taps' columns
    assert result.exit_code == 0, result.output
    rows = read_csv(out / "sweep.csv")
    assert [r["projection_dim"] for r in rows] == ["none", "32"]
    assert [r["dir"] for r in rows] == ["projection_dim-none", "projection_dim-32"]
    runs = [runs_of(out / r["dir"])[0] for r in rows]
    assert [r["config"]["projection_dim"] for r in runs] == [None, 32]
    assert float(rows[1]["bank_mb_mean"]) < float(rows[0]["bank_mb_mean"])
    assert (out / "sweep.png").stat().st_size > 5000


@pytest.mark.parametrize("spec, needle", [
    ("kappa", "expected FIELD=V1,V2"),
    ("kappa=", "expected FIELD=V1,V2"),
    ("=0.5", "expected FIELD=V1,V2"),
    ("kapa=0.5,1", "unknown config field 'kapa'"),
    ("kappa=0.5,abc", "kappa=abc: expected a number"),
    ("kappa=0.5,,1", "empty value"),
    ("kappa=0.5,2", "kappa=2.0: must be in (0, 1]"),
    ("fusion=vg,magic", "fusion=magic: not one of equal, vg, l2"),
    ("seed=1,2", "use --seeds"),
    ("projection_dim=64,1.5", "projection_dim=1.5: expected an integer"),
    ("kappa=0.5,0.50", "duplicate values for kappa: 0.5"),
    ("image_size=320,320x320", "duplicate values for image_size: 320"),
    ("crop_size=400", "crop_size=400: crop_size (400, 400) is larger than image_size (320, 320)"),
    ("coreset_ratio=0.1,0", "coreset_ratio=0.0: must be in (0, 1]"),
    # checked by building each value's backbone, before the first value's fit
    ("layers=2,4;2,9", "layers=2,9: layers: 9 is not a block index of efficientnet_lite2 (use -7..6)"),
    ("weights=random,/nonexistent/w.safetensors", "weights=/nonexistent/w.safetensors: "),
])
def test_sweep_bad_param_is_one_line(data_root, tmp_path, spec, needle):
    result = invoke("sweep", data_root, "--param", spec, "-o", tmp_path / "o")  # fails before any fit
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert needle in lines[0], lines[0]
    assert not list(tmp_path.glob("o/*/runs/*.json"))


def test_sweep_other_errors(data_root, tmp_path):
    result = invoke("sweep", data_root, "-o", tmp_path / "o")
    assert result.exit_code == 2 and "--param" in result.stderr
    result = invoke("sweep", data_root, "--param", "kappa=0.5,1", "--kappa", "0.5", "-o", tmp_path / "o")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[0].startswith("error: --kappa is swept by --param; do not give it too")
    assert len(result.stderr.strip().splitlines()) == 1
    result = invoke("sweep", tmp_path / "missing", "--param", "kappa=0.5", "-o", tmp_path / "o")
    assert result.exit_code == 2 and "dataset root not found" in result.stderr
    # session 30: an unknown category left an empty -o folder behind
    result = invoke("sweep", data_root, "--param", "kappa=0.5", "--categories", "nosuch", "-o", tmp_path / "o")
    assert result.exit_code == 2 and "nosuch" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    # session 31: --seed beside --seeds was ignored (seed 0 ran; the recorded command dropped --seed)
    for cmd in (["sweep", data_root, "--param", "kappa=0.5"], ["evaluate", data_root], ["ablate", data_root]):
        result = invoke(*cmd, "--seeds", "0", "--seed", "3", "-o", tmp_path / "o")
        assert result.exit_code == 2 and result.stderr.strip().splitlines() == [
            "error: the seeds are set by --seeds; do not give --seed too"], result.stderr
        assert not (tmp_path / "o").exists()


def test_value_names():
    assert value_text(None) == "none" and value_text(True) == "true" and value_text(0.25) == "0.25"
    assert value_text((320, 768), "image_size") == "320x768" and value_text((256, 256), "crop_size") == "256"
    assert value_text((2, 3, 4), "layers") == "2,3,4"
    assert value_text((2, 4), "layers") == "2,4" and value_text((4, 4), "layers") == "4,4"   # not sizes
    assert value_dir("image_size", (320, 768)) == "image_size-320x768"
    assert value_dir("layers", (2, 3, 4)) == "layers-2-3-4" and value_dir("layers", (2, 4)) == "layers-2-4"
    # session 30: "1,3" and "-1,3" shared one folder (the second value's runs replaced the first's)
    assert value_dir("layers", (-1, 3)) != value_dir("layers", (1, 3)) == "layers-1-3"
    assert value_dir("layers", (-1, 3)).startswith("layers-1-3-") and len(value_dir("layers", (-1, 3))) == 19
    assert value_dir("kappa", 0.25) == "kappa-0.25" and value_dir("projection_dim", None) == "projection_dim-none"


def test_plot_handles_missing_pixel_metrics(tmp_path):
    def summary(v):
        mean = {m: {"mean": None, "std": None, "n": 0} for m in METRICS}
        mean["image_auroc"] = {"mean": 0.9 + v / 10, "std": 0.01, "n": 1}
        return {"mean": mean}

    rows = [{"value": v, "summary": summary(v)} for v in (0.01, 0.1, 0.5)]
    path = plot_sweep(rows, "coreset_ratio", tmp_path / "p.png", title="t", default=0.1)
    assert path.stat().st_size > 3000
