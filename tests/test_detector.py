import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import FAST, split_items
from patchbank.detector import Detector
from patchbank.errors import PatchbankError
from patchbank.evaluation.metrics import auroc
from patchbank.io.model_file import load_model
from patchbank.sampling import coreset_size


def test_fit_predict_separates_synthetic_defects(fitted, synthetic_root):
    items, labels = split_items(synthetic_root)
    preds = fitted.predict(items)
    scores = np.array([p.score for p in preds])
    assert auroc(labels, scores) > 0.9
    for p in preds:
        assert p.anomaly_map.shape == (96, 96) and p.anomaly_map.dtype == np.float32
        assert p.normalized_score == pytest.approx((p.score - fitted.calibration_.stats_.mean_) / fitted.calibration_.stats_.std_)
        assert p.is_anomalous == (p.normalized_score > fitted.threshold_)
    # the defect pixels are hotter than the rest of the same image
    mask_dir = synthetic_root / "ground_truth"
    p = preds[labels.index(1)]
    stem = items[labels.index(1)]
    mask = np.array(Image.open(mask_dir / stem.parent.name / f"{stem.stem}_mask.png")) > 0
    assert p.anomaly_map[mask].mean() > p.anomaly_map[~mask].mean()


def _all_patch_rows(det, root):
    """Every training patch's per-layer rows, streamed the way the fit streams them."""
    layers = []
    with torch.inference_mode():
        for x, _ in det.stream(sorted((root / "train" / "good").glob("*.png"))):
            layers.append(det.extractor(x)[0])
    return [torch.cat(parts) for parts in zip(*layers)]


def test_bank_is_uniform_subsample_of_streamed_patches(fitted, synthetic_root):
    from patchbank.sampling import UniformSampler

    rows = _all_patch_rows(fitted, synthetic_root)
    n = rows[0].shape[0]
    assert n == 16 * fitted.grid_[0] * fitted.grid_[1]
    keep = UniformSampler(0.10, seed=0).indices(n)          # RP-Coreset: the seeded uniform draw
    assert keep.numel() == coreset_size(n, 0.10)
    want = fitted.embed([layer[keep] for layer in rows])
    assert fitted.bank_.shape == (keep.numel(), 128)
    torch.testing.assert_close(fitted.bank_, want, rtol=1e-5, atol=1e-5)


def test_calibration_is_not_biased_by_self_matching(fitted, synthetic_root):
    """Calibration scores (each training image without its own bank entries) must be far above
    what training images get against their own patches."""
    train = sorted((synthetic_root / "train" / "good").glob("*.png"))
    full = Detector.from_preset("lmf-core", progress=False, sampler="none", **FAST).fit(train)
    self_scores = np.array([p.score for p in full.predict(train)])
    assert full.calibration_.stats_.mean_ > 3 * self_scores.mean()
    assert fitted.calibration_.scores_.size == len(train) == fitted.n_train_images_


def test_save_load_round_trip_is_bit_exact(fitted, synthetic_root, tmp_path):
    path = tmp_path / "m.patchbank"
    size = fitted.save(path)
    assert size == path.stat().st_size > fitted.bank_.numel() * 4
    loaded = Detector.load(path, progress=False)
    assert torch.equal(loaded.bank_, fitted.bank_)
    assert torch.equal(loaded.scorer_.embedding.projection_.matrix_, fitted.scorer_.embedding.projection_.matrix_)
    assert loaded.threshold_ == fitted.threshold_ and loaded.config == fitted.config
    items, _ = split_items(synthetic_root)
    a, b = fitted.predict(items[:3]), loaded.predict(items[:3])
    for x, y in zip(a, b):
        assert x.score == y.score and np.array_equal(x.anomaly_map, y.anomaly_map)
    with pytest.raises(PatchbankError, match="already exists"):
        fitted.save(path)
    assert fitted.save(path, overwrite=True) == size


def test_fp16_bank_halves_storage(fitted, tmp_path):
    det16 = Detector(fitted.config.replace(bank_dtype="float16"), progress=False)
    det16.__dict__.update({k: v for k, v in fitted.__dict__.items() if k.endswith("_")})
    det16.save(tmp_path / "h.patchbank")
    tensors, meta = load_model(tmp_path / "h.patchbank")
    assert tensors["bank"].dtype == torch.float16
    assert meta["bank_bytes"] == fitted.info()["bank_bytes"] // 2
    loaded = Detector.load(tmp_path / "h.patchbank", progress=False)
    assert torch.allclose(loaded.bank_, fitted.bank_, atol=1e-2, rtol=1e-3)


def test_model_file_errors(fitted, tmp_path):
    path = tmp_path / "m.patchbank"
    fitted.save(path)
    tensors, meta = load_model(path)
    # another format version
    other = tmp_path / "v99.patchbank"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(other),
              metadata={"format": "patchbank", "format_version": "99", "patchbank": json.dumps(meta)})
    with pytest.raises(PatchbankError, match="format version 99"):
        Detector.load(other)
    # a safetensors file that is not ours, and a file that is not safetensors at all
    alien = tmp_path / "alien.safetensors"
    save_file({"w": torch.zeros(2)}, str(alien))
    with pytest.raises(PatchbankError, match="not a patchbank model"):
        Detector.load(alien)
    junk = tmp_path / "junk.patchbank"
    junk.write_bytes(b"\x80\x04 definitely a pickle")
    with pytest.raises(PatchbankError, match="not a readable patchbank model"):
        Detector.load(junk)
    with pytest.raises(PatchbankError, match="not found"):
        Detector.load(tmp_path / "missing.patchbank")


def test_bad_training_inputs(tmp_path, synthetic_root):
    det = Detector.from_preset("lmf-core", progress=False, **FAST)
    with pytest.raises(PatchbankError, match="folder not found"):
        det.fit(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PatchbankError, match="no images"):
        det.fit(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in sorted((synthetic_root / "train" / "good").glob("*.png"))[:5]:
        (bad / p.name).write_bytes(p.read_bytes())
    (bad / "zz_corrupt.png").write_bytes(b"not an image")
    with pytest.raises(PatchbankError, match="zz_corrupt.png"):
        det.fit(bad)
    with pytest.raises(PatchbankError, match="not fitted"):
        det.predict(sorted(bad.glob("0*.png")))


def test_grayscale_and_array_inputs_are_converted(fitted, synthetic_root, tmp_path):
    src = sorted((synthetic_root / "test" / "good").glob("*.png"))[0]
    gray = tmp_path / "gray.png"
    Image.open(src).convert("L").save(gray)
    arr = np.array(Image.open(src).convert("L"))
    p_file, p_arr = fitted.predict([gray, arr])
    assert p_file.path == str(gray) and p_arr.path is None
    assert p_file.score == pytest.approx(p_arr.score, rel=1e-6)


def test_from_preset_rejects_bad_override():
    with pytest.raises(PatchbankError, match="kappa"):
        Detector.from_preset("lmf-core", kappa=2.0)


def test_patchcore_preset_uses_greedy_coreset_on_all_patches(synthetic_root):
    from patchbank.sampling.greedy import NaiveGreedySampler

    det = Detector.from_preset("patchcore", progress=False, **FAST).fit(synthetic_root / "train" / "good")
    n_patches = det.grid_[0] * det.grid_[1]
    assert det.scorer_.embedding.projection_ is None
    assert det.bank_.shape[1] == sum(det.backbone.channels)       # equal-weight, full dimension
    items, labels = split_items(synthetic_root)
    scores = np.array([p.score for p in det.predict(items)])
    assert auroc(labels, scores) > 0.9
    # the bank is the brute-force greedy selection over all streamed patches, in its order
    rows = torch.cat(_all_patch_rows(det, synthetic_root), dim=1)     # equal fusion = concatenation
    assert rows.shape[0] == 16 * n_patches
    sel = NaiveGreedySampler(0.10, proxy_dim=128, seed=0).run(rows)
    assert torch.equal(det.bank_, rows[sel])


def test_predict_views_equals_predict_on_the_same_images(fitted, synthetic_root):
    """Views prepared elsewhere (a distributed engine's decoding tasks) score exactly as the
    images themselves; anything that is not a prepared view is refused in one line."""
    from patchbank.errors import PatchbankError
    from patchbank.io.images import prepare_input

    images = sorted((synthetic_root / "test" / "spot").glob("*.png"))[:3]
    want = fitted.predict(images, batch_size=2)
    got = fitted.predict_views([prepare_input(p, fitted.config) for p in images], names=images, batch_size=2)
    assert [(p.score, p.normalized_score, p.is_anomalous) for p in got] == \
        [(p.score, p.normalized_score, p.is_anomalous) for p in want]
    assert [p.path for p in got] == images
    with pytest.raises(PatchbankError, match="view #0: expected a prepared input"):
        fitted.predict_views([np.zeros((10, 10, 3), np.uint8)])


def test_set_windows_refuses_lists_of_other_lengths():
    # one window per prediction, in order: a missing or extra window is a bug to surface, not to
    # zip away (a prediction would silently keep no window, or the wrong one)
    import numpy as np

    from patchbank.io.image_coords import Window
    from patchbank.pipeline.inference import Prediction, set_windows

    preds = [Prediction(None, 1.0, 0.0, False, np.zeros((2, 2), np.float32)) for _ in range(2)]
    windows = [Window.__new__(Window) for _ in range(3)]
    with pytest.raises(ValueError):
        set_windows(preds, windows)
    with pytest.raises(ValueError):
        set_windows(preds + preds, windows)
    assert set_windows(preds, windows[:2]) is preds and preds[1].window is windows[1]
