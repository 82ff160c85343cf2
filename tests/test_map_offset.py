"""``Config.map_offset = "position"``: each grid position's mean leave-one-image-out patch score
of the training images is subtracted before the map.

Oracles: the offset is recomputed from plain ``torch.cdist`` distances of each training image to
the bank rows of the other images (the bank rows' source images from the uniform sampler's own
draw); the maps are checked against the linearity of the map (``A_h (S - m) A_w^T = A_h S A_w^T
- A_h m A_w^T``) on a model fitted without the offset."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import FAST, assert_runtime_matches_torch, cuda_copy_predicts_alike, split_items
from patchbank.detector import Detector
from patchbank.errors import PatchbankError
from patchbank.io.images import list_images
from patchbank.io.model_file import load_model
from patchbank.sampling import make_sampler


def _fit(preset: str, root, device: str = "cpu", **overrides) -> Detector:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # few training images
        return Detector.from_preset(preset, device=device, progress=False,
                                    **{**FAST, **overrides}).fit(
            root / "train" / "good")


@pytest.fixture(scope="module")
def pair(synthetic_root):
    """The default preset fitted twice with one seed: without and with the position offset."""
    return _fit("patchbank", synthetic_root), _fit("patchbank", synthetic_root, map_offset="position")


def test_offset_is_the_mean_leave_one_image_out_patch_score(synthetic_root):
    det = _fit("lmf-core", synthetic_root, map_offset="position")
    items = list_images(synthetic_root / "train" / "good")
    p = det.grid_[0] * det.grid_[1]
    source = make_sampler(det.config).indices(len(items) * p) // p
    bank = det.bank_.double()
    grids = []
    with torch.inference_mode():
        for x, _ in det.stream(items):
            layers, grid = det.extractor(x)
            grids.extend(det.embed(layers).view(x.shape[0], p, -1).double())
    want = torch.stack([torch.cdist(e, bank[source != i], compute_mode="donot_use_mm_for_euclid_dist")
                        .min(1).values for i, e in enumerate(grids)]).mean(0)
    got = det.scorer_.map_offset.double()
    assert got.shape == (p,)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), float((got - want).abs().max())
    assert float(got.std()) > 0      # positions differ: the offset is not a constant


def test_offset_moves_the_map_and_nothing_else(pair, synthetic_root):
    plain, offset = pair
    assert plain.scorer_.map_offset is None
    assert torch.equal(plain.bank_, offset.bank_)
    assert np.array_equal(plain.calibration_.base_scores_, offset.calibration_.base_scores_)
    assert plain.threshold_ == offset.threshold_
    # the calibration's map descriptors are taken from the offset maps
    assert not np.allclose(plain.calibration_.descriptors_, offset.calibration_.descriptors_)
    items, _ = split_items(synthetic_root)
    a_h, a_w = offset.scorer_.map_operators()
    shift = (a_h.double() @ offset.scorer_.map_offset.double().view(*offset.grid_) @ a_w.double().T).numpy()
    for p, q in zip(plain.predict(items), offset.predict(items)):
        assert (p.score, p.normalized_score, p.is_anomalous) == (q.score, q.normalized_score, q.is_anomalous)
        span = float(np.abs(p.anomaly_map).max())
        assert np.abs((p.anomaly_map - shift) - q.anomaly_map).max() <= 1e-5 * span


def test_model_file_keeps_the_offset(pair, synthetic_root, tmp_path):
    _, offset = pair
    offset.save(tmp_path / "m.patchbank")
    tensors, meta = load_model(tmp_path / "m.patchbank")
    assert meta["config"]["map_offset"] == "position"
    assert torch.equal(tensors["map_offset"], offset.scorer_.map_offset.cpu())
    loaded = Detector.load(tmp_path / "m.patchbank", progress=False)
    items, _ = split_items(synthetic_root)
    for p, q in zip(offset.predict(items), loaded.predict(items)):
        assert p.score == q.score and np.array_equal(p.anomaly_map, q.anomaly_map)


def _write(path, tensors, meta):
    import json

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
              metadata={"format": "patchbank", "format_version": "2", "patchbank": json.dumps(meta)})
    return path


@pytest.mark.parametrize("edit, needles", [
    ("drop", ("'map_offset'", "missing")),
    ("short", ("'map_offset'", "shape")),
    ("nan", ("'map_offset'", "NaN")),
    ("float64", ("'map_offset'", "float32")),
    ("config_none", ("'map_offset'", "config.map_offset is 'none'")),
])
def test_bad_offset_tensor_is_one_line(pair, tmp_path, edit, needles):
    _, offset = pair
    offset.save(tmp_path / "m.patchbank")
    tensors, meta = load_model(tmp_path / "m.patchbank")
    t = tensors["map_offset"]
    if edit == "drop":
        tensors.pop("map_offset")
    elif edit == "short":
        tensors["map_offset"] = t[:-1].clone()
    elif edit == "nan":
        tensors["map_offset"] = t.clone()
        tensors["map_offset"][3] = math.nan
    elif edit == "float64":
        tensors["map_offset"] = t.double()
    else:
        meta["config"]["map_offset"] = "none"
    path = _write(tmp_path / "edited.patchbank", tensors, meta)
    with pytest.raises(PatchbankError) as info:
        Detector.load(path, progress=False)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg, msg
    for needle in needles:
        assert needle in msg, msg


@pytest.mark.parametrize("runtime", ["onnx"])
def test_exported_graph_subtracts_the_offset(pair, synthetic_root, tmp_path, runtime):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnx")
    from patchbank.export.exporter import export_model

    _, offset = pair
    export_model(offset, tmp_path / "ex", [runtime])
    assert_runtime_matches_torch(offset, tmp_path / "ex", runtime, split_items(synthetic_root)[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_offset_on_cuda_gives_the_cpu_answers(pair, synthetic_root, tmp_path):
    # A CPU-fitted offset model predicted on cuda (the offset moves to the scores' device), and
    # an offset fitted on cuda (its leave-one-image-out grids come from the GPU search).
    _, offset = pair
    gpu = cuda_copy_predicts_alike(offset, split_items(synthetic_root)[0], tmp_path / "cpu.patchbank")
    assert gpu.scorer_.map_offset.device.type == "cuda"
    fitted = _fit("patchbank", synthetic_root, map_offset="position", device="cuda")
    assert fitted.scorer_.map_offset.device.type == "cuda"
    if torch.equal(fitted.bank_.cpu(), offset.bank_):
        torch.testing.assert_close(fitted.scorer_.map_offset.cpu(), offset.scorer_.map_offset,
                                   rtol=1e-4, atol=1e-4)
