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


# ------------------------------------------------------------------ session 30 (an API audit)

def test_numpy_numbers_in_the_config_are_plain_numbers_and_the_model_saves(synthetic_root, tmp_path):
    """A numpy number was kept as given: the whole fit ran, then save() / info() / evaluate
    failed ("Object of type int64 is not JSON serializable")."""
    from fractions import Fraction

    cfg = Config.preset("lmf-core", backbone="efficientnet_lite0", image_size=np.int64(96), crop_size=None,
                        seed=np.int64(1), coreset_ratio=np.float32(0.1), batch_size=np.int32(4),
                        target_fpr=Fraction(1, 50))
    assert [type(getattr(cfg, k)) for k in ("seed", "coreset_ratio", "batch_size", "target_fpr")] == [
        int, float, int, float]
    assert cfg.image_size == (96, 96) and type(cfg.image_size[0]) is int
    Detector(cfg, progress=False).fit(synthetic_root / "train" / "good").save(tmp_path / "m.patchbank")
    assert Detector.load(tmp_path / "m.patchbank", progress=False).config == cfg


@pytest.mark.parametrize("overrides, needle", [
    ({"image_size": (96.9, 96.2)}, "image_size: expected N or HxW of integers"),   # was read as (96, 96)
    ({"image_size": b"\x60\x60"}, "image_size: expected N or HxW"),               # was read as (96, 96)
    ({"image_size": "96x"}, "image_size: expected N or HxW, got '96x'"),           # session 31: was (96, 96)
    ({"crop_size": "x64"}, "crop_size: expected N or HxW, got 'x64'"),             # session 31: was (64, 64)
    ({"blur_sigma": float("inf")}, "blur_sigma: must be in [0, 512]"),            # OverflowError after the features
    ({"blur_sigma": 1e6}, "blur_sigma: must be in [0, 512]"),                     # a 73 GB kernel
])
def test_config_values_that_were_misread_or_crashed_late(overrides, needle):
    with pytest.raises(PatchbankError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        Config.preset("patchbank", **overrides)


def test_config_of_a_detector_is_used_by_its_fit_and_fixed_once_fitted(synthetic_root):
    """Setting ``det.config`` before fit was ignored (the fit used the constructor's); after fit it
    made save() write a file that scored differently or would not load."""
    det = Detector.from_preset("lmf-core", backbone="efficientnet_lite0", image_size=96, crop_size=None,
                               progress=False)
    det.config = det.config.replace(coreset_ratio=0.05)
    det.fit(synthetic_root / "train" / "good")
    assert det.config.coreset_ratio == 0.05
    fresh = Detector(det.config, progress=False).fit(synthetic_root / "train" / "good")
    assert det.info()["bank_entries"] == fresh.info()["bank_entries"]
    with pytest.raises(PatchbankError, match="a fitted detector's config is the one its bank"):
        det.config = det.config.replace(topk_ratio=0.5)
    with pytest.raises(PatchbankError, match="config must be a patchbank Config"):
        Detector().config = {"kappa": 1.0}


def test_a_shared_backbone_must_be_the_configs(fitted):
    """A backbone given to share was never checked: a model fitted with another network or other
    taps saved fine and could not be loaded; a name string was an AttributeError."""
    cfg = fitted.config
    with pytest.raises(PatchbankError, match="is not the one the config asks for"):
        Detector(cfg.replace(backbone="efficientnet_lite2"), backbone=fitted.backbone)
    with pytest.raises(PatchbankError, match="backbone must be a loaded patchbank Backbone"):
        Detector(cfg, backbone="efficientnet_lite0")
    Detector(cfg, backbone=fitted.backbone)            # the same settings: shared


def test_predict_views_names_one_per_view(model, synthetic_root):
    """A shorter names list dropped views without a word; a string was read letter by letter."""
    from patchbank.io.images import prepare_input

    views = [prepare_input(p, model.config) for p in sorted((synthetic_root / "test" / "good").glob("*.png"))[:3]]
    assert len(model.predict_views(views)) == 3
    for names in (["a"], ["a", "b", "c", "d"], "abc", 5):
        with pytest.raises(PatchbankError, match="names must be a list of one name per view"):
            model.predict_views(views, names=names)
    with pytest.raises(PatchbankError, match="views must be a list of prepared inputs"):
        model.predict_views(None)


def test_a_failed_multi_category_fit_leaves_the_model_as_it_was(synthetic_root, tmp_path):
    """A failed fit left a model that said it was fitted with no (or only some) categories, and
    wiped the previous good one; MultiDetector() was the bare field defaults, not a preset."""
    fast = dict(backbone="efficientnet_lite0", image_size=96, crop_size=None)
    assert MultiDetector().config == Config.preset("patchbank")
    m = MultiDetector.from_preset("lmf-core", progress=False, n_prototypes=4, **fast)
    with pytest.raises(PatchbankError):
        m.fit({"a": tmp_path / "nonexistent"})
    assert not m.is_fitted
    m.fit({"a": synthetic_root / "train" / "good"})
    with pytest.raises(PatchbankError):
        m.fit({"b": synthetic_root / "train" / "good", "c": tmp_path / "nonexistent"})
    assert m.categories == ["a"]
    with pytest.raises(PatchbankError, match="batch_size must be an integer >= 1"):
        m.route(sorted((synthetic_root / "test" / "good").glob("*.png"))[:1], batch_size=-1)


def test_image_inputs_that_were_misread(model, tmp_path):
    """An array over the pixel budget ran (a PIL image or file is refused); a thin strip with
    keep_aspect asked for an unbounded resize; one lazy PIL image given twice read as truncated."""
    from PIL import Image

    from patchbank.io.image_coords import view_window

    with pytest.raises(PatchbankError, match="over the pixel budget"):
        model.predict([np.zeros((10000, 9000), np.uint8)])
    cfg = Config.preset("lmf-core", image_size=96, crop_size=None, keep_aspect=True)
    with pytest.raises(PatchbankError, match="would be resized to 96 x 9600000"):
        view_window((1, 100000), cfg)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (900, 1200, 3), dtype=np.uint8)).save(tmp_path / "big.jpg")
    want = model.predict([Image.open(tmp_path / "big.jpg")])[0].score   # (a path decodes at a reduced scale)
    for _ in range(4):
        im = Image.open(tmp_path / "big.jpg")
        assert [p.score for p in model.predict([im] * 6, batch_size=3)] == pytest.approx([want] * 6)


def test_thresholds_and_seeds_of_other_types(model, synthetic_root, tmp_path):
    """map_level(NaN) gave the lowest level, other types tracebacks; np.int64 thresholds were
    refused while np.float32 passed; evaluate(seeds="12") ran seeds 1 and 2."""
    from patchbank.evaluation.runner import evaluate

    cal = model.calibration_
    for bad in (float("nan"), "3", np.array([1.0, 2.0]), 10 ** 400, True):
        with pytest.raises(PatchbankError, match="threshold must be a finite number"):
            cal.map_level(bad)
        with pytest.raises(PatchbankError, match="threshold must be a finite number"):
            cal.set_threshold(bad)
    assert cal.map_level(np.int64(3)) == cal.map_level(3.0)
    for seeds in ("12", [0.9], 0, ["a"]):
        with pytest.raises(PatchbankError, match="seeds must be a list of integers"):
            evaluate(synthetic_root, "lmf-core", seeds=seeds, out_dir=tmp_path / "ev", progress=False)
