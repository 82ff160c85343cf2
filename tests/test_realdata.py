"""Smoke test on real images: a subset of Magnetic Tile Defect (../shared/data/mtd)."""
import numpy as np
import pytest

from conftest import SHARED_DATA
from patchbank.detector import Detector
from patchbank.io.images import list_images
from patchbank.evaluation.metrics import auroc

MTD = SHARED_DATA / "mtd"
pytestmark = pytest.mark.skipif(not (MTD / "train" / "good").is_dir(),
                                reason=f"real data not found at {MTD} (see ../shared/data/README.md)")


def test_lmf_core_on_mtd_subset_is_well_above_chance():
    train = list_images(MTD / "train" / "good")[::6]                  # 127 images
    good = list_images(MTD / "test" / "good")[::4]                    # 48
    bad = list_images(MTD / "test" / "blowhole")[::3] + list_images(MTD / "test" / "break")[::3]
    det = Detector.from_preset("lmf-core", progress=False).fit(train)
    preds = det.predict(good + bad)
    scores = np.array([p.score for p in preds])
    labels = np.r_[np.zeros(len(good)), np.ones(len(bad))]
    assert auroc(labels, scores) > 0.75
    # normal test images mostly pass at the calibrated 1% false-positive threshold
    normal_flagged = np.mean([p.is_anomalous for p in preds[:len(good)]])
    assert normal_flagged < 0.2
