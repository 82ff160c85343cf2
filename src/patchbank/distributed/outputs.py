"""The files of a distributed ``predict``: ``predictions.parquet``, ``.csv`` and ``.json``.

Columns and cells are the local ``predict``'s (:mod:`patchbank.io.prediction_files`): ``path``,
(``category``, ``routed``,) ``score``, ``normalized_score``, ``is_anomalous``, ``threshold``
(, ``heatmap``).  The JSON has the local layout (``model``, ``threshold``, ``n_images``,
``n_flagged``, ``heatmaps``, ``predictions``, ...) plus ``engine``.  Rows are in input order.

:class:`ResultFiles` claims the three files (and checks the heatmap files) BEFORE the run: an
existing one is a one-line error without ``overwrite``; the files are written through
temporary files renamed into place (:func:`patchbank.io.output_files.commit_file`), so a failed
run leaves no half-written table.  No output may be one of the files the run reads
(:func:`~patchbank.io.output_files.check_not_inputs`: the images, list files and tables, the
model and weights files).  The actors write the heatmaps into a hidden staging folder of the run
in ``out_dir``; only when every image came back does :meth:`ResultFiles.write`, holding the
folder's lock as a local ``predict`` does, remove (with ``overwrite``) the previous run's tables
and the heatmaps they named (:func:`~patchbank.io.prediction_files.remove_previous_run`), move
the new heatmaps in and write the tables.  So a run that fails or is stopped leaves the previous
set as it was (its staging folder removed), and two runs into one folder never mix their files.
:meth:`ResultFiles.collect` checks that every input index came
back exactly once (a lost or twice-scored image is an error, never a silent gap).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

from patchbank.errors import PatchbankError
from patchbank.io.output_files import (MIN_FREE_BYTES, Reservation, check_not_inputs, check_output_folder,
                                       commit_file, file_lock, make_folder, release_file, reserve_file)
from patchbank.io.prediction_files import csv_fields, csv_row, remove_previous_run

FILES = ("predictions.parquet", "predictions.csv", "predictions.json")
STAGING_PREFIX = ".heatmaps-staging-"   # a run's own hidden folder in out_dir for its heatmaps


class ResultFiles:
    """The outputs of one distributed prediction run under ``out_dir`` (see the module docstring)."""

    def __init__(self, out_dir: str | Path, heat_paths: list[Path], *, overwrite: bool,
                 inputs: list[Path] = ()):
        self.out_dir, self.overwrite = Path(out_dir), overwrite
        self.paths = {name: self.out_dir / name for name in FILES}
        self.heat_paths = heat_paths
        self.inputs = inputs          # the files the run reads: no output may be one of them
        self.reserved: dict[Path, Reservation] = {}
        self.staging: Path | None = None   # where the actors write the heatmaps until the run succeeds

    def __enter__(self) -> "ResultFiles":
        check_not_inputs([*self.paths.values(), *self.heat_paths], self.inputs)
        check_output_folder(self.out_dir, need_bytes=MIN_FREE_BYTES)
        make_folder(self.out_dir)
        if not self.overwrite:
            self._refuse_existing_heatmaps()
            try:
                for path in self.paths.values():
                    self.reserved[path] = reserve_file(path, hold_lock=True)
            except BaseException:
                self.__exit__()
                raise
        if self.heat_paths:
            self.staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.out_dir))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.staging is not None:      # a run that failed: its heatmaps go, nothing else moved
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        for res in self.reserved.values():
            release_file(res)

    def staged(self) -> list[Path]:
        """Where the actors write each heatmap (a hidden folder of this run in ``out_dir``),
        in the order of ``heat_paths``."""
        return [self.staging / p.name for p in self.heat_paths]

    def _refuse_existing_heatmaps(self) -> None:
        existing = [p for p in self.heat_paths if p.exists()]
        if existing:
            raise PatchbankError(f"{existing[0]} already exists; pass --overwrite to replace")

    @staticmethod
    def collect(batches: Iterable[dict[str, list]], n: int) -> list[dict[str, Any]]:
        """Records from the pipeline's output batches (columns ``index`` + record keys), in
        input order; every index in ``range(n)`` exactly once, else a PatchbankError."""
        rows: list[dict[str, Any] | None] = [None] * n
        dup = 0
        for batch in batches:
            keys = [k for k in batch if k != "index"]
            for j, i in enumerate(batch["index"]):
                if rows[i] is not None:
                    dup += 1
                rows[i] = {k: batch[k][j] for k in keys}
        lost = sum(r is None for r in rows)
        if lost or dup:
            raise PatchbankError(f"the Ray run returned {lost} image(s) too few and {dup} twice "
                                 f"(of {n}); nothing was written")
        return rows  # type: ignore[return-value]

    def write(self, records: list[dict[str, Any]], summary: dict[str, Any]) -> None:
        """Holding the lock on ``out_dir`` (as a local ``predict`` does): with ``overwrite`` remove
        the previous run's tables and the heatmaps they named, move this run's heatmaps in from
        staging, then write the Parquet table, the CSV and the JSON (``summary`` +
        ``predictions``), the JSON last."""
        multi = bool(records) and "category" in records[0]
        fields = csv_fields(multi, bool(self.heat_paths))
        with file_lock(self.out_dir, what=f"the predictions in {self.out_dir}", quiet=True):
            if self.overwrite:
                remove_previous_run(self.out_dir, also=(self.paths["predictions.parquet"],), keep=self.inputs)
            else:             # another run may have written one since this run started
                self._refuse_existing_heatmaps()
            if self.heat_paths:
                make_folder(self.heat_paths[0].parent)
                for staged, path in zip(self.staged(), self.heat_paths):
                    os.replace(staged, path)
            self._commit("predictions.parquet", lambda tmp: _write_parquet(tmp, records, fields))
            self._commit("predictions.csv", lambda tmp: _write_csv(tmp, records, fields))
            self._commit("predictions.json", lambda tmp: _write_json(tmp, {**summary, "predictions": records}))

    def _commit(self, name: str, write: Any) -> None:
        path = self.paths[name]
        commit_file(path, write, self.reserved.get(path))


def _write_parquet(path: Path, records: list[dict[str, Any]], fields: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"score": pa.float64(), "normalized_score": pa.float64(), "threshold": pa.float64(),
             "is_anomalous": pa.bool_(), "routed": pa.bool_(), "other_shape": pa.bool_(),
             "map_mean": pa.float64(), "blurriness": pa.float64(), "whole_image_anomalous": pa.bool_(),
             "out_of_focus": pa.bool_()}
    schema = pa.schema([(f, types.get(f, pa.string())) for f in fields])
    table = pa.table({f: [r[f] for r in records] for f in fields}, schema=schema)
    pq.write_table(table, path)


def _write_csv(path: Path, records: list[dict[str, Any]], fields: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for rec in records:
            writer.writerow(csv_row(rec))


def _write_json(path: Path, result: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")
