"""Model files written before the package was reshaped (commit 6850f23, ``tests/data/make_legacy.py``)
still load, and give the predictions that code gave, to float rounding."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from patchbank.detector import Detector
from patchbank.io.images import list_images
from patchbank.io.synthetic import make_dataset

DATA = Path(__file__).parent / "data"
EXPECTED = json.loads((DATA / "legacy_predictions.json").read_text())


@pytest.fixture(scope="module")
def legacy_root(tmp_path_factory):
    # the same synthetic images make_legacy.py scored (a pure function of these arguments)
    return make_dataset(tmp_path_factory.mktemp("legacy"), n_train=12, n_test_good=2,
                        n_test_defect=2, size=96, seed=0)


@pytest.fixture
def one_thread():
    # the fixture was computed with 1 thread (tests/conftest.py); another test may have changed
    # the count, and a different BLAS split moves scores by ~1e-6
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", ["lmf_core", "patchcore", "hybrid"])
def test_legacy_model_predicts_as_before(name, legacy_root, one_thread):
    det = Detector.load(DATA / f"legacy_{name}.patchbank", progress=False)
    images = sorted(list_images(legacy_root / "test" / "good")) + \
        sorted(list_images(legacy_root / "test" / "scratch"))
    preds = det.predict(images)
    want = EXPECTED[name]
    assert [Path(p.path).relative_to(legacy_root).as_posix() for p in preds] == [w["file"] for w in want]
    assert det.threshold_ == pytest.approx(EXPECTED[name + "_threshold"], rel=1e-9)
    for p, w in zip(preds, want):
        assert p.score == pytest.approx(w["score"], rel=1e-6)
        assert p.normalized_score == pytest.approx(w["normalized_score"], rel=1e-6, abs=1e-6)
        assert p.is_anomalous == w["is_anomalous"]
        assert p.struct_score == pytest.approx(w["struct_score"], rel=1e-6)
        assert float(p.anomaly_map.astype(np.float64).sum()) == pytest.approx(w["map_sum"], rel=1e-6)
        assert float(p.anomaly_map.max()) == pytest.approx(w["map_max"], rel=1e-6)


def test_legacy_predictions_separate_defects():
    """The fixture itself is meaningful: defective images score above the good ones."""
    for name in ("lmf_core", "patchcore", "hybrid"):
        scores = [w["score"] for w in EXPECTED[name]]
        assert min(scores[2:]) > max(scores[:2])


def test_threshold_rule_of_old_files_is_kept_and_new_fits_are_conformal(fitted, tmp_path):
    # Config.threshold_rule: a header written before the field existed has no such key and keeps
    # the interpolated quantile it was calibrated with; every preset fits with the conformal rank.
    from patchbank.io.model_file import load_model
    from patchbank.pipeline.calibration import conformal_threshold
    from safetensors.torch import save_file

    assert fitted.config.threshold_rule == "conformal"
    path = tmp_path / "new.patchbank"
    fitted.save(path)
    z = fitted.calibration_.stats_.normalize(fitted.calibration_.scores_)
    again = Detector.load(path, progress=False)
    assert again.threshold_ == fitted.threshold_ == conformal_threshold(z, fitted.config.target_fpr)
    tensors, meta = load_model(path)
    old = dict(meta, config={k: v for k, v in meta["config"].items() if k != "threshold_rule"})
    old_path = tmp_path / "old.patchbank"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(old_path),
              metadata={"format": "patchbank", "format_version": "2", "patchbank": json.dumps(old)})
    legacy = Detector.load(old_path, progress=False)
    assert legacy.config.threshold_rule == "quantile"
    assert legacy.threshold_ == pytest.approx(float(np.quantile(z, 1 - fitted.config.target_fpr)), rel=1e-12)
    assert legacy.threshold_ != again.threshold_
