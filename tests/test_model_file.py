"""The model file itself: permissions, exclusive creation under concurrency, write errors, and
``patchbank info`` on malformed headers (one-line errors, exit code 2)."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import patchbank.io.model_file as model_file
from patchbank.cli import cli
from patchbank.errors import PatchbankError
from patchbank.io.model_file import load_model, save_model
from patchbank.io.output_files import current_umask

LEGACY = Path(__file__).parent / "data" / "legacy_lmf_core.patchbank"


@pytest.fixture(scope="module")
def state():
    """A valid single-category state (tensors, header) from a stored model: no fit needed."""
    return load_model(LEGACY)


@pytest.fixture
def umask():
    before = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(before)


def write_raw(path: Path, tensors: dict, meta) -> Path:
    text = meta if isinstance(meta, str) else json.dumps(meta)
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, str(path),
              metadata={"format": "patchbank", "format_version": "2", "patchbank": text})
    return path


# ---------------------------------------------------------------------------- permissions
@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_model_file_mode_follows_umask(state, tmp_path, umask, mask, mode):
    umask(mask)
    assert current_umask() == mask
    save_model(tmp_path / "m.patchbank", *state)
    assert (tmp_path / "m.patchbank").stat().st_mode & 0o777 == mode
    save_model(tmp_path / "m.patchbank", *state, overwrite=True)
    assert (tmp_path / "m.patchbank").stat().st_mode & 0o777 == mode


# ---------------------------------------------------------------------------- exclusive creation
def test_file_appearing_during_the_write_is_not_replaced(state, tmp_path, monkeypatch):
    """Another writer creates the path after the existence check: ours fails, theirs stays."""
    path = tmp_path / "m.patchbank"
    real = model_file.save_file

    def racing_save(tensors, tmp, metadata):
        path.write_bytes(b"the other writer's model")
        real(tensors, tmp, metadata=metadata)

    monkeypatch.setattr(model_file, "save_file", racing_save)
    with pytest.raises(PatchbankError, match="already exists") as info:
        save_model(path, *state)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == b"the other writer's model"
    assert [p.name for p in tmp_path.iterdir()] == ["m.patchbank"]   # no temporary file left


def test_two_threads_saving_to_one_new_path(state, tmp_path):
    tensors, meta = state
    big = {**tensors, "bank": tensors["bank"].repeat(200, 1)}   # a write long enough to overlap
    path, barrier, results = tmp_path / "m.patchbank", threading.Barrier(2), {}
    payloads = {"a": ({**big, "bank": big["bank"] + 1}, meta), "b": ({**big, "bank": big["bank"] + 2}, meta)}

    def writer(name):
        barrier.wait()
        try:
            save_model(path, *payloads[name])
            results[name] = "ok"
        except PatchbankError as exc:
            results[name] = str(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [n for n, r in results.items() if r == "ok"]
    assert len(winners) == 1, results
    loser = next(r for r in results.values() if r != "ok")
    assert "already exists" in loser and "\n" not in loser
    loaded, _ = load_model(path)
    assert torch.equal(loaded["bank"], payloads[winners[0]][0]["bank"])
    assert [p.name for p in tmp_path.iterdir()] == ["m.patchbank"]


def test_exclusive_create_without_hard_links(state, tmp_path, monkeypatch):
    """Where hard links are unsupported the name is reserved with O_EXCL instead."""
    def no_links(src, dst):
        raise OSError(model_file.errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(model_file.os, "link", no_links)
    path = tmp_path / "m.patchbank"
    save_model(path, *state)
    assert load_model(path)[1] == state[1]
    with pytest.raises(PatchbankError, match="already exists"):
        save_model(path, *state)


# ---------------------------------------------------------------------------- write errors
def test_parent_is_a_file_or_missing(state, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(PatchbankError, match="does not exist"):
        save_model(tmp_path / "f" / "m.patchbank", *state)
    with pytest.raises(PatchbankError, match="does not exist"):
        save_model(tmp_path / "nope" / "m.patchbank", *state)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder(state, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(PatchbankError, match="cannot write model file"):
            save_model(ro / "m.patchbank", *state)
    finally:
        ro.chmod(0o700)


def test_os_error_while_writing_is_one_line(state, tmp_path, monkeypatch):
    def disk_full(tensors, tmp, metadata):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model_file, "save_file", disk_full)
    with pytest.raises(PatchbankError, match="cannot write model file .*No space left") as info:
        save_model(tmp_path / "m.patchbank", *state)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- patchbank info
def run_info(*args):
    return CliRunner().invoke(cli, ["info", *map(str, args)])


def assert_one_line_error(result, *needles):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def multi_state(state, cats=("a", "b")):
    tensors, meta = state
    out, infos = {}, {}
    for i, c in enumerate(cats):
        out.update({f"{c}/{k}": v for k, v in tensors.items()})
        out[f"{c}/routing_prototypes"] = torch.randn(4, 8, generator=torch.Generator().manual_seed(i))
        infos[c] = {k: v for k, v in meta.items() if k != "config"}
    return out, {"kind": "multi", "format_version": 2, "config": meta["config"], "category_order": list(cats),
                 "categories": infos, "routing_prototypes": 4, "bank_bytes": 2 * meta["bank_bytes"]}


def test_info_valid_single_and_multi(state, tmp_path):
    r = run_info(write_raw(tmp_path / "s.patchbank", *state))
    assert r.exit_code == 0 and "memory bank" in r.output and "120 entries x 128 dims" in r.output
    # the threshold's rule: this stored model predates the field, so it was calibrated with the
    # interpolated quantile; a header naming the conformal rule says so
    assert "threshold_rule" not in state[1]["config"] and "interpolated quantile" in r.output
    new = dict(state[1], config=dict(state[1]["config"], threshold_rule="conformal"))
    r = run_info(write_raw(tmp_path / "new.patchbank", state[0], new))
    assert r.exit_code != 0 and "the calibration arrays give threshold" in r.output   # the old rule's threshold
    from patchbank.config import Config
    from patchbank.pipeline.calibration import calibration_from_state

    new["threshold"] = calibration_from_state(Config.from_dict(new["config"]), state[0]).threshold_
    r = run_info(write_raw(tmp_path / "new.patchbank", state[0], new))
    assert r.exit_code == 0 and "conformal rank" in r.output, r.output
    r = run_info(write_raw(tmp_path / "m.patchbank", *multi_state(state)))
    assert r.exit_code == 0 and "[a]" in r.output and "[b]" in r.output, r.output
    r = run_info(tmp_path / "m.patchbank", "--json")
    assert json.loads(r.output)["category_order"] == ["a", "b"]


def test_info_describes_a_model_fit_with_its_own_weights(state, tmp_path):
    tensors, meta = state
    meta = {**meta, "config": {**meta["config"], "weights": "/models/lite0.pth"}}
    r = run_info(write_raw(tmp_path / "w.patchbank", tensors, meta))
    assert r.exit_code == 0 and "lite0.pth" in r.output


@pytest.mark.parametrize("edit,needle", [
    (lambda m: {"kind": "multi", "config": m["config"]}, "category_order"),
    (lambda m: {"kind": "multi", "config": m["config"], "category_order": ["a"]}, "categories"),
    (lambda m: {**m, "kind": "multi"}, "is not part of a patchbank multi-category header"),
    (lambda m: {**m, "kind": "single"}, "kind"),
    (lambda m: {**m, "config": "lmf-core"}, "config"),
    (lambda m: {**m, "config": None}, "config"),
    (lambda m: {**m, "threshold": "high"}, "threshold"),
    (lambda m: {**m, "score_mean": None, "score_std": "x"}, "score_std"),
    (lambda m: {**m, "bank_entries": "many"}, "bank_entries"),
])
def test_info_malformed_header_is_one_line(state, tmp_path, edit, needle):
    path = write_raw(tmp_path / "bad.patchbank", state[0], edit(state[1]))
    assert_one_line_error(run_info(path), str(path), needle)


@pytest.mark.parametrize("text", ["{}", "[1, 2]", "\"text\"", "3", "null", "{broken", "[" * 50000 + "]" * 50000])
def test_info_empty_or_non_object_header(state, tmp_path, text):
    path = write_raw(tmp_path / "bad.patchbank", state[0], text)
    assert_one_line_error(run_info(path), str(path), "header")


def test_info_multi_category_with_bad_categories(state, tmp_path):
    tensors, meta = multi_state(state)
    for bad, needle in [({**meta, "categories": {"a": "x", "b": {}}}, "categories"),
                        ({**meta, "category_order": "a,b"}, "category_order"),
                        ({**meta, "routing_prototypes": "64"}, "routing_prototypes")]:
        path = write_raw(tmp_path / "bad.patchbank", tensors, bad)
        assert_one_line_error(run_info(path), str(path), needle)
    infos = {**meta["categories"], "b": {**meta["categories"]["b"], "bank_dim": 64}}
    path = write_raw(tmp_path / "bad.patchbank", tensors, {**meta, "categories": infos})
    assert_one_line_error(run_info(path), "[b]", "'bank'")


def test_info_tampered_tensor(state, tmp_path):
    tensors, meta = state
    path = write_raw(tmp_path / "t.patchbank", {**tensors, "bank": tensors["bank"].T.contiguous()}, meta)
    assert_one_line_error(run_info(path), str(path), "'bank'")


def test_read_header_is_load_models_header_without_the_tensors(state, tmp_path):
    """The header alone (what the service, load_any and the Ray driver need), checked as
    load_model checks it: the same meta, and the same one-line refusals."""
    from patchbank.io.model_file import read_header

    assert read_header(LEGACY) == state[1]
    bad = tmp_path / "notes.patchbank"
    bad.write_text("not a model")
    for path, message in ((bad, "is not a readable patchbank model file"),
                          (tmp_path / "missing.patchbank", "model file not found")):
        with pytest.raises(PatchbankError, match=message):
            read_header(path)
        with pytest.raises(PatchbankError, match=message):
            load_model(path)
    corrupt = write_raw(tmp_path / "c.patchbank", state[0], "{not json")
    with pytest.raises(PatchbankError, match="corrupt patchbank header"):
        read_header(corrupt)


@pytest.mark.parametrize("value", ["001.png", ["001.png"], "short", "numbers"])
def test_bad_training_image_names_are_one_line(fitted, tmp_path, value):
    # train_images: one file name (or null) per training image, in the fit's order
    from patchbank.detector import Detector

    n = fitted.n_train_images_
    if value == "short":
        value = [f"{i}.png" for i in range(n - 1)]
    elif value == "numbers":
        value = list(range(n))
    assert fitted.train_names_ is not None and len(fitted.train_names_) == n
    bad = tmp_path / "bad.patchbank"
    save_model(bad, fitted.state_tensors(), dict(fitted.info(), train_images=value))
    with pytest.raises(PatchbankError, match="train_images") as exc:
        Detector.load(bad, progress=False)
    assert "\n" not in str(exc.value)


def test_a_model_path_that_is_not_utf8_is_one_line_before_the_fit(state, tmp_path, monkeypatch):
    # safetensors writes to any path but opens files by UTF-8 names only: such a model used to
    # be written, then "is not a readable patchbank model file" on every load
    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9"))
    folder.mkdir()
    path = folder / "m.patchbank"
    tensors, meta = state
    for call in (lambda: save_model(path, tensors, meta), lambda: load_model(path)):
        with pytest.raises(PatchbankError, match=r"model file path is not valid UTF-8: .*caf\\xe9/m\.patchbank.*rename it"):
            call()
    assert not any(folder.iterdir())

    def boom(*a, **k):
        raise AssertionError("the fit started before the model path was checked")

    monkeypatch.setattr("patchbank.detector.Detector.fit", boom)
    train = tmp_path / "train"
    train.mkdir()
    from PIL import Image
    Image.new("RGB", (32, 32)).save(train / "a.png")
    r = CliRunner().invoke(cli, ["fit", str(train), "-o", str(path), "-q"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "model file path is not valid UTF-8" in r.stderr
