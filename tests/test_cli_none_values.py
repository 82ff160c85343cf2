"""The word ``none`` on the command line (issue 14): what it means comes from the field metadata.

* an optional field (``X | None``) reads ``none`` / ``None`` / ``NONE`` as None;
* a field with the choice ``"none"`` (``--sampler none``: keep every patch) reads it as that string,
  from every command that takes config options, up to the Config and the saved model;
* any other field refuses it with one line naming the option.
"""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from patchbank.cli import cli
from patchbank.cli.config_options import (CFG_PREFIX, NONE_CHOICE, NONE_IS_NULL, NONE_REFUSED,
                                          build_config, given_overrides, none_meaning, option_name)
from patchbank.cli.evaluation import parse_param
from patchbank.config import FIELD_SPECS
from patchbank.io.synthetic import make_dataset

SPELLINGS = ["none", "None", "NONE", " none "]
SMALL = ["--backbone", "efficientnet_lite0", "--image-size", "64", "--crop-size", "none"]
QUIET = ["--threads", "1", "-q"]

OPTIONAL = [n for n, s in FIELD_SPECS.items() if none_meaning(s.optional, s.choices) == NONE_IS_NULL]
NONE_CHOICES = [n for n, s in FIELD_SPECS.items() if none_meaning(s.optional, s.choices) == NONE_CHOICE]
REFUSED = [n for n, s in FIELD_SPECS.items() if none_meaning(s.optional, s.choices) == NONE_REFUSED]
CONFIG_COMMANDS = sorted(name for name, c in cli.commands.items()
                         if any(p.name.startswith(CFG_PREFIX) for p in c.params))


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def one_line_error(result, *needles) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert str(needle) in lines[0], lines[0]
    return lines[0]


def overrides(command: str, tmp_path, *args) -> dict:
    """The config overrides ``command`` parses from ``args`` (its required arguments filled in)."""
    extra = ["--param", "k=1,2"] if command == "sweep" else []
    ctx = cli.commands[command].make_context(command, [str(tmp_path), "-o", str(tmp_path / "o"),
                                                      *extra, *args])
    return given_overrides(ctx, ctx.params)


# ------------------------------------------------------------------ the rule, from the metadata

def test_the_three_groups_come_from_the_metadata():
    assert set(OPTIONAL) | set(NONE_CHOICES) | set(REFUSED) == set(FIELD_SPECS)
    assert {"weights", "layers", "crop_size", "projection_dim", "hybrid_lambda"} <= set(OPTIONAL)
    assert all(FIELD_SPECS[n].optional for n in OPTIONAL)
    assert "sampler" in NONE_CHOICES and not FIELD_SPECS["sampler"].optional
    assert all(not FIELD_SPECS[n].optional and "none" not in (FIELD_SPECS[n].choices or ())
               for n in REFUSED)
    assert {"k", "kappa", "fusion", "image_size"} <= set(REFUSED)
    assert {"fit", "evaluate", "ablate", "sweep", "benchmark"} <= set(CONFIG_COMMANDS)


def test_none_meaning():
    assert none_meaning(True, None) == NONE_IS_NULL
    assert none_meaning(False, None) == NONE_REFUSED
    assert none_meaning(False, ("a", "b")) == NONE_REFUSED
    assert none_meaning(True, ("a", "b")) == NONE_IS_NULL
    assert none_meaning(False, ("a", "none")) == NONE_CHOICE
    assert none_meaning(True, ("a", "none")) == NONE_CHOICE   # the choice wins


# ------------------------------------------------------------------ optional fields: None

@pytest.mark.parametrize("field", OPTIONAL)
@pytest.mark.parametrize("spelling", SPELLINGS)
def test_optional_field_reads_none_as_None(tmp_path, field, spelling):
    ov = overrides("fit", tmp_path, option_name(field), spelling)
    assert ov == {field: None}
    assert getattr(build_config("lmf-core", ov), field) is None
    assert parse_param(None, None, f"{field}={spelling.strip()}") == (field, [None])


@pytest.mark.parametrize("field", OPTIONAL)
def test_optional_field_none_from_every_config_command(tmp_path, field):
    for command in CONFIG_COMMANDS:
        opt = next(p for p in cli.commands[command].params if p.name == CFG_PREFIX + field)
        for spelling in SPELLINGS:
            assert opt.type.convert(spelling, opt, None) is None, (command, spelling)


# ------------------------------------------------------------------ the choice "none": a string

@pytest.mark.parametrize("command", CONFIG_COMMANDS)
def test_sampler_none_reaches_the_config_from_every_command(tmp_path, command):
    for spelling in SPELLINGS:
        ov = overrides(command, tmp_path, "--sampler", spelling)
        assert ov == {"sampler": "none"}, (command, spelling)
    assert build_config("lmf-core", {"sampler": "none"}).sampler == "none"
    assert build_config("patchcore", ov).sampler == "none"


@pytest.mark.parametrize("field", NONE_CHOICES)
def test_none_choice_field_reads_none_as_the_choice(tmp_path, field):
    ov = overrides("fit", tmp_path, option_name(field), "none")
    assert ov == {field: "none"}
    assert getattr(build_config("lmf-core", ov), field) == "none"


def test_sweep_param_takes_the_none_choice():
    assert parse_param(None, None, "sampler=uniform,none,NONE") == ("sampler", ["uniform", "none", "none"])


@pytest.mark.parametrize("command", ["fit", "evaluate", "structure", "route-eval", "benchmark"])
def test_sampler_none_passes_the_real_entry_point(tmp_path, command):
    """Parsing and the config check pass; the command stops only at the missing data."""
    r = run(command, tmp_path / "missing", "-o", tmp_path / "o", "--sampler", "none")
    line = one_line_error(r, "missing")
    assert "--sampler" not in line and "cannot be none" not in line


# ------------------------------------------------------------------ other fields: refused

@pytest.mark.parametrize("field", REFUSED)
def test_other_fields_refuse_none_in_one_line(tmp_path, field):
    r = run("fit", tmp_path, "-o", tmp_path / "m.patchbank", option_name(field), "none")
    one_line_error(r, option_name(field), "cannot be none", "expected")
    assert not (tmp_path / "m.patchbank").exists()


def test_numeric_field_refuses_none_saying_what_it_takes(tmp_path):
    for command in ("fit", "evaluate", "benchmark"):
        line = one_line_error(run(command, tmp_path, "-o", tmp_path / "o", "--k", "NONE"), "--k")
        assert "'NONE': this setting cannot be none; expected an integer" in line, line
    line = one_line_error(run("fit", tmp_path, "-o", tmp_path / "o", "--fusion", "none"), "--fusion")
    assert "expected one of equal, vg, l2" in line
    with pytest.raises(Exception, match="kappa=none: .*cannot be none"):
        parse_param(None, None, "kappa=0.5,none")


# ------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("nonedata")
    return make_dataset(root / "cat", n_train=6, n_test_good=2, n_test_defect=1, size=64, seed=3)


@pytest.mark.filterwarnings("ignore:the threshold is calibrated on only")
def test_fit_sampler_none_keeps_every_patch(data, tmp_path):
    model = tmp_path / "m.patchbank"
    r = run("fit", data / "train" / "good", "-o", model, "--sampler", "none", *SMALL, *QUIET)
    assert r.exit_code == 0, r.output
    info = json.loads(run("info", model, "--json").stdout)
    assert info["config"]["sampler"] == "none" and info["config"]["crop_size"] is None
    uniform = tmp_path / "u.patchbank"
    r = run("fit", data / "train" / "good", "-o", uniform, "--sampler", "uniform", *SMALL, *QUIET)
    assert r.exit_code == 0, r.output
    kept = json.loads(run("info", uniform, "--json").stdout)["bank_entries"]
    assert info["bank_entries"] > kept      # coreset_ratio 0.1 keeps a tenth; none keeps all


@pytest.mark.filterwarnings("ignore:the threshold is calibrated on only")
def test_evaluate_sampler_none_end_to_end(data, tmp_path):
    out = tmp_path / "res"
    r = run("evaluate", data.parent, "-o", out, "--sampler", "none", "--hybrid-lambda", "None",
            *SMALL, *QUIET)
    assert r.exit_code == 0, r.output
    (run_file,) = (out / "runs").glob("*.json")
    stored = json.loads(run_file.read_text())
    assert stored["config"]["sampler"] == "none" and stored["config"]["hybrid_lambda"] is None
    assert "--sampler none" in stored["command"] and "--hybrid-lambda none" in stored["command"]
