"""Paths on the command line that used to lose or misread a user's files: colliding heatmap
names, an output that is one of the run's inputs, a ``predict --overwrite`` stopped part-way,
and an empty path (an unset shell variable) read as the current folder."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


from test_outputs import QUIET, SMALL, data, model, no_work, one_line_error, run  # noqa: F401  (fixtures)


def csv_rows(folder: Path) -> list[dict]:
    with open(folder / "predictions.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def noise_images(folder: Path, names: list[str], seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / name)
    return [folder / n for n in names]


def interrupt_the_second_heatmap(monkeypatch) -> list:
    """Ctrl-C while the second heatmap of the next predict is drawn; returns the list of calls."""
    import patchbank.cli.predictions as predictions

    real, calls = predictions.overlay_writer, []

    def interrupted_after_one(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(predictions, "overlay_writer", interrupted_after_one)
    return calls


# ------------------------------------------------------------------ 1. heatmap names

@pytest.mark.parametrize("overwrite", [False, True])
def test_colliding_heatmap_names_get_one_file_each(model, tmp_path, overwrite):
    cam = tmp_path / "cam"
    noise_images(cam, ["frame.png", "frame.jpg", "cam_frame_1.png"], seed=1)
    out = tmp_path / "out"
    if overwrite:
        out.mkdir()
    r = run("predict", model, cam, "-o", out, "--heatmaps", *QUIET, *(["--overwrite"] if overwrite else []))
    assert r.exit_code == 0, r.stderr
    heatmaps = [row["heatmap"] for row in csv_rows(out)]
    assert len(set(heatmaps)) == 3 and all(Path(h).is_file() for h in heatmaps)
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == sorted(Path(h).name for h in heatmaps)


# ------------------------------------------------------------------ 2. an output that is an input

def test_fit_refuses_a_model_file_that_is_a_training_image(data, tmp_path, no_work):
    train = tmp_path / "train"
    noise_images(train, ["000.png", "001.png"], seed=2)
    before = (train / "000.png").read_bytes()
    for target in (train / "000.png", tmp_path / "train" / ".." / "train" / "000.png"):
        one_line_error(run("fit", train, "-o", target, "--overwrite", *SMALL, *QUIET),
                       f"the output {target} is the input {train / '000.png'}")
    assert (train / "000.png").read_bytes() == before


def test_predict_refuses_heatmaps_over_its_input_images(model, tmp_path, no_work):
    same = tmp_path / "same"
    inputs = noise_images(same / "heatmaps", ["t0.png", "t1.png"], seed=3)
    before = [p.read_bytes() for p in inputs]
    one_line_error(run("predict", model, same / "heatmaps", "-o", same, "--heatmaps", "--overwrite", *QUIET),
                   f"the output {inputs[0]} is the input {inputs[0]}")
    assert [p.read_bytes() for p in inputs] == before
    assert not (same / "predictions.csv").exists() and not (same / "predictions.json").exists()


def test_predict_refuses_an_output_that_is_its_model_file(model, data, tmp_path, no_work):
    """Session 30: the model file was not among the files an output may not be (a model saved
    as ``out/predictions.json`` was replaced by the table it scored)."""
    out = tmp_path / "out"
    out.mkdir()
    target = out / "predictions.json"
    target.write_bytes(Path(model).read_bytes())
    one_line_error(run("predict", target, data / "test", "-o", out, "--overwrite", *QUIET),
                   f"the output {target} is the input {target}")
    assert target.read_bytes() == Path(model).read_bytes()


def test_report_refuses_to_write_over_a_file_it_reads(model, data, tmp_path):
    out = tmp_path / "out"
    assert run("predict", model, data / "test", "-o", out, "--heatmaps", *QUIET).exit_code == 0
    (tmp_path / "link").symlink_to(out, target_is_directory=True)
    heatmap = sorted((out / "heatmaps").iterdir())[0]
    image = Path(json.loads((out / "predictions.json").read_text())["predictions"][0]["path"])
    before = {p: p.read_bytes() for p in (out / "predictions.json", heatmap, image)}
    for target in (out / "predictions.json", tmp_path / "link" / "predictions.json", heatmap, image):
        one_line_error(run("report", out, "-o", target, "--overwrite", "-q"), f"the output {target} is the input")
    assert {p: p.read_bytes() for p in before} == before


# ------------------------------------------------------------------ 3. an --overwrite run stopped part-way

def test_an_overwrite_run_stopped_mid_heatmaps_leaves_no_mixed_set(model, tmp_path, monkeypatch):
    names = ["000.png", "001.png", "002.png"]
    first, second = noise_images(tmp_path / "a", names, seed=4), noise_images(tmp_path / "b", names, seed=5)
    out = tmp_path / "out"
    assert run("predict", model, first[0].parent, "-o", out, "--heatmaps", *QUIET).exit_code == 0
    old = {p.name: p.read_bytes() for p in [out / "predictions.json", *(out / "heatmaps").iterdir()]}

    calls = interrupt_the_second_heatmap(monkeypatch)
    r = run("predict", model, second[0].parent, "-o", out, "--heatmaps", "--overwrite", *QUIET)
    assert r.exit_code == 1 and len(calls) == 2
    # either the old set intact, or no predictions.json (nothing that reads as one run)
    if (out / "predictions.json").exists():
        assert {p.name: p.read_bytes() for p in [out / "predictions.json", *(out / "heatmaps").iterdir()]} == old
    else:
        assert not (out / "predictions.csv").exists()
        one_line_error(run("report", out, "-q"), "holds neither predictions.json")


def test_a_first_run_stopped_mid_heatmaps_leaves_nothing_in_a_reruns_way(model, tmp_path, monkeypatch):
    """Session 30: a run without ``--overwrite`` stopped part-way left the heatmaps it had
    written, which no table named, and a plain rerun failed on them ("already exists")."""
    images = noise_images(tmp_path / "a", ["000.png", "001.png", "002.png"], seed=8)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("kept")
    calls = interrupt_the_second_heatmap(monkeypatch)
    r = run("predict", model, images[0].parent, "-o", out, "--heatmaps", *QUIET)
    assert r.exit_code == 1 and len(calls) == 2
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["mine.txt"]
    monkeypatch.undo()
    r = run("predict", model, images[0].parent, "-o", out, "--heatmaps", *QUIET)
    assert r.exit_code == 0, r.stderr
    assert len(list((out / "heatmaps").iterdir())) == 3 and len(csv_rows(out)) == 3


def test_overwrite_removes_the_previous_runs_heatmaps_and_nothing_else(model, tmp_path):
    """An ``--overwrite`` run over fewer images left the previous run's other heatmaps in
    heatmaps/ beside the new table, read as this run's; they go now, files the previous table
    did not name stay, and a table that cannot be read removes no heatmap (one warning)."""
    out = tmp_path / "out"
    noise_images(tmp_path / "three", ["a.png", "b.png", "c.png"], seed=6)
    assert run("predict", model, tmp_path / "three", "-o", out, "--heatmaps", *QUIET).exit_code == 0
    old = sorted(p.name for p in (out / "heatmaps").iterdir())
    assert len(old) == 3
    (out / "heatmaps" / "mine.png").write_bytes(b"a user's file")
    (out / "notes.txt").write_text("kept")
    noise_images(tmp_path / "one", ["d.png"], seed=7)
    r = run("predict", model, tmp_path / "one", "-o", out, "--heatmaps", "--overwrite", *QUIET)
    assert r.exit_code == 0, r.stderr
    (row,) = csv_rows(out)
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == sorted([Path(row["heatmap"]).name, "mine.png"])
    assert (out / "heatmaps" / "mine.png").read_bytes() == b"a user's file"
    assert (out / "notes.txt").read_text() == "kept"
    # without heatmaps this time: the previous run's heatmap goes too, the user's file stays
    assert run("predict", model, tmp_path / "one", "-o", out, "--overwrite", *QUIET).exit_code == 0
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == ["mine.png"]
    # a table that cannot be read: a one-line warning, no heatmap removed, the run done
    assert run("predict", model, tmp_path / "three", "-o", out, "--heatmaps", "--overwrite", *QUIET).exit_code == 0
    (out / "predictions.json").write_text("{not json")
    before = sorted(p.name for p in (out / "heatmaps").iterdir())
    with pytest.warns(UserWarning, match="cannot read the previous run's table") as caught:
        r = run("predict", model, tmp_path / "one", "-o", out, "--overwrite", *QUIET)
    assert r.exit_code == 0, r.stderr
    assert ["\n" in str(w.message) for w in caught] == [False]
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == before


# ------------------------------------------------------------------ 4. an empty path

EMPTY = [
    ("predict", "MODEL", lambda m, img, t: ["predict", "", img, "-o", t / "o"]),
    ("predict", "INPUT", lambda m, img, t: ["predict", m, "", "-o", t / "o"]),
    ("predict", "--output", lambda m, img, t: ["predict", m, img, "-o", ""]),
    ("fit", "TRAIN_DIR", lambda m, img, t: ["fit", "", "-o", t / "m.patchbank"]),
    ("fit", "the folder of cat=", lambda m, img, t: ["fit", "cat=", "-o", t / "m.patchbank"]),
    ("fit", "--output", lambda m, img, t: ["fit", img.parent, "-o", ""]),
    ("report", "RESULTS_DIR", lambda m, img, t: ["report", ""]),
    ("report", "--output", lambda m, img, t: ["report", t, "-o", ""]),
    ("export", "--output", lambda m, img, t: ["export", m, "-o", ""]),
    ("demo", "--output", lambda m, img, t: ["demo", "-o", ""]),
    ("evaluate", "--output", lambda m, img, t: ["evaluate", img.parent, "-o", ""]),
    ("benchmark", "--output", lambda m, img, t: ["benchmark", img.parent, "-o", ""]),
]


@pytest.mark.parametrize("command, name, args", EMPTY, ids=[f"{c} {n}" for c, n, _ in EMPTY])
def test_an_empty_path_is_one_line_naming_it(model, data, tmp_path, monkeypatch, no_work, command, name, args):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)             # "" used to mean this folder: read it, or write into it
    noise_images(work, ["cwd.png"], seed=6)
    img = data / "test" / "good" / "000.png"
    one_line_error(run(*args(model, img, tmp_path), *QUIET[:2]) if command != "report"
                   else run(*args(model, img, tmp_path)), name, 'is empty ("")', "unset shell variable")
    assert sorted(p.name for p in work.iterdir()) == ["cwd.png"]
