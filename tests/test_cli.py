"""The command line: generated Config options, one-line errors, fit -> predict -> info end to end."""
from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from patchbank import __version__
from patchbank.cli.config_options import ConfigValue, build_config, config_field_options, given_overrides, option_name
from patchbank.cli.model import fit
from patchbank.cli.predictions import heatmap_names
from patchbank.config import DEFAULT_PRESET, PRESETS, Config
from patchbank.errors import PatchbankError
from patchbank.io.synthetic import make_dataset

from conftest import invoke_cli

SMALL = ["--backbone", "efficientnet_lite0", "--image-size", "96", "--crop-size", "none"]


run = invoke_cli


def assert_one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------ option generation / parsing

def test_one_option_per_config_field():
    fields = {f.name for f in dataclasses.fields(Config)}
    generated = {opt.name[len("cfg_"):] for opt in config_field_options()}
    assert generated == fields
    fit_opts = {o for p in fit.params for o in p.opts}
    assert {option_name(f) for f in fields} <= fit_opts
    help_text = run("fit", "--help").output
    for f in fields:
        assert option_name(f) in help_text


def _overrides(*args, preset="lmf-core"):
    ctx = fit.make_context("fit", ["train", "-o", "m.patchbank", "--preset", preset, *args])
    return given_overrides(ctx, ctx.params)


def test_only_given_options_override_the_preset():
    assert _overrides() == {}
    ov = _overrides("--kappa", "0.7", preset="patchcore")
    assert ov == {"kappa": 0.7}
    cfg = build_config("patchcore", ov)
    assert cfg == PRESETS["patchcore"].replace(kappa=0.7)
    assert cfg.sampler == "greedy" and cfg.fusion == "equal"


def test_parsing_sizes_none_tuples_numbers():
    ov = _overrides("--image-size", "320x768", "--crop-size", "none", "--projection-dim", "none",
                    "--layers", "2,4", "--coreset-ratio", "0.05", "--k", "3", "--weights", "None",
                    "--fusion", "l2")
    assert ov == {"image_size": (320, 768), "crop_size": None, "projection_dim": None,
                  "layers": (2, 4), "coreset_ratio": 0.05, "k": 3, "weights": None, "fusion": "l2"}
    cfg = build_config("lmf-core", ov)
    assert cfg.image_size == (320, 768) and cfg.crop_size is None and cfg.input_size == (320, 768)
    assert cfg.projection_dim is None and cfg.layers == (2, 4)
    assert _overrides("--image-size", "300")["image_size"] == (300, 300)
    assert _overrides("--layers", "blocks.2,blocks.4")["layers"] == ("blocks.2", "blocks.4")


def test_config_value_type_dispatch():
    hints = {"a": "int | None", "b": "tuple[int, int]", "c": "tuple[Any, ...] | None", "d": "float"}
    import typing

    ns = {"Any": typing.Any}
    kinds = {k: ConfigValue(k, eval(v, ns), None) for k, v in hints.items()}
    assert (kinds["a"].kind, kinds["a"].optional) == ("int", True)
    assert (kinds["b"].kind, kinds["b"].optional) == ("size", False)
    assert (kinds["c"].kind, kinds["c"].optional) == ("list", True)
    assert (kinds["d"].kind, kinds["d"].optional) == ("float", False)


@pytest.mark.parametrize("args, needles", [
    (["--coreset-ratio", "abc"], ["--coreset-ratio", "abc"]),
    (["--k", "1.5"], ["--k"]),
    (["--k", "none"], ["--k", "none"]),
    (["--kappa", "2"], ["--kappa"]),
    (["--fusion", "max"], ["--fusion", "max"]),
    (["--image-size", "12xq"], ["--image-size"]),
    (["--layers", "2,,4"], ["--layers"]),
    (["--crop-size", "400"], ["--crop-size", "--image-size"]),
    (["--threads", "0"], ["--threads"]),
    (["--device", "gpu"], ["--device"]),
])
def test_bad_option_value_is_one_line_exit_2(tmp_path, args, needles):
    assert_one_line_error(run("fit", tmp_path, "-o", tmp_path / "m.patchbank", *args), *needles)
    assert not (tmp_path / "m.patchbank").exists()


def test_usage_errors_are_one_line():
    assert_one_line_error(run("fit"), "TRAIN_DIR")
    assert_one_line_error(run("predict", "model.patchbank"), "INPUT")
    assert_one_line_error(run("nosuchcommand"), "nosuchcommand")


def test_version_and_help():
    r = run("--version")
    assert r.exit_code == 0 and __version__ in r.output
    r = run("--help")
    assert r.exit_code == 0
    for cmd in ("fit", "predict", "info", "demo"):
        assert cmd in r.output


def test_missing_train_folder(tmp_path):
    missing = tmp_path / "nope"
    assert_one_line_error(run("fit", missing, "-o", tmp_path / "m.patchbank"), str(missing))


def test_not_a_model_file(tmp_path):
    bogus = tmp_path / "model.patchbank"
    bogus.write_bytes(b"this is not a model" * 10)
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    assert_one_line_error(run("info", bogus), str(bogus))
    assert_one_line_error(run("predict", bogus, img, "-o", tmp_path / "out"), str(bogus))
    assert_one_line_error(run("info", tmp_path / "missing.patchbank"), "missing.patchbank")


def test_heatmap_names_disambiguate():
    from pathlib import Path

    paths = [Path("t/good/000.png"), Path("t/spot/000.png"), Path("t/spot/001.png")]
    assert heatmap_names(paths) == ["good_000.png", "spot_000.png", "001.png"]
    assert heatmap_names([Path("a/x.png"), Path("a/x.jpg")]) == ["a_x.png", "a_x_1.png"]


# ------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = make_dataset(root / "data", n_train=10, n_test_good=4, n_test_defect=3, size=96, seed=1)
    model = root / "model.patchbank"
    r = run("fit", data / "train" / "good", "-o", model, "--quiet", "--threads", "2", *SMALL)
    assert r.exit_code == 0, r.output
    import torch

    r.threads_after = torch.get_num_threads()   # what --threads set (conftest resets it per test)
    return root, data, model, r


def test_fit_writes_model(fitted):
    root, data, model, r = fitted
    assert model.is_file() and model.stat().st_size > 0
    assert f"fitted {DEFAULT_PRESET}" in r.stdout and str(model) in r.stdout
    # square training images and a square input: the default's aspect "auto" keeps the shape
    assert ("input: resize 96x96, no crop (H x W); aspect auto: the training images share "
            "H / W = 1.00, kept") in r.stdout, r.stdout
    # what the threshold promises: 10 training images cannot support a 1% rate (the conformal
    # rank is capped at the largest score: 1 / 11 of new normal images above it, with the
    # default's whole-image check at most 2 / 11 above either threshold, and its focus check
    # (blurrier than all 10) one more 1 / 11: 3 / 11)
    assert "threshold: 0 of 10 training images above it or the whole-image check's" in r.stdout, r.stdout
    assert ("expected false-positive rate on new normal images at most 27% (all three rules), above "
            "the target 1%") in r.stdout
    assert r.stderr == ""  # --quiet: no progress bars
    assert r.threads_after == 2
    # refuses to overwrite an existing model
    again = run("fit", data / "train" / "good", "-o", model, "--quiet", *SMALL)
    assert_one_line_error(again, str(model), "--overwrite")


def test_fit_shows_a_bar_for_each_long_step(fitted, tmp_path):
    # without --quiet each step that reads every image or row has its bar on stderr: the
    # features pass, the greedy coreset and the leave-one-image-out calibration (on a large
    # product the calibration takes as long as the features pass)
    root, data, _, _ = fitted
    r = run("fit", data / "train" / "good", "-o", tmp_path / "m.patchbank", *SMALL)
    assert r.exit_code == 0, r.output
    for bar in ("fit: features", "greedy coreset", "fit: calibration"):
        assert bar in r.stderr, (bar, r.stderr)
    assert "10/10" in r.stderr.split("fit: calibration")[-1]    # it counts the images


def _training_folder_with_a_defect(fitted, tmp_path, name: str):
    """tmp_path/train: the fixture's 10 training images and its first scratch image as ``name``."""
    data = fitted[1]
    train = tmp_path / "train"
    train.mkdir()
    for p in sorted((data / "train" / "good").glob("*.png")):
        (train / p.name).write_bytes(p.read_bytes())
    (train / name).write_bytes(sorted((data / "test" / "scratch").glob("*.png"))[0].read_bytes())
    return train


def test_fit_names_the_training_images_above_the_threshold(fitted, tmp_path):
    # a defective image slipped into the training folder: scored without its own bank rows, it
    # is the training image the threshold flags, and the fit names it for a look.  At target 0.2
    # the conformal rank of 11 scores is ceil(12 * 0.8) = 10: exactly one image above.
    train = _training_folder_with_a_defect(fitted, tmp_path, "zz_slipped_in.png")
    r = run("fit", train, "-o", tmp_path / "m.patchbank", "--quiet", "--target-fpr", "0.2", *SMALL)
    assert r.exit_code == 0, r.output
    line = next(x for x in r.stdout.splitlines() if x.startswith("threshold:"))
    assert "1 of 11 training images above it" in line and "zz_slipped_in.png (" in line, line
    # 2 / 12 for the score alone; the default's whole-image check joins the map mean at the same
    # rank: at most (11 + 2 - 10) / 12 of new normal images above either threshold; its focus
    # check adds 1 / 12 (blurrier than all 11): 4 / 12
    assert "expected false-positive rate on new normal images at most 33% (all three rules)" in line
    # the model file keeps the training images' names: `info` gives the same line later
    info = run("info", tmp_path / "m.patchbank")
    assert info.exit_code == 0, info.output
    lines = info.stdout.splitlines()
    assert f"above threshold    {line.removeprefix('threshold: ')}" in lines, info.stdout
    assert not any(x.startswith("train images") and "[" in x for x in lines)    # no list of names


def test_a_file_name_that_is_not_utf8(fitted, tmp_path):
    # Linux file names are bytes; one that is not UTF-8 (a Latin-1 e-acute) reaches Python as a
    # lone surrogate.  predict refuses it in one line before writing anything (its CSV / JSON
    # name every image in UTF-8); a fit on it works and prints the name escaped as Python's stderr
    # does (a real process: the console script's stdout), in the fit's line and in `info`.
    import os
    import subprocess
    import sys

    model = fitted[2]
    train = _training_folder_with_a_defect(fitted, tmp_path, os.fsdecode(b"zz_caf\xe9.png"))
    out = tmp_path / "out"
    r = run("predict", model, train, "-o", out, "--quiet")
    assert_one_line_error(r, "not valid UTF-8", "zz_caf\\xe9.png", "rename")
    assert not out.exists()
    from patchbank.distributed.inputs import read_inputs     # the Ray engine's input listing
    with pytest.raises(PatchbankError, match="not valid UTF-8"):
        read_inputs([str(train)])

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "patchbank.cli", *map(str, args)],
                              capture_output=True, timeout=300)

    fit_run = cli("fit", train, "-o", tmp_path / "m.patchbank", "--quiet", "--target-fpr", "0.2", *SMALL)
    assert fit_run.returncode == 0, fit_run.stderr
    assert b"zz_caf\\udce9.png (" in fit_run.stdout, fit_run.stdout   # stderr's escaping
    info = cli("info", tmp_path / "m.patchbank")
    assert info.returncode == 0 and b"zz_caf\\udce9.png (" in info.stdout, info.stderr


def test_predict_heatmaps_info(fitted):
    root, data, model, _ = fitted
    out = root / "out"
    r = run("predict", model, data / "test", "-o", out, "--heatmaps", "--quiet", "--batch-size", "4")
    assert r.exit_code == 0, r.output
    assert "10 images" in r.stdout and "flagged" in r.stdout

    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 + 2 * 3
    assert set(rows[0]) >= {"path", "score", "normalized_score", "is_anomalous", "threshold"}
    good = [float(row["score"]) for row in rows if "/good/" in row["path"].replace("\\", "/")]
    bad = [float(row["score"]) for row in rows if "/good/" not in row["path"].replace("\\", "/")]
    assert len(good) == 4 and len(bad) == 6
    assert np.mean(bad) > np.mean(good)

    doc = json.loads((out / "predictions.json").read_text())
    assert doc["n_images"] == 10 and len(doc["predictions"]) == 10
    assert {"path", "score", "normalized_score", "is_anomalous", "threshold"} <= set(doc["predictions"][0])
    assert doc["n_flagged"] == sum(p["is_anomalous"] for p in doc["predictions"])
    assert doc["heatmaps"]["vmin"] <= doc["heatmaps"]["vmax"]

    pngs = sorted((out / "heatmaps").glob("*.png"))
    assert len(pngs) == 10
    for p in pngs:
        with Image.open(p) as im:
            assert im.size == (96, 96)  # the input view: image-size 96, no crop
    assert {p.name for p in pngs} == {row["heatmap"].replace("\\", "/").rsplit("/", 1)[1] for row in rows}

    # refuses to overwrite; nothing is touched
    before = (out / "predictions.csv").read_bytes()
    again = run("predict", model, data / "test" / "good", "-o", out, "--quiet")
    assert_one_line_error(again, "predictions.csv", "--overwrite")
    assert (out / "predictions.csv").read_bytes() == before
    again = run("predict", model, data / "test" / "good", "-o", out, "--quiet", "--overwrite")
    assert again.exit_code == 0, again.output
    with open(out / "predictions.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 4

    # single files and a missing input
    r = run("predict", model, data / "test" / "spot" / "000.png", "-o", root / "out2", "--quiet")
    assert r.exit_code == 0 and "1 image in" in r.stdout
    missing = data / "test" / "crack"
    assert_one_line_error(run("predict", model, missing, "-o", root / "out3", "--quiet"), str(missing))

    # info, readable and JSON
    r = run("info", model)
    assert r.exit_code == 0, r.output
    for needle in ("format version", "memory bank", "MB", "bytes", "threshold", "calibration",
                   "efficientnet_lite0", "image_size"):
        assert needle in r.stdout
    r = run("info", model, "--json")
    info = json.loads(r.stdout)
    assert info["config"]["backbone"] == "efficientnet_lite0"
    assert info["config"]["crop_size"] is None and info["config"]["image_size"] == [96, 96]
    assert info["bank_entries"] > 0 and info["n_train_images"] == 10
    assert f"{info['bank_entries']:,} entries x {info['bank_dim']} dims" in run("info", model).stdout
    # the software the fit ran on, in the header and in the readable text
    import PIL
    import torch
    assert info["fitted_with"]["torch"] == torch.__version__
    assert info["fitted_with"]["pillow"] == PIL.__version__
    assert f"pillow {PIL.__version__}" in run("info", model).stdout


def test_demo(tmp_path):
    """The real demo: synthetic data, lmf-core with the packaged efficientnet_lite2 weights."""
    pytest.importorskip("patchbank.evaluation.metrics")
    out = tmp_path / "demo"
    r = run("demo", "-o", out, "--quiet")
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("image AUROC:"))
    assert float(line.split()[2]) >= 0.95
    assert "pixel AUROC" in r.stdout and str(out / "predictions" / "heatmaps") in r.stdout
    assert (out / "model.patchbank").is_file()
    assert len(list((out / "predictions" / "heatmaps").glob("*.png"))) == 8 + 2 * 8
    for defect in ("good", "scratch", "spot"):
        assert len(list((out / "data" / "test" / defect).glob("*.png"))) == 8
    # a second run refuses to replace the outputs
    assert_one_line_error(run("demo", "-o", out, "--quiet"), "--overwrite")


def test_demo_never_writes_into_a_data_folder_it_did_not_write(tmp_path, monkeypatch):
    """Session 30: the demo wrote its dataset over a user's OUT/data (their train/good/000.png
    replaced) and fitted on any other image there; only an earlier demo's own dataset is
    written again."""
    import patchbank.io.synthetic as synthetic
    from patchbank.cli.demo import DEMO_MARKER, check_data_folder

    monkeypatch.setattr(synthetic, "make_dataset", lambda *a, **k: pytest.fail("data written"))
    out = tmp_path / "demo"
    mine = out / "data" / "train" / "good" / "000.png"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"a user's image")
    assert_one_line_error(run("demo", "-o", out, "--overwrite", "--quiet"), "not a dataset written by patchbank demo")
    assert mine.read_bytes() == b"a user's image"
    monkeypatch.undo()
    ours = synthetic.make_dataset(tmp_path / "ours", n_train=30, n_test_good=8, n_test_defect=8, size=32)
    (ours / DEMO_MARKER).write_text("x")
    check_data_folder(ours)                     # an earlier demo's dataset: written again
    check_data_folder(tmp_path / "absent")
    (ours / "train" / "good" / "zzz_user.png").write_bytes(b"x")
    with pytest.raises(PatchbankError, match=r"holds files the demo did not write \(first: train/good/zzz_user.png\)"):
        check_data_folder(ours)
