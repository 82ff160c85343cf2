"""Two writers at once lose nothing (issue 15 items 8 and 9): real processes running the command
line at the same time on tiny synthetic data.

* ``fit --add`` of two different categories to one multi-category model: both end up in it
  (the read-modify-write holds ``<model>.lock``; the second writer waits, then re-reads).
* two ``predict`` runs into one ``-o``: exactly one succeeds; the other fails at once with a
  one-line error naming the file, and the winner's result set is complete.
* two ``predict --overwrite`` runs: both succeed and the folder holds ONE run's whole result
  set (CSV and JSON from the same run, never interleaved).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors import safe_open

from conftest import assert_one_line_error
from patchbank.cli import cli
from patchbank.cli.predictions import PredictionOutputs
from patchbank.io.output_files import file_lock, lock_path_for
from patchbank.io.synthetic import make_dataset

pytestmark = pytest.mark.slow   # real processes racing: seconds each

SMALL = ["--backbone", "efficientnet_lite0", "--image-size", "64", "--crop-size", "none"]
QUIET = ["--threads", "1", "-q"]
TIMEOUT = 300


def cli_args(*args) -> list[str]:
    return [sys.executable, "-m", "patchbank.cli", *[str(a) for a in args]]


def run_together(*commands: list[str], env: dict | None = None) -> list[subprocess.CompletedProcess]:
    """Start every command at once; wait for all."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for c in commands]
    out = []
    for p, c in zip(procs, commands):
        stdout, stderr = p.communicate(timeout=TIMEOUT)
        out.append(subprocess.CompletedProcess(c, p.returncode, stdout, stderr))
    return out


def categories_of(model: Path) -> list[str]:
    with safe_open(str(model), framework="pt") as f:
        meta = json.loads(f.metadata()["patchbank"])
    return sorted(meta["category_order"])


def one_line_error_of(proc, *needles) -> str:
    """:func:`conftest.assert_one_line_error` of a finished process."""
    return assert_one_line_error(proc.returncode, proc.stderr, *needles)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    base = tmp_path_factory.mktemp("concurrent")
    return {name: make_dataset(base / name, n_train=8, n_test_good=1, n_test_defect=1, size=64, seed=seed)
            for seed, name in enumerate(("a", "b", "c"))}


@pytest.fixture(scope="module")
def multi_model(datasets, tmp_path_factory):
    path = tmp_path_factory.mktemp("multi") / "base.patchbank"
    r = CliRunner().invoke(cli, [str(a) for a in ("fit", "--multi", f"a={datasets['a'] / 'train' / 'good'}",
                                                  "-o", path, *SMALL, *QUIET)])
    assert r.exit_code == 0, r.output + r.stderr
    return path


@pytest.fixture(scope="module")
def single_model(datasets, tmp_path_factory):
    path = tmp_path_factory.mktemp("single") / "m.patchbank"
    r = CliRunner().invoke(cli, [str(a) for a in ("fit", datasets["a"] / "train" / "good", "-o", path,
                                                  *SMALL, *QUIET)])
    assert r.exit_code == 0, r.output + r.stderr
    return path


# ------------------------------------------------------------------ fit --add (item 8)

def test_two_concurrent_adds_keep_both_categories(datasets, multi_model, tmp_path):
    model = tmp_path / "m.patchbank"
    shutil.copyfile(multi_model, model)
    procs = run_together(
        cli_args("fit", "--add", f"b={datasets['b'] / 'train' / 'good'}", "-o", model, *QUIET),
        cli_args("fit", "--add", f"c={datasets['c'] / 'train' / 'good'}", "-o", model, *QUIET))
    for p in procs:
        assert p.returncode == 0, p.stderr
    assert categories_of(model) == ["a", "b", "c"]
    assert lock_path_for(model).exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_add_waits_then_times_out_with_a_clear_message(datasets, multi_model, tmp_path):
    model = tmp_path / "m.patchbank"
    shutil.copyfile(multi_model, model)
    before = model.read_bytes()
    with file_lock(lock_path_for(model)):    # another writer holds the model
        r = CliRunner().invoke(cli, ["fit", "--add", f"b={datasets['b'] / 'train' / 'good'}", "-o",
                                     str(model), *QUIET], env={"PATCHBANK_LOCK_TIMEOUT": "1"})
    assert r.exit_code == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "locked by another patchbank process" in last
    assert str(lock_path_for(model)) in last and "PATCHBANK_LOCK_TIMEOUT" in last
    assert "waiting for another patchbank process" in r.stderr
    assert model.read_bytes() == before


def test_add_after_the_lock_is_released_reads_the_new_file(datasets, multi_model, tmp_path):
    """A writer that waited re-reads the model: what the lock holder wrote meanwhile stays."""
    from patchbank.multi import MultiDetector

    model = tmp_path / "m.patchbank"
    shutil.copyfile(multi_model, model)
    with file_lock(lock_path_for(model)):   # this test is the first writer
        proc = subprocess.Popen(cli_args("fit", "--add", f"c={datasets['c'] / 'train' / 'good'}", "-o",
                                         model, *QUIET), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        first = MultiDetector.load(model, progress=False)
        first.add("b", sorted(str(p) for p in (datasets["b"] / "train" / "good").glob("*.png")))
        first.save(model, overwrite=True)
    _, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, stderr
    assert categories_of(model) == ["a", "b", "c"]


# ------------------------------------------------------------------ predict -o (item 9)

def _read_outputs(out: Path) -> tuple[list[dict], dict]:
    with open(out / "predictions.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return rows, json.loads((out / "predictions.json").read_text())


def test_two_predicts_into_one_folder_one_fails_at_once(datasets, single_model, tmp_path):
    out = tmp_path / "out"
    procs = run_together(
        cli_args("predict", single_model, datasets["b"] / "test", "-o", out, "--heatmaps", *QUIET),
        cli_args("predict", single_model, datasets["c"] / "test", "-o", out, "--heatmaps", *QUIET))
    ok = [p for p in procs if p.returncode == 0]
    failed = [p for p in procs if p.returncode != 0]
    assert len(ok) == 1 and len(failed) == 1, [(p.returncode, p.stderr) for p in procs]
    one_line_error_of(failed[0], "predictions.")
    rows, result = _read_outputs(out)
    winner = "b" if procs[0] is ok[0] else "c"
    assert result["n_images"] == len(rows) == 3
    assert all(f"/{winner}/test/" in r["path"] for r in rows)
    assert [r["path"] for r in rows] == [p["path"] for p in result["predictions"]]
    assert len(list((out / "heatmaps").glob("*.png"))) == 3


def test_predict_while_another_run_holds_the_folder(datasets, single_model, tmp_path):
    out = tmp_path / "out"
    paths = sorted((datasets["a"] / "test").rglob("*.png"))
    with PredictionOutputs(out, paths, heatmaps=False, overwrite=False):   # run A in progress
        proc = subprocess.run(cli_args("predict", single_model, datasets["b"] / "test", "-o", out, *QUIET),
                              capture_output=True, text=True, timeout=TIMEOUT)
        one_line_error_of(proc, out / "predictions.csv", "being written by another")
    # A failed (the context ended without writing): nothing of either run is left
    assert list(out.iterdir()) == []


def test_two_overwrite_runs_never_interleave(datasets, single_model, tmp_path):
    out = tmp_path / "out"
    procs = run_together(
        cli_args("predict", single_model, datasets["b"] / "test", "-o", out, "--overwrite", *QUIET),
        cli_args("predict", single_model, datasets["c"] / "test" / "good", "-o", out, "--overwrite", *QUIET))
    for p in procs:
        assert p.returncode == 0, p.stderr
    rows, result = _read_outputs(out)
    assert [r["path"] for r in rows] == [p["path"] for p in result["predictions"]]
    assert len(rows) in (1, 3)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
