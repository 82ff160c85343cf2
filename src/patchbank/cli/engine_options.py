"""``--engine local|ray`` and its options on ``predict``, ``fit`` and ``evaluate``, and the Ray
branch of each command.

``--engine ray`` runs the command's work on Ray (:mod:`patchbank.distributed`): ``--address``
joins a cluster (``auto``, or ``HOST:PORT``; default: a local Ray on this machine), ``--actors N``
is the number of scoring actors of ``predict`` and the most fits running at once for ``fit`` /
``evaluate``, and ``--threads`` is per actor / task (default 1) instead of for the whole process.
Ray is imported only with ``--engine ray``; a Ray-only option with the local engine is a
one-line error.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import click

from patchbank.cli.fit_report import fit_lines
from patchbank.errors import PatchbankError
from patchbank.io.output_files import MIN_FREE_BYTES, check_output_folder

ENGINES = ("local", "ray")


def engine_options(actors_help: str) -> Callable:
    """Add ``--engine``, ``--address`` and ``--actors`` (parameters engine, address, actors)."""
    def apply(f: Callable) -> Callable:
        f = click.option("--actors", type=click.IntRange(min=1), default=None,
                         help=f"--engine ray: {actors_help}")(f)
        f = click.option("--address", default=None, metavar="auto|HOST:PORT",
                         help="--engine ray: the Ray cluster to join [a local Ray on this machine].")(f)
        f = click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True,
                         help="local: this process; ray: Ray tasks and actors (pip install "
                              "'patchbank[ray]'); --threads is then per actor or task [1].")(f)
        return f
    return apply


def path_column_option(f: Callable) -> Callable:
    """``--path-column NAME`` (parameter path_column): the path column of a table input."""
    return click.option("--path-column", default=None, metavar="NAME",
                        help="--engine ray: the column of a .parquet/.csv INPUT holding image paths [path].")(f)


def per_category_option(f: Callable) -> Callable:
    """``--per-category`` (parameter per_category): one model file per category."""
    return click.option("--per-category", is_flag=True,
                        help="--engine ray: write OUTPUT/<category>.patchbank per category (OUTPUT "
                             "is a folder) instead of one multi-category model.")(f)


def check_engine(engine: str, **ray_only: Any) -> None:
    """With the local engine, every Ray-only option (given as ``name=value``) must be unset."""
    if engine == "ray":
        return
    given = [k for k, v in ray_only.items() if v not in (None, False)]
    if given:
        raise PatchbankError(f"--{given[0].replace('_', '-')} needs --engine ray")


def predict_on_ray(model: Path, inputs: tuple[str, ...], out_dir: Path, *, heatmaps: bool,
                   batch_size: int | None, category: str | None, device: str, threads: int | None,
                   quiet: bool, overwrite: bool, address: str | None, actors: int | None,
                   path_column: str | None, weights: str | None = None) -> None:
    """``predict --engine ray``: :func:`patchbank.distributed.scoring.predict` and the summary."""
    from patchbank.cli.predictions import print_predict_summary
    from patchbank.distributed.scoring import predict

    from patchbank.export.runtimes import check_model_path

    check_model_path(model, "torch")   # a model file (an export folder runs locally)
    t0 = time.perf_counter()
    result = predict(model, list(inputs), out_dir, actors=actors or 1, batch_size=batch_size,
                     threads=threads or 1, category=category, heatmaps=heatmaps, device=device,
                     address=address, overwrite=overwrite, path_column=path_column or "path",
                     progress=not quiet, weights=weights)
    print_predict_summary(result, out_dir, time.perf_counter() - t0)
    click.echo(f"wrote {out_dir / 'predictions.parquet'} ({result['engine']['actors']} Ray actor(s))")


def fit_on_ray(categories: dict[str, list[Path]], output: Path, config: Any, *, multi: bool,
               per_category: bool, device: str, threads: int | None, overwrite: bool,
               address: str | None, actors: int | None, save: Callable[[Any, Path, bool], None]) -> None:
    """``fit --engine ray``: every category a Ray task; one (multi-category) model file, or
    with ``per_category`` one file per category in the folder ``output``; ``save(model, path,
    overwrite)`` writes a model as the local fit does."""
    from patchbank.distributed.fitting import fit_categories

    targets = [output / f"{name}.patchbank" for name in categories] if per_category else [output]
    if per_category and multi:
        raise PatchbankError("--per-category writes one single-category model per category; drop --multi")
    if per_category and output.is_file():
        raise PatchbankError(f"{output} is a file; --per-category writes into a folder")
    if per_category:     # before the (long) fits: writable, not under a file, room
        check_output_folder(output, need_bytes=MIN_FREE_BYTES)
    existing = [t for t in targets if t.exists()] if per_category and not overwrite else []
    if existing:
        raise PatchbankError(f"{existing[0]} already exists; pass --overwrite to replace it")
    t0 = time.perf_counter()
    as_multi = not per_category and (multi or len(categories) > 1)
    models = fit_categories(categories, config, multi=as_multi, device=device, threads=threads or 1,
                            address=address, max_running=actors)
    if not isinstance(models, dict):
        models = {None: models}
    for target, model in zip(targets, models.values()):
        save(model, target, overwrite)
        click.echo(f"wrote {target}")
    for name, images in categories.items():
        det = models[name] if per_category or not as_multi else models[None].detectors_[name]
        click.echo("\n".join(fit_lines(det, images, f"[{name}] ")))
    click.echo(f"fitted {', '.join(categories)} as {len(categories)} Ray task(s) in "
               f"{time.perf_counter() - t0:.1f} s")


def ray_map_runs(engine: str, *, address: str | None, actors: int | None, device: str,
                 threads: int | None) -> Callable | None:
    """``evaluate --engine ray``: the ``map_runs`` running each category x seed as a Ray task
    (None with the local engine)."""
    if engine != "ray":
        return None
    from patchbank.distributed.evaluation import run_map

    return run_map(address=address, device=device, threads=threads or 1, max_running=actors)
