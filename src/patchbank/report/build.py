"""Building the report of a results folder and writing it without overwriting anything.

:func:`build_report` reads the folder (:func:`~patchbank.report.results.read_results`), builds
its page model and renders it.  :func:`write_report` claims the output file first
(:func:`~patchbank.io.output_files.reserve_file`: an existing file is refused without
``overwrite``, and a file the report reads, :func:`files_read`, always), then writes it
through a temporary file renamed into place (:func:`~patchbank.io.output_files.commit_file`),
so a failed run leaves nothing behind.
"""
from __future__ import annotations

import os
from pathlib import Path

from patchbank.io.output_files import (MIN_FREE_BYTES, check_not_inputs, check_output_file, commit_file,
                                       make_folder, release_file, reserve_file)
from patchbank.report.evaluate_page import evaluate_page
from patchbank.report.predict_page import heatmap_file, predict_page
from patchbank.report.render import render_page
from patchbank.report.results import PREDICTIONS, SUMMARY, EvaluateResults, PredictResults, read_results
from patchbank.report.thumbnails import THUMB_TEXT

REPORT_NAME = "report.html"


def report_html(results: PredictResults | EvaluateResults, *, progress: bool = False) -> str:
    """The HTML of the report of results read by :func:`~patchbank.report.results.read_results`."""
    page = (predict_page(results, progress=progress) if isinstance(results, PredictResults)
            else evaluate_page(results, progress=progress))
    return render_page(page, thumb_text=THUMB_TEXT)


def build_report(results_dir: str | os.PathLike, *, progress: bool = False) -> str:
    """The HTML of the report of a ``predict`` or ``evaluate`` output folder.

    Raises:
        PatchbankError: the folder is not such an output, or a file in it is corrupt.
    """
    return report_html(read_results(results_dir), progress=progress)


def files_read(results: PredictResults | EvaluateResults) -> list[Path]:
    """The files a report of ``results`` reads: ``predictions.json`` (or ``summary.json`` and
    the run files), and every record's image and heatmap."""
    if isinstance(results, PredictResults):
        records = results.records
        files = [results.folder / PREDICTIONS]
        files += [h for h in (heatmap_file(results, rec) for rec in records) if h is not None]
    else:
        records = [rec for run in results.runs for rec in (run.images or [])]
        files = [results.folder / SUMMARY] + [run.path for run in results.runs]
    return files + [Path(rec["path"]) for rec in records]


def write_report(results_dir: str | os.PathLike, output: str | os.PathLike | None = None, *,
                 overwrite: bool = False, progress: bool = False) -> Path:
    """Write the report of ``results_dir`` to ``output`` (default ``results_dir/report.html``);
    returns its path.  The folder is read and the output checked before anything is created.

    Raises:
        PatchbankError: as :func:`build_report`; ``output`` exists and not ``overwrite``; it is
            one of the files the report reads (:func:`files_read`); it cannot be written.
    """
    out = Path(output) if output is not None else Path(results_dir) / REPORT_NAME
    results = read_results(results_dir)
    check_not_inputs([out], files_read(results))
    check_output_file(out, need_bytes=MIN_FREE_BYTES)
    make_folder(out.parent)
    reservation = None if overwrite else reserve_file(out, hold_lock=True)
    try:
        html = report_html(results, progress=progress)
        commit_file(out, lambda tmp: tmp.write_text(html, encoding="utf-8"), reservation)
    finally:
        if reservation is not None:
            release_file(reservation)
    return out
