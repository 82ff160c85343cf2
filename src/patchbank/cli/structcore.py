"""``patchbank structure | route-eval``: StructCore's studies (structure-aware scores, routing)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from patchbank.cli.config_options import with_config_options
from patchbank.cli.evaluation import run_setup
from patchbank.cli.options import (categories_option, no_resume_option, output_option, preset_option, run_options,
                                   seeds_option, setup_threads)
from patchbank.errors import PatchbankError


def _roots(data_roots: tuple[str, ...]) -> list[Path]:
    roots = [Path(r) for r in data_roots]
    for r in roots:
        if not r.exists():
            raise PatchbankError(f"dataset root not found: {r}")
    return roots


@click.command("structure", context_settings={"max_content_width": 110},
               epilog="One fit per category and seed; every score variant is computed from it.")
@click.argument("data_roots", nargs=-1, required=True, metavar="DATA_ROOT...")
@output_option("Folder for runs/*.json, structure.csv/.json/.md and fig2_<category>.png.")
@preset_option("structcore")
@categories_option("Categories to use [all].")
@seeds_option()
@no_resume_option
@run_options
@click.pass_context
def structure_cmd(ctx: click.Context, data_roots: tuple[str, ...], out_dir: Path, preset: str,
                  categories: list[str] | None, seeds: list[int] | None, no_resume: bool, device: str,
                  threads: int | None, quiet: bool, **config_params: Any) -> None:
    """StructCore tables: base vs struct vs hybrid image scores, descriptor subsets (Tables 5, 7),
    structural distances (Table 6) and the Fig. 2 scatter, on one or more dataset roots."""
    overrides, seeds = run_setup(ctx, preset, Path(data_roots[0]), seeds, config_params)
    roots = _roots(data_roots)
    setup_threads(threads)
    from patchbank.studies.structure import study

    t0 = time.perf_counter()
    study(roots, preset=preset, overrides=overrides, categories=categories, seeds=seeds,
          out_dir=out_dir, resume=not no_resume, progress=not quiet, device=device)
    click.echo(f"structure study in {time.perf_counter() - t0:.1f} s")
    click.echo((out_dir / "structure.md").read_text())
    click.echo(f"wrote {out_dir / 'structure.md'}, structure.csv, structure.json and fig2_*.png")


with_config_options(structure_cmd)


@click.command("route-eval", context_settings={"max_content_width": 110})
@click.argument("data_roots", nargs=-1, required=True, metavar="DATA_ROOT...")
@output_option("Folder for routing.json and routing.md.")
@preset_option()
@categories_option("Categories to use [all of every root].")
@seeds_option("Seeds; one multi-category fit per seed [--seed, else 0].")
@click.option("--prototypes", type=click.IntRange(min=1), default=64, show_default=True,
              help="Routing prototypes per category (K of StructCore Eq. 3).")
@run_options
@click.pass_context
def route_eval(ctx: click.Context, data_roots: tuple[str, ...], out_dir: Path, preset: str,
               categories: list[str] | None, seeds: list[int] | None, prototypes: int, device: str,
               threads: int | None, quiet: bool, **config_params: Any) -> None:
    """Fit one routed model over all categories of DATA_ROOTs; report routing accuracy and the
    routed system's metrics next to the oracle (category given) system's."""
    overrides, seeds = run_setup(ctx, preset, Path(data_roots[0]), seeds, config_params)
    roots = _roots(data_roots)
    setup_threads(threads)
    from patchbank.studies.routing import evaluate_routing

    t0 = time.perf_counter()
    res = evaluate_routing(roots, preset=preset, overrides=overrides, categories=categories,
                           seeds=seeds, out_dir=out_dir, progress=not quiet, device=device,
                           n_prototypes=prototypes)
    click.echo(f"routing evaluation of {len(res['categories'])} categories in {time.perf_counter() - t0:.1f} s")
    click.echo((out_dir / "routing.md").read_text())


with_config_options(route_eval)
