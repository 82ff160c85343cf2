"""Tests that kill surviving mutants of patchbank.detector and patchbank.pipeline.inference
(docs/testing.md)."""
import pytest
import torch

from conftest import FAST
from patchbank.config import Config
from patchbank.detector import Detector
from patchbank.errors import PatchbankError
from patchbank.pipeline.inference import PREDICT_STEPS, predict_batches


def test_progress_bars_are_on_by_default(fitted, tmp_path):
    assert Detector().progress is True
    assert Detector(Config.preset("lmf-core", **FAST)).progress is True
    assert Detector.from_preset("lmf-core", **FAST).progress is True
    path = tmp_path / "m.patchbank"
    fitted.save(path)
    assert Detector.load(path).progress is True
    assert Detector.from_state(fitted.state_tensors(), fitted.info(), "m").progress is True


def test_routing_sample_is_kept_only_when_asked(fitted, synthetic_root):
    assert not hasattr(fitted, "routing_sample_")            # fit() keeps none by default
    det = Detector.from_preset("lmf-core", progress=False, **FAST)
    det.fit(synthetic_root / "train" / "good", routing_sample=1)
    assert det.routing_sample_.shape[0] == 1


def test_weights_given_to_the_loader_replace_the_headers(fitted):
    meta = fitted.info()
    meta["config"]["weights"] = "/moved/away/weights.pth"     # a header may not choose weights
    with pytest.raises(PatchbankError, match="may not choose its backbone weights"):
        Detector.from_state(fitted.state_tensors(), meta, "m")
    det = Detector.from_state(fitted.state_tensors(), meta, "m", weights="/new/place/weights.pth")
    assert det.config.weights == "/new/place/weights.pth"
    plain = Detector.from_state(fitted.state_tensors(), fitted.info(), "m")
    assert plain.config.weights is None


def test_the_inference_model_runs_without_a_clock_and_laps_with_one(fitted, synthetic_root):
    images = sorted((synthetic_root / "test" / "good").glob("*.png"))[:2]
    x, _ = next(iter(fitted.stream(images)))
    batch = fitted.model_(x)                                  # no clock
    assert batch.maps.shape[0] == 2 and batch.scores.final.shape == (2,)
    fitted.predict(images)
    t = fitted.last_timings_
    assert t["extract"] > 0 and t["search"] > 0               # laps taken inside the model


def _batches(n_batches, b):
    return [(torch.zeros(b, 3, 4, 4), [f"{i}-{j}" for j in range(b)]) for i in range(n_batches)]


def test_predict_batches_progress_bar_counts_images(capsys):
    def handle(x, names, clock):
        clock.lap("extract")
        return list(names)

    out, timings = predict_batches(_batches(2, 2), 4, False, PREDICT_STEPS, handle)
    assert out == ["0-0", "0-1", "1-0", "1-1"] and set(timings) == set(PREDICT_STEPS)
    assert capsys.readouterr().err == ""                      # progress=False: no bar
    predict_batches(_batches(2, 2), 4, True, PREDICT_STEPS, handle)
    err = capsys.readouterr().err
    assert "predict" in err and "4/4" in err and "6/4" not in err
