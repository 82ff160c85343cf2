"""``patchbank export``: a model file -> an export folder for ONNX Runtime / OpenVINO; and the
loader ``predict --runtime onnx|openvino`` uses.

The export folder holds one graph per format (the whole scoring path: normalised images ->
backbone -> features -> bank distances -> map -> image score -> normalised score -> decision,
with a dynamic batch axis) and ``patchbank_export.json`` (preprocessing, threshold, version);
see :mod:`patchbank.export`.  Needs the ``export`` extra: ``pip install 'patchbank[export]'``.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import click

from patchbank.cli.info import format_bytes
from patchbank.cli.options import GivenPath, model_weights_option, overwrite_option, run_options, setup_threads
from patchbank.config import RUNTIMES, check_runtime_options
from patchbank.errors import PatchbankError

EXPORT_FORMATS = ("onnx", "openvino")
RUNTIME_CHOICES = RUNTIMES
_NEEDS = {"onnx": ("onnx", "onnxscript"), "openvino": ("onnx", "onnxscript", "openvino")}


def check_extra(modules) -> None:
    """One-line error naming the extra when one of ``modules`` is not installed."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise PatchbankError(f"{', '.join(missing)} not installed: pip install 'patchbank[export]'")


@click.command("export")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=GivenPath(path_type=Path),
              help="Export folder to write (graph files + patchbank_export.json).")
@click.option("--format", "formats", type=click.Choice(EXPORT_FORMATS), multiple=True,
              default=("onnx",), show_default=True,
              help="Graph format; repeat for both (--format onnx --format openvino).")
@click.option("--category", default=None,
              help="Multi-category model: export this category (a routed graph is not supported).")
@click.option("--bank-dtype", type=click.Choice(["float32", "float16"]), default=None,
              help="Storage of the bank in the graph [the model's bank_dtype]; the search runs in float32.")
@model_weights_option
@run_options
@overwrite_option("Replace the files of an existing export in OUTPUT.")
def export(model: Path, output: Path, formats: tuple[str, ...], category: str | None,
           bank_dtype: str | None, weights: str | None, device: str, threads: int | None, quiet: bool,
           overwrite: bool) -> None:
    """Export MODEL's whole scoring path as one ONNX / OpenVINO graph with a JSON sidecar.

    Run it with 'patchbank predict OUTPUT IMAGES --runtime onnx|openvino -o out/'.
    """
    if model.is_dir():
        raise PatchbankError(f"{model} is a folder; export reads a .patchbank model file")
    if not model.is_file():
        raise PatchbankError(f"model file not found: {model}")
    if device != "cpu":
        raise PatchbankError("export runs on the CPU (--device cpu); the graph runs anywhere")
    check_extra(sorted({m for f in formats for m in _NEEDS[f]}))
    setup_threads(threads)
    from patchbank.export.exporter import check_not_reads, export_model
    from patchbank.multi import load_any

    reads = [p for p in (model, weights) if p is not None]
    check_not_reads(output, reads)      # before the load: an export may not replace its own input
    det = load_any(model, progress=not quiet, weights=weights)
    data = export_model(det, output, formats, category=category, overwrite=overwrite,
                        bank_dtype=bank_dtype, progress=not quiet, reads=reads)
    bank = data["bank"]
    click.echo(f"exported {model}{f' [{category}]' if category else ''} as {', '.join(data['formats'])} "
               f"(dynamic batch, input {data['input_size'][0]}x{data['input_size'][1]} NCHW float32)")
    click.echo(f"bank in the graph: {bank['entries']:,} x {bank['dim']} {bank['dtype']}, "
               f"{format_bytes(bank['bytes'])}; threshold {data['threshold']:.3f} (normalised score)")
    for name, size in sorted(data["files"].items()):
        click.echo(f"  {output / name}  {format_bytes(size)}")
    if data["external_data"]:
        click.echo("the ONNX weights are external data (model.onnx.data): keep both files together")
    for note in data["notes"]:
        click.echo(f"note: {note}")
    click.echo(f"wrote {output}")


def load_for_runtime(model: Path, runtime: str, *, device: str, threads: int | None, quiet: bool,
                     weights: str | None = None):
    """``predict``'s model: a Detector / MultiDetector from a model file for ``torch`` (with the
    backbone ``weights`` file, if given), an :class:`~patchbank.export.runtimes.ExportedModel`
    from an export folder otherwise."""
    check_runtime_options(runtime, device, weights)
    if runtime != "torch":   # onnx: each ONNX graph's external data is read from the graph before loading
        check_extra(("onnxruntime", "onnx") if runtime == "onnx" else ("openvino",))
    from patchbank.export.runtimes import ExportedModel, check_model_path

    if not check_model_path(model, runtime):
        from patchbank.multi import load_any

        return load_any(model, device=device, progress=not quiet, weights=weights)

    return ExportedModel(model, runtime, threads=threads, progress=not quiet)

