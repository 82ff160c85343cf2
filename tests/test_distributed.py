"""The Ray engine (``patchbank.distributed``, ``--engine ray``) against the local path.

One local Ray for the whole file (``ray.init(num_cpus=2)``, a session fixture).  Scores are
compared bit for bit with the local ``predict`` at the same thread count (1: conftest's, and
one thread per actor), with 1 and 2 actors and different batch sizes; an actor killed mid-run
is restarted and no image is lost or scored twice; fits and evaluation runs as Ray tasks equal
the local ones.
"""
import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import FAST, assert_one_line_error, seeded_weights_file
from conftest import invoke_cli as _cli
from patchbank.errors import PatchbankError

ray = pytest.importorskip("ray")

from patchbank.distributed.inputs import read_inputs  # noqa: E402
from patchbank.distributed.scoring import ScoringActor, predict  # noqa: E402

SMALL = ["--backbone", "efficientnet_lite0", "--image-size", "96", "--crop-size", "none"]


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs) for every test here; shut down at the end."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _one_line(result, *needles):
    assert_one_line_error(result.exit_code, result.stderr, *needles)


@pytest.fixture(scope="module")
def two_root(tmp_path_factory):
    """A dataset root with two synthetic categories (different seeds and sizes of test split)."""
    from patchbank.io.synthetic import make_dataset

    root = tmp_path_factory.mktemp("two")
    make_dataset(root / "a", n_train=16, n_test_good=3, n_test_defect=2, size=96, seed=0)
    make_dataset(root / "b", n_train=16, n_test_good=2, n_test_defect=2, size=96, seed=3)
    return root


@pytest.fixture(scope="module")
def single_model(fitted, tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "single.patchbank"
    fitted.save(path)
    return path


@pytest.fixture(scope="module")
def multi_model(two_root, tmp_path_factory):
    from patchbank.multi import MultiDetector

    path = tmp_path_factory.mktemp("m") / "multi.patchbank"
    cats = {c: two_root / c / "train" / "good" for c in ("a", "b")}
    MultiDetector.from_preset("lmf-core", progress=False, n_prototypes=16, **FAST).fit(cats).save(path)
    return path


def _test_images(root):
    return sorted(str(p) for p in Path(root).rglob("test/*/*.png"))


def _key(rec):
    return (rec["path"], rec["score"], rec["normalized_score"], rec["is_anomalous"], rec["threshold"],
            rec.get("category"), rec.get("routed"))


# ------------------------------------------------------------------ scoring == local
def test_ray_flags_blurred_frames_with_the_whole_image_check_as_the_local_predict(ray_local, synthetic_root, tmp_path):
    """A model with the default preset's whole-image check: the Ray engine writes the local
    predict's CSV byte for byte (map_mean, whole_image_anomalous), flags the blurred frames, and
    both JSON summaries give the check's threshold."""
    import json

    from PIL import Image, ImageFilter

    from patchbank.detector import Detector

    with pytest.warns(UserWarning, match="calibrated on only"):
        det = Detector.from_preset("lmf-core", progress=False, whole_image_check=True, **FAST).fit(
            synthetic_root / "train" / "good")
    det.save(tmp_path / "whole.patchbank")
    frames = tmp_path / "frames"
    frames.mkdir()
    for p in sorted((synthetic_root / "test" / "good").glob("*.png"))[:3]:
        Image.open(p).convert("RGB").save(frames / p.name)
        Image.open(p).convert("RGB").filter(ImageFilter.GaussianBlur(6)).save(frames / f"blur_{p.name}")
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert _cli("predict", tmp_path / "whole.patchbank", frames, "-o", local, "-q").exit_code == 0
    r = _cli("predict", tmp_path / "whole.patchbank", frames, "-o", remote, "-q", "--engine", "ray",
             "--actors", "1", "--batch-size", "2")
    assert r.exit_code == 0, r.output
    assert (remote / "predictions.csv").read_bytes() == (local / "predictions.csv").read_bytes()
    lj, rj = (json.loads((d / "predictions.json").read_text()) for d in (local, remote))
    assert lj["map_threshold"] == rj["map_threshold"] == det.calibration_.map_threshold_
    flagged = {Path(rec["path"]).name: rec["whole_image_anomalous"] for rec in rj["predictions"]}
    assert all(v for k, v in flagged.items() if k.startswith("blur_"))
    assert pq.read_table(remote / "predictions.parquet").to_pylist() == lj["predictions"]


def test_cli_predict_ray_writes_the_local_files(ray_local, single_model, synthetic_root, tmp_path):
    """predict --engine ray (1 actor, batch 3) writes the local predict's CSV byte for byte, the
    same records in its JSON, and a Parquet table of the same rows."""
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert _cli("predict", single_model, synthetic_root / "test", "-o", local, "-q").exit_code == 0
    r = _cli("predict", single_model, synthetic_root / "test", "-o", remote, "-q", "--engine", "ray",
             "--actors", "1", "--batch-size", "3")
    assert r.exit_code == 0, r.output
    assert "predictions.parquet" in r.output
    assert (remote / "predictions.csv").read_bytes() == (local / "predictions.csv").read_bytes()
    import json

    lj, rj = (json.loads((d / "predictions.json").read_text()) for d in (local, remote))
    assert lj["predictions"] == rj["predictions"] and lj["threshold"] == rj["threshold"]
    table = pq.read_table(remote / "predictions.parquet").to_pylist()
    assert table == lj["predictions"]
    assert pq.read_schema(remote / "predictions.parquet").names == list(lj["predictions"][0])
    # an existing output is refused, one line, without --overwrite
    _one_line(_cli("predict", single_model, synthetic_root / "test", "-o", remote, "--engine", "ray"),
              "already exists")


def test_ray_predict_of_the_default_preset_with_context_taps(ray_local, synthetic_root, tmp_path, monkeypatch):
    """A default-preset model (its context taps: two searches per image; the crop cut from the
    feature maps, so the decoding tasks send the whole resize) scores the same on Ray actors as
    locally: the CSV byte for byte."""
    from patchbank.detector import Detector

    model = tmp_path / "default.patchbank"
    det = Detector.from_preset("patchbank", progress=False, **{**FAST, "crop_size": 80}).fit(
        synthetic_root / "train" / "good")
    assert det.config.context_taps == 1 and det.scorer_.context is not None
    assert det.config.crop_at == "features" and det.config.network_size == (96, 96)
    det.save(model)
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert _cli("predict", model, synthetic_root / "test", "-o", local, "-q").exit_code == 0
    r = _cli("predict", model, synthetic_root / "test", "-o", remote, "-q", "--engine", "ray",
             "--actors", "1", "--batch-size", "3")
    assert r.exit_code == 0, r.output
    assert (remote / "predictions.csv").read_bytes() == (local / "predictions.csv").read_bytes()
    # an image of another shape than the (square) training images: the same one-line warning
    # as the local predict
    from PIL import Image

    from patchbank.distributed.scoring import predict

    square = sorted((synthetic_root / "test" / "good").glob("*.png"))[0]
    wide = tmp_path / "wide.png"
    Image.open(square).resize((96, 48)).save(wide)
    import patchbank.io.aspect as aspect_mod

    read = []     # image headers the driver reads: only the first odd image's (the actors
    real = aspect_mod.image_hw   # decoded every image and flagged each one)
    monkeypatch.setattr(aspect_mod, "image_hw", lambda p: read.append(Path(p).name) or real(p))
    with pytest.warns(UserWarning, match=r"1 of 2 images are unlike the training images .*H / W 0\.50 against 1\.00"):
        out = predict(model, [str(square), str(wide)], tmp_path / "ray_wide", actors=1)
    assert [r["other_shape"] for r in out["predictions"]] == [False, True]   # per image, too
    assert read == ["wide.png"]


@pytest.mark.parametrize("n,batch,actors,want", [(2895, 16, 1, 64), (2895, 16, 2, 64), (2895, 48, 1, 96),
                                                  (10, 3, 2, 3), (40, 4, 2, 8), (10**6, 16, 4, 512)])
def test_blocks_hold_whole_batches_and_spread_over_the_actors(n, batch, actors, want):
    """Blocks of about BLOCK_ROWS rows, always whole batches (the actors' model calls are the
    local path's batches), at least ~4 per actor, at most ~2,000 in all."""
    from patchbank.distributed.scoring import _rows_per_block

    rows = _rows_per_block(n, batch, actors)
    assert rows == want and rows % batch == 0
    assert math.ceil(n / rows) <= 2000


def test_no_ray_deprecation_warning_reaches_the_user(ray_local, single_model, synthetic_root, tmp_path):
    """The retry limits go to Ray Data as ray_remote_args (Ray 2.60 has no named parameter for
    them), which Ray warns is deprecated; that warning is not the user's to act on."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predict(single_model, _test_images(synthetic_root)[:2], tmp_path / "o", batch_size=2)
    assert not [w for w in caught if "ray_remote_args" in str(w.message)]


def test_multi_routed_two_actors_equals_local(ray_local, multi_model, two_root, tmp_path):
    """A multi-category model: 2 actors, batch 2, routed and with a given category, heatmaps;
    every record equals the local MultiDetector.predict's."""
    from patchbank.multi import load_any

    images = _test_images(two_root)
    model = load_any(multi_model, progress=False)
    local = model.predict(images)
    got = predict(multi_model, [str(two_root / "a" / "test"), str(two_root / "b" / "test")],
                  tmp_path / "routed", actors=2, batch_size=2, heatmaps=True)
    recs = got["predictions"]
    assert [r["path"] for r in recs] == images
    assert [(r["score"], r["normalized_score"], r["is_anomalous"], r["category"], r["routed"])
            for r in recs] == [(p.score, p.normalized_score, p.is_anomalous, p.category, True) for p in local]
    assert {r["category"] for r in recs} == {"a", "b"}
    assert all(Path(r["heatmap"]).stat().st_size > 0 for r in recs)
    assert all(Path(r["heatmap"]).parent == tmp_path / "routed" / "heatmaps" for r in recs)
    assert not list((tmp_path / "routed").glob(".heatmaps-staging-*"))
    # session 30: the note had no ranges (the local predict's layout has one per category)
    ranges = {c: list(model.detectors_[c].heatmap_range()) for c in ("a", "b")}
    assert got["heatmaps"]["ranges"] == ranges and got["heatmaps"]["vmin"] is None
    assert "heatmap_vmin" not in recs[0]
    given = predict(multi_model, images, tmp_path / "given", actors=2, batch_size=5, category="b")
    local_b = model.predict(images, category="b")
    assert [r["score"] for r in given["predictions"]] == [p.score for p in local_b]
    assert {r["category"] for r in given["predictions"]} == {"b"} and given["routing"] == "given"


def test_a_model_with_its_own_weights_scores_with_weights_given(ray_local, synthetic_root, multi_model,
                                                                tmp_path):
    """A model fitted with its own backbone weights file: the actors load it with the file the
    caller names (--weights), scores equal the local ones; without it, one line."""
    from patchbank.detector import Detector

    weights = seeded_weights_file(tmp_path / "w.safetensors")
    model = tmp_path / "own.patchbank"
    Detector.from_preset("lmf-core", progress=False, weights=weights, **FAST).fit(
        synthetic_root / "train" / "good").save(model)
    images = _test_images(synthetic_root)
    local = Detector.load(model, weights=weights, progress=False).predict(images)
    got = predict(model, images, tmp_path / "out", weights=weights, batch_size=4)
    assert [r["score"] for r in got["predictions"]] == [p.score for p in local]
    _one_line(_cli("predict", model, images[0], "-o", tmp_path / "cli", "--engine", "ray", "-q"),
              "may not choose")
    r = _cli("predict", model, images[0], "-o", tmp_path / "cli", "--engine", "ray", "-q",
             "--weights", weights)
    assert r.exit_code == 0, r.output
    # a missing or other weights file: refused by the driver before any actor starts
    with pytest.raises(PatchbankError, match="weights file not found"):
        predict(model, images, tmp_path / "missing", weights=str(tmp_path / "missing.safetensors"))
    with pytest.raises(PatchbankError, match="backbone weights differ"):
        predict(multi_model, images, tmp_path / "other", weights=weights)
    assert not (tmp_path / "missing").exists() and not (tmp_path / "other").exists()


def test_every_input_kind(ray_local, single_model, synthetic_root, tmp_path):
    """Folder, glob, list file, Parquet and CSV with a path column name the same images; a
    Parquet input scored on Ray gives the local scores."""
    from patchbank.detector import Detector

    images = _test_images(synthetic_root)
    lst = tmp_path / "list.txt"
    lst.write_text("# archive\n" + "\n".join(os.path.relpath(p, tmp_path) for p in images) + "\n\n")
    pq.write_table(pa.table({"file": images, "x": list(range(len(images)))}), tmp_path / "t.parquet")
    with open(tmp_path / "t.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["path"]] + [[p] for p in images])
    want = [Path(p) for p in images]
    assert read_inputs([str(synthetic_root / "test")]) == want
    assert read_inputs([str(synthetic_root / "test" / "*" / "*.png")]) == want
    assert read_inputs([str(synthetic_root / "**" / "test" / "**" / "*.png")]) == want
    assert [p.resolve() for p in read_inputs([str(lst)])] == want
    assert read_inputs([str(tmp_path / "t.parquet")], column="file") == want
    assert read_inputs([str(tmp_path / "t.csv")]) == want
    for bad, needle in (([str(tmp_path / "t.parquet")], "no column 'path'"),
                        ([str(tmp_path / "nothing*.png")], "no images"),
                        ([str(tmp_path / "missing.png")], "not found")):
        with pytest.raises(PatchbankError, match=needle):
            read_inputs(bad)
    (tmp_path / "bad.txt").write_text("nope.png\n")
    with pytest.raises(PatchbankError, match="not a file"):
        read_inputs([str(tmp_path / "bad.txt")])
    det = Detector.load(single_model, progress=False)
    got = predict(single_model, [str(tmp_path / "t.parquet")], tmp_path / "out", actors=2, batch_size=4,
                  path_column="file")
    assert [r["score"] for r in got["predictions"]] == [p.score for p in det.predict(images)]


def test_a_glob_match_with_an_image_extension_that_is_no_file_is_an_error(tmp_path):
    """Session 30: a glob dropped a broken link or a FIFO named like an image without a word (a
    folder input refuses them since session 29); a match without an image extension is still
    left out, as documented."""
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    assert read_inputs([str(tmp_path / "*")]) == [tmp_path / "a.png"]
    (tmp_path / "b.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(PatchbankError, match="b.png is a link to a missing file"):
        read_inputs([str(tmp_path / "*.png")])
    (tmp_path / "b.png").unlink()
    os.mkfifo(tmp_path / "c.png")
    with pytest.raises(PatchbankError, match="c.png is "):
        read_inputs([str(tmp_path / "*.png")])


def test_an_earlier_runs_table_with_relative_paths_is_an_input_as_is(tmp_path, monkeypatch):
    """Session 30: a predictions table of a run given relative paths holds them as given (from
    the working folder); they were looked up beside the table and refused.  A path that exists
    beside the table still wins."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "data" / "a.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "predictions.csv").write_text("path,score\ndata/a.png,1.0\n")
    assert read_inputs(["out/predictions.csv"]) == [Path("data/a.png")]
    (tmp_path / "out" / "data").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "out" / "data" / "a.png")
    assert read_inputs(["out/predictions.csv"]) == [Path("out/data/a.png")]


def test_killed_actor_is_replaced_and_no_image_is_lost_or_doubled(ray_local, single_model,
                                                                 synthetic_root, tmp_path):
    """An actor exits its process on its 2nd batch (first life only): the run still returns
    every image exactly once, with the local scores."""
    from patchbank.detector import Detector

    marker = tmp_path / "died"

    class DyingActor(ScoringActor):
        calls = 0

        def __call__(self, batch):
            self.calls += 1
            if self.calls == 2 and not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)
            return super().__call__(batch)

    images = _test_images(synthetic_root)
    got = predict(single_model, images, tmp_path / "out", actors=2, batch_size=2, actor_class=DyingActor)
    assert marker.exists()
    det = Detector.load(single_model, progress=False)
    assert [r["path"] for r in got["predictions"]] == images
    assert [r["score"] for r in got["predictions"]] == [p.score for p in det.predict(images)]
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert [r["path"] for r in rows] == images


def test_one_line_errors(ray_local, single_model, synthetic_root, tmp_path, monkeypatch):
    test = synthetic_root / "test"
    _one_line(_cli("predict", single_model, test, "-o", tmp_path / "a", "--actors", "2"),
              "--actors needs --engine ray")
    _one_line(_cli("predict", single_model, test, "-o", tmp_path / "b", "--engine", "ray", "--actors", "3"),
              "3 actor(s)", "has 2")
    # session 30: an --overwrite run refused for its actors had already removed the previous set
    keep = tmp_path / "keep"
    assert _cli("predict", single_model, test, "-o", keep, "-q", "--engine", "ray").exit_code == 0
    old = {p.name: p.read_bytes() for p in keep.iterdir()}
    _one_line(_cli("predict", single_model, test, "-o", keep, "--overwrite", "--engine", "ray", "--actors", "3"),
              "3 actor(s)")
    assert {p.name: p.read_bytes() for p in keep.iterdir()} == old
    # session 30: a HOST:PORT where nothing listens waited without end
    _one_line(_cli("predict", single_model, test, "-o", tmp_path / "g", "--engine", "ray",
                   "--address", "127.0.0.1:1"), "cannot reach the Ray cluster at 127.0.0.1:1")
    _one_line(_cli("predict", single_model, test, "-o", tmp_path / "c", "--engine", "ray",
                   "--category", "x"), "--category needs a multi-category model")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    _one_line(_cli("predict", single_model, bad, "-o", tmp_path / "d", "--engine", "ray"),
              "cannot read image", "bad.png")
    assert not (tmp_path / "d" / "predictions.csv").exists()
    for bad_count in ({"decoders": 0}, {"actors": True}, {"threads": 1.5}):
        with pytest.raises(PatchbankError, match=f"{next(iter(bad_count))} must be an integer >= 1"):
            predict(single_model, str(test), tmp_path / "f", **bad_count)
    assert not (tmp_path / "f").exists()
    import builtins

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "ray" else real(name, *a, **k))
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    _one_line(_cli("predict", single_model, test, "-o", tmp_path / "e", "--engine", "ray"),
              "pip install 'patchbank[ray]'")


# ------------------------------------------------------------------ fits and evaluation as tasks
def test_fit_ray_equals_local(ray_local, two_root, tmp_path):
    """fit ROOT --engine ray: the multi-category model file holds the local fit's tensors and
    thresholds; --per-category writes each category's single model, equal to a local fit."""
    from patchbank.io.model_file import load_model

    local, remote = tmp_path / "local.patchbank", tmp_path / "ray.patchbank"
    lr = _cli("fit", two_root, "-o", local, "--preset", "lmf-core", "-q", *SMALL)
    assert lr.exit_code == 0, lr.output
    r = _cli("fit", two_root, "-o", remote, "--preset", "lmf-core", "-q", *SMALL, "--engine", "ray")
    assert r.exit_code == 0, r.output
    # each category's threshold line (training images above it, expected false-positive rate)
    # is the local fit's, read from the model files the tasks sent back
    lines = lambda out: sorted(x for x in out.splitlines() if x.startswith("[") and "threshold:" in x)
    assert len(lines(r.stdout)) == 2 and lines(r.stdout) == lines(lr.stdout), (r.stdout, lr.stdout)
    shapes = lambda out: sorted(x for x in out.splitlines() if x.startswith("[") and "input:" in x)
    assert shapes(r.stdout) == shapes(lr.stdout) == [f"[{c}] input: resize 96x96, no crop (H x W)"
                                                     for c in ("a", "b")], r.stdout
    (lt, lm), (rt, rm) = load_model(local), load_model(remote)
    assert sorted(lt) == sorted(rt) and all(np.array_equal(lt[k].numpy(), rt[k].numpy()) for k in lt)
    assert lm["category_order"] == rm["category_order"] == ["a", "b"]
    for c in ("a", "b"):
        assert lm["categories"][c]["threshold"] == rm["categories"][c]["threshold"]
    folder = tmp_path / "per"
    r = _cli("fit", two_root, "-o", folder, "--preset", "lmf-core", "-q", *SMALL, "--engine", "ray",
             "--per-category", "--actors", "1")
    assert r.exit_code == 0, r.output
    one = tmp_path / "a_local.patchbank"
    assert _cli("fit", two_root / "a" / "train" / "good", "-o", one, "--preset", "lmf-core", "-q",
                *SMALL).exit_code == 0
    (ot, om), (pt, pm) = load_model(one), load_model(folder / "a.patchbank")
    assert np.array_equal(ot["bank"].numpy(), pt["bank"].numpy()) and om["threshold"] == pm["threshold"]
    _one_line(_cli("fit", two_root, "-o", folder, "--per-category", "--engine", "ray", *SMALL),
              "already exists")
    _one_line(_cli("fit", two_root, "-o", remote, "--per-category", *SMALL), "--per-category needs --engine ray")


def test_a_tasks_error_is_its_own_line_and_fit_options_are_checked_before_the_fit(ray_local, two_root, tmp_path,
                                                                                 monkeypatch):
    """Session 30: an error raised inside a Ray task was printed as Ray's whole flattened
    traceback (Ray's task error is an instance of its cause's class); --per-category with
    --multi was ignored, and its output folder under a file was found after the fits."""
    from patchbank.distributed import fitting

    train = two_root / "a" / "train" / "good"
    r = _cli("fit", train, "-o", tmp_path / "m.patchbank", "--engine", "ray", *SMALL,
             "--weights", str(tmp_path / "missing.safetensors"))
    _one_line(r, "weights file not found")
    assert "ray::" not in r.stderr and "Traceback" not in r.stderr and len(r.stderr) < 300, r.stderr
    monkeypatch.setattr(fitting, "fit_categories", lambda *a, **k: pytest.fail("fitted"))
    _one_line(_cli("fit", two_root, "-o", tmp_path / "pc", "--per-category", "--multi", "--engine", "ray"),
              "drop --multi")
    (tmp_path / "plain.txt").write_text("x")
    _one_line(_cli("fit", two_root, "-o", tmp_path / "plain.txt" / "models", "--per-category", "--engine", "ray"),
              "plain.txt")


def test_sigterm_ends_a_ray_predict_cleanly(single_model, synthetic_root, tmp_path):
    """Session 30: SIGTERM (a service manager stopping the job) aborted a Ray predict with a
    native stack dump (Ray's handler) and skipped the cleanup; it now ends with status 143, Ray
    shut down, no placeholder and no staging folder left, the previous results untouched."""
    import glob
    import shutil
    import signal
    import subprocess
    import sys
    import time

    images = tmp_path / "many"
    images.mkdir()
    for k in range(8):
        for i, src in enumerate(sorted((synthetic_root / "test").rglob("*.png"))):
            shutil.copy(src, images / f"{k}_{i}.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("a user's file")
    proc = subprocess.Popen([sys.executable, "-m", "patchbank.cli", "predict", str(single_model), str(images),
                             "-o", str(out), "--engine", "ray", "--heatmaps", "--batch-size", "1", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not glob.glob(str(out / ".heatmaps-staging-*" / "*.png")):    # the actors are at work
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err.decode()
    assert b"SIGTERM received" not in err and b"Traceback" not in err, err.decode()
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_evaluate_ray_equals_local(ray_local, two_root, tmp_path):
    """evaluate --engine ray: the same metrics (timings aside) and per-image records per run."""
    import json

    args = [two_root, "--preset", "lmf-core", "-q", *SMALL]
    assert _cli("evaluate", *args, "-o", tmp_path / "local").exit_code == 0
    r = _cli("evaluate", *args, "-o", tmp_path / "ray", "--engine", "ray", "--actors", "2")
    assert r.exit_code == 0, r.output
    for c in ("a", "b"):
        lr, rr = (json.loads((tmp_path / d / "runs" / f"{c}__seed0.json").read_text()) for d in ("local", "ray"))
        timing = {"fit_s", "ms_per_img"}
        assert {k: v for k, v in lr["metrics"].items() if k not in timing} == \
               {k: v for k, v in rr["metrics"].items() if k not in timing}
        assert lr["images"] == rr["images"]


def test_actors_that_always_die_end_the_run_with_one_line(ray_local, single_model, synthetic_root, tmp_path,
                                                         monkeypatch):
    """A crash on every batch (e.g. out of memory) is retried a bounded number of times, then the
    run stops with a one-line error instead of retrying forever; nothing is written.  The bound
    is lowered to 1 here (each restart starts a process and loads the model)."""
    from patchbank.distributed import engine
    from patchbank.errors import PatchbankError

    monkeypatch.setattr(engine, "ACTOR_RETRIES", 1)

    class AlwaysDies(ScoringActor):
        def __call__(self, batch):
            os._exit(1)

    with pytest.raises(Exception) as info:
        predict(single_model, _test_images(synthetic_root), tmp_path / "out", actors=1, batch_size=4,
                actor_class=AlwaysDies)
    assert isinstance(info.value, PatchbankError) and "\n" not in str(info.value)
    assert "kept dying (1 restarts and 1 retries of a batch)" in str(info.value)
    assert not (tmp_path / "out" / "predictions.csv").exists()


def test_an_actors_load_error_names_the_users_model_file():
    """An actor loads a private copy of the model's bytes; an error names the user's file, not
    the copy (session 29: '/tmp/tmp8qtvny5d.patchbank: bank_map_dim ...')."""
    from patchbank.distributed.scoring import load_model_bytes

    with pytest.raises(PatchbankError) as info:
        load_model_bytes(b"not a model file at all", "cpu", source="models/line.patchbank")
    assert "models/line.patchbank" in str(info.value) and "/tmp/" not in str(info.value)


def test_ray_outputs_are_never_its_inputs_and_overwrite_replaces_the_old_set_only_at_the_end(
        single_model, synthetic_root, tmp_path):
    """As the local engine (tests/test_cli_paths.py): a heatmap that would be one of the images
    scored, or a table or list file given as the input (session 30: a manifest inside -o was
    replaced by the prediction table), is refused before Ray starts.  Session 30: the previous set
    is replaced only when the run has every image (it was removed before Ray started, so a run
    refused for its actors lost it); the new heatmaps wait in the run's staging folder."""
    import shutil

    from patchbank.distributed.outputs import FILES, STAGING_PREFIX, ResultFiles

    same = tmp_path / "same" / "heatmaps"
    same.mkdir(parents=True)
    src = sorted((synthetic_root / "test" / "good").glob("*.png"))[0]
    shutil.copy(src, same / src.name)
    before = (same / src.name).read_bytes()
    _one_line(_cli("predict", single_model, same, "-o", tmp_path / "same", "--heatmaps", "--overwrite",
                   "--engine", "ray"), "is the input", src.name)
    assert (same / src.name).read_bytes() == before
    manifest = tmp_path / "manif" / "predictions.csv"
    manifest.parent.mkdir()
    manifest.write_text(f"path,operator_note\n{src},checked\n")
    _one_line(_cli("predict", single_model, manifest, "-o", manifest.parent, "--overwrite", "--engine", "ray"),
              f"the output {manifest} is the input {manifest}")
    assert "operator_note" in manifest.read_text()
    out = tmp_path / "old"
    out.mkdir()
    for name in FILES:
        (out / name).write_text("an earlier run")
    # the previous run's heatmaps go with its tables (by the names its JSON gives), others stay
    (out / "heatmaps").mkdir()
    for name in ("a.png", "old.png", "mine.png"):
        (out / "heatmaps" / name).write_bytes(b"x")
    (out / "predictions.json").write_text(json.dumps({"predictions": [
        {"path": "x.png", "heatmap": str(out / "heatmaps" / n)} for n in ("a.png", "old.png")]}))
    old = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(RuntimeError):                       # a run that fails: the old set stays
        with ResultFiles(out, [out / "heatmaps" / "a.png"], overwrite=True, inputs=[src]) as files:
            (staged,) = files.staged()
            assert staged.parent.name.startswith(STAGING_PREFIX) and staged.parent.parent == out
            staged.write_bytes(b"new")
            raise RuntimeError("the actors failed")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == old   # staging removed too
    with ResultFiles(out, [out / "heatmaps" / "a.png"], overwrite=True, inputs=[src]) as files:
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == old
        files.staged()[0].write_bytes(b"new")
        files.write([{"path": str(src), "score": 1.0, "normalized_score": 0.0, "is_anomalous": False,
                      "threshold": 1.0, "map_mean": 0.0, "blurriness": 0.0, "whole_image_anomalous": False,
                      "out_of_focus": False, "other_shape": False, "heatmap": str(out / "heatmaps" / "a.png")}],
                    {"model": "m"})
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == ["a.png", "mine.png"]
    assert (out / "heatmaps" / "a.png").read_bytes() == b"new"
    assert not list(out.glob(STAGING_PREFIX + "*")) and json.loads((out / "predictions.json").read_text())["model"] == "m"
