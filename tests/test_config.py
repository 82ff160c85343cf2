import pytest

from patchbank.config import PRESETS, Config


def test_presets_match_papers():
    lmf = Config.preset("lmf-core")
    assert (lmf.fusion, lmf.kappa, lmf.projection_dim, lmf.sampler, lmf.coreset_ratio, lmf.k) == \
        ("vg", 0.5, 128, "uniform", 0.10, 1)
    pc = Config.preset("patchcore")
    assert (pc.fusion, pc.sampler, pc.coreset_ratio, pc.projection_dim, pc.image_score) == \
        ("equal", "greedy", 0.10, None, "reweighted_max")
    sc = Config.preset("structcore")
    assert (sc.backbone, sc.projection_dim, sc.sampler, sc.coreset_ratio, sc.k, sc.distance, sc.knn_reduce) == \
        ("dinov2_vitb14", 512, "greedy", 0.01, 5, "squared", "mean")
    assert sc.input_size == (392, 392)


def test_overrides_and_sizes():
    cfg = Config.preset("lmf-core", image_size="320x768", crop_size=None, kappa=0.25)
    assert cfg.image_size == (320, 768) and cfg.input_size == (320, 768) and cfg.kappa == 0.25
    assert Config(image_size=300, crop_size=[280, 260]).crop_size == (280, 260)


@pytest.mark.parametrize("bad", [dict(kappa=0), dict(fusion="max"), dict(coreset_ratio=1.5),
                                 dict(image_size="abc"), dict(crop_size=512), dict(k=0),
                                 # session 29: a seed torch's generators cannot take was a
                                 # traceback from the greedy sampler, after the features pass
                                 dict(seed=-1), dict(seed=2**64)])
def test_invalid_values_name_the_field(bad):
    with pytest.raises(ValueError) as err:
        Config.preset("lmf-core", **bad)
    assert list(bad)[0] in str(err.value)


def test_unknown_field_and_preset():
    with pytest.raises(ValueError, match="nonsense"):
        Config.preset("lmf-core", nonsense=1)
    with pytest.raises(ValueError, match="unknown preset"):
        Config.preset("padim")


def test_dict_round_trip_and_frozen():
    for cfg in PRESETS.values():
        assert Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(Exception):
        PRESETS["lmf-core"].kappa = 1.0


def test_default_preset_is_the_api_and_cli_default_and_paper_presets_are_unchanged():
    from patchbank.cli.config_options import build_config
    from patchbank.config import DEFAULT_PRESET
    from patchbank.detector import Detector

    assert DEFAULT_PRESET == "patchbank" and DEFAULT_PRESET in PRESETS
    assert Detector(progress=False).config == PRESETS[DEFAULT_PRESET]
    assert build_config(DEFAULT_PRESET, {}) == PRESETS[DEFAULT_PRESET]
    # the paper presets are what the papers define; Config() is still lmf-core (old model files)
    # apart from the threshold rule, which every preset sets and old files lack
    assert PRESETS["lmf-core"] == Config(threshold_rule="conformal")
    assert Config().threshold_rule == "quantile"
    assert {p.threshold_rule for p in PRESETS.values()} == {"conformal"}
    pc = PRESETS["patchcore"]
    assert (pc.fusion, pc.projection_dim, pc.sampler, pc.coreset_ratio, pc.patch_border,
            pc.image_size, pc.crop_size, pc.image_score) == (
        "equal", None, "greedy", 0.10, "valid", (256, 256), (224, 224), "reweighted_max")
    d = PRESETS[DEFAULT_PRESET]
    assert (d.fusion, d.projection_dim, d.sampler, d.coreset_ratio, d.patch_border, d.image_size,
            d.crop_size, d.image_score, d.search) == (
        "equal", None, "greedy", 0.01, "zero", (320, 320), (288, 288), "topk_mean", "auto")


def test_preset_name_names_a_preset_whatever_its_seed_and_nothing_else():
    from patchbank.config import PRESETS

    for name in PRESETS:
        assert Config.preset(name, seed=7).preset_name() == name
    assert Config.preset("patchbank", coreset_ratio=0.05).preset_name() is None


def test_a_seed_is_refused_outside_what_the_generators_take_with_its_bound_in_full():
    with pytest.raises(ValueError, match=r"seed: must be in \[0, 9223372036854775804\], got 18446744073709551616"):
        Config(seed=2**64)
    assert Config(seed=2**63 - 4).seed == 2**63 - 4
