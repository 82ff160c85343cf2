"""evaluate under a centre crop (the presets' default is 256 -> 224) and keep_aspect: the written
pixel metrics are scikit-learn's on masks resized and cropped by an independent route (PIL
nearest resize, torchvision's centre crop), so a mask misaligned with its map would fail."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import FAST
from patchbank.evaluation.runner import evaluate
from patchbank.io.synthetic import make_dataset

sk = pytest.importorskip("sklearn.metrics")
TF = pytest.importorskip("torchvision.transforms.functional")


def _oracle_mask(mask: np.ndarray, image_size, crop, keep_aspect) -> np.ndarray:
    h, w = image_size
    im = Image.fromarray(mask.astype(np.uint8) * 255)
    if keep_aspect:
        s = max(h / im.height, w / im.width)
        im = im.resize((max(w, round(im.width * s)), max(h, round(im.height * s))), Image.NEAREST)
        im = TF.center_crop(im, [h, w])
    else:
        im = im.resize((w, h), Image.NEAREST)
    return np.asarray(TF.center_crop(im, list(crop))) > 127


@pytest.mark.parametrize("keep_aspect", [False, True])
def test_evaluate_with_centre_crop_aligns_masks(tmp_path, recorded_predictions, keep_aspect):
    root = make_dataset(tmp_path / "part", n_train=8, n_test_good=2, n_test_defect=2, size=64, seed=4)
    over = {**FAST, "image_size": (80, 72), "crop_size": (64, 56), "keep_aspect": keep_aspect}
    captured = recorded_predictions
    evaluate(root, "lmf-core", over, seeds=(0,), out_dir=tmp_path / "o", progress=False)
    (items, preds), = captured
    written = json.loads((tmp_path / "o" / "runs" / "part__seed0.json").read_text())["metrics"]
    masks = []
    for path, pred in zip(map(Path, items), preds):
        assert pred.anomaly_map.shape == (64, 56)
        gt = root / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
        if path.parent.name == "good":
            masks.append(np.zeros((64, 56), bool))
        else:
            masks.append(_oracle_mask(np.asarray(Image.open(gt).convert("L")) > 0, (80, 72), (64, 56), keep_aspect))
    flat_y = np.concatenate([m.ravel() for m in masks])
    flat_s = np.concatenate([p.anomaly_map.ravel() for p in preds]).astype(np.float32)
    assert 0 < flat_y.sum() < flat_y.size
    assert written["pixel_auroc"] == pytest.approx(sk.roc_auc_score(flat_y, flat_s), rel=1e-9)
    assert written["pixel_ap"] == pytest.approx(sk.average_precision_score(flat_y, flat_s), rel=1e-6)
