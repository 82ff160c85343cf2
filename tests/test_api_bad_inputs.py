"""A new user's wrong calls of the Python API: each a one-line PatchbankError (never an
AttributeError / TypeError traceback, never work on the wrong images)."""
import numpy as np
import pytest
import torch

from patchbank import Config, Detector, MultiDetector, PatchbankError
from patchbank.multi import load_any


@pytest.fixture(scope="module")
def model(fitted, tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "m.patchbank"
    fitted.save(path)
    return Detector.load(path, progress=False)


CASES = {
    "config is not a Config": (lambda m, t: Detector(42), "config must be a patchbank Config"),
    "multi config is not a Config": (lambda m, t: MultiDetector({"kappa": 1}), "config must be a patchbank Config"),
    "load(None)": (lambda m, t: Detector.load(None), "model file path must be a non-empty"),
    "load('')": (lambda m, t: Detector.load(""), "model file path must be a non-empty"),
    "load(folder)": (lambda m, t: Detector.load(t), "model file not found"),
    "load_any(text file)": (lambda m, t: load_any(_text(t)), "not a readable patchbank model file"),
    "save(None)": (lambda m, t: m.save(None), "model file path must be a non-empty"),
    "save(folder)": (lambda m, t: m.save(t), "is a folder; give a model file name"),
    "predict(None)": (lambda m, t: m.predict(None), "images must be a folder, a file"),
    "predict('')": (lambda m, t: m.predict(""), "an image path is empty"),
    "predict([])": (lambda m, t: m.predict([]), "no images given"),
    "predict(42)": (lambda m, t: m.predict(42), "images must be a folder, a file"),
    "predict(tensor)": (lambda m, t: m.predict([torch.zeros(3, 64, 64)]), "unsupported image input #0"),
    "predict(0x0 array)": (lambda m, t: m.predict([np.zeros((0, 0, 3), np.uint8)]), "0-pixel side"),
    "Config.from_dict(None)": (lambda m, t: Config.from_dict(None), "config: expected a dict"),
    "Config.preset(None)": (lambda m, t: Config.preset(None), "unknown preset None"),
    "unfitted info": (lambda m, t: Detector().info(), "not fitted"),
    "unfitted multi predict": (lambda m, t: MultiDetector().predict([t]), "not fitted"),
    "unfitted export": (lambda m, t: _export(Detector(), t), "this detector is not fitted"),
    "cuda_graphs as text": (lambda m, t: Detector(cuda_graphs="false"), "cuda_graphs must be True, False or None"),
    "from_preset with cuda_graphs 0": (lambda m, t: Detector.from_preset("patchbank", cuda_graphs=0), "cuda_graphs must be True"),
    "unfitted multi categories": (lambda m, t: MultiDetector().categories, "not fitted"),
}


def _export(det, folder):
    from patchbank.export.exporter import export_model

    return export_model(det, folder / "ex", ["onnx"])


def _text(folder):
    p = folder / "notes.txt"
    p.write_text("not a model")
    return p


@pytest.mark.parametrize("name", sorted(CASES))
def test_wrong_call_is_a_one_line_error(name, model, tmp_path):
    call, message = CASES[name]
    with pytest.raises(PatchbankError, match=message) as info:
        call(model, tmp_path)
    assert "\n" not in str(info.value)
