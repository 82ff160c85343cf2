"""`predict` outputs: never lost, misread or left behind (found by the session-31 audit).

1. A previous run's results inside a (nested) input folder were read back as product images,
   and ``--overwrite`` then removed them before drawing their heatmaps ("image not found").
2. The summary said ``N flagged anomalous (normalised score > T)`` while N also counted the
   images flagged by the whole-image and focus checks.
3. SIGTERM left 0-byte tables and heatmap placeholders that refused a plain rerun.
4. A run refused on an input or option check left an empty ``-o`` folder; a list file or table
   given to the local engine was "not an image format"; "1 images".
"""
from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

from test_cli_paths import noise_images
from test_outputs import QUIET, data, model, one_line_error, run  # noqa: F401  (fixtures)


def csv_paths(folder: Path) -> list[str]:
    with open(folder / "predictions.csv", newline="", encoding="utf-8") as fh:
        return [row["path"] for row in csv.DictReader(fh)]


def nested_test_folder(data: Path, tmp_path: Path) -> Path:
    """A copy of the synthetic test/ folder (only sub-folders, like MVTec's)."""
    tin = tmp_path / "tin"
    shutil.copytree(data / "test", tin)
    return tin


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ 1. results are not inputs

def test_a_previous_runs_results_in_a_nested_input_folder_are_never_inputs(model, data, tmp_path):
    """Was: the second run read tin/out/heatmaps/*.png as inputs, --overwrite removed them, then
    `error: image not found: tin/out/heatmaps/...png`; without --overwrite into another folder
    they were scored as product images."""
    tin = nested_test_folder(data, tmp_path)
    images = sorted(str(p) for p in tin.rglob("*.png"))
    out = tin / "out"
    assert run("predict", model, tin, "-o", out, "--heatmaps", *QUIET).exit_code == 0
    assert sorted(csv_paths(out)) == images
    with pytest.warns(UserWarning, match="patchbank predict wrote") as caught:
        r = run("predict", model, tin, "-o", out, "--heatmaps", "--overwrite", *QUIET)
    assert r.exit_code == 0, r.stderr
    lines = [str(w.message) for w in caught]
    assert lines == [f"{tin}: skipped {len(images) + 2} file(s) that patchbank predict wrote (tables, heatmaps) "
                     f"in {out}: results are never read as inputs"]
    assert sorted(csv_paths(out)) == images
    heatmaps = json.loads((out / "predictions.json").read_text())["predictions"]
    assert all(Path(rec["heatmap"]).is_file() for rec in heatmaps)
    assert len(list((out / "heatmaps").iterdir())) == len(images)
    # into another folder: the earlier run's results are not scored either
    with pytest.warns(UserWarning, match="patchbank predict wrote"):
        assert run("predict", model, tin, "-o", tmp_path / "other", *QUIET).exit_code == 0
    assert sorted(csv_paths(tmp_path / "other")) == images


@pytest.mark.parametrize("layout", ["nested", "flat"])
def test_an_output_folder_that_is_the_input_folder_reads_only_the_images(model, data, tmp_path, layout):
    folder = nested_test_folder(data, tmp_path)
    if layout == "flat":
        folder = folder / "good"
    images = sorted(str(p) for p in folder.rglob("*.png"))
    for _ in range(2):
        r = run("predict", model, folder, "-o", folder, "--heatmaps", "--overwrite", *QUIET)
        assert r.exit_code == 0, r.stderr
        assert sorted(csv_paths(folder)) == images
        assert len(list((folder / "heatmaps").iterdir())) == len(images)


def test_expand_inputs_never_reads_the_runs_own_outputs(tmp_path):
    """The run's own output folder below a nested input folder: its tables and heatmaps folder
    are skipped even where no table names them (a run stopped before its table), with one
    warning; a user's own image beside them is read, and an input folder given at the heatmaps
    folder is read as given."""
    from patchbank.io.prediction_files import expand_inputs

    root = tmp_path / "root"
    good = noise_images(root / "good", ["a.png", "b.png"], seed=1)
    out = root / "good" / "out"          # nested in a flat folder: not read anyway
    nested_out = root / "out"
    stray = noise_images(nested_out / "heatmaps", ["a.png"], seed=2)    # no table names it
    mine = noise_images(nested_out, ["mine.png"], seed=3)
    with pytest.warns(UserWarning) as caught:
        paths = expand_inputs([str(root)], out_dir=nested_out)
    assert paths == [*good, *mine]
    assert [str(w.message) for w in caught] == [
        f"{root}: skipped 1 file(s) that patchbank predict wrote (tables, heatmaps) in {nested_out}: "
        f"results are never read as inputs"]
    assert expand_inputs([str(root / "good")], out_dir=out) == good
    # -o equal to the nested input folder: its heatmaps folder is skipped, the rest is read
    noise_images(root / "heatmaps", ["c.png"], seed=4)
    with pytest.warns(UserWarning, match="patchbank predict wrote"):
        assert expand_inputs([str(root)], out_dir=root) == [*good, *stray, *mine]
    # given explicitly, the heatmaps folder is an input as the user asked
    assert expand_inputs([str(nested_out / "heatmaps")], out_dir=nested_out) == stray


def test_overwrite_never_removes_a_previous_heatmap_that_is_an_input(model, tmp_path):
    """Was: `predict M out/heatmaps -o out --overwrite` scored the previous run's heatmaps, then
    removed every one of them with the previous run."""
    noise_images(tmp_path / "imgs", ["a.png", "b.png"], seed=5)
    out = tmp_path / "out"
    assert run("predict", model, tmp_path / "imgs", "-o", out, "--heatmaps", *QUIET).exit_code == 0
    before = files_of(out / "heatmaps")
    with pytest.warns(UserWarning, match=r"kept 2 heatmap\(s\) of the previous run in .* that this run reads"):
        r = run("predict", model, out / "heatmaps", "-o", out, "--overwrite", *QUIET)
    assert r.exit_code == 0, r.stderr
    assert files_of(out / "heatmaps") == before
    assert len(csv_paths(out)) == 2


# ------------------------------------------------------------------ 2. the summary line

def record(score: float, whole: bool = False, focus: bool = False, category: str | None = None) -> dict:
    anomalous = not score <= 1.0 or whole or focus
    rec = {"normalized_score": score, "threshold": 1.0, "is_anomalous": anomalous,
           "whole_image_anomalous": whole, "out_of_focus": focus}
    return {**rec, "category": category} if category else rec


def summary(capsys, records: list[dict], threshold: float | None = 1.0, **extra) -> str:
    from patchbank.cli.predictions import print_predict_summary

    result = {"n_images": len(records), "n_flagged": sum(r["is_anomalous"] for r in records),
              "threshold": threshold, "heatmaps": None, "predictions": records, **extra}
    print_predict_summary(result, Path("o"), 1.0)
    return capsys.readouterr().out.splitlines()[0]


def test_the_summary_says_what_each_rule_flagged(capsys):
    """Was: `5 flagged anomalous (normalised score > 3.017)` with no image above the threshold."""
    records = [record(2.0), record(0.5, whole=True, focus=True), record(0.5, focus=True),
               record(float("nan")), record(0.2)]
    assert summary(capsys, records) == ("5 images in 1.0 s: 4 flagged anomalous: 2 by the score "
                                        "(normalised > 1.000), 1 by the whole-image check, 2 out of focus "
                                        "(1 by more than one)")
    assert summary(capsys, [record(0.2)]) == "1 image in 1.0 s: 0 flagged anomalous: 0 by the score (normalised > 1.000)"
    multi = [record(2.0, category="a"), record(0.1, whole=True, category="b")]
    assert summary(capsys, multi, threshold=None, routing="routed") == (
        "2 images in 1.0 s: 2 flagged anomalous: 1 by the score (per-category thresholds), "
        "1 by the whole-image check; routed: a 1, b 1")


def test_the_cli_summary_counts_match_the_table(model, tmp_path):
    noise_images(tmp_path / "imgs", ["a.png"], seed=6)
    Image.new("RGB", (64, 64), (128, 128, 128)).save(tmp_path / "imgs" / "flat.png")   # blurrier than any
    r = run("predict", model, tmp_path / "imgs", "-o", tmp_path / "out", *QUIET)
    assert r.exit_code == 0, r.stderr
    recs = json.loads((tmp_path / "out" / "predictions.json").read_text())["predictions"]
    focus = sum(rec["out_of_focus"] for rec in recs)
    assert focus >= 1
    line = r.stdout.splitlines()[0]
    assert line.startswith("2 images in ") and f"{focus} out of focus" in line, line


# ------------------------------------------------------------------ 3. SIGTERM and Ctrl-C

SLOW_PREDICT = textwrap.dedent("""
    import sys, time
    import patchbank.cli.predictions as predictions
    real = predictions.overlay_writer
    def slow(*args, **kwargs):
        time.sleep(0.4)
        return real(*args, **kwargs)
    predictions.overlay_writer = slow
    from patchbank.cli.main import main
    sys.argv = ["patchbank", *sys.argv[1:]]
    main()
""")


def stop_mid_heatmaps(model, images: Path, out: Path, signum: int) -> tuple[int, str]:
    """Run predict with heatmaps in a process, send ``signum`` once it has written a heatmap;
    returns (exit status, stderr)."""
    proc = subprocess.Popen([sys.executable, "-c", SLOW_PREDICT, "predict", str(model), str(images), "-o", str(out),
                             "--heatmaps", *QUIET], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not any(p.stat().st_size for p in out.glob("heatmaps/*.png") if p.is_file()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err.decode()


def test_sigterm_stops_a_local_predict_like_ctrl_c(model, tmp_path):
    """Was: killed at once (status -15) leaving 0-byte predictions.csv/.json and heatmap
    placeholders, and a plain rerun refused; now the same cleanup as Ctrl-C, one line, 143."""
    images = tmp_path / "imgs"
    noise_images(images, [f"{i}.png" for i in range(8)], seed=7)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("a user's file")
    status, err = stop_mid_heatmaps(model, images, out, signal.SIGTERM)
    assert status == 143, err
    assert err.strip() == "aborted (SIGTERM)", err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["mine.txt"]
    r = run("predict", model, images, "-o", out, "--heatmaps", *QUIET)
    assert r.exit_code == 0, r.stderr


def test_ctrl_c_exits_130_and_cleans_up(model, tmp_path):
    images = tmp_path / "imgs"
    noise_images(images, [f"{i}.png" for i in range(8)], seed=8)
    out = tmp_path / "new" / "out"
    status, err = stop_mid_heatmaps(model, images, out, signal.SIGINT)
    assert status == 130, err
    assert err.strip() == "aborted", err
    assert not (tmp_path / "new").exists()


def test_stop_signals_restores_the_handlers_and_leaves_an_ignored_signal_alone():
    from patchbank.runtime.signals import Stopped, stop_signals

    before = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with pytest.raises(Stopped) as caught, stop_signals():
            signal.raise_signal(signal.SIGTERM)
            time.sleep(1)
        assert isinstance(caught.value, KeyboardInterrupt) and caught.value.exit_status == 143
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with stop_signals():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)


# ------------------------------------------------------------------ 4. refused runs leave no folder

def test_a_refused_predict_leaves_no_empty_output_folder(model, data, tmp_path):
    """Was: `predict M test -o new --category a` (one category) created `new` and left it empty."""
    target = tmp_path / "new" / "out"
    one_line_error(run("predict", model, data / "test", "-o", target, "--category", "a", *QUIET),
                   "--category needs a multi-category model")
    assert not (tmp_path / "new").exists()
    (tmp_path / "bad.png").write_bytes(b"not a png")
    one_line_error(run("predict", model, tmp_path / "bad.png", "-o", target, "--heatmaps", *QUIET), "bad.png")
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    one_line_error(run("predict", model, data / "test", "-o", kept, "--category", "a", *QUIET), "--category")
    assert kept.is_dir() and not any(kept.iterdir())


@pytest.mark.parametrize("name", ["list.txt", "paths.lst", "table.csv", "table.parquet"])
def test_a_list_or_table_given_to_the_local_engine_names_the_ray_engine(model, data, tmp_path, name):
    listing = tmp_path / name
    listing.write_text("path\n" + str(next((data / "test").rglob("*.png"))) + "\n")
    one_line_error(run("predict", model, listing, "-o", tmp_path / "out", *QUIET),
                   f"{listing} is not an image", "--engine ray")
    assert not (tmp_path / "out").exists()
