"""Tampered and malformed model files: every one is a one-line PatchbankError naming the file and
the tensor or field, or (for edits that change nothing a prediction uses) a model predicting
exactly as the original; never another exception, never a silently different score.

One tiny lmf-core model is fitted per module; each case writes an edited copy with safetensors
directly (the header a user or another tool could write) and loads it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from patchbank.detector import Detector
from patchbank.errors import PatchbankError
from patchbank.io.model_checks import (check_backbone_fit, check_header_weights, check_model_state,
                                       check_multi_header, check_patch_grid)
from patchbank.io.model_file import load_model
from patchbank.io.synthetic import make_dataset

FAST = dict(backbone="efficientnet_lite0", image_size=96, crop_size=None, batch_size=8)
SHA = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
HEADER_SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                           suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                  HealthCheck.too_slow])


class Fitted:
    """The module's model: detector, its file, its tensors and header, reference predictions."""

    def __init__(self, det: Detector, path: Path, images: list[Path]):
        self.det, self.path, self.images = det, path, images
        self.tensors, self.meta = load_model(path)
        self.reference = det.predict(images)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Fitted:
    tmp = tmp_path_factory.mktemp("badmodels")
    root = make_dataset(tmp / "data", n_train=12, n_test_good=2, n_test_defect=2, size=96, seed=0)
    det = Detector.from_preset("lmf-core", progress=False, **FAST).fit(root / "train" / "good")
    det.save(tmp / "m.patchbank")
    images = [sorted((root / "test" / "good").glob("*.png"))[0],
              sorted((root / "test" / "scratch").glob("*.png"))[0]]
    return Fitted(det, tmp / "m.patchbank", images)


def write(path: Path, tensors: dict, meta) -> Path:
    """A model file with exactly these tensors and this header (no checks on the way)."""
    header = {"format": "patchbank", "format_version": "2",
              "patchbank": meta if isinstance(meta, str) else json.dumps(meta)}
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, str(path), metadata=header)
    return path


def same_predictions(a, b) -> bool:
    return all(x.score == y.score and x.normalized_score == y.normalized_score
               and x.is_anomalous == y.is_anomalous and np.array_equal(x.anomaly_map, y.anomaly_map)
               for x, y in zip(a, b)) and len(a) == len(b)


def outcome(model: Fitted, path: Path) -> str:
    """"error" (a one-line PatchbankError naming the file) or "same" (identical predictions);
    anything else fails the test.  Loads as Detector.load does, sharing the fitted backbone."""
    try:
        tensors, meta = load_model(path)
        if meta.get("kind") == "multi":
            Detector.load(path, progress=False)
        det = Detector.from_state(tensors, meta, str(path), progress=False, backbone=model.det.backbone)
    except PatchbankError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc), str(exc)
        return "error"
    try:   # first use: the backbone's sha256 (detector.py; its message does not name the file)
        preds = det.predict(model.images)
    except PatchbankError as exc:
        assert "\n" not in str(exc), str(exc)
        return "error"
    assert same_predictions(preds, model.reference), "a tampered model gave different predictions"
    return "same"


def refused(model: Fitted, tmp_path: Path, tensors: dict, meta, *needles: str, at_load: bool = True) -> str:
    """Write the edited model, load it, assert a one-line error naming ``needles`` and, when
    refused ``at_load``, the file (errors at first use come from detector.py)."""
    path = write(tmp_path / "edited.patchbank", tensors, meta)
    with pytest.raises(PatchbankError) as info:
        det = Detector.load(path, progress=False)
        assert at_load is False, "loaded a model that should have been refused"
        det.predict(model.images)
    msg = str(info.value)
    assert "\n" not in msg and (str(path) in msg or not at_load), msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def edited_meta(model: Fitted, **changes) -> dict:
    meta = json.loads(json.dumps(model.meta))
    for key, value in changes.items():
        if key.startswith("config__"):
            meta["config"][key[len("config__"):]] = value
        else:
            meta[key] = value
    return meta


# ---------------------------------------------------------------------------- item 7: weights
@pytest.mark.parametrize("weights", ["random", "/etc/passwd", "https://example.com/w.pth", "w.safetensors"])
def test_header_cannot_choose_weights(model, tmp_path, weights):
    meta = edited_meta(model, config__weights=weights)
    refused(model, tmp_path, model.tensors, meta, "config.weights", "--weights")


def test_header_random_backbone_without_sha_refused(model, tmp_path):
    """Item 7 as reported: backbone_sha256 null and weights "random" ran a random backbone."""
    meta = edited_meta(model, config__weights="random", backbone_sha256=None)
    refused(model, tmp_path, model.tensors, meta, "config.weights")
    with pytest.raises(PatchbankError, match="backbone_sha256"):
        check_model_state(model.tensors, meta, "m", weights_given=True)


@pytest.mark.parametrize("sha", [None, "", "abc", SHA.upper(), SHA[:-1], SHA + "0", 42, [SHA]])
def test_backbone_sha256_must_be_a_digest(model, tmp_path, sha):
    refused(model, tmp_path, model.tensors, edited_meta(model, backbone_sha256=sha), "backbone_sha256")


def test_mismatching_sha256_refused_at_first_use(model, tmp_path):
    meta = edited_meta(model, backbone_sha256="0" * 64)
    refused(model, tmp_path, model.tensors, meta, "backbone weights differ", at_load=False)


def test_check_header_weights_is_separate_and_skippable(model):
    meta = edited_meta(model, config__weights="/some/local/file.pth")
    with pytest.raises(PatchbankError, match=r"m: config.weights .*--weights"):
        check_header_weights(meta, "m")
    check_model_state(model.tensors, meta, "m", weights_given=True)   # the caller passed weights
    check_header_weights(model.meta, "m")


# ---------------------------------------------------------------------------- item 12: tensors
def _without(tensors: dict, *names: str) -> dict:
    return {k: v for k, v in tensors.items() if k not in names}


def _with(tensors: dict, **replace) -> dict:
    out = dict(tensors)
    out.update({k.replace("__", "."): v for k, v in replace.items()})
    return out


def test_bank_checks(model, tmp_path):
    t, bank = model.tensors, model.tensors["bank"]
    refused(model, tmp_path, _with(t, bank=bank.reshape(bank.shape[1], bank.shape[0])), model.meta, "'bank'", "shape")
    refused(model, tmp_path, _with(t, bank=bank.reshape(-1, bank.shape[1] // 2)), model.meta, "'bank'")
    refused(model, tmp_path, _with(t, bank=bank.half()), model.meta, "'bank'", "float32")
    refused(model, tmp_path, _with(t, bank=bank.double()), model.meta, "'bank'", "float32")
    refused(model, tmp_path, _with(t, bank=bank[:0]), model.meta, "'bank'")
    refused(model, tmp_path, _with(t, bank=bank.flatten()), model.meta, "'bank'")
    nan = bank.clone()
    nan[3, 5] = float("nan")
    refused(model, tmp_path, _with(t, bank=nan), model.meta, "'bank'", "NaN")
    inf = bank.clone()
    inf[0, 0] = float("inf")
    refused(model, tmp_path, _with(t, bank=inf), model.meta, "'bank'", "infinite")
    refused(model, tmp_path, _without(t, "bank"), model.meta, "'bank'", "missing")


def test_bank_size_must_match_header_and_sampler(model, tmp_path):
    t, bank = model.tensors, model.tensors["bank"]
    # a bank cut to half, header edited to match: not the coreset a fit keeps of 12 x 12 x 12 patches
    meta = edited_meta(model, bank_entries=bank.shape[0] // 2, bank_bytes=bank.shape[0] // 2 * bank.shape[1] * 4)
    refused(model, tmp_path, _with(t, bank=bank[:bank.shape[0] // 2]), meta, "bank_entries")
    refused(model, tmp_path, t, edited_meta(model, bank_entries=bank.shape[0] + 1), "'bank'")
    refused(model, tmp_path, t, edited_meta(model, bank_dim=64), "'bank'")
    refused(model, tmp_path, t, edited_meta(model, bank_bytes=1), "bank_bytes")
    refused(model, tmp_path, t, edited_meta(model, bank_entries="173"), "bank_entries")


def test_projection_checks(model, tmp_path):
    t, proj = model.tensors, model.tensors["projection.matrix"]
    refused(model, tmp_path, _with(t, projection__matrix=proj.T.contiguous()), model.meta, "'projection.matrix'")
    refused(model, tmp_path, _without(t, "projection.matrix"), model.meta, "'projection.matrix'", "missing")
    refused(model, tmp_path, _with(t, projection__matrix=proj.double()), model.meta, "'projection.matrix'")
    nan = proj.clone()
    nan[0, 0] = float("nan")
    refused(model, tmp_path, _with(t, projection__matrix=nan), model.meta, "'projection.matrix'", "NaN")
    meta = edited_meta(model, config__projection_dim=None)
    refused(model, tmp_path, t, meta, "projection")
    refused(model, tmp_path, t, edited_meta(model, config__projection_dim=64), "projection_dim")


def test_fusion_checks(model, tmp_path):
    t = model.tensors
    keep = t["fusion.keep.0"]
    refused(model, tmp_path, _with(t, fusion__keep__0=keep.flip(0).contiguous()), model.meta, "'fusion.keep.0'", "increasing")
    refused(model, tmp_path, _with(t, fusion__keep__0=keep - 1000), model.meta, "'fusion.keep.0'")
    refused(model, tmp_path, _with(t, fusion__keep__0=keep.int()), model.meta, "'fusion.keep.0'", "int64")
    refused(model, tmp_path, _with(t, fusion__keep__0=keep.float()), model.meta, "'fusion.keep.0'", "int64")
    refused(model, tmp_path, _with(t, fusion__keep__0=keep[:-1]), model.meta, "fusion.mean.0")
    refused(model, tmp_path, _with(t, fusion__mean__1=t["fusion.mean.1"][:-1]), model.meta, "'fusion.mean.1'")
    nan = t["fusion.scale.0"].clone()
    nan[0] = float("nan")
    refused(model, tmp_path, _with(t, fusion__scale__0=nan), model.meta, "'fusion.scale.0'", "NaN")
    refused(model, tmp_path, _without(t, "fusion.keep.1", "fusion.mean.1", "fusion.scale.1"), model.meta)
    refused(model, tmp_path, _without(t, "fusion.mean.1"), model.meta, "'fusion.mean.1'", "missing")
    refused(model, tmp_path, _without(t, "fusion.layer_weights"), model.meta, "'fusion.layer_weights'")
    extra = _with(t, fusion__keep__3=keep, fusion__mean__3=t["fusion.mean.0"], fusion__scale__3=t["fusion.scale.0"])
    refused(model, tmp_path, extra, model.meta, "fusion")
    refused(model, tmp_path, t, edited_meta(model, config__fusion="equal"), "fusion")
    refused(model, tmp_path, t, edited_meta(model, config__layers=[1, 2, 3]), "layers")


def test_calibration_checks(model, tmp_path):
    t = model.tensors
    base, phi = t["calibration_base_scores"], t["calibration_descriptors"]
    refused(model, tmp_path, _with(t, calibration_base_scores=base.float()), model.meta, "'calibration_base_scores'")
    refused(model, tmp_path, _with(t, calibration_base_scores=base[:-1]), model.meta, "'calibration_base_scores'")
    refused(model, tmp_path, _with(t, calibration_descriptors=phi.T.contiguous()), model.meta, "'calibration_descriptors'")
    refused(model, tmp_path, _with(t, calibration_descriptors=phi[:, :2]), model.meta, "'calibration_descriptors'")
    nan = base.clone()
    nan[0] = float("nan")
    refused(model, tmp_path, _with(t, calibration_base_scores=nan), model.meta, "'calibration_base_scores'", "NaN")
    refused(model, tmp_path, t, edited_meta(model, n_calibration_images=4), "'calibration_base_scores'")
    refused(model, tmp_path, t, edited_meta(model, n_calibration_images=0), "n_calibration_images")
    # every training image calibrates (12 of 12): more than n_train_images is refused
    refused(model, tmp_path, t, edited_meta(model, n_calibration_images=13), "n_calibration_images")


def test_radius_only_with_local_density(model, tmp_path):
    t, n = model.tensors, model.tensors["bank"].shape[0]
    refused(model, tmp_path, _with(t, bank_radius=torch.ones(n)), model.meta, "'bank_radius'", "local_density")
    meta = edited_meta(model, config__local_density=True)
    refused(model, tmp_path, t, meta, "'bank_radius'", "missing")
    refused(model, tmp_path, _with(t, bank_radius=-torch.ones(n)), meta, "'bank_radius'", "negative")
    refused(model, tmp_path, _with(t, bank_radius=torch.ones(n - 1)), meta, "'bank_radius'", "shape")
    check_model_state(_with(t, bank_radius=torch.ones(n)), meta, "m")   # the right shape is accepted


def test_unknown_tensors_refused(model, tmp_path):
    refused(model, tmp_path, _with(model.tensors, payload=torch.zeros(3)), model.meta, "'payload'")
    refused(model, tmp_path, _with(model.tensors, fusion__keep__x=torch.zeros(3, dtype=torch.long)),
            model.meta, "'fusion.keep.x'")


@pytest.mark.parametrize("field,value,needle", [
    ("patch_grid", [12], "patch_grid"), ("patch_grid", [0, 12], "patch_grid"),
    ("patch_grid", [12, 13], "bank_entries"), ("patch_grid", [200, 12], "patch_grid"),
    ("patch_grid", "12x12", "patch_grid"), ("patch_grid", [12.0, 12.0], "patch_grid"),
    ("patch_grid", [True, 12], "patch_grid"), ("n_train_images", 1, "n_train_images"),
    ("n_train_images", 13, "bank_entries"), ("n_train_images", 12.5, "n_train_images"),
    ("n_train_images", None, "n_train_images"), ("search", "faiss-ivf", "search"),
    ("search", "bogus", "search"), ("search", 3, "search"), ("search", None, "search"),
    ("target_fpr", 0.5, "target_fpr"), ("threshold", "high", "threshold"),
    ("score_mean", float("nan"), "score_mean"), ("format_version", 1, "format_version"),
    ("config", "lmf-core", "config"), ("config", None, "config"), ("config", [1, 2], "config"),
    ("config__kappa", 2.0, "kappa"), ("config__crop_size", [224, 224], "crop_size"),
    ("config__bogus_field", 1, "bogus_field"), ("config__bank_dtype", "float16", "'bank'"),
    ("config__sampler", "none", "bank_entries"), ("config__coreset_ratio", 0.5, "bank_entries"),
    ("config__search", "faiss-flat", "search"), ("config__threshold_rule", "bogus", "threshold_rule"),
    ("config__threshold_rule", None, "threshold_rule"),
    ("fitted_with", "torch 2.1", "fitted_with"), ("fitted_with", ["torch"], "fitted_with"),
    ("fitted_with", {"torch": 2.1}, "fitted_with"), ("fitted_with", {"torch": "x" * 129}, "fitted_with"),
    ("fitted_with", {str(i): "1" for i in range(17)}, "fitted_with"),
])
def test_header_field_checks(model, tmp_path, field, value, needle):
    refused(model, tmp_path, model.tensors, edited_meta(model, **{field: value}), needle)


def test_unknown_search_in_registry_is_one_line(model):
    """A search name the config allows but no module registered: make_search's one-line error."""
    from patchbank.search import SEARCHES

    meta = edited_meta(model, search="faiss-flat", config__search="faiss-flat")
    check_model_state(model.tensors, meta, "m")      # a registered, consistent choice passes
    saved = SEARCHES.pop("faiss-flat")
    try:
        with pytest.raises(PatchbankError, match="unknown search 'faiss-flat'"):
            Detector.from_state(model.tensors, meta, "m", progress=False)
    finally:
        SEARCHES["faiss-flat"] = saved


@pytest.mark.parametrize("meta", [[1, 2], "text", 3, None, {}])
def test_non_object_or_empty_header(model, tmp_path, meta):
    path = write(tmp_path / "h.patchbank", model.tensors, json.dumps(meta))
    with pytest.raises(PatchbankError, match="header") as info:
        Detector.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_corrupt_and_deep_json_header(model, tmp_path):
    for text in ("{not json", "[" * 100000 + "]" * 100000):
        path = write(tmp_path / "h.patchbank", model.tensors, text)
        with pytest.raises(PatchbankError, match="header"):
            Detector.load(path)


def test_the_version_text_is_informational(model, tmp_path):
    meta = edited_meta(model, patchbank_version="9.9")
    assert outcome(model, write(tmp_path / "ok.patchbank", model.tensors, meta)) == "same"


@pytest.mark.parametrize("edit, needle", [
    # the calibration numbers a header records must be what its tensors give (session 29: they
    # were recomputed on load and ignored, so `patchbank info` showed numbers the model did not use)
    (dict(threshold=-5.0), "the calibration arrays give threshold"),
    (dict(score_mean=1.0), "the calibration arrays give score_mean"),
    (dict(score_std=-1.0), "the calibration arrays give score_std"),
    (dict(structure_lambda=None), "the calibration arrays give structure_lambda"),
    # no field outside the header's own, whatever it names
    (dict(note="hello"), "field 'note' is not part of a patchbank model header"),
    (dict(loader="os.system"), "field 'loader' is not part of a patchbank model header"),
    (dict(patchbank_version={"a": 1}), "patchbank_version must be a version string"),
    # a backbone this patchbank does not have: refused with the file's name, before anything is built
    (dict(config__backbone="../../etc/passwd"), "config.backbone '../../etc/passwd' is not a backbone"),
])
def test_a_header_that_is_not_the_fits_is_refused(model, tmp_path, edit, needle):
    path = write(tmp_path / "e.patchbank", model.tensors, edited_meta(model, **edit))
    with pytest.raises(PatchbankError, match=needle) as info:
        Detector.load(path, progress=False)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_routing_prototypes_in_a_single_category_file_are_refused(model, tmp_path):
    t = dict(model.tensors, routing_prototypes=torch.randn(4, 8))
    refused(model, tmp_path, t, model.meta, "routing prototypes belong to a category")


def test_unknown_safetensors_metadata_is_refused(model, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "extra.patchbank"
    save_file({k: v.contiguous() for k, v in model.tensors.items()}, str(path),
              metadata={"format": "patchbank", "format_version": "2", "patchbank": json.dumps(model.meta),
                        "loader": "os.system"})
    with pytest.raises(PatchbankError, match="safetensors metadata 'loader'"):
        Detector.load(path, progress=False)


def test_the_fits_library_versions_are_kept_from_the_file(model, tmp_path):
    # the header names the software the fit ran on; a loaded model reports the file's record
    # (not the loader's), predicts as before, and a file written before the field has none
    from patchbank.runtime.environment import library_versions

    assert model.meta["fitted_with"] == library_versions()
    other = dict(model.meta["fitted_with"], pillow="12.3.0", torch="2.11.0+cu130")
    path = write(tmp_path / "other.patchbank", model.tensors, edited_meta(model, fitted_with=other))
    assert outcome(model, path) == "same"
    assert Detector.load(path, progress=False).info()["fitted_with"] == other
    old = {k: v for k, v in model.meta.items() if k != "fitted_with"}
    path = write(tmp_path / "old.patchbank", model.tensors, old)
    assert outcome(model, path) == "same"
    assert "fitted_with" not in Detector.load(path, progress=False).info()


def test_valid_model_is_accepted_unchanged(model, tmp_path):
    assert outcome(model, write(tmp_path / "ok.patchbank", model.tensors, model.meta)) == "same"


# ---------------------------------------------------------------------------- multi-category
def _multi(model: Fitted, cats=("a", "b")) -> tuple[dict, dict]:
    tensors, infos = {}, {}
    for i, c in enumerate(cats):
        for k, v in model.tensors.items():
            tensors[f"{c}/{k}"] = v
        tensors[f"{c}/routing_prototypes"] = torch.randn(4, 8, generator=torch.Generator().manual_seed(i))
        infos[c] = {k: v for k, v in model.meta.items() if k != "config"}
    meta = {"kind": "multi", "format_version": 2, "config": model.meta["config"], "category_order": list(cats),
            "categories": infos, "routing_prototypes": 4, "bank_bytes": 2 * model.meta["bank_bytes"]}
    return tensors, meta


def test_multi_header_checks(model):
    tensors, meta = _multi(model)
    states = check_multi_header(tensors, meta, "mm")
    assert list(states) == ["a", "b"]
    for name, (state, m) in states.items():
        check_model_state(state, m, f"mm [{name}]", routed=True)
        with pytest.raises(PatchbankError, match="routing prototypes belong to a category"):
            check_model_state(state, m, f"mm [{name}]")          # in a single-category file
    bad = [({**meta, "categories": {}}, "categories"), ({**meta, "category_order": []}, "category_order"),
           ({**meta, "category_order": ["a", "a"]}, "category_order"),
           ({**meta, "category_order": ["a/b"]}, "category_order"), ({**meta, "config": "x"}, "config"),
           ({**meta, "routing_prototypes": 0}, "routing_prototypes"), ({**meta, "kind": "single"}, "kind"),
           ({**meta, "categories": {"a": 1, "b": 2}}, "categories"),
           # session 29: the top level's own fields are checked too, and a category's config copy
           ({**meta, "format_version": 3}, "format_version must be 2"),
           ({**meta, "bank_bytes": 5}, "bank_bytes .* sum of the categories"),
           ({**meta, "note": "x"}, "field 'note' is not part of a patchbank multi-category header"),
           ({**meta, "categories": {**meta["categories"], "b": {**meta["categories"]["b"],
             "config": dict(meta["config"], weights="/etc/passwd")}}}, r"mm \[b\]: config differs")]
    for m, needle in bad:
        with pytest.raises(PatchbankError, match=needle):
            check_multi_header(tensors, m, "mm")
    for t, needle in [({**tensors, "c/bank": tensors["a/bank"]}, "'c/bank'"),
                      ({**tensors, "a/routing_prototypes": torch.randn(4, 9)}, "widths"),
                      ({**tensors, "a/routing_prototypes": torch.randn(5, 8)}, "rows"),
                      (_without(tensors, "b/routing_prototypes"), "routing_prototypes")]:
        with pytest.raises(PatchbankError, match=needle):
            check_multi_header(t, meta, "mm")


# ---------------------------------------------------------------------------- at first use
def test_check_backbone_fit_and_patch_grid():
    keep = [torch.tensor([0, 3]), torch.tensor([1, 2, 5])]
    kept = [int(k.numel()) for k in keep]          # what VGFusion.widths gives
    check_backbone_fit([4, 6], keep, kept, 5, "m")
    check_backbone_fit([4, 6], None, [4, 6], 10, "m")
    for channels, k, widths, width, needle in [([4, 5], keep, kept, 5, "fusion.keep.1"),
                                               ([4], keep, kept, 5, "layers"),
                                               ([4, 6], keep, kept, 6, "width"),
                                               ([4, 6], None, [4, 6], 12, "width")]:
        with pytest.raises(PatchbankError, match=needle):
            check_backbone_fit(channels, k, widths, width, "m")
    check_patch_grid([12, 12], (12, 12), "m")
    with pytest.raises(PatchbankError, match="patch_grid"):
        check_patch_grid([12, 12], (32, 32), "m")


def test_image_size_edit_refused_at_predict(model, tmp_path):
    """config.image_size edited (bank and grid untouched): the backbone's grid no longer fits."""
    meta = edited_meta(model, config__image_size=[256, 256])
    assert outcome(model, write(tmp_path / "e.patchbank", model.tensors, meta)) == "error"


def test_out_of_range_channel_refused_at_predict(model, tmp_path):
    t = dict(model.tensors)
    t["fusion.keep.1"] = t["fusion.keep.1"] + 10000
    assert outcome(model, write(tmp_path / "e.patchbank", t, model.meta)) == "error"


# ---------------------------------------------------------------------------- property-based
JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
JSON = st.recursive(JSON_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                    max_leaves=8)
# config fields whose default differs from the module's model: dropping them is a valid edit to
# another configuration (a different input size), checked at first use (see NEEDS_DETECTOR)
NOT_DROPPED = ("image_size",)


def _perturb(value, draw):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return draw(st.sampled_from([value + 1, value - 1, value * 2, -value, 0, value + 0.5]))
    if isinstance(value, str):
        return draw(st.sampled_from([value + "x", value[:-1], value.upper(), ""]))
    if isinstance(value, list) and value:
        i = draw(st.integers(0, len(value) - 1))
        return value[:i] + [_perturb(value[i], draw)] + value[i + 1:]
    return draw(JSON)


@st.composite
def header_edits(draw, meta: dict):
    meta = json.loads(json.dumps(meta))
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)                                       # a random JSON header
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "retype", "perturb", "add", "config_drop", "config_retype"]))
        if op.startswith("config") and isinstance(meta.get("config"), dict) and meta["config"]:
            cfg = meta["config"]
            key = draw(st.sampled_from(sorted(k for k in cfg if k not in NOT_DROPPED)))
            if op == "config_drop":
                del cfg[key]
            else:
                cfg[key] = draw(JSON.filter(lambda v, old=cfg[key]: type(v) is not type(old)))
            continue
        if op == "add" or not meta:
            meta[draw(st.text(min_size=1, max_size=8))] = draw(JSON)
            continue
        key = draw(st.sampled_from(sorted(meta)))
        if op == "drop":
            del meta[key]
        elif op == "retype":
            meta[key] = draw(JSON.filter(lambda v, old=meta[key]: type(v) is not type(old)))
        else:
            meta[key] = _perturb(meta[key], draw)
    return meta


@given(data=st.data())
@HEADER_SETTINGS
def test_random_header_edits_error_or_identical(model, tmp_path, data):
    meta = data.draw(header_edits(model.meta))
    try:
        text = json.dumps(meta, allow_nan=True)
    except (TypeError, ValueError):
        return
    assert outcome(model, write(tmp_path / "fuzz.patchbank", model.tensors, text)) in ("error", "same")


TENSOR_OPS = ["reshape", "transpose", "drop", "half", "double", "int", "nan", "inf", "truncate", "extra"]


@st.composite
def tensor_edits(draw, tensors: dict):
    tensors = dict(tensors)
    for _ in range(draw(st.integers(1, 2))):
        name = draw(st.sampled_from(sorted(tensors) or ["bank"]))
        op = draw(st.sampled_from(TENSOR_OPS))
        t = tensors.get(name, torch.zeros(1))
        if op == "reshape" and t.numel() > 1:
            divs = [d for d in range(1, t.numel() + 1) if t.numel() % d == 0]
            d = draw(st.sampled_from(divs))
            tensors[name] = t.reshape(d, -1) if draw(st.booleans()) else t.reshape(-1, d).flatten()
        elif op == "transpose" and t.dim() == 2:
            tensors[name] = t.T.contiguous()
        elif op == "drop":
            tensors.pop(name, None)
        elif op in ("half", "double", "int"):
            tensors[name] = getattr(t, op)()
        elif op in ("nan", "inf") and t.is_floating_point() and t.numel():
            t = t.clone()
            t.view(-1)[draw(st.integers(0, t.numel() - 1))] = math.nan if op == "nan" else -math.inf
            tensors[name] = t
        elif op == "truncate" and t.dim() >= 1 and t.shape[0] > 1:
            tensors[name] = t[: draw(st.integers(0, t.shape[0] - 1))].contiguous()
        elif op == "extra":
            tensors[draw(st.sampled_from(["x", "fusion.keep.7", "bank2", "projection.bias"]))] = t
    return tensors


@given(data=st.data())
@HEADER_SETTINGS
def test_random_tensor_edits_error_or_identical(model, tmp_path, data):
    tensors = data.draw(tensor_edits(model.tensors))
    assert outcome(model, write(tmp_path / "fuzz.patchbank", tensors, model.meta)) in ("error", "same")


def test_calibration_images_checks(model, tmp_path):
    # the training-image index of each calibration score: optional (older files lack it), and
    # when present int64 [n_calibration_images], increasing, below n_train_images
    t = model.tensors
    ids = t["calibration_images"]
    assert ids.tolist() == list(range(12))            # every training image calibrates
    refused(model, tmp_path, _with(t, calibration_images=ids.int()), model.meta, "'calibration_images'", "int64")
    refused(model, tmp_path, _with(t, calibration_images=ids[:-1]), model.meta, "'calibration_images'", "shape")
    refused(model, tmp_path, _with(t, calibration_images=ids.flip(0)), model.meta, "'calibration_images'", "increasing")
    refused(model, tmp_path, _with(t, calibration_images=ids + 1), model.meta, "'calibration_images'", "below")
    refused(model, tmp_path, _with(t, calibration_images=ids - 1), model.meta, "'calibration_images'")
    # without it the model loads and predicts as before; only naming the images needs it
    path = write(tmp_path / "old.patchbank", _without(t, "calibration_images"), model.meta)
    old = Detector.load(path, progress=False)
    assert [p.score for p in old.predict(model.images)] == [p.score for p in model.reference]
    with pytest.raises(PatchbankError, match="does not record which training images"):
        old.calibration_.above_threshold()
    loaded = Detector.load(model.path, progress=False)
    assert loaded.calibration_.above_threshold() == model.det.calibration_.above_threshold()
