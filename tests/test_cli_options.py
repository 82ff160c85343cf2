"""Config options are built from Config's field metadata; errors name the option; module shape."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import patchbank.cli
from patchbank.cli import cli
from patchbank.cli.config_options import CFG_PREFIX, DEFAULT_PRESET, format_value, option_name
from patchbank.config import FIELD_SPECS, FUSIONS, PRESETS, Config

CLI_DIR = Path(patchbank.cli.__file__).parent
CONFIG_COMMANDS = ["fit", "evaluate", "ablate", "sweep", "structure", "route-eval", "benchmark"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _config_options(command: click.Command) -> dict[str, click.Option]:
    return {p.name[len(CFG_PREFIX):]: p for p in command.params if p.name.startswith(CFG_PREFIX)}


@pytest.mark.parametrize("name", CONFIG_COMMANDS)
def test_every_field_has_an_option_and_vice_versa(name):
    options = _config_options(cli.commands[name])
    assert set(options) == {f.name for f in dataclasses.fields(Config)} == set(FIELD_SPECS)
    for field, opt in options.items():
        assert opt.opts == [option_name(field)]
        assert opt.default is None


def test_help_comes_from_field_metadata():
    options = _config_options(cli.commands["fit"])
    kappa = options["kappa"]
    assert kappa.help == f"{FIELD_SPECS['kappa'].help} [{DEFAULT_PRESET}: {PRESETS[DEFAULT_PRESET].kappa}]"
    for field, opt in options.items():
        default = format_value(getattr(PRESETS[DEFAULT_PRESET], field), FIELD_SPECS[field].kind)
        assert opt.help == f"{FIELD_SPECS[field].help} [{DEFAULT_PRESET}: {default}]"
    shown = "".join(run("fit", "--help").output.split())   # ignore wrapping
    assert "".join(FIELD_SPECS["kappa"].help.split()) in shown


def test_choices_come_from_field_metadata():
    opt = _config_options(cli.commands["fit"])["fusion"]
    assert opt.type.choices is FIELD_SPECS["fusion"].choices is FUSIONS
    assert opt.type.get_metavar(opt, None) == "|".join(FUSIONS)
    for field, opt in _config_options(cli.commands["fit"]).items():
        assert opt.type.choices == FIELD_SPECS[field].choices
        assert (opt.type.kind, opt.type.optional) == (FIELD_SPECS[field].kind, FIELD_SPECS[field].optional)


@pytest.mark.parametrize("args, needles", [
    (["--sampler", "magic"], ["--sampler", "magic", "uniform, greedy, none"]),      # choice
    (["--threshold-rule", "median"], ["--threshold-rule", "median", "conformal, quantile"]),
    (["--map-offset", "pixel"], ["--map-offset", "pixel", "none, position"]),
    (["--aspect", "tall"], ["--aspect", "tall", "fixed, auto"]),
    (["--crop-at", "border"], ["--crop-at", "border", "image, features"]),
    (["--coreset-ratio", "2"], ["--coreset-ratio", "must be in (0, 1], got 2.0"]),  # range
    (["--target-fpr", "1"], ["--target-fpr", "must be in (0, 1)"]),                # open range
    (["--hybrid-lambda", "-1"], ["--hybrid-lambda", ">= 0 or None"]),             # optional range
    (["--struct-components", "std,std"], ["--struct-components", "without repeats"]),
    (["--no-such-field", "1"], ["--no-such-field"]),                               # unknown field
])
def test_bad_config_values_are_one_line_naming_the_option(tmp_path, args, needles):
    line = one_error_line(run("fit", tmp_path, "-o", tmp_path / "m.patchbank", *args))
    for needle in needles:
        assert needle in line, line
    assert not (tmp_path / "m.patchbank").exists()


def test_range_error_is_reported_for_every_config_command(tmp_path):
    for name in ("evaluate", "ablate", "sweep", "structure", "route-eval", "benchmark"):
        extra = ["--param", "k=1,2"] if name == "sweep" else []
        line = one_error_line(run(name, tmp_path, "-o", tmp_path / "o", *extra, "--topk-ratio", "0"))
        assert "invalid value for --topk-ratio: must be in (0, 1], got 0.0" in line, name


def test_add_names_the_options_it_refuses(tmp_path):
    model = tmp_path / "m.patchbank"
    model.write_bytes(b"x")
    line = one_error_line(run("fit", "--add", tmp_path, "-o", model, "--kappa", "0.3"))
    assert "(--kappa) cannot be changed" in line


def test_cli_source_does_not_scrape_or_regex_map():
    for path in CLI_DIR.glob("*.py"):
        text = path.read_text()
        assert "inspect.getsource" not in text and "import inspect" not in text, path
        assert "_size_pair" not in text and "_choices_for" not in text, path


def _functions(tree: ast.AST, public_scope: bool = True):
    """(node, public) of every function and class; public: defined at module level or in a
    class body (not a closure)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node, public_scope
            yield from _functions(node, public_scope and isinstance(node, ast.ClassDef))


def test_cli_modules_are_small_and_documented():
    for path in CLI_DIR.glob("*.py"):
        source = path.read_text()
        assert len(source.splitlines()) <= 300, path
        tree = ast.parse(source)
        assert ast.get_docstring(tree), path
        for node, public_scope in _functions(tree):
            if not isinstance(node, ast.ClassDef):
                assert node.end_lineno - node.lineno + 1 <= 60, (path.name, node.name)
            if public_scope and not node.name.startswith("_"):
                assert ast.get_docstring(node), (path.name, node.name)


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from patchbank.cli import cli; cli.main(['fit', '--help'], standalone_mode=False); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
