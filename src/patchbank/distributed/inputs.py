"""What a distributed ``predict`` scores: its inputs -> one list of image paths, on the driver.

Each input is one of

* a **folder** or an **image file**: as the local ``predict`` reads them
  (:func:`patchbank.io.prediction_files.expand_inputs`: a folder of images, or a folder of
  folders such as MVTec's ``test/``);
* a **glob** (``'archive/2024-*/**/*.png'``, quoted so the shell leaves it alone; ``**``
  descends into sub-folders): the matching files with an image extension, sorted (a match with
  an image extension that is no file, a broken link or a FIFO, is an error, as in a folder);
* a **list file** (``.txt`` or ``.lst``): one path per line; blank lines and lines starting
  with ``#`` are skipped;
* a **table** (``.parquet`` or ``.csv``): the paths in its column ``column`` (default ``path``;
  a ``predictions.parquet`` of an earlier run works as is).

Relative paths inside a list file or table are taken relative to that file's folder, or where
no file lies there, relative to the working folder (an earlier run's table holds its paths as
given).  The same
image named twice is scored once (one warning).  Every listed file must exist: the first
missing one is a one-line :class:`~patchbank.errors.PatchbankError` with the count of missing
files; so are an empty input, a glob matching nothing and a table without the column.
"""
from __future__ import annotations

import csv
import glob
from pathlib import Path
from typing import Sequence

from patchbank.errors import PatchbankError
from patchbank.io.images import IMAGE_EXTENSIONS, is_image_file, refuse_unreadable
from patchbank.io.prediction_files import LIST_SUFFIXES, TABLE_SUFFIXES, check_names, expand_inputs, unique_paths

_GLOB_CHARS = set("*?[")


def read_inputs(inputs: Sequence[str], column: str = "path", out_dir: str | Path | None = None) -> list[Path]:
    """The image paths named by ``inputs`` (see the module docstring), in the order given; a
    folder's scan never reads the run's own outputs in ``out_dir`` (:func:`expand_inputs`)."""
    inputs = _as_list(inputs)
    if not inputs:
        raise PatchbankError("no inputs given")
    paths: list[Path] = []
    for raw in inputs:
        p, kind = Path(raw), _listing_kind(Path(raw))
        if not p.exists() and _GLOB_CHARS & set(raw):
            paths += _globbed(raw)
        elif kind == "list":
            paths += _listed(p, _list_lines(p))
        elif kind == "table":
            paths += _listed(p, _table_column(p, column))
        else:
            paths += expand_inputs([raw], out_dir)
    return check_names(unique_paths(paths))


def _as_list(inputs: Sequence[str] | str) -> list[str]:
    return [str(inputs)] if isinstance(inputs, (str, Path)) else [str(raw) for raw in inputs]


def _listing_kind(p: Path) -> str | None:
    """``"list"`` (a list file), ``"table"`` (Parquet / CSV) or None (a folder, an image, a glob)."""
    if not p.is_file():
        return None
    suffix = p.suffix.lower()
    return "list" if suffix in LIST_SUFFIXES else "table" if suffix in TABLE_SUFFIXES else None


def _globbed(pattern: str) -> list[Path]:
    matches = [Path(m) for m in glob.glob(pattern, recursive=True)]
    refuse_unreadable(matches)      # a broken link or FIFO with an image extension is never dropped
    found = sorted(m for m in matches if is_image_file(m))
    if not found:
        raise PatchbankError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) match {pattern}")
    return found


def _list_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PatchbankError(f"cannot read the list file {path}: {exc}") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _table_column(path: Path, column: str) -> list[str]:
    """The non-empty cells of ``column`` of a Parquet or CSV table."""
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            names = pq.read_schema(path).names
            if column not in names:
                raise PatchbankError(f"{path} has no column {column!r} (columns: {', '.join(names)}); "
                                     f"name the path column with --path-column")
            cells = pq.read_table(path, columns=[column]).column(column).to_pylist()
        else:
            with open(path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                if column not in (reader.fieldnames or []):
                    raise PatchbankError(f"{path} has no column {column!r} (columns: "
                                         f"{', '.join(reader.fieldnames or [])}); name the path "
                                         f"column with --path-column")
                cells = [row[column] for row in reader]
    except PatchbankError:
        raise
    except Exception as exc:   # pyarrow's and csv's own errors on a corrupt table
        raise PatchbankError(f"cannot read the table {path}: {' '.join(str(exc).split())}") from None
    return [str(c).strip() for c in cells if c is not None and str(c).strip()]


def source_files(inputs: Sequence[str]) -> list[Path]:
    """The list files and tables among ``inputs`` (the files the run reads besides the images:
    no output may be one of them)."""
    return [Path(raw) for raw in _as_list(inputs) if _listing_kind(Path(raw)) is not None]


def _listed(source: Path, entries: list[str]) -> list[Path]:
    """The files ``entries`` of a list file or table, relative ones taken from its folder (or,
    where there is none such, from the working folder: a ``predict`` table of a run given
    relative paths holds them as given)."""
    if not entries:
        raise PatchbankError(f"{source} lists no images")
    paths = [e if e.is_absolute() or not (source.parent / e).is_file() and e.is_file() else source.parent / e
             for e in map(Path, entries)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise PatchbankError(f"{source} lists {missing[0]}, which is not a file{more}")
    return paths
