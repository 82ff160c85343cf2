"""``--weights FILE`` where a fitted model is used: predict (local), export and serve.

A model fitted with its own backbone weights file records the file's sha256 and never chooses
the file itself; every command that loads it takes the file from the user (``--weights``) and
checks it against that sha256.  (The Ray engine's ``--weights``: ``tests/test_distributed.py``.)
"""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from conftest import assert_one_line_error, invoke_cli, seeded_weights_file
from patchbank.detector import Detector
from patchbank.errors import PatchbankError

SMALL = ["--backbone", "efficientnet_lite0", "--image-size", "96", "--crop-size", "none"]


@pytest.fixture(scope="module")
def own(tmp_path_factory, synthetic_root):
    """(model file fitted with its own weights file, that file, a different weights file)."""
    tmp = tmp_path_factory.mktemp("own_weights")
    weights = seeded_weights_file(tmp / "mine.safetensors", 0)
    other = seeded_weights_file(tmp / "other.safetensors", 1)
    model = tmp / "own.patchbank"
    result = invoke_cli("fit", str(synthetic_root / "train" / "good"), "-o", str(model), *SMALL,
                        "--preset", "lmf-core", "--weights", weights, "-q")
    assert result.exit_code == 0, result.stderr
    return model, weights, other


def _scores(out_dir):
    return [r["score"] for r in json.loads((out_dir / "predictions.json").read_text())["predictions"]]


def test_predict_with_the_fit_weights_equals_the_api(own, synthetic_root, tmp_path):
    model, weights, _ = own
    images = sorted((synthetic_root / "test" / "good").glob("*.png"))
    result = invoke_cli("predict", str(model), *map(str, images), "-o", str(tmp_path / "out"),
                        "--weights", weights, "-q")
    assert result.exit_code == 0, result.stderr
    want = [p.score for p in Detector.load(model, weights=weights, progress=False).predict(images)]
    np.testing.assert_array_equal(_scores(tmp_path / "out"), want)


def test_predict_without_or_with_other_weights_is_one_line(own, synthetic_root, tmp_path):
    model, _, other = own
    image = str(sorted((synthetic_root / "test" / "good").glob("*.png"))[0])
    result = invoke_cli("predict", str(model), image, "-o", str(tmp_path / "a"))
    assert_one_line_error(result.exit_code, result.stderr, "may not choose", "--weights FILE")
    result = invoke_cli("predict", str(model), image, "-o", str(tmp_path / "b"), "--weights", other)
    assert_one_line_error(result.exit_code, result.stderr, "backbone weights differ")
    result = invoke_cli("predict", str(model), image, "-o", str(tmp_path / "c"), "--weights",
                        str(tmp_path / "missing.safetensors"))
    assert result.exit_code == 2 and "missing.safetensors" in result.stderr


def test_an_export_folder_takes_no_weights_and_runs_on_the_cpu(own, synthetic_root, tmp_path):
    """What an export runtime cannot honour is refused in one line, not silently ignored."""
    model, weights, _ = own
    image = str(sorted((synthetic_root / "test" / "good").glob("*.png"))[0])
    result = invoke_cli("predict", str(tmp_path), image, "-o", str(tmp_path / "out"),
                        "--runtime", "onnx", "--weights", weights)
    assert_one_line_error(result.exit_code, result.stderr, "--weights applies to model files")
    result = invoke_cli("predict", str(tmp_path), image, "-o", str(tmp_path / "out2"),
                        "--runtime", "openvino", "--device", "cuda")
    assert_one_line_error(result.exit_code, result.stderr, "runs on the CPU", "drop --device cuda")


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs patchbank[export]")
def test_export_with_the_fit_weights_scores_like_torch(own, synthetic_root, tmp_path):
    model, weights, _ = own
    out = tmp_path / "exported"
    result = invoke_cli("export", str(model), "-o", str(out), "--format", "onnx", "--weights", weights, "-q")
    assert result.exit_code == 0, result.stderr
    assert "export (" not in result.stderr          # -q: no bar
    images = sorted((synthetic_root / "test" / "good").glob("*.png"))
    result = invoke_cli("predict", str(out), *map(str, images), "-o", str(tmp_path / "p"),
                        "--runtime", "onnx", "-q")
    assert result.exit_code == 0, result.stderr
    want = [p.score for p in Detector.load(model, weights=weights, progress=False).predict(images)]
    np.testing.assert_allclose(_scores(tmp_path / "p"), want, rtol=1e-5)
    result = invoke_cli("export", str(model), "-o", str(tmp_path / "refused"), "--format", "onnx")
    assert_one_line_error(result.exit_code, result.stderr, "may not choose")


def test_serve_settings_and_registry_take_the_weights(own):
    pytest.importorskip("fastapi")
    from patchbank.service.registry import ModelRegistry
    from patchbank.service.settings import ModelSpec, ServeSettings

    model, weights, other = own
    spec = (ModelSpec("own", str(model)),)
    registry = ModelRegistry(ServeSettings(models=spec, weights=weights)).load().warm_up()
    assert registry.ready and registry.models["own"].model.config.weights == weights
    with pytest.raises(PatchbankError, match="may not choose"):
        ModelRegistry(ServeSettings(models=spec)).load()
    with pytest.raises(PatchbankError, match="backbone weights differ"):
        ModelRegistry(ServeSettings(models=spec, weights=other)).load().warm_up()
    # refused when the model loads (serve stops before listening), not in the warm-up
    with pytest.raises(PatchbankError, match="backbone weights differ"):
        ModelRegistry(ServeSettings(models=spec, weights=other)).load()
    with pytest.raises(PatchbankError, match="weights file not found"):
        ModelRegistry(ServeSettings(models=spec, weights=str(model) + ".missing")).load()
    with pytest.raises(PatchbankError, match="--weights applies to model files"):
        ServeSettings(models=spec, runtime="onnx", weights=weights)


def test_a_multi_category_model_checks_the_given_weights_when_it_loads(own, synthetic_root, tmp_path):
    """MultiDetector.load refuses a weights file other than the fit's before building anything
    (as Detector.load does), and loads with the right one."""
    from patchbank.config import Config
    from patchbank.multi import MultiDetector

    _, weights, other = own
    path = tmp_path / "multi.patchbank"
    cfg = Config.preset("lmf-core").replace(backbone="efficientnet_lite0", image_size=(96, 96), crop_size=None,
                                            weights=weights)
    MultiDetector(cfg, progress=False, n_prototypes=8).fit({"a": synthetic_root / "train" / "good"}).save(path)
    with pytest.raises(PatchbankError, match="backbone weights differ") as err:
        MultiDetector.load(path, progress=False, weights=other)
    assert "\n" not in str(err.value)
    with pytest.raises(PatchbankError, match="backbone weights differ"):
        MultiDetector.load(path, progress=False, weights="random")
    assert MultiDetector.load(path, progress=False, weights=weights).detectors_["a"].backbone_sha256_


def test_a_multi_category_model_with_its_own_weights_can_be_extended_and_saved_again(own, synthetic_root,
                                                                                   tmp_path, monkeypatch):
    """Session 30: loaded with its weights file under another path (a copy, a relative path:
    what ``serve --weights`` does before persisting a threshold) and saved again, a
    multi-category model became a file nothing could load (the shared config held the new path,
    each category's copy the old one); ``fit --add`` could not extend it at all (--weights was
    refused as a changed option, and without it the load asked for the weights)."""
    import shutil

    from patchbank.multi import MultiDetector

    _, weights, _ = own
    model = tmp_path / "multi.patchbank"
    train = str(synthetic_root / "train" / "good")
    r = invoke_cli("fit", f"a={train}", "--multi", "-o", str(model), *SMALL, "--weights", weights, "-q")
    assert r.exit_code == 0, r.stderr
    copy = shutil.copy(weights, tmp_path / "copy.safetensors")
    monkeypatch.chdir(tmp_path)
    loaded = MultiDetector.load(model, progress=False, weights="copy.safetensors")   # relative
    loaded.save(model, overwrite=True)
    # the file records where the weights were, from anywhere (was the relative path as given)
    assert loaded.info()["config"]["weights"] == str(copy)
    assert loaded.info()["categories"]["a"]["config"]["weights"] == str(copy)
    again = MultiDetector.load(model, progress=False, weights=weights)
    assert again.detectors_["a"].backbone_sha256_ == loaded.detectors_["a"].backbone_sha256_
    del again._infos["a"]["config"]          # a file whose category holds no config copy
    assert "config" not in again.info()["categories"]["a"]
    r = invoke_cli("fit", "--add", f"b={train}", "-o", str(model), "--weights", weights, "-q")
    assert r.exit_code == 0, r.stderr
    assert MultiDetector.load(model, progress=False, weights=weights).categories == ["a", "b"]
    # other options stay refused with --add, and so does a preset given explicitly
    r = invoke_cli("fit", "--add", f"c={train}", "-o", str(model), "--weights", weights, "--kappa", "1.0")
    assert_one_line_error(r.exit_code, r.stderr, "--kappa")
    r = invoke_cli("fit", "--add", f"c={train}", "-o", str(model), "--preset", "structcore")
    assert r.exit_code == 2 and "drop --preset" in r.stderr


def test_fit_with_random_weights_is_refused_before_the_fit(synthetic_root, tmp_path, monkeypatch):
    """Session 30: ``fit --weights random`` fitted, said "wrote", and left a file that every
    load refuses; such a model cannot be saved (library and CLI), refused before any work."""
    from patchbank.detector import Detector

    monkeypatch.setattr(Detector, "fit", lambda *a, **k: pytest.fail("fitted"))
    r = invoke_cli("fit", str(synthetic_root / "train" / "good"), "-o", str(tmp_path / "r.patchbank"),
                   *SMALL, "--weights", "random")
    assert r.exit_code == 2 and "cannot be saved" in r.stderr and "\n" not in r.stderr.strip()
    assert not (tmp_path / "r.patchbank").exists()
    monkeypatch.undo()
    det = Detector.from_preset("lmf-core", progress=False, backbone="efficientnet_lite0", image_size=96,
                               crop_size=None, weights="random").fit(synthetic_root / "train" / "good")
    with pytest.raises(PatchbankError, match="cannot be saved"):
        det.save(tmp_path / "r.patchbank")
    assert not (tmp_path / "r.patchbank").exists()
