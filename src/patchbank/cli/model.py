"""``patchbank fit`` and ``patchbank predict``: build a model file, score images with it."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from patchbank.cli.config_options import build_config, given_overrides, option_name, with_config_options
from patchbank.cli.engine_options import (check_engine, engine_options, fit_on_ray, path_column_option,
                                          per_category_option, predict_on_ray)
from patchbank.cli.export import RUNTIME_CHOICES, load_for_runtime
from patchbank.cli.info import format_bytes
from patchbank.cli.options import (GivenPath, model_weights_option, overwrite_option, preset_option,
                                   run_options, setup_threads)
from patchbank.cli.predictions import (PredictionOutputs, expand_inputs, model_files, print_predict_summary,
                                      run_predictions)
from patchbank.cli.fit_report import fit_lines
from patchbank.config import Config
from patchbank.errors import PatchbankError
from patchbank.io.output_files import (MIN_FREE_BYTES, check_not_inputs, check_output_file, check_path_given,
                                       file_lock, lock_path_for, make_folder)


@click.command(context_settings={"max_content_width": 110},
               epilog="Config options override single fields of the preset; only options you give "
                      "override. Values: 'none' for optional fields (--sampler none keeps every "
                      "patch), N or HxW for sizes (320x768), comma lists for tuples (--layers 2,4).")
@click.argument("train_dirs", nargs=-1, required=True, metavar="TRAIN_DIR...", type=GivenPath())
@click.option("-o", "--output", required=True, type=GivenPath(path_type=Path),
              help="Model file to write (e.g. model.patchbank).")
@preset_option()
@click.option("--multi", is_flag=True,
              help="Write a multi-category (routed) model even for a single category.")
@click.option("--add", "add", is_flag=True,
              help="Add the given categories to the existing multi-category model OUTPUT; its "
                   "other categories are kept byte for byte (its configuration is used). "
                   "Concurrent --add runs on one model take turns (lock file OUTPUT.lock).")
@run_options
@overwrite_option("Replace an existing model file.")
@engine_options("the most categories fitted at once [as many as the cluster's CPUs hold].")
@per_category_option
@click.pass_context
def fit(ctx: click.Context, train_dirs: tuple[str, ...], output: Path, preset: str, multi: bool,
        add: bool, device: str, threads: int | None, quiet: bool, overwrite: bool,
        engine: str = "local", address: str | None = None, actors: int | None = None,
        per_category: bool = False, **config_params: Any) -> None:
    """Build a model from defect-free images.

    One TRAIN_DIR of images gives a single-category model.  Several categories give one routed
    multi-category model (StructCore Sec. 3.4): give several image folders, NAME=FOLDER pairs,
    or dataset roots in the MVTec layout (every category's train/good is used).
    """
    overrides = given_overrides(ctx, config_params)
    if overrides.get("weights") == "random":   # before the fit: such a model cannot be saved
        from patchbank.detector import check_savable

        check_savable(None)
    check_engine(engine, address=address, actors=actors, per_category=per_category)
    ray_args = dict(device=device, threads=threads, overwrite=overwrite, address=address, actors=actors,
                    save=_save)
    if engine == "ray" and add:
        raise PatchbankError("--add runs with the local engine; drop --engine ray")
    if per_category:
        return fit_on_ray(training_categories(train_dirs), output, build_config(preset, overrides),
                          multi=multi, per_category=True, **ray_args)
    if output.exists() and output.is_dir():
        raise PatchbankError(f"{output} is a folder; give a model file name")
    if add:
        if not output.is_file():
            raise PatchbankError(f"--add needs an existing model file: {output} not found")
        changed = [k for k in overrides if k != "weights"]   # --weights: the file the model's is, checked
        if changed:
            raise PatchbankError("--add uses the model's configuration; config options "
                                 f"({', '.join(option_name(k) for k in changed)}) cannot be changed")
        if ctx.get_parameter_source("preset") in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            raise PatchbankError("--add uses the model's configuration; drop --preset")
    config = None if add else build_config(preset, overrides)
    categories = training_categories(train_dirs)
    check_not_inputs([output], [p for images in categories.values() for p in images])
    if not add and output.exists() and not overwrite:
        raise PatchbankError(f"{output} already exists; pass --overwrite to replace it (or --add)")
    from patchbank.io.model_file import model_path     # (torch: not imported for --help)

    model_path(output)                                              # a name it can be read by,
    check_output_file(output, need_bytes=_expected_bytes(output))   # and room, before the (long) fit
    if engine == "ray":
        return fit_on_ray(categories, output, config, multi=multi, per_category=False, **ray_args)
    setup_threads(threads)
    if add:
        _add_categories(categories, output, device=device, quiet=quiet, weights=overrides.get("weights"))
    elif multi or len(categories) > 1:
        _fit_multi(categories, output, config, device=device, quiet=quiet, overwrite=overwrite)
    else:
        _fit_single(categories, output, config, preset, device=device, quiet=quiet, overwrite=overwrite)


with_config_options(fit)


def _expected_bytes(output: Path) -> int:
    """Free space a fit into ``output`` asks for: :data:`MIN_FREE_BYTES` plus the size of the
    model file it replaces or extends (the new file is written beside it, then renamed)."""
    return MIN_FREE_BYTES + (output.stat().st_size if output.is_file() else 0)


def _save(model, output: Path, overwrite: bool) -> None:
    """Save under the model's lock (``<output>.lock``), so a replacing fit waits for an ``--add``."""
    make_folder(output.parent)
    with file_lock(lock_path_for(output), what=str(output)):
        model.save(output, overwrite=overwrite)


def _fit_single(categories: dict[str, list[Path]], output: Path, config: Config, preset: str, *,
                device: str, quiet: bool, overwrite: bool) -> None:
    from patchbank.detector import Detector

    (_, images), = categories.items()
    t0 = time.perf_counter()
    det = Detector(config, device=device, progress=not quiet)
    det.fit([str(p) for p in images])
    fit_s = time.perf_counter() - t0
    _save(det, output, overwrite)
    info = det.info()
    n = det.n_train_images_          # distinct images (a repeat is dropped, with a warning)
    click.echo(f"fitted {preset} ({config.backbone}) on {n} image{'' if n == 1 else 's'} in {fit_s:.1f} s")
    click.echo(f"bank: {info['bank_entries']:,} x {info['bank_dim']}, "
               f"{format_bytes(info.get('bank_bytes'))}; threshold {float(det.threshold_):.3f} (normalised score)")
    click.echo("\n".join(fit_lines(det, images)))
    click.echo(f"wrote {output}")


def _fit_multi(categories: dict[str, list[Path]], output: Path, config: Config, *, device: str,
               quiet: bool, overwrite: bool) -> None:
    """A routed multi-category model fitted from ``categories``."""
    from patchbank.multi import MultiDetector

    t0 = time.perf_counter()
    model = MultiDetector(config, device=device, progress=not quiet)
    model.fit({name: [str(p) for p in images] for name, images in categories.items()})
    _save(model, output, overwrite)
    _print_multi(model, "fitted", categories, output, time.perf_counter() - t0)


def _add_categories(categories: dict[str, list[Path]], output: Path, *, device: str, quiet: bool,
                    weights: str | None = None) -> None:
    """Add ``categories`` to the multi-category model file ``output``: read, add, write back,
    all under the model's lock (``<output>.lock``), so a concurrent ``--add`` waits and then
    reads the file this one wrote (nothing is lost).  ``weights``: the backbone weights file of
    a model fitted with its own (checked against the sha256 it recorded)."""
    from patchbank.multi import MultiDetector

    t0 = time.perf_counter()
    with file_lock(lock_path_for(output), what=str(output)):
        if not output.is_file():
            raise PatchbankError(f"--add needs an existing model file: {output} not found")
        model = MultiDetector.load(output, device=device, progress=not quiet, weights=weights)
        clash = [n for n in categories if n in model.detectors_]
        if clash:
            raise PatchbankError(f"{output} already has categor{'y' if len(clash) == 1 else 'ies'} "
                                 f"{', '.join(clash)}")
        for name, images in categories.items():
            model.add(name, [str(p) for p in images])
        model.save(output, overwrite=True)
    _print_multi(model, "added", categories, output, time.perf_counter() - t0)


def _print_multi(model, verb: str, categories: dict[str, list[Path]], output: Path, seconds: float) -> None:
    info = model.info()
    click.echo(f"{verb} {', '.join(categories)} in {seconds:.1f} s; model holds "
               f"{len(info['categories'])} categories ({', '.join(info['category_order'])}), "
               f"banks {format_bytes(info['bank_bytes'])}, {info['routing_prototypes']} routing "
               f"prototypes each")
    for name, images in categories.items():
        click.echo("\n".join(fit_lines(model.detectors_[name], images, f"[{name}] ")))
    click.echo(f"wrote {output}")


def training_categories(args: tuple[str, ...]) -> dict[str, list[Path]]:
    """TRAIN_DIR arguments -> {category name: training images}.

    ``NAME=FOLDER`` names a folder of images; a folder holding images directly is named after
    itself; any other folder is read as a dataset root (MVTec / BTAD / VisA layouts) whose
    categories' training images are used.

    Raises:
        PatchbankError: a missing folder, a file, a bad or repeated category name.
    """
    from patchbank.io.datasets import read_dataset
    from patchbank.io.images import is_image_file, list_images
    from patchbank.multi import check_category_name

    out: dict[str, list[Path]] = {}

    def put(name: str, images: list[Path]) -> None:
        check_category_name(name)
        if name in out:
            raise PatchbankError(f"category {name!r} is given twice; name them with NAME=FOLDER")
        out[name] = images

    for arg in args:
        name, sep, folder = arg.partition("=")
        if sep:
            check_path_given(folder, f"the folder of {arg}")
            path = Path(folder)
        else:
            name, path = "", Path(arg)
        if not path.exists():
            raise PatchbankError(f"training folder not found: {path}")
        if not path.is_dir():
            raise PatchbankError(f"not a folder: {path}")
        has_images = any(is_image_file(p) for p in path.iterdir())
        if has_images or sep or not any(p.is_dir() for p in path.iterdir()):
            put(name or path.name, list_images(path))   # (list_images names an empty folder)
        else:
            for cat in read_dataset(path):
                put(cat.name, list(cat.train))
    return out


@click.command()
@click.argument("model", type=GivenPath(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...", type=GivenPath())
@click.option("-o", "--output", "out_dir", required=True, type=GivenPath(path_type=Path),
              help="Folder for predictions.csv, predictions.json and heatmaps/.")
@click.option("--heatmaps", is_flag=True,
              help="Write a PNG overlay per image to OUT_DIR/heatmaps/<stem>.png, on the original "
                   "image (the crop's cut-off band grey), coloured on the model's fixed range.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per forward pass [the model's batch_size].")
@click.option("--category", default=None,
              help="Multi-category model: score against this category, skipping routing.")
@click.option("--runtime", type=click.Choice(RUNTIME_CHOICES), default="torch", show_default=True,
              help="torch: MODEL is a model file; onnx / openvino: MODEL is a 'patchbank export' folder.")
@model_weights_option
@run_options
@overwrite_option("Replace existing output files.")
@engine_options("scoring actors, each holding the model [1].")
@path_column_option
def predict(model: Path, inputs: tuple[str, ...], out_dir: Path, heatmaps: bool, batch_size: int | None,
            category: str | None, device: str, threads: int | None, quiet: bool, overwrite: bool,
            weights: str | None = None, runtime: str = "torch", engine: str = "local", address: str | None = None,
            actors: int | None = None, path_column: str | None = None) -> None:
    """Score INPUT images (files or folders) with MODEL.

    A folder contributes its images; a folder holding only sub-folders (like MVTec's test/)
    contributes the images of all its sub-folders.
    """
    check_engine(engine, address=address, actors=actors, path_column=path_column)
    if engine == "ray":
        if runtime != "torch":
            raise PatchbankError(f"--runtime {runtime} runs with the local engine; drop --engine ray")
        return predict_on_ray(model, inputs, out_dir, heatmaps=heatmaps, batch_size=batch_size,
                              category=category, device=device, threads=threads, quiet=quiet,
                              overwrite=overwrite, address=address, actors=actors, path_column=path_column,
                              weights=weights)
    from patchbank.export.runtimes import check_model_path

    check_model_path(model, runtime)   # the right kind of model, before the inputs and outputs
    paths = expand_inputs(inputs, out_dir)    # never the run's own outputs
    with PredictionOutputs(out_dir, paths, heatmaps=heatmaps, overwrite=overwrite,
                           reads=model_files(model, weights)) as outputs:
        setup_threads(threads)
        from patchbank.multi import MultiDetector

        det = load_for_runtime(model, runtime, device=device, threads=threads, quiet=quiet,
                               weights=weights)
        if category is not None and not isinstance(det, MultiDetector):
            raise PatchbankError(f"--category needs a multi-category model; {model} has one category")
        t0 = time.perf_counter()
        result, _ = run_predictions(det, paths, outputs, batch_size=batch_size, quiet=quiet,
                                    model_path=str(model), category=category)
    print_predict_summary(result, out_dir, time.perf_counter() - t0)
