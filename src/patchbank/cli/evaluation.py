"""``patchbank evaluate | ablate | sweep``: metrics tables over categories and seeds.

Each command checks its options (and the configuration they give) before any data is read, and
stores the command line in every run's JSON so the run can be repeated.
"""
from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

import click

from patchbank.cli.config_options import (build_config, field_kind, field_value_type,
                                          format_value, given_overrides, option_name,
                                          with_config_options)
from patchbank.cli.engine_options import check_engine, engine_options, ray_map_runs
from patchbank.cli.options import output_option, preset_option, run_options, setup_threads, study_options
from patchbank.config import FIELD_SPECS, Config
from patchbank.errors import ConfigError, PatchbankError


def command_line(name: str, data_root: Path, out_dir: Path, head: list[str], kind: str,
                 categories: list[str] | None, seeds: list[int], overrides: dict[str, Any],
                 no_resume: bool) -> str:
    """The command as it would be typed again (stored in every run's JSON)."""
    args = [str(data_root), "-o", str(out_dir), *head, "--dataset", kind]
    if categories:
        args += ["--categories", ",".join(categories)]
    args += ["--seeds", ",".join(map(str, seeds))]
    for field, value in overrides.items():
        args += [option_name(field), format_value(value, field_kind(field))]
    if no_resume:
        args.append("--no-resume")
    return f"patchbank {name} " + " ".join(shlex.quote(a) for a in args)


def run_setup(ctx: click.Context, preset: str, data_root: Path, seeds: list[int] | None,
              config_params: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
    """Overrides given on the command line (checked against ``preset``, without ``seed``) and the
    seed list (``--seeds``, else ``--seed``, else [0]).

    Raises:
        click.UsageError: a bad config option.
        PatchbankError: ``data_root`` does not exist, or both ``--seed`` and ``--seeds`` are given
            (one would be ignored).
    """
    overrides = given_overrides(ctx, config_params)
    build_config(preset, overrides)  # option errors now, before any data is read
    if seeds is not None and "seed" in overrides:
        raise PatchbankError("the seeds are set by --seeds; do not give --seed too")
    if not data_root.exists():
        raise PatchbankError(f"dataset root not found: {data_root}")
    if seeds is None:
        seeds = [overrides["seed"]] if "seed" in overrides else [0]
    overrides.pop("seed", None)
    return overrides, seeds


def print_study(result: dict[str, Any], what: str, seconds: float) -> None:
    """A study's summary on stdout: what ran, its Markdown table, the files written."""
    click.echo(f"{what} in {seconds:.1f} s")
    click.echo("")
    click.echo(result["markdown"])
    click.echo("")
    click.echo("wrote " + ", ".join(str(p) for p in result["files"].values()))


@click.command(context_settings={"max_content_width": 110},
               epilog="Config options override single fields of the preset (as for 'fit'); --seeds "
                      "sets Config.seed per run.")
@click.argument("data_root", type=click.Path(path_type=Path))
@output_option("Folder for runs/*.json, results.csv, summary.csv/.json/.md.")
@preset_option()
@study_options
@run_options
@engine_options("the most runs computed at once [as many as the cluster's CPUs hold].")
@click.pass_context
def evaluate(ctx: click.Context, data_root: Path, out_dir: Path, preset: str, kind: str,
             categories: list[str] | None, seeds: list[int] | None, no_resume: bool, device: str,
             threads: int | None, quiet: bool, engine: str = "local", address: str | None = None,
             actors: int | None = None, **config_params: Any) -> None:
    """Benchmark a preset on DATA_ROOT (MVTec AD, MPDD, BTAD or VisA layout): fit per category
    and seed, report image and pixel metrics, bank size and timings as mean ± std over seeds."""
    check_engine(engine, address=address, actors=actors)
    overrides, seeds = run_setup(ctx, preset, data_root, seeds, config_params)
    command = command_line("evaluate", data_root, out_dir, ["--preset", preset], kind, categories,
                           seeds, overrides, no_resume)
    map_runs = ray_map_runs(engine, address=address, actors=actors, device=device, threads=threads)
    if map_runs is None:
        setup_threads(threads)
    from patchbank.evaluation.runner import evaluate as run_evaluation

    t0 = time.perf_counter()
    result = run_evaluation(data_root, preset=preset, overrides=overrides, categories=categories,
                            seeds=seeds, out_dir=out_dir, resume=not no_resume, progress=not quiet,
                            kind=kind, device=device, command=command, map_runs=map_runs)
    n_cat = len(result["summary"]["categories"])
    click.echo(f"{preset}: {n_cat} categor{'y' if n_cat == 1 else 'ies'} x {len(seeds)} seed(s) "
               f"in {time.perf_counter() - t0:.1f} s")
    click.echo("")
    click.echo(result["markdown"])
    click.echo("")
    click.echo(f"wrote {result['files']['results_csv']}, {result['files']['summary_csv']}, "
               f"{result['files']['summary_json']}, {result['files']['summary_md']}")


with_config_options(evaluate)


@click.command(context_settings={"max_content_width": 110},
               epilog="Config options apply to every step, except the fields the steps set "
                      "(fusion, kappa, sampler). Steps: patchbank/studies/ablation.py (STEPS).")
@click.argument("data_root", type=click.Path(path_type=Path))
@output_option("Folder for one evaluate folder per step and ablation.csv/.json/.md.")
@study_options
@run_options
@click.pass_context
def ablate(ctx: click.Context, data_root: Path, out_dir: Path, kind: str, categories: list[str] | None,
           seeds: list[int] | None, no_resume: bool, device: str, threads: int | None, quiet: bool,
           **config_params: Any) -> None:
    """LMF-Core's module ablation (Table 5) on DATA_ROOT: equal-weight features + greedy coreset
    (PatchCore-like), + VG-Fusion, + RP-Coreset (= lmf-core); one evaluate run per step."""
    from patchbank.studies.ablation import BASE_PRESET, STEPS, step_fields

    overrides, seeds = run_setup(ctx, BASE_PRESET, data_root, seeds, config_params)
    clash = sorted(step_fields(STEPS) & set(overrides))
    if clash:
        raise click.UsageError(f"{', '.join(option_name(c) for c in clash)}: set by the ablation "
                               f"steps themselves, cannot be given")
    command = command_line("ablate", data_root, out_dir, [], kind, categories, seeds, overrides,
                           no_resume)
    setup_threads(threads)
    from patchbank.studies.ablation import ablate as run_ablation

    t0 = time.perf_counter()
    result = run_ablation(data_root, overrides, categories=categories, seeds=seeds, out_dir=out_dir,
                          resume=not no_resume, progress=not quiet, kind=kind, device=device,
                          command=command)
    print_study(result, f"ablation: {len(STEPS)} steps x {len(seeds)} seed(s)",
                time.perf_counter() - t0)


with_config_options(ablate)


def parse_param(ctx: Any, param: Any, value: str | None) -> tuple[str, list[Any]]:
    """Click callback: ``--param FIELD=V1,V2,...`` -> (field, [parsed values]).

    Values are parsed like the field's own option (``none``, ``320x768``, ``true``); for list
    fields (``layers``) the values are separated by ``;`` since each one holds commas.
    """
    usage = "expected FIELD=V1,V2,... (e.g. kappa=0.25,0.5,1.0)"
    if value is None:
        raise click.BadParameter(usage)
    name, eq, rest = value.partition("=")
    name = name.strip().replace("-", "_")
    if not eq or not name or not rest.strip():
        raise click.BadParameter(f"{usage}, got {value!r}")
    if name not in FIELD_SPECS:
        raise click.BadParameter(f"unknown config field {name!r}; choose one of {', '.join(FIELD_SPECS)}")
    if name == "seed":
        raise click.BadParameter("seed is not swept; use --seeds")
    ptype = field_value_type(name)
    texts = [t.strip() for t in rest.split(";" if ptype.kind == "list" else ",")]
    if any(not t for t in texts):
        raise click.BadParameter(f"empty value in {value!r}")
    values = []
    for text in texts:
        try:
            values.append(ptype.convert(text, None, None))
        except click.BadParameter as exc:
            raise click.BadParameter(f"{name}={text}: {exc.message}") from None
    return name, values


def _check_sweep_values(preset: str, overrides: dict[str, Any], param: str, values: list[Any]) -> None:
    """Build every swept configuration now; the first bad one is a BadParameter naming the value."""
    for v in values:
        try:
            Config.preset(preset, **{**overrides, param: v})
        except ConfigError as exc:
            if exc.related:          # a cross-field rule: name both sides
                reason = f"{exc.field} {exc.message}"
            else:
                reason = exc.message if exc.field == param else str(exc)
            text = format_value(v, field_kind(param))
            raise click.BadParameter(f"{param}={text}: {reason}", param_hint="'--param'") from None


@click.command(context_settings={"max_content_width": 110},
               epilog="Config options override fields of the preset for every value (as for "
                      "'evaluate'), but not the swept field. Examples (with --preset lmf-core, whose "
                      "fields they are): --param kappa=0.25,0.5,1.0; "
                      "--param projection_dim=64,128,256; --param coreset_ratio=0.01,0.1,0.25; "
                      "--param image_size=256,320x768; --param 'layers=2,3;1,2,3'.")
@click.argument("data_root", type=click.Path(path_type=Path))
@click.option("--param", "param_spec", required=True, callback=parse_param, metavar="FIELD=V1,V2,...",
              help="The Config field to sweep and its values (list fields: values separated by ';').")
@output_option("Folder for one evaluate folder per value and sweep.csv/.json/.md/.png.")
@preset_option()
@study_options
@run_options
@click.pass_context
def sweep(ctx: click.Context, data_root: Path, param_spec: tuple[str, list[Any]], out_dir: Path,
          preset: str, kind: str, categories: list[str] | None, seeds: list[int] | None,
          no_resume: bool, device: str, threads: int | None, quiet: bool, **config_params: Any) -> None:
    """Sensitivity of a preset to one Config field on DATA_ROOT (LMF-Core Table 6, Figures 2-3):
    one evaluate run per value, a table (mean ± std over seeds) and a PNG plot of image AUROC,
    pixel AUROC and AUPRO against the value."""
    param, values = param_spec
    overrides, seeds = run_setup(ctx, preset, data_root, seeds, config_params)
    if param in overrides:
        raise click.UsageError(f"{option_name(param)} is swept by --param; do not give it too")
    _check_sweep_values(preset, overrides, param, values)
    spec_sep = ";" if field_kind(param) == "list" else ","
    spec = f"{param}=" + spec_sep.join(format_value(v, field_kind(param)) for v in values)
    command = command_line("sweep", data_root, out_dir, ["--param", spec, "--preset", preset], kind,
                           categories, seeds, overrides, no_resume)
    setup_threads(threads)
    from patchbank.studies.sweep import sweep as run_sweep

    t0 = time.perf_counter()
    result = run_sweep(data_root, param, values, preset=preset, overrides=overrides,
                       categories=categories, seeds=seeds, out_dir=out_dir, resume=not no_resume,
                       progress=not quiet, kind=kind, device=device, command=command)
    print_study(result, f"sweep of {param}: {len(values)} values x {len(seeds)} seed(s)",
                time.perf_counter() - t0)


with_config_options(sweep)
