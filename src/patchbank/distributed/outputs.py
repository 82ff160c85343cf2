"""The files of a distributed ``predict``: ``predictions.parquet``, ``.csv`` and ``.json``.

Columns and cells are the local ``predict``'s (:mod:`patchbank.io.prediction_files`): ``path``,
(``category``, ``routed``,) ``score``, ``normalized_score``, ``is_anomalous``, ``threshold``
(, ``heatmap``).  The JSON has the local layout (``model``, ``threshold``, ``n_images``,
``n_flagged``, ``heatmaps``, ``predictions``, ...) plus ``engine``.  Rows are in input order.

:class:`ResultFiles` claims the three files (and checks the heatmap files) BEFORE the run: an
existing one is a one-line error without ``overwrite``; the files are written through
temporary files renamed into place (:func:`patchbank.io.output_files.commit_file`), so a failed
run leaves no half-written table.  No output may be one of the images scored
(:func:`~patchbank.io.output_files.check_not_inputs`), and with ``overwrite`` the previous run's
three tables, then the heatmaps they named, are removed before any heatmap is written
(:func:`~patchbank.io.prediction_files.remove_previous_run`), so a run stopped part-way leaves
no old table beside new heatmaps, and no old heatmap stays beside the new table.  :meth:`ResultFiles.collect` checks that every input index came
back exactly once (a lost or twice-scored image is an error, never a silent gap).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterable

from patchbank.errors import PatchbankError
from patchbank.io.output_files import (MIN_FREE_BYTES, Reservation, check_not_inputs, check_output_folder,
                                       commit_file, make_folder, release_file, reserve_file)
from patchbank.io.prediction_files import csv_fields, csv_row, remove_previous_run

FILES = ("predictions.parquet", "predictions.csv", "predictions.json")


class ResultFiles:
    """The outputs of one distributed prediction run under ``out_dir`` (see the module docstring)."""

    def __init__(self, out_dir: str | Path, heat_paths: list[Path], *, overwrite: bool,
                 inputs: list[Path] = ()):
        self.out_dir, self.overwrite = Path(out_dir), overwrite
        self.paths = {name: self.out_dir / name for name in FILES}
        self.heat_paths = heat_paths
        self.inputs = inputs          # the images scored: no output may be one of them
        self.reserved: dict[Path, Reservation] = {}

    def __enter__(self) -> "ResultFiles":
        check_not_inputs([*self.paths.values(), *self.heat_paths], self.inputs)
        check_output_folder(self.out_dir, need_bytes=MIN_FREE_BYTES)
        make_folder(self.out_dir)
        if self.heat_paths:
            make_folder(self.heat_paths[0].parent)
        if self.overwrite:           # the old tables go before any new heatmap is written
            remove_previous_run(self.out_dir, also=(self.paths["predictions.parquet"],))
        else:
            existing = [p for p in self.heat_paths if p.exists()]
            if existing:
                raise PatchbankError(f"{existing[0]} already exists; pass --overwrite to replace")
            try:
                for path in self.paths.values():
                    self.reserved[path] = reserve_file(path, hold_lock=True)
            except BaseException:
                self.__exit__()
                raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for res in self.reserved.values():
            release_file(res)

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
        """Write the Parquet table, the CSV and the JSON (``summary`` + ``predictions``)."""
        multi = bool(records) and "category" in records[0]
        fields = csv_fields(multi, bool(self.heat_paths))
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
