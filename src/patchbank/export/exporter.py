"""``export_model``: a fitted model -> an export folder (graph files + JSON sidecar).

The folder holds, per format asked for, the graph of :class:`~patchbank.export.graph.ExportGraph`
(``model.onnx`` [+ ``model.onnx.data``] for ``onnx``; ``model.xml`` + ``model.bin`` for
``openvino``) and ``patchbank_export.json`` (:mod:`patchbank.export.sidecar`, with every graph
and data file's size and sha256), written last, so a folder with a sidecar is complete.  Files
are written in a temporary folder inside the target and renamed into place once all are
written (an earlier export's files are removed then, not before); existing export files are
never replaced without ``overwrite``, an export file name taken by a folder is refused before
any work, and so is an export that would write the model file or weights file it was loaded
from (``reads``).  One export writes a folder at a time (a lock on
the folder, the target checked again under it), so of two at once the second is refused, or
with ``overwrite`` replaces the first's whole set.

A multi-category model is refused (one line) unless ``category`` names the one category to
export: its graph is that category's single-category path (no router).
"""
from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from patchbank import __version__
from patchbank.detector import Detector
from patchbank.errors import PatchbankError
from patchbank.export.graph import CHUNK_BYTES, OUTPUTS, ExportGraph, bank_dtype_note, search_note
from patchbank.export.onnx_writer import PROTOBUF_LIMIT, export_program, save_program
from patchbank.export.openvino_writer import write_openvino
from patchbank.export.sidecar import (DATA_FILES, GRAPH_FILES, SIDECAR_NAME, build_sidecar, format_files,
                                      sidecar_tmp_path, write_sidecar)
from patchbank.export.runtimes import ONNX_UTF8
from patchbank.io.model_file import file_sha256
from patchbank.io.output_files import (MIN_FREE_BYTES, check_not_inputs, check_output_folder, check_utf8_name,
                                       file_lock, make_folder, remove_previous)
from patchbank.multi import MultiDetector

FORMATS = tuple(GRAPH_FILES)


def export_files(formats) -> list[str]:
    """Every file name an export of ``formats`` may write (graphs, data files, sidecar)."""
    return format_files(formats) + [SIDECAR_NAME]


def written_paths(folder: str | Path) -> list[Path]:
    """Every path an export into ``folder`` may write or replace, whatever its formats: each
    format's graph and data file, the sidecar and the sidecar's temporary file."""
    folder = Path(folder)
    return [folder / name for name in export_files(FORMATS)] + [sidecar_tmp_path(folder)]


def check_not_reads(folder: str | Path, reads: Iterable[str | os.PathLike]) -> None:
    """Refuse an export into ``folder`` that would write or replace one of the files ``reads``
    (the model file it was loaded from, its weights file): one line naming both, whatever
    ``overwrite`` says (:func:`~patchbank.io.output_files.check_not_inputs`)."""
    check_not_inputs(written_paths(folder), reads)


def single_detector(model, category: str | None) -> Detector:
    """The single-category detector to export from ``model`` (see the module docstring)."""
    if isinstance(model, MultiDetector):
        if category is None:
            raise PatchbankError(f"exporting a multi-category model as one routed graph is not "
                                 f"supported (categories: {', '.join(model.categories)}); export "
                                 f"one category at a time with --category NAME")
        if category not in model.detectors_:
            raise PatchbankError(f"unknown category {category!r}; this model has "
                                 f"{', '.join(model.categories)}")
        return model.detectors_[category]
    if category is not None:
        raise PatchbankError("--category needs a multi-category model; this model has one category")
    if not isinstance(model, Detector):
        raise PatchbankError(f"cannot export a {type(model).__name__}; give a fitted Detector")
    model.check_fitted()
    return model


def check_target(folder: Path, formats, overwrite: bool) -> None:
    """Refuse a folder where an export's file name is taken by something that is not a file (a
    folder, a link to one: it could not be replaced), a folder holding export files unless
    ``overwrite``, and an ONNX export to a folder whose path is not UTF-8, which ONNX Runtime
    could not open (one line each)."""
    check_output_folder(folder, need_bytes=MIN_FREE_BYTES)
    if "onnx" in formats:
        check_utf8_name(folder.absolute(), "ONNX export folder path", ONNX_UTF8)
    odd = [p for p in written_paths(folder) if p.exists() and not p.is_file()]
    if odd:
        raise PatchbankError(f"{odd[0]} is not a file (a folder?); an export writes that name: move it "
                             f"away or export to another folder")
    existing = [folder / n for n in export_files(FORMATS) if (folder / n).exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise PatchbankError(f"{existing[0]} already exists{more}; pass --overwrite to replace the export")


def _write_graphs(program, folder: Path, formats, external_over: int, begin, n_steps: int
                  ) -> tuple[dict, dict, bool]:
    """Write the graph files of ``formats`` in a temporary folder inside ``folder`` and move them
    in, after removing an earlier export's files; returns (sizes, sha256 digests, whether the
    ONNX weights are external data: initializers over ``external_over`` bytes).  ``begin(step)``
    advances the progress bar."""
    with tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as tmp:
        tmp = Path(tmp)
        begin(1)
        external = save_program(program, tmp / GRAPH_FILES["onnx"], external_over)
        if "openvino" in formats:
            begin(2)
            write_openvino(tmp / GRAPH_FILES["onnx"], tmp / GRAPH_FILES["openvino"])
        begin(n_steps)
        if "onnx" not in formats:
            for name in (GRAPH_FILES["onnx"], DATA_FILES["onnx"]):
                (tmp / name).unlink(missing_ok=True)
        files, hashes = {}, {}
        for path in sorted(tmp.iterdir()):
            files[path.name], hashes[path.name] = path.stat().st_size, file_sha256(path)
        # the new files are ready: an earlier export's go, its sidecar first (a folder without
        # one is no export), then the new ones move in (each one rename in the same folder)
        remove_previous([folder / SIDECAR_NAME] + [folder / n for n in format_files(FORMATS)])
        for name in files:
            move_in(tmp / name, folder / name)
    return files, hashes, external


def move_in(path: Path, target: Path) -> None:
    """Rename ``path`` to ``target`` (same folder tree), an OSError as one line naming ``target``."""
    try:
        os.replace(path, target)
    except OSError as exc:
        raise PatchbankError(f"cannot write {target}: {exc.strerror or exc}") from None


def export_model(model, folder: str | Path, formats=("onnx",), *, category: str | None = None,
                 overwrite: bool = False, bank_dtype: str | None = None,
                 external_over: int = PROTOBUF_LIMIT, chunk_bytes: int = CHUNK_BYTES,
                 progress: bool = False, reads: Iterable[str | os.PathLike] = ()) -> dict[str, Any]:
    """Export ``model`` (a fitted Detector, or one ``category`` of a MultiDetector) to
    ``folder`` in ``formats`` (``onnx``, ``openvino``); returns the sidecar written.
    ``progress``: a bar on stderr over the steps (the graph's capture, the ONNX file, the
    OpenVINO conversion), which take tens of seconds for a large bank.  ``reads``: the files
    ``model`` was loaded from (its model file, a weights file); an export that would write one
    of them is refused before any work (:func:`check_not_reads`), with ``overwrite`` too.

    ``bank_dtype`` stores the bank as float32 or float16 (default: the model's ``bank_dtype``);
    ``external_over``: initializer bytes above which ONNX weights go to external data;
    ``chunk_bytes``: distance bytes per image per bank block (see :mod:`patchbank.export.graph`).
    """
    formats = list(dict.fromkeys(formats))
    if not formats or any(f not in FORMATS for f in formats):
        raise PatchbankError(f"formats must be some of {', '.join(FORMATS)}, got {formats!r}")
    det = single_detector(model, category)
    folder = Path(folder)
    check_not_reads(folder, reads)
    check_target(folder, formats, overwrite)
    steps = ["capturing the graph", "writing ONNX"] + (["converting to OpenVINO"] if "openvino" in formats else [])
    with tqdm(total=len(steps), desc=f"export ({steps[0]})", disable=not progress, file=sys.stderr,
              bar_format="{desc}: {n_fmt}/{total_fmt} steps [{elapsed}]") as bar:

        def begin(done: int) -> None:     # steps[done] starts, the ones before it are done
            bar.update(done - bar.n)
            bar.set_description_str(f"export ({steps[done] if done < len(steps) else 'done'})")

        graph = ExportGraph(det, bank_dtype, chunk_bytes)
        program = export_program(graph, torch.zeros(2, 3, *det.config.network_size))
        make_folder(folder)
        # one export writes a folder at a time: a second waits, then finds the first's files
        # (refused without overwrite) or replaces the whole set; the sidecar is written last
        with file_lock(folder, what=f"the export in {folder}", quiet=not progress):
            check_target(folder, formats, overwrite)        # again: another export may have finished
            files, hashes, external = _write_graphs(program, folder, formats, external_over, begin, len(steps))
            notes = [n for n in (search_note(det), bank_dtype_note(det, graph.bank_dtype)) if n]
            stored = graph.search if graph.context is None else graph.context   # the whole rows, held once
            entries, dim = stored.shape
            bank = {"entries": int(entries), "dim": int(dim), "dtype": graph.bank_dtype,
                    "bytes": int(stored.bank.numel() * stored.bank.element_size()),
                    "block_rows": graph.search.bank_chunk}
            data = build_sidecar(det, version=__version__, outputs=OUTPUTS, formats=formats, bank=bank,
                                 external_data=external and "onnx" in formats, notes=notes)
            data.update(files=files, graph_sha256=hashes, category=category)
            write_sidecar(folder, data)
    return data
