"""``patchbank demo``: a synthetic end-to-end run that needs no network or dataset."""
from __future__ import annotations

import time
from pathlib import Path

import click

from patchbank.cli.options import overwrite_option, run_options, setup_threads
from patchbank.cli.predictions import refuse_existing, run_predictions


@click.command()
@click.option("-o", "--output", "out_dir", default="demo_out", show_default=True,
              type=click.Path(path_type=Path), help="Folder for the data, model and predictions.")
@run_options
@overwrite_option("Replace the outputs of an earlier demo run.")
def demo(out_dir: Path, device: str, threads: int | None, quiet: bool, overwrite: bool) -> None:
    """Synthetic end-to-end run (no network): make data, fit lmf-core, predict, report AUROC.

    Writes OUT/data (MVTec layout), OUT/model.patchbank and OUT/predictions (CSV, JSON and
    heatmaps/).
    """
    from patchbank.io.synthetic import DEFECT_TYPES, make_dataset

    data_dir, model_path, pred_dir = out_dir / "data", out_dir / "model.patchbank", out_dir / "predictions"
    refuse_existing([model_path, pred_dir / "predictions.csv", pred_dir / "predictions.json"], overwrite)
    setup_threads(threads)
    t_start = time.perf_counter()
    make_dataset(data_dir)
    if not quiet:
        click.echo(f"synthetic dataset (defects: {', '.join(DEFECT_TYPES)}) in {data_dir}", err=True)

    from patchbank.detector import Detector
    from patchbank.evaluation.scoring import score_category
    from patchbank.io.datasets import read_dataset
    from patchbank.io.images import list_images

    det = Detector.from_preset("lmf-core", device=device, progress=not quiet)
    t0 = time.perf_counter()
    det.fit(data_dir / "train" / "good")
    fit_s = time.perf_counter() - t0
    det.save(model_path, overwrite=True)

    (category,) = read_dataset(data_dir)
    paths = list(category.test)
    t0 = time.perf_counter()
    result, preds = run_predictions(det, paths, pred_dir, heatmaps=True, overwrite=overwrite,
                                    batch_size=None, quiet=quiet, model_path=str(model_path))
    pred_s = time.perf_counter() - t0
    metrics = score_category(category, preds, det.config)
    n_bad = category.n_defective
    click.echo(f"fit lmf-core ({det.config.backbone}) on {len(list_images(data_dir / 'train' / 'good'))} "
               f"images in {fit_s:.1f} s; predicted {len(paths)} test images in {pred_s:.1f} s")
    click.echo(f"image AUROC: {metrics['image_auroc']:.3f}  ({len(paths) - n_bad} good, {n_bad} defective; "
               f"{result['n_flagged']} flagged at the calibrated threshold)")
    click.echo(f"pixel AUROC: {metrics['pixel_auroc']:.3f}, AUPRO: {metrics['aupro']:.3f}")
    click.echo(f"data:        {data_dir}")
    click.echo(f"model:       {model_path}")
    click.echo(f"predictions: {pred_dir / 'predictions.csv'}, {pred_dir / 'predictions.json'}")
    click.echo(f"heatmaps:    {pred_dir / 'heatmaps'}")
    click.echo(f"total {time.perf_counter() - t_start:.1f} s")

