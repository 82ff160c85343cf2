"""Scoring images into files: input expansion, heatmap names, predictions.csv / .json / heatmaps.

Shared by ``predict`` and ``demo``; the input expansion, heatmap names, records and CSV cells
are :mod:`patchbank.io.prediction_files`'s (shared with the Ray engine).  Nothing is overwritten without ``overwrite=True``: the
outputs are claimed exclusively before the model runs (:class:`PredictionOutputs`, on
:mod:`patchbank.io.output_files`).
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import click

from patchbank.errors import PatchbankError
from patchbank.io.output_files import (MIN_FREE_BYTES, Reservation, check_free_space, check_not_inputs,
                                       check_output_folder, commit_file, file_lock, make_folder, missing_folders,
                                       release_file, remove_empty_folders, reserve_file)
from patchbank.io.prediction_files import (HEATMAP_FOLDER, TABLES, csv_fields, csv_row,  # noqa: F401
                                           expand_inputs, heatmap_names, heatmap_note, model_files,
                                           overlay_writer, prediction_record, remove_previous_run)


def refuse_existing(paths: list[Path], overwrite: bool) -> None:
    """Raise PatchbankError naming the first of ``paths`` that exists, unless ``overwrite``."""
    if overwrite:
        return
    existing = [p for p in paths if p.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise PatchbankError(f"{existing[0]} already exists{more}; pass --overwrite to replace")


HEATMAP_BYTES_PER_PIXEL = 1
"""Free space asked for per heatmap pixel (PNG overlays compress to well under 3 bytes/pixel)."""


class PredictionOutputs:
    """The files of one prediction run under ``out_dir``, claimed BEFORE the model is run.

    :meth:`open` refuses an output file that is one of the input images or ``reads`` (the model
    and weights files, :func:`~patchbank.io.prediction_files.model_files`;
    :func:`~patchbank.io.output_files.check_not_inputs`), checks the folder (writable, not a
    file, :data:`MIN_FREE_BYTES` free) and, without ``overwrite``, creates ``predictions.csv``,
    ``predictions.json`` and every heatmap PNG exclusively as empty placeholders (the CSV and JSON
    keep a lock while the run lives), so a second run into the same folder fails at once naming
    the file.  :meth:`write` writes every file through a temporary file renamed over its
    placeholder, holding a lock on ``out_dir``, so two ``--overwrite`` runs never interleave (the
    later one replaces the whole set).  Used as a context manager, placeholders of a run that
    fails are removed, and so are the heatmaps and CSV it wrote before it failed (an error,
    Ctrl-C, SIGTERM), so that a plain rerun finds nothing in its way, and the folders it created
    for them when they are left empty (:meth:`abandon`).

    A run stopped part-way (an error, Ctrl-C, a kill) never leaves a mixed set readable as one
    run: with ``overwrite``, :meth:`clear_previous` removes the previous run's CSV and JSON, then
    the heatmaps they named, before the first heatmap is written, and the JSON (what ``patchbank
    report`` reads) is written last.  So ``predictions.json`` either describes a complete set with
    no heatmap of the previous run beside it, or is absent (the heatmaps folder may then hold
    some of the stopped run's PNGs, which nothing names).  A previous run's heatmap that is an
    input of this run is never removed (:func:`~patchbank.io.prediction_files.remove_previous_run`).
    """

    def __init__(self, out_dir: Path, paths: list[Path], *, heatmaps: bool, overwrite: bool,
                 reads: list[Path] = ()):
        self.out_dir, self.overwrite, self.heatmaps = Path(out_dir), overwrite, heatmaps
        self.inputs = [*paths, *reads]      # the images and the other files the run reads
        self.json_path, self.csv_path = (self.out_dir / name for name in TABLES)
        self.heat_dir = self.out_dir / HEATMAP_FOLDER
        self.heat_paths = [self.heat_dir / n for n in heatmap_names(paths)] if heatmaps else []
        self.reserved: dict[Path, Reservation] = {}
        self.written: list[tuple[Path, int, int]] = []   # (path, device, inode) committed by this run
        self.created: list[Path] = []     # the folders this run created, deepest first

    def open(self) -> "PredictionOutputs":
        """Check and claim the outputs (see the class docstring); returns self."""
        check_not_inputs([self.csv_path, self.json_path, *self.heat_paths], self.inputs)
        check_output_folder(self.out_dir, need_bytes=MIN_FREE_BYTES)
        if self.heatmaps:
            check_output_folder(self.heat_dir)
        self.created = missing_folders(self.heat_dir if self.heatmaps else self.out_dir)
        try:
            make_folder(self.out_dir)
            if self.heatmaps:
                make_folder(self.heat_dir)
            if self.overwrite:
                return self
            for path in (self.csv_path, self.json_path):
                self.reserved[path] = reserve_file(path, hold_lock=True)
            for path in self.heat_paths:  # no other live run: we hold the CSV/JSON locks
                self.reserved[path] = reserve_file(path)
        except BaseException:
            self.abandon()
            raise
        return self

    def check_space(self, input_size: tuple[int, int] | None) -> None:
        """Ask for room for the heatmaps (``HEATMAP_BYTES_PER_PIXEL`` per pixel of
        ``input_size`` per image) on top of :data:`MIN_FREE_BYTES`."""
        if self.heat_paths and input_size:
            need = MIN_FREE_BYTES + len(self.heat_paths) * HEATMAP_BYTES_PER_PIXEL * input_size[0] * input_size[1]
            check_free_space(self.heat_dir, need, self.heat_dir)

    def clear_previous(self) -> None:
        """With ``overwrite``, remove the previous run's ``predictions.csv`` and ``.json`` and the
        heatmaps they named (:func:`~patchbank.io.prediction_files.remove_previous_run`; call it
        holding :meth:`lock`, before the first heatmap): from here until this run's JSON is
        written the folder holds no set that reads as one run (see the class docstring)."""
        if self.overwrite:
            remove_previous_run(self.out_dir, keep=self.inputs)

    def write(self, path: Path, write: Any) -> None:
        """Write one output through a temporary file renamed over its placeholder."""
        commit_file(path, write, self.reserved.get(path))
        st = path.stat()
        self.written.append((path, st.st_dev, st.st_ino))

    def lock(self):
        """The lock on ``out_dir`` held while the files are written."""
        return file_lock(self.out_dir, what=f"the predictions in {self.out_dir}", quiet=True)

    def release(self) -> None:
        """Remove the placeholders not written (a failed run leaves nothing behind)."""
        for res in self.reserved.values():
            release_file(res)

    def discard_written(self) -> None:
        """Remove the files this run wrote (on leaving the context with an error before the
        JSON was written: its heatmaps and CSV, which no table names), each only while it is
        still the file written."""
        for path, dev, ino in reversed(self.written):
            try:
                st = path.stat()
                if (st.st_dev, st.st_ino) == (dev, ino):
                    path.unlink()
            except OSError:
                pass
        self.written.clear()

    def abandon(self) -> None:
        """After a failure (an error, Ctrl-C, SIGTERM): remove the files this run wrote unless
        its JSON was written (a complete set is kept), the placeholders not written, then the
        folders this run created that are left empty (an option or input refused after
        :meth:`open` leaves no empty ``-o`` folder)."""
        if all(path != self.json_path for path, _, _ in self.written):
            self.discard_written()
        self.release()
        remove_empty_folders(self.created)

    def __enter__(self) -> "PredictionOutputs":
        return self.open()

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.release()
        else:
            self.abandon()


def run_predictions(det, paths: list[Path], outputs: PredictionOutputs, *, batch_size: int | None,
                    quiet: bool, model_path: str | None = None,
                    category: str | None = None) -> tuple[dict[str, Any], list]:
    """Predict ``paths`` with ``det`` (a Detector or MultiDetector); write ``predictions.csv``,
    ``predictions.json`` and, with heatmaps, ``heatmaps/<name>.png`` under the opened
    ``outputs`` (:class:`PredictionOutputs`, which refuses existing files without overwrite).

    Returns ``(the JSON dict, the Prediction list)``.  ``category`` (multi-category models only)
    skips routing.

    Heatmap colours use the model's fixed range (per category of a multi-category model:
    :func:`~patchbank.io.prediction_files.heatmap_note`), so they compare across runs too.
    """
    from patchbank.multi import MultiDetector   # det exists, so torch is loaded already

    multi = isinstance(det, MultiDetector)
    outputs.check_space(det.config.input_size)
    if multi:
        preds = det.predict([str(p) for p in paths], category=category, batch_size=batch_size)
    else:
        preds = det.predict([str(p) for p in paths], batch_size=batch_size)
    records = _records(det, paths, preds, multi, category, outputs.heat_paths)
    heat_dir = outputs.heat_dir
    result = {
        "model": model_path,
        "threshold": None if multi else float(det.threshold_),
        "threshold_applies_to": "normalized_score",
        "map_threshold": None if multi else det.calibration_.map_threshold_,
        "blur_threshold": None if multi else det.calibration_.blur_threshold_,
        **({"categories": det.categories, "routing": "given" if category else "routed"} if multi else {}),
        "n_images": len(records),
        "n_flagged": sum(r["is_anomalous"] for r in records),
        "heatmaps": None,
        "predictions": records,
    }
    with outputs.lock():
        outputs.clear_previous()
        if outputs.heatmaps:
            result["heatmaps"] = heatmap_note(heat_dir, _write_heatmaps(det, paths, preds, outputs, quiet, multi))
        outputs.write(outputs.csv_path, lambda tmp: _write_csv(tmp, records, multi, outputs.heatmaps))
        outputs.write(outputs.json_path, lambda tmp: _write_json(tmp, result))
    return result, preds


def _write_json(path: Path, result: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")


def _records(det, paths, preds, multi: bool, category: str | None, heat_paths: list[Path]) -> list[dict]:
    """One JSON record per prediction (threshold per record: multi models have one per category)."""
    def detector_of(pr):
        return det.detectors_[pr.category] if multi else det

    return [prediction_record(p, pr, detector_of(pr).threshold_,
                              other_shape=detector_of(pr).train_shape_.is_other(pr.image_size),
                              routed=(category is None) if multi else None,
                              heatmap=heat_paths[i] if heat_paths else None)
            for i, (p, pr) in enumerate(zip(paths, preds))]


def _write_heatmaps(det, paths, preds, outputs: PredictionOutputs, quiet: bool,
                    multi: bool) -> dict[str | None, tuple[float, float]]:
    """Overlay PNGs on the ORIGINAL images (each map mapped back through the resize and crop;
    the band the crop cut off drawn grey, not inspected), coloured on the model's fixed range
    (its category's); returns the ranges used, by category (None for a single model)."""
    from tqdm import tqdm

    ranges: dict[str | None, tuple[float, float]] = {}
    for p, pr, target in tqdm(list(zip(paths, preds, outputs.heat_paths)), desc="heatmaps", unit="img",
                              disable=quiet, file=sys.stderr, leave=False):
        key = pr.category if multi else None
        if key not in ranges:
            ranges[key] = (det.detectors_[key] if multi else det).heatmap_range()
        outputs.write(target, overlay_writer(p, pr.anomaly_map, det.config, *ranges[key]))
    return ranges


def _write_csv(path: Path, records: list[dict], multi: bool, heatmaps: bool) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=csv_fields(multi, heatmaps))
        writer.writeheader()
        for rec in records:
            writer.writerow(csv_row(rec))


def flag_counts(records: list[dict[str, Any]]) -> dict[str, int]:
    """How many of ``records`` each rule of the decision flags: ``score`` (not normalised score
    <= its threshold: a NaN is flagged), ``whole_image`` (the whole-image check), ``focus`` (out
    of focus), and ``several``: how many are flagged by more than one of them."""
    reasons = [(not r["normalized_score"] <= r["threshold"], r["whole_image_anomalous"], r["out_of_focus"])
               for r in records]
    return {"score": sum(s for s, _, _ in reasons), "whole_image": sum(w for _, w, _ in reasons),
            "focus": sum(f for _, _, f in reasons), "several": sum(sum(r) > 1 for r in reasons)}


def flagged_text(result: dict[str, Any]) -> str:
    """``N flagged anomalous: k by the score (normalised > T), w by the whole-image check, f out
    of focus (m by more than one)``: the checks only where they flagged an image, the threshold
    ``per-category thresholds`` for a multi-category model."""
    c = flag_counts(result["predictions"])
    rule = ("per-category thresholds" if result["threshold"] is None
            else f"normalised > {result['threshold']:.3f}")
    parts = [f"{c['score']} by the score ({rule})"]
    if c["whole_image"]:
        parts.append(f"{c['whole_image']} by the whole-image check")
    if c["focus"]:
        parts.append(f"{c['focus']} out of focus")
    several = f" ({c['several']} by more than one)" if c["several"] else ""
    return f"{result['n_flagged']} flagged anomalous: {', '.join(parts)}{several}"


def print_predict_summary(result: dict[str, Any], out_dir: Path, seconds: float) -> None:
    """The ``predict`` summary on stdout: counts (what each rule flagged, :func:`flagged_text`),
    per-category counts of a multi-category model, files written."""
    n = result["n_images"]
    line = f"{n} image{'' if n == 1 else 's'} in {seconds:.1f} s: {flagged_text(result)}"
    if result["threshold"] is None:   # multi-category: one threshold per category
        counts: dict[str, int] = {}
        for rec in result["predictions"]:
            counts[rec["category"]] = counts.get(rec["category"], 0) + 1
        how = "given" if result.get("routing") == "given" else "routed"
        line += f"; {how}: " + ", ".join(f"{c} {k}" for c, k in counts.items())
    click.echo(line)
    click.echo(f"wrote {out_dir / 'predictions.csv'} and {out_dir / 'predictions.json'}")
    if result["heatmaps"]:
        h = result["heatmaps"]
        span = (f"colour range {h['vmin']:.4g}..{h['vmax']:.4g}" if h["vmin"] is not None
                else "colour range per category")
        click.echo(f"heatmaps in {h['folder']} ({span}, the model's fixed range)")
