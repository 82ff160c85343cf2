"""Model files written before the package was reshaped (commit 6850f23, ``tests/data/make_legacy.py``)
still load, and give the predictions that code gave, to float rounding.

Since session 18 the exact search measures its neighbours' distances from the differences
(``patchbank.search.exact.refine``) instead of the expansion ``||q||^2 - 2 q.m + ||m||^2`` the
fixture was computed with, so the tolerances below are the expansion's rounding on these banks
(the ``patchcore`` model's scores moved by up to 2.5e-6 relative, its normalised scores by up to
1.2e-4 absolute), and a test checks that the new values are the nearer ones to a float64 search."""
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
        assert p.score == pytest.approx(w["score"], rel=5e-6)
        assert p.normalized_score == pytest.approx(w["normalized_score"], rel=5e-6, abs=3e-4)
        assert p.is_anomalous == w["is_anomalous"]
        assert p.struct_score == pytest.approx(w["struct_score"], rel=5e-5)
        assert float(p.anomaly_map.astype(np.float64).sum()) == pytest.approx(w["map_sum"], rel=1e-6)
        assert float(p.anomaly_map.max()) == pytest.approx(w["map_max"], rel=5e-6)


def _float64_search(self, queries, k=1):
    """ExactSearch.search in float64 (the reference): cdist, the masked rows left out."""
    d = torch.cdist(queries.double(), self.bank.double()).pow(2)
    d = d.masked_fill(torch.isinf(self.bank_sqnorm).unsqueeze(0), float("inf"))
    v, i = d.topk(min(k, len(self)), dim=1, largest=False)
    return v.float(), i


@pytest.mark.parametrize("name", ["lmf_core", "patchcore"])
def test_the_refined_search_is_nearer_a_float64_search_than_the_fixture(name, legacy_root, one_thread,
                                                                         monkeypatch):
    from patchbank.search.exact import ExactSearch

    images = sorted(list_images(legacy_root / "test" / "good")) + \
        sorted(list_images(legacy_root / "test" / "scratch"))

    def scores():
        det = Detector.load(DATA / f"legacy_{name}.patchbank", progress=False)
        assert det.search_kind_ == "exact"
        return np.array([p.score for p in det.predict(images)])

    now = scores()
    monkeypatch.setattr(ExactSearch, "search", _float64_search)
    reference = scores()
    fixture = np.array([w["score"] for w in EXPECTED[name]])
    assert np.abs(now - reference).max() <= np.abs(fixture - reference).max()
    assert np.abs(now - reference).max() <= 5e-6 * np.abs(reference).max()


def test_legacy_predictions_separate_defects():
    """The fixture itself is meaningful: defective images score above the good ones."""
    for name in ("lmf_core", "patchcore", "hybrid"):
        scores = [w["score"] for w in EXPECTED[name]]
        assert min(scores[2:]) > max(scores[:2])


def test_threshold_rule_of_old_files_is_kept_and_new_fits_are_conformal(fitted, tmp_path):
    # Config.threshold_rule: a header written before the field existed has no such key and keeps
    # the interpolated quantile it was calibrated with; every preset fits with the conformal rank.
    from patchbank.io.model_file import load_model
    from patchbank.pipeline.conformal import conformal_threshold
    from safetensors.torch import save_file

    assert fitted.config.threshold_rule == "conformal"
    path = tmp_path / "new.patchbank"
    fitted.save(path)
    z = fitted.calibration_.stats_.normalize(fitted.calibration_.scores_)
    again = Detector.load(path, progress=False)
    assert again.threshold_ == fitted.threshold_ == conformal_threshold(z, fitted.config.target_fpr)
    tensors, meta = load_model(path)
    # such a file records the threshold of its rule (a header whose numbers its tensors do not
    # give is refused: tests/test_bad_models.py)
    old = dict(meta, config={k: v for k, v in meta["config"].items() if k != "threshold_rule"},
               threshold=float(np.quantile(z, 1 - fitted.config.target_fpr)))
    old_path = tmp_path / "old.patchbank"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(old_path),
              metadata={"format": "patchbank", "format_version": "2", "patchbank": json.dumps(old)})
    legacy = Detector.load(old_path, progress=False)
    assert legacy.config.threshold_rule == "quantile"
    assert legacy.threshold_ == pytest.approx(float(np.quantile(z, 1 - fitted.config.target_fpr)), rel=1e-12)
    assert legacy.threshold_ != again.threshold_
