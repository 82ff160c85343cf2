"""Config fields describe themselves: help, choices and ranges in field metadata, one check loop."""
from __future__ import annotations

import dataclasses

import pytest

from patchbank import config as config_module
from patchbank.config import FIELD_SPECS, PRESETS, Config, Interval
from patchbank.errors import ConfigError, PatchbankError


def test_every_field_has_a_spec_with_help():
    fields = [f.name for f in dataclasses.fields(Config)]
    assert list(FIELD_SPECS) == fields
    for f in dataclasses.fields(Config):
        spec = FIELD_SPECS[f.name]
        assert f.metadata["help"] == spec.help and spec.help.strip(), f.name
        assert spec.default == f.default


def test_choice_metadata_is_the_module_tuples():
    expected = {"fusion": "FUSIONS", "sampler": "SAMPLERS", "search": "SEARCHES",
                "distance": "DISTANCES", "knn_reduce": "KNN_REDUCES", "image_score": "IMAGE_SCORES",
                "base_score": "BASE_SCORES", "bank_dtype": "BANK_DTYPES",
                "struct_distance": "STRUCT_DISTANCES", "struct_components": "STRUCT_COMPONENTS",
                "patch_border": "PATCH_BORDERS", "map_upsample": "MAP_UPSAMPLES",
                "threshold_rule": "THRESHOLD_RULES", "map_offset": "MAP_OFFSETS", "aspect": "ASPECTS",
                "crop_at": "CROP_ATS"}
    with_choices = {name for name, spec in FIELD_SPECS.items() if spec.choices is not None}
    assert with_choices == set(expected)
    for name, const in expected.items():
        assert FIELD_SPECS[name].choices is getattr(config_module, const)


def test_defaults_and_presets_satisfy_their_own_metadata():
    for cfg in (Config(), *PRESETS.values()):
        for name, spec in FIELD_SPECS.items():
            assert spec.check(getattr(cfg, name)) == getattr(cfg, name)


def _outside(interval: Interval, kind: str):
    """Values just outside each finite bound of ``interval``."""
    step = 1 if kind == "int" else 0.5
    out = []
    if interval.low is not None:
        out.append(interval.low - step if interval.closed in ("both", "left") else interval.low)
    if interval.high is not None:
        out.append(interval.high + step if interval.closed in ("both", "right") else interval.high)
    return [int(v) if kind == "int" else float(v) for v in out]


@pytest.mark.parametrize("name", [n for n, s in FIELD_SPECS.items() if s.interval is not None])
def test_every_range_is_enforced_with_a_config_error(name):
    spec = FIELD_SPECS[name]
    values = _outside(spec.interval, spec.kind)
    assert values
    for v in values:
        with pytest.raises(ConfigError) as err:
            Config.preset("lmf-core", **{name: v})
        assert err.value.field == name
        assert str(err.value).startswith(f"{name}: must be ")


@pytest.mark.parametrize("name", [n for n, s in FIELD_SPECS.items() if s.kind == "str" and s.choices])
def test_every_choice_is_enforced(name):
    with pytest.raises(ConfigError) as err:
        Config(**{name: "no-such-choice"})
    assert err.value.field == name
    assert str(err.value) == f"{name}: 'no-such-choice' is not one of {', '.join(FIELD_SPECS[name].choices)}"


@pytest.mark.parametrize("name, value", [("k", "3"), ("k", 2.5), ("k", True), ("kappa", "0.5"),
                                         ("local_density", "yes"), ("fusion", 1), ("image_size", "abc"),
                                         ("image_size", None), ("struct_components", ("std", "std"))])
def test_wrong_types_name_the_field(name, value):
    with pytest.raises(ConfigError) as err:
        Config(**{name: value})
    assert err.value.field == name


def test_messages_users_see():
    cases = {"kappa": (2.0, "kappa: must be in (0, 1], got 2.0"),
             "calibration_fraction": (1.0, "calibration_fraction: must be in (0, 1), got 1.0"),
             "k": (0, "k: must be >= 1, got 0"),
             "projection_dim": (0, "projection_dim: must be in [1, 4096] or None, got 0"),
             "blur_sigma": (-1.0, "blur_sigma: must be in [0, 512], got -1.0")}
    for name, (value, text) in cases.items():
        with pytest.raises(ConfigError, match=None) as err:
            Config(**{name: value})
        assert str(err.value) == text


def test_config_error_contract():
    with pytest.raises(ConfigError) as err:
        Config.preset("lmf-core", kappa=2.0)
    exc = err.value
    assert isinstance(exc, ValueError) and isinstance(exc, PatchbankError)
    assert (exc.field, exc.message, exc.related) == ("kappa", "must be in (0, 1], got 2.0", ())
    with pytest.raises(ConfigError) as err:
        Config.preset("padim")
    assert err.value.field == "preset" and "unknown preset 'padim'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        Config.preset("lmf-core", zzz=1, nonsense=2)
    assert err.value.field == "nonsense" and "zzz" in str(err.value)
    with pytest.raises(ConfigError) as err:
        Config.from_dict({**Config().to_dict(), "bogus": 1})
    assert err.value.field == "bogus"
    with pytest.raises(ConfigError) as err:
        Config(image_size=256, crop_size=300)
    assert (err.value.field, err.value.related) == ("crop_size", ("image_size",))
    assert str(err.value) == "crop_size: (300, 300) is larger than image_size (256, 256)"


def test_normalisation_kept():
    cfg = Config(image_size="320x768", crop_size=[300, 700], layers=[2, 3], struct_components="std,tv")
    assert cfg.image_size == (320, 768) and cfg.crop_size == (300, 700)
    assert cfg.layers == (2, 3) and cfg.struct_components == ("std", "tv")
    assert cfg.to_dict()["layers"] == [2, 3] and cfg.to_dict()["image_size"] == [320, 768]
    assert Config(kappa=1).kappa == 1   # ints are numbers; values are kept as given


def test_interval_describe_and_contains():
    assert Interval(0, 1, "right").describe() == "in (0, 1]"
    assert Interval(0, 1, "neither").describe() == "in (0, 1)"
    assert Interval(1).describe() == ">= 1"
    assert 1 in Interval(0, 1, "right") and 0 not in Interval(0, 1, "right")
    assert float("nan") not in Interval(0)
