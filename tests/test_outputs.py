"""Output paths checked before the work (issue 15 item 11), heatmaps never overwritten silently
(item 9), stored evaluate runs matched on the data's fingerprint (item 5), ``--add --kappa``
naming the option once (issue 15, "also").

CI runs as root, where ``chmod 0555`` does not stop writes: the read-only cases go through a
monkeypatched :func:`patchbank.io.output_files.is_writable_folder` (and a real chmod test that
skips when the folder stays writable), and through paths whose parent is a regular file.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
from collections import namedtuple
from pathlib import Path

import pytest
from click.testing import CliRunner

import patchbank.io.output_files as output_files
from conftest import assert_one_line_error
from patchbank.cli import cli
from patchbank.cli.predictions import PredictionOutputs
from patchbank.errors import PatchbankError
from patchbank.evaluation.run_store import RunStore, data_fingerprint
from patchbank.io.datasets import read_dataset
from patchbank.io.synthetic import make_dataset

SMALL = ["--backbone", "efficientnet_lite0", "--image-size", "64", "--crop-size", "none"]
QUIET = ["--threads", "1", "-q"]


def run(*args, env=None):
    result = CliRunner().invoke(cli, [str(a) for a in args], env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def one_line_error(result, *needles) -> str:
    """:func:`conftest.assert_one_line_error` of a CliRunner result."""
    return assert_one_line_error(result.exit_code, result.stderr, *needles)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("outdata"), n_train=8, n_test_good=1,
                        n_test_defect=1, size=64, seed=0)


@pytest.fixture(scope="module")
def model(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("outmodel") / "m.patchbank"
    r = run("fit", data / "train" / "good", "-o", path, *SMALL, *QUIET)
    assert r.exit_code == 0, r.output + r.stderr
    return path


@pytest.fixture
def no_work(monkeypatch):
    """Make any fit, model load or dataset generation fail loudly: the checks must come first."""
    def boom(*a, **k):
        raise AssertionError("the heavy work started before the output check")

    monkeypatch.setattr("patchbank.detector.Detector.fit", boom)
    monkeypatch.setattr("patchbank.multi.load_any", boom)
    monkeypatch.setattr("patchbank.io.synthetic.make_dataset", boom)


@pytest.fixture
def read_only(monkeypatch):
    """Every folder reads as not writable (what os.access says on a read-only folder or file
    system for a non-root user)."""
    monkeypatch.setattr(output_files, "is_writable_folder", lambda folder: False)


@pytest.fixture
def full_disk(monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))


@pytest.fixture
def a_file(tmp_path):
    f = tmp_path / "plain.txt"
    f.write_text("not a folder")
    return f


# ------------------------------------------------------------------ fit -o

def test_fit_output_under_a_file(data, a_file, no_work):
    one_line_error(run("fit", data / "train" / "good", "-o", a_file / "m.patchbank", *SMALL, *QUIET),
                   a_file / "m.patchbank", "is a file, not a folder")


def test_fit_output_deep_under_a_file(data, a_file, no_work):
    target = a_file / "x" / "y" / "m.patchbank"
    one_line_error(run("fit", data / "train" / "good", "-o", target, *SMALL, *QUIET), target, "is a file")


def test_fit_read_only_folder(data, tmp_path, read_only, no_work):
    one_line_error(run("fit", data / "train" / "good", "-o", tmp_path / "m.patchbank", *SMALL, *QUIET),
                   tmp_path / "m.patchbank", "not writable")


def test_fit_missing_folder_under_read_only_folder(data, tmp_path, read_only, no_work):
    target = tmp_path / "new" / "m.patchbank"
    one_line_error(run("fit", data / "train" / "good", "-o", target, *SMALL, *QUIET), "not writable")
    assert not (tmp_path / "new").exists()


def test_fit_too_little_free_space(data, tmp_path, full_disk, no_work):
    one_line_error(run("fit", data / "train" / "good", "-o", tmp_path / "m.patchbank", *SMALL, *QUIET),
                   "not enough free space", tmp_path / "m.patchbank")


def test_fit_add_read_only_folder(data, model, tmp_path, read_only, no_work):
    copy = tmp_path / "m.patchbank"
    shutil.copyfile(model, copy)
    before = copy.read_bytes()
    one_line_error(run("fit", "--add", f"b={data / 'train' / 'good'}", "-o", copy, *QUIET), "not writable")
    assert copy.read_bytes() == before


def test_fit_output_is_a_folder(data, tmp_path, no_work):
    one_line_error(run("fit", data / "train" / "good", "-o", tmp_path, *SMALL, *QUIET), "is a folder")


def test_fit_creates_missing_folders(data, tmp_path):
    target = tmp_path / "a" / "b" / "m.patchbank"
    r = run("fit", data / "train" / "good", "-o", target, *SMALL, *QUIET)
    assert r.exit_code == 0, r.stderr
    assert target.is_file()


def test_fit_real_read_only_folder(data, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: a 0500 folder stays writable (covered by the monkeypatched test)")
        one_line_error(run("fit", data / "train" / "good", "-o", ro / "m.patchbank", *SMALL, *QUIET),
                       ro / "m.patchbank", "not writable")
    finally:
        ro.chmod(stat.S_IRWXU)


def test_add_with_a_config_option_names_it_once(data, model, tmp_path):
    copy = tmp_path / "m.patchbank"
    shutil.copyfile(model, copy)
    line = one_line_error(run("fit", "--add", f"b={data / 'train' / 'good'}", "-o", copy, "--kappa", "0.3"),
                          "(--kappa) cannot be changed")
    assert "----" not in line


# ------------------------------------------------------------------ predict -o / --heatmaps

def test_predict_output_is_a_file(model, data, a_file, no_work):
    one_line_error(run("predict", model, data / "test", "-o", a_file, *QUIET), a_file, "not a folder")


def test_predict_output_under_a_file(model, data, a_file, no_work):
    one_line_error(run("predict", model, data / "test", "-o", a_file / "out", *QUIET),
                   a_file / "out", "is a file")


def test_predict_read_only_folder(model, data, tmp_path, read_only, no_work):
    one_line_error(run("predict", model, data / "test", "-o", tmp_path / "out", *QUIET),
                   tmp_path / "out", "not writable")
    assert not (tmp_path / "out").exists()


def test_predict_heatmaps_folder_is_a_file(model, data, tmp_path, no_work):
    out = tmp_path / "out"
    out.mkdir()
    (out / "heatmaps").write_text("x")
    one_line_error(run("predict", model, data / "test", "-o", out, "--heatmaps", *QUIET),
                   out / "heatmaps", "not a folder")
    assert not (out / "predictions.csv").exists()


def test_predict_too_little_free_space(model, data, tmp_path, full_disk, no_work):
    one_line_error(run("predict", model, data / "test", "-o", tmp_path / "out", *QUIET),
                   "not enough free space")


def test_predict_heatmaps_need_room_for_the_images(model, data, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    free = output_files.MIN_FREE_BYTES + 10   # enough for the tables, not for 3 heatmaps
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**12, 0, free))
    one_line_error(run("predict", model, data / "test", "-o", tmp_path / "out", "--heatmaps", *QUIET),
                   "not enough free space", "heatmaps")
    assert not (tmp_path / "out" / "predictions.csv").exists()   # placeholders removed


def test_existing_heatmap_is_not_overwritten(model, data, tmp_path):
    out = tmp_path / "out"
    (out / "heatmaps").mkdir(parents=True)
    mine = out / "heatmaps" / "000.png"
    mine.write_bytes(b"my own picture")
    one_line_error(run("predict", model, data / "test" / "good", "-o", out, "--heatmaps", *QUIET),
                   mine, "--overwrite")
    assert mine.read_bytes() == b"my own picture"
    assert not (out / "predictions.csv").exists() and not (out / "predictions.json").exists()
    r = run("predict", model, data / "test" / "good", "-o", out, "--heatmaps", "--overwrite", *QUIET)
    assert r.exit_code == 0, r.stderr
    assert mine.read_bytes()[:4] == b"\x89PNG"


def test_failed_predict_leaves_no_placeholders(model, data, tmp_path, monkeypatch):
    def fail(*a, **k):
        raise PatchbankError("simulated failure")

    monkeypatch.setattr("patchbank.detector.Detector.predict", fail)
    out = tmp_path / "out"
    one_line_error(run("predict", model, data / "test", "-o", out, "--heatmaps", *QUIET), "simulated")
    assert not out.exists()     # session 31: the folders this run made are removed (was: an empty heatmaps/)


def test_stale_empty_placeholder_is_taken_over(model, data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.csv").write_text("")   # left by a run that was killed
    r = run("predict", model, data / "test", "-o", out, *QUIET)
    assert r.exit_code == 0, r.stderr
    assert (out / "predictions.csv").read_text().startswith("path,")


def test_outputs_are_complete_and_no_temporary_files_remain(model, data, tmp_path):
    out = tmp_path / "out"
    r = run("predict", model, data / "test", "-o", out, "--heatmaps", *QUIET)
    assert r.exit_code == 0, r.stderr
    names = sorted(p.name for p in out.rglob("*"))
    assert not [n for n in names if n.startswith(".")], names
    result = json.loads((out / "predictions.json").read_text())
    assert result["n_images"] == 3 and len((out / "predictions.csv").read_text().splitlines()) == 4


# ------------------------------------------------------------------ demo -o, evaluate -o

def test_demo_output_under_a_file(a_file, no_work):
    one_line_error(run("demo", "-o", a_file / "demo", *QUIET), a_file / "demo", "is a file")


def test_demo_read_only(tmp_path, read_only, no_work):
    one_line_error(run("demo", "-o", tmp_path / "demo", *QUIET), "not writable")
    assert not (tmp_path / "demo").exists()


def test_evaluate_output_under_a_file(data, a_file, no_work):
    one_line_error(run("evaluate", data, "-o", a_file / "res", *SMALL, *QUIET), a_file / "res", "is a file")


def test_evaluate_read_only(data, tmp_path, read_only, no_work):
    one_line_error(run("evaluate", data, "-o", tmp_path / "res", *SMALL, *QUIET), "not writable")


def test_evaluate_output_is_a_file(data, a_file, no_work):
    one_line_error(run("evaluate", data, "-o", a_file, *SMALL, *QUIET), "not a folder")


# ------------------------------------------------------------------ evaluate: names that are not UTF-8

def _rename_to_latin1(path: Path) -> Path:
    """Rename ``path`` so that its name ends in a Latin-1 byte (not UTF-8): Python then holds the
    name with a lone surrogate, as it does for such names on a real disk."""
    new = Path(os.fsdecode(os.fsencode(path.with_name(path.stem + "_caf")) + b"\xe9" + os.fsencode(path.suffix)))
    os.rename(path, new)
    return new


def test_evaluate_refuses_a_category_or_test_name_that_is_not_utf8(tmp_path, no_work):
    # results.csv, by_type.csv, the run files and the reports name the category and every test
    # image: such a name used to crash the CSV writer after the whole evaluation had run
    root = make_dataset(tmp_path / "data" / "synthetic", n_train=4, n_test_good=1, n_test_defect=1,
                        size=32, seed=0)
    _rename_to_latin1(root)
    one_line_error(run("evaluate", tmp_path / "data", "-o", tmp_path / "res", *SMALL, *QUIET),
                   "category name is not valid UTF-8", "synthetic_caf\\xe9", "rename")
    root = make_dataset(tmp_path / "data2" / "synthetic", n_train=4, n_test_good=1, n_test_defect=1,
                        size=32, seed=0)
    _rename_to_latin1(sorted((root / "test" / "good").iterdir())[0])
    one_line_error(run("evaluate", tmp_path / "data2", "-o", tmp_path / "res2", *SMALL, *QUIET),
                   "test file path is not valid UTF-8", "_caf\\xe9.png", "rename")


def test_evaluate_takes_a_training_name_that_is_not_utf8(small_root, tmp_path):
    # training images are only counted and hashed (as their bytes): nothing written names them
    before = data_fingerprint(read_dataset(small_root)[0])
    _rename_to_latin1(sorted((small_root / "train" / "good").iterdir())[0])
    after = data_fingerprint(read_dataset(small_root)[0])
    assert after["sha256"] != before["sha256"] and after["n_train"] == before["n_train"]
    r, stored = _evaluate(small_root, tmp_path / "res")
    assert stored["data_fingerprint"] == after
    (tmp_path / "res" / "results.csv").read_text(encoding="utf-8")


# ------------------------------------------------------------------ evaluate: data fingerprints

def _evaluate(root, out):
    r = run("evaluate", root, "-o", out, *SMALL, *QUIET)
    assert r.exit_code == 0, r.stderr
    run_file = out / "runs" / "synthetic__seed0.json"
    return r, json.loads(run_file.read_text()) if run_file.exists() else None


@pytest.fixture
def small_root(tmp_path):
    root = make_dataset(tmp_path / "synthetic", n_train=8, n_test_good=2, n_test_defect=2, size=64, seed=0)
    return root


def test_same_data_is_reused_and_said_even_quiet(small_root, tmp_path):
    out = tmp_path / "res"
    r1, run1 = _evaluate(small_root, out)
    assert "reusing" not in r1.stderr
    assert run1["data_fingerprint"]["n_test"] == 6
    r2, run2 = _evaluate(small_root, out)
    assert f"reusing 1 stored run from {out / 'runs'}" in r2.stderr
    assert run2["finished"] == run1["finished"] and run2["metrics"] == run1["metrics"]


def test_changed_test_image_is_recomputed(small_root, tmp_path):
    out = tmp_path / "res"
    _, run1 = _evaluate(small_root, out)
    other = make_dataset(tmp_path / "other", n_train=8, n_test_good=2, n_test_defect=2, size=64, seed=5)
    for defect in ("scratch", "spot"):   # same file names, other defects and masks
        for sub in ("test", "ground_truth"):
            shutil.rmtree(small_root / sub / defect)
            shutil.copytree(other / sub / defect, small_root / sub / defect)
    r2, run2 = _evaluate(small_root, out)
    assert "different data" in r2.stderr and "recomputing" in r2.stderr
    assert "reusing" not in r2.stderr
    assert run2["data_fingerprint"] != run1["data_fingerprint"]
    assert run2["metrics"]["pixel_ap"] != run1["metrics"]["pixel_ap"]


def test_old_run_file_without_fingerprint_is_recomputed(small_root, tmp_path):
    out = tmp_path / "res"
    _, run1 = _evaluate(small_root, out)
    path = out / "runs" / "synthetic__seed0.json"
    old = dict(run1)
    del old["data_fingerprint"]
    old["metrics"] = {**run1["metrics"], "image_auroc": -1.0}   # a value no real run gives
    path.write_text(json.dumps(old))
    r2, run2 = _evaluate(small_root, out)
    assert "no data fingerprint" in r2.stderr and "recomputing" in r2.stderr
    assert run2["metrics"]["image_auroc"] != -1.0 and "data_fingerprint" in run2


def test_old_run_file_without_the_weights_sha256_is_recomputed(small_root, tmp_path):
    """Session 30: a run written before runs recorded the backbone weights' sha256 was reused
    without that comparison (so after a weights file changed, too)."""
    out = tmp_path / "res"
    _, run1 = _evaluate(small_root, out)
    path = out / "runs" / "synthetic__seed0.json"
    old = {k: v for k, v in run1.items() if k != "backbone_sha256"}
    old["metrics"] = {**run1["metrics"], "image_auroc": -1.0}   # a value no real run gives
    path.write_text(json.dumps(old))
    r2, run2 = _evaluate(small_root, out)
    assert "records no backbone weights' sha256 (an older run file); recomputing" in r2.stderr
    assert run2["metrics"]["image_auroc"] != -1.0 and run2["backbone_sha256"] == run1["backbone_sha256"]


def test_a_stored_run_of_another_configuration_is_replaced_with_a_line(small_root, tmp_path):
    """Session 30: evaluate into a folder holding another configuration's run replaced it
    without a word (other data, device or weights did say so)."""
    out = tmp_path / "res"
    _, run1 = _evaluate(small_root, out)
    r = run("evaluate", small_root, "-o", out, *SMALL, *QUIET, "--blur-sigma", "2")
    assert r.exit_code == 0, r.stderr
    assert "was computed with another configuration (it is replaced); recomputing" in r.stderr
    assert json.loads((out / "runs" / "synthetic__seed0.json").read_text())["config"]["blur_sigma"] == 2.0


def test_two_evaluations_into_one_folder_take_turns(small_root, tmp_path, monkeypatch):
    """Session 30: two evaluations into one folder at once both said "wrote" and one's runs and
    tables were lost; the folder is now held by one evaluation at a time (the other waits, or
    gives up with one line after PATCHBANK_LOCK_TIMEOUT)."""
    from patchbank.io.output_files import file_lock

    out = tmp_path / "res"
    out.mkdir()
    monkeypatch.setenv("PATCHBANK_LOCK_TIMEOUT", "0.5")
    with file_lock(out, quiet=True):                     # another evaluation at work
        r = run("evaluate", small_root, "-o", out, *SMALL, *QUIET)
    lines = r.stderr.strip().splitlines()             # a line saying it waits, then the error
    assert r.exit_code == 2 and lines[0].startswith("waiting for another patchbank process"), r.stderr
    assert lines[1:] == [lines[-1]] and lines[-1].startswith(f"error: the evaluation in {out} is locked")
    assert not (out / "runs").exists() or not list((out / "runs").iterdir())
    _evaluate(small_root, out)                           # free again: it runs


def test_no_resume_recomputes_without_a_reuse_line(small_root, tmp_path):
    out = tmp_path / "res"
    _evaluate(small_root, out)
    r = run("evaluate", small_root, "-o", out, "--no-resume", *SMALL, *QUIET)
    assert r.exit_code == 0 and "reusing" not in r.stderr


def test_fingerprint_follows_files_not_location(small_root, tmp_path):
    (cat,) = read_dataset(small_root)
    fp = data_fingerprint(cat)
    moved = tmp_path / "moved"
    shutil.copytree(small_root, moved, copy_function=shutil.copy2)   # copy2 keeps mtimes
    (cat2,) = read_dataset(moved)
    assert data_fingerprint(cat2) == fp
    img = moved / "test" / "good" / "000.png"
    img.write_bytes(img.read_bytes() + b"\0")
    assert data_fingerprint(cat2) != fp


def test_run_store_lookup_reasons(tmp_path, small_root):
    from patchbank.config import Config

    (cat,) = read_dataset(small_root)
    store, cfg, fp = RunStore(tmp_path), Config(), data_fingerprint(cat)
    assert store.lookup("c", 0, cfg, "metrics", fp) == (None, "missing")
    store.path("c", 0).write_text("{broken")
    assert store.lookup("c", 0, cfg, "metrics", fp) == (None, "unreadable")
    base = {"format": 1, "config": cfg.to_dict(), "metrics": {}}
    store.save("c", 0, base)
    assert store.lookup("c", 0, cfg, "metrics", fp) == (None, "no fingerprint")
    assert store.load("c", 0, cfg, "metrics") is not None      # callers without a fingerprint
    store.save("c", 0, {**base, "data_fingerprint": {**fp, "sha256": "0"}})
    assert store.lookup("c", 0, cfg, "metrics", fp) == (None, "data changed")
    store.save("c", 0, {**base, "data_fingerprint": fp})
    assert store.lookup("c", 0, cfg, "metrics", fp)[1] == ""
    assert store.lookup("c", 0, Config(kappa=0.3), "metrics", fp) == (None, "config")


# ------------------------------------------------------------------ output_files units

def test_reserve_is_exclusive_and_commit_checks_the_placeholder(tmp_path):
    target = tmp_path / "r.csv"
    res = output_files.reserve_file(target, hold_lock=True)
    with pytest.raises(PatchbankError, match="being written by another"):
        output_files.reserve_file(target, hold_lock=True)
    os.unlink(target)
    target.write_text("someone else's result")
    with pytest.raises(PatchbankError, match="replaced by another process") as info:
        output_files.commit_file(target, lambda tmp: tmp.write_text("mine"), res)
    assert target.read_text() == "someone else's result"
    kept = target.with_name(f"r.csv.{os.getpid()}")
    assert kept.read_text() == "mine" and str(kept) in str(info.value)
    res.close()
    with pytest.raises(PatchbankError, match="already exists; pass --overwrite"):
        output_files.reserve_file(target)


def test_release_removes_only_own_empty_placeholder(tmp_path):
    target = tmp_path / "r.json"
    res = output_files.reserve_file(target)
    output_files.release_file(res)
    assert not target.exists()
    res = output_files.reserve_file(target)
    target.write_text("filled by someone")
    output_files.release_file(res)
    assert target.read_text() == "filled by someone"


def test_lock_timeout_names_the_lock(tmp_path):
    lock = tmp_path / "m.patchbank.lock"
    with output_files.file_lock(lock):
        with pytest.raises(PatchbankError, match="locked by another patchbank process.*gave up after 0.3 s"):
            with output_files.file_lock(lock, timeout=0.3, quiet=True):
                pass
    with output_files.file_lock(lock, timeout=0):   # free again
        pass


def test_lock_timeout_environment(monkeypatch):
    monkeypatch.setenv("PATCHBANK_LOCK_TIMEOUT", "2.5")
    assert output_files.lock_timeout() == 2.5
    monkeypatch.setenv("PATCHBANK_LOCK_TIMEOUT", "soon")
    with pytest.raises(PatchbankError, match="PATCHBANK_LOCK_TIMEOUT"):
        output_files.lock_timeout()
    monkeypatch.delenv("PATCHBANK_LOCK_TIMEOUT")
    assert output_files.lock_timeout() == output_files.LOCK_TIMEOUT_S


def test_prediction_outputs_refuse_a_second_run(tmp_path):
    paths = [Path("a/000.png"), Path("b/000.png")]
    with PredictionOutputs(tmp_path / "o", paths, heatmaps=True, overwrite=False) as first:
        assert [p.name for p in first.heat_paths] == ["a_000.png", "b_000.png"]
        with pytest.raises(PatchbankError, match="predictions.csv is being written by another"):
            PredictionOutputs(tmp_path / "o", paths, heatmaps=True, overwrite=False).open()
    assert sorted(p.name for p in (tmp_path / "o").rglob("*")) == ["heatmaps"]
