"""Option decorators and value callbacks shared by several commands.

:func:`run_options` (``--device``, ``--threads``, ``--quiet``), :func:`overwrite_option`,
:func:`preset_option`, :func:`study_options` (``--dataset``, ``--categories``, ``--seeds``,
``--no-resume``), the comma-list callbacks, :class:`GivenPath` (no empty path), and
:func:`setup_threads`, which applies ``--threads`` before torch starts its thread pools.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import click

from patchbank.cli.config_options import DEFAULT_PRESET, is_int_text
from patchbank.config import PRESETS
from patchbank.runtime.threads import MAX_THREADS

DATASET_LAYOUTS = ["auto", "mvtec", "btad", "visa", "mpdd"]
_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


def check_device(device: str) -> str:
    """``device`` if it is cpu, cuda, cuda:N or mps; a BadParameter naming --device otherwise."""
    if not _DEVICE_RE.match(device):
        raise click.BadParameter(f"expected cpu, cuda, cuda:N or mps, got {device!r}",
                                 param_hint="'--device'")
    return device


def setup_threads(threads: int | None) -> None:
    """``--threads N``: the same N threads for torch, FAISS and numpy's BLAS (no oversubscription;
    see :mod:`patchbank.runtime.threads`), and the OpenMP/MKL/OpenBLAS env when torch is not
    loaded yet.  None leaves everything as it is."""
    if threads is None:
        return
    from patchbank.runtime.threads import set_threads

    set_threads(threads)


def run_options(f: Callable) -> Callable:
    """Add ``--device``, ``--threads`` and ``--quiet`` / ``-q`` (parameters device, threads, quiet)."""
    f = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")(f)
    f = click.option("--threads", type=click.IntRange(min=1, max=MAX_THREADS), default=None,
                     help="CPU threads for torch, FAISS and numpy's BLAS [all cores].")(f)
    f = click.option("--device", default="cpu", show_default=True,
                     callback=lambda ctx, p, v: check_device(v),
                     help="Torch device: cpu, cuda, cuda:N.")(f)
    return f


def model_weights_option(f: Callable) -> Callable:
    """``--weights FILE`` (parameter weights): the backbone weights of a model fitted with its own
    weights file.  A model file never chooses its weights; the file given here is checked against
    the sha256 the model recorded at fit time."""
    return click.option("--weights", default=None, metavar="FILE",
                        type=click.Path(dir_okay=False, path_type=str),
                        help="Backbone weights file of a model fitted with --weights FILE (checked "
                             "against the sha256 the model recorded) [the packaged weights].")(f)


class GivenPath(click.Path):
    """``click.Path`` that refuses an empty value before converting it (``Path("")`` is the
    current folder): a one-line error naming the parameter
    (:func:`~patchbank.io.output_files.check_path_given`).  Takes ``click.Path``'s arguments."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        """``value`` as ``click.Path`` converts it, unless it is empty."""
        from patchbank.io.output_files import check_path_given

        if isinstance(value, str):
            check_path_given(value, param.get_error_hint(ctx) if param is not None else "a path")
        return super().convert(value, param, ctx)


def overwrite_option(help: str) -> Callable:
    """``--overwrite`` (parameter overwrite) with the command's own help text."""
    return click.option("--overwrite", is_flag=True, help=help)


def preset_option(default: str = DEFAULT_PRESET) -> Callable:
    """``--preset NAME`` (one of the presets) with the given default."""
    return click.option("--preset", type=click.Choice(list(PRESETS)), default=default,
                        show_default=True, help="Method configuration to start from.")


def comma_list(ctx: Any, param: Any, value: str | None) -> list[str] | None:
    """Click callback: ``"a,b"`` -> ``["a", "b"]``; None stays None; empty items are refused."""
    if value is None:
        return None
    items = [v.strip() for v in value.split(",")]
    if any(not v for v in items):
        raise click.BadParameter(f"expected a comma-separated list, got {value!r}")
    return items


def _parsed_list(value: str | None, convert: Callable[[str], Any], expected: str) -> list | None:
    """``comma_list`` of ``value`` with each item converted; an item ``convert`` rejects
    (ValueError) is a usage error saying what was ``expected``."""
    items = comma_list(None, None, value)
    if items is None:
        return None
    try:
        return [convert(v) for v in items]
    except ValueError:
        raise click.BadParameter(f"expected {expected}, got {value!r}") from None


def _int(text: str, minimum: int | None = None) -> int:
    if not is_int_text(text) or (minimum is not None and int(text) < minimum):
        raise ValueError(text)
    return int(text)


def seed_list(ctx: Any, param: Any, value: str | None) -> list[int] | None:
    """Click callback: ``"0,1,2"`` -> ``[0, 1, 2]``; integers only, no duplicates."""
    seeds = _parsed_list(value, _int, "comma-separated integers like 0,1,2")
    if seeds is not None and len(set(seeds)) != len(seeds):
        raise click.BadParameter(f"duplicate seeds in {value!r}")
    return seeds


def ratio_list(ctx: Any, param: Any, value: str | None) -> list[float] | None:
    """Click callback: ``"0.01,0.1"`` -> ``[0.01, 0.1]``; each in (0, 1]."""
    out = _parsed_list(value, float, "comma-separated numbers like 0.01,0.1")
    if out is not None and any(not 0 < v <= 1 for v in out):
        raise click.BadParameter(f"ratios must be in (0, 1], got {value!r}")
    return out


def positive_int_list(ctx: Any, param: Any, value: str | None) -> list[int] | None:
    """Click callback: ``"1,16"`` -> ``[1, 16]``; each an integer >= 1."""
    return _parsed_list(value, lambda v: _int(v, 1), "comma-separated positive integers like 1,16")


def output_option(help: str) -> Callable:
    """``-o/--output DIR`` (parameter out_dir, required): where a study writes its files."""
    return click.option("-o", "--output", "out_dir", required=True, type=GivenPath(path_type=Path),
                        help=help)


def categories_option(help: str) -> Callable:
    """``--categories A,B,...`` (parameter categories: a list, or None for all)."""
    return click.option("--categories", callback=comma_list, default=None, metavar="A,B,...", help=help)


def seeds_option(help: str = "Seeds; one fit per category and seed [--seed, else 0].") -> Callable:
    """``--seeds 0,1,2`` (parameter seeds: a list, or None for the --seed option's value)."""
    return click.option("--seeds", callback=seed_list, default=None, metavar="0,1,2", help=help)


def no_resume_option(f: Callable) -> Callable:
    """``--no-resume`` (parameter no_resume)."""
    return click.option("--no-resume", is_flag=True,
                        help="Recompute runs whose results already exist.")(f)


def study_options(f: Callable) -> Callable:
    """Options of the evaluate-like commands: ``--dataset`` (parameter kind), ``--categories``,
    ``--seeds``, ``--no-resume``."""
    f = no_resume_option(f)
    f = seeds_option()(f)
    f = categories_option("Categories to evaluate [all].")(f)
    f = click.option("--dataset", "kind", type=click.Choice(DATASET_LAYOUTS), default="auto",
                     show_default=True, help="Dataset layout.")(f)
    return f
