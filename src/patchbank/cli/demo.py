"""``patchbank demo``: a synthetic end-to-end run that needs no network or dataset."""
from __future__ import annotations

import time
from pathlib import Path

import click

from patchbank.cli.options import GivenPath, overwrite_option, run_options, setup_threads
from patchbank.cli.predictions import PredictionOutputs, refuse_existing, run_predictions
from patchbank.config import DEFAULT_PRESET
from patchbank.errors import PatchbankError
from patchbank.io.output_files import check_output_folder


DEMO_BYTES = 64 * 2**20
"""Free space the demo asks for before it starts (data, model and heatmaps take about 10 MB)."""

DEMO_MARKER = ".patchbank-demo"
"""The file that marks OUT/data as the demo's own synthetic dataset (written with it)."""


def check_data_folder(data_dir: Path) -> None:
    """Refuse (one line) to write the demo's dataset into ``data_dir`` unless it is absent, empty,
    or an earlier demo's dataset holding nothing else: the demo would replace a user's images
    of the same names and fit on any other image there."""
    from patchbank.io.synthetic import dataset_files

    if not data_dir.is_dir() or not any(data_dir.iterdir()):
        return
    if not (data_dir / DEMO_MARKER).is_file():
        raise PatchbankError(f"{data_dir} exists and is not a dataset written by patchbank demo (no "
                             f"{DEMO_MARKER}); the demo writes its data there: choose another --output")
    own = {DEMO_MARKER, *dataset_files()}
    other = sorted(p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*")
                   if not p.is_dir() and p.relative_to(data_dir).as_posix() not in own)
    if other:
        raise PatchbankError(f"{data_dir} holds files the demo did not write (first: {other[0]}); "
                             f"the demo would fit or test on them: move them, or choose another --output")


@click.command()
@click.option("-o", "--output", "out_dir", default="demo_out", show_default=True,
              type=GivenPath(path_type=Path), help="Folder for the data, model and predictions.")
@run_options
@overwrite_option("Replace the outputs of an earlier demo run.")
def demo(out_dir: Path, device: str, threads: int | None, quiet: bool, overwrite: bool) -> None:
    """Synthetic end-to-end run (no network): make data, fit the default preset, predict, report AUROC.

    Writes OUT/data (MVTec layout), OUT/model.patchbank and OUT/predictions (CSV, JSON and
    heatmaps/).  The output folder is checked (writable, :data:`DEMO_BYTES` free) and the
    prediction files are claimed before the fit starts.
    """
    from patchbank.io.datasets import read_dataset
    from patchbank.io.synthetic import DEFECT_TYPES, make_dataset

    data_dir, model_path, pred_dir = out_dir / "data", out_dir / "model.patchbank", out_dir / "predictions"
    check_output_folder(out_dir, need_bytes=DEMO_BYTES)
    refuse_existing([model_path, pred_dir / "predictions.csv", pred_dir / "predictions.json"], overwrite)
    check_data_folder(data_dir)
    setup_threads(threads)
    t_start = time.perf_counter()
    data_dir.mkdir(parents=True, exist_ok=True)     # marked first: a run stopped while writing
    (data_dir / DEMO_MARKER).write_text("the synthetic dataset of patchbank demo\n")   # it can rerun
    make_dataset(data_dir)
    if not quiet:
        click.echo(f"synthetic dataset (defects: {', '.join(DEFECT_TYPES)}) in {data_dir}", err=True)
    (category,) = read_dataset(data_dir)
    with PredictionOutputs(pred_dir, list(category.test), heatmaps=True, overwrite=overwrite) as outputs:
        _fit_and_predict(category, data_dir, model_path, outputs, device=device, quiet=quiet,
                         overwrite=overwrite)
    click.echo(f"total {time.perf_counter() - t_start:.1f} s")


def _fit_and_predict(category, data_dir: Path, model_path: Path, outputs: PredictionOutputs, *,
                     device: str, quiet: bool, overwrite: bool) -> None:
    """Fit the default preset on the demo's train/good, save it, predict the test split, print the metrics."""
    from patchbank.detector import Detector
    from patchbank.evaluation.scoring import score_category

    det = Detector.from_preset(DEFAULT_PRESET, device=device, progress=not quiet)
    t0 = time.perf_counter()
    det.fit(data_dir / "train" / "good")
    fit_s = time.perf_counter() - t0
    det.save(model_path, overwrite=overwrite)

    paths = list(category.test)
    t0 = time.perf_counter()
    result, preds = run_predictions(det, paths, outputs, batch_size=None, quiet=quiet,
                                    model_path=str(model_path))
    pred_s = time.perf_counter() - t0
    metrics = score_category(category, preds, det.config)
    n_bad = category.n_defective
    pred_dir = outputs.out_dir
    click.echo(f"fit {DEFAULT_PRESET} ({det.config.backbone}) on {len(category.train)} "
               f"images in {fit_s:.1f} s; predicted {len(paths)} test images in {pred_s:.1f} s")
    click.echo(f"image AUROC: {metrics['image_auroc']:.3f}  ({len(paths) - n_bad} good, {n_bad} defective; "
               f"{result['n_flagged']} flagged at the calibrated threshold)")
    click.echo(f"pixel AUROC: {metrics['pixel_auroc']:.3f}, AUPRO: {metrics['aupro']:.3f}")
    click.echo(f"data:        {data_dir}")
    click.echo(f"model:       {model_path}")
    click.echo(f"predictions: {pred_dir / 'predictions.csv'}, {pred_dir / 'predictions.json'}")
    click.echo(f"heatmaps:    {pred_dir / 'heatmaps'}")
