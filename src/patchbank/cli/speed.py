"""``patchbank benchmark``: fit and predict timings of a preset against the read+forward floor."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import click

from patchbank.cli.config_options import build_config, given_overrides, with_config_options
from patchbank.cli.options import (GivenPath, overwrite_option, positive_int_list, preset_option, ratio_list,
                                   run_options, setup_threads)
from patchbank.io.output_files import (check_not_inputs, check_output_file, commit_file, make_folder,
                                       release_file, reserve_file)


@click.command(context_settings={"max_content_width": 110},
               epilog="The floor = read + resize + backbone forward with the detector's own loader "
                      "and forward, same threads and batch size; see patchbank.studies.speed.")
@click.argument("data")
@click.option("-o", "--output", required=True, type=GivenPath(path_type=Path),
              help="JSON file for the results (with the machine description).")
@preset_option()
@click.option("--ratios", callback=ratio_list, default=None, metavar="R1,R2,...",
              help="Coreset ratios to fit, one fit each [the preset's].")
@click.option("--batch-sizes", callback=positive_int_list, default="1,16", show_default=True,
              metavar="B1,B2,...", help="Predict batch sizes.")
@click.option("--max-test", type=click.IntRange(min=1), default=None,
              help="Predict on at most this many test images (evenly spaced) [all].")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed fits / predicts per setting, interleaved with floors; ratios are "
                   "fastest run / fastest floor.")
@run_options
@overwrite_option("Replace an existing output file.")
@click.pass_context
def benchmark(ctx: click.Context, data: str, output: Path, preset: str, ratios, batch_sizes,
              max_test: int | None, repeats: int, device: str, threads: int | None, quiet: bool,
              overwrite: bool, **config_params: Any) -> None:
    """Fit and predict timings of a preset on DATA (a category folder with train/good and test/,
    or a category name under ../shared/data) against the floor: fit / floor, predict / floor per
    batch size, the read / extract / search / post split, images/s, peak memory, bank MB."""
    overrides = given_overrides(ctx, config_params)
    build_config(preset, overrides)
    from patchbank.studies.speed import benchmark_inputs, check_settings, run_benchmark, summary_lines, write_json

    check_settings(overrides, ratios, batch_sizes)
    check_output_file(output)            # before minutes of timing, not after
    check_not_inputs([output], benchmark_inputs(data))
    make_folder(output.parent)
    # claimed now (created exclusively), so an existing file or a second run fails at once
    claim = None if overwrite else reserve_file(output)
    try:
        setup_threads(threads)
        command = "patchbank benchmark " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else None
        result = run_benchmark(data, preset=preset, overrides=overrides, ratios=ratios,
                               batch_sizes=batch_sizes, device=device, max_test=max_test,
                               progress=not quiet, command=command, repeats=repeats)
        commit_file(output, lambda tmp: write_json(result, tmp), claim)
    finally:
        if claim is not None:
            release_file(claim)
    for line in summary_lines(result):
        click.echo(line)
    click.echo(f"wrote {output}")


with_config_options(benchmark)
