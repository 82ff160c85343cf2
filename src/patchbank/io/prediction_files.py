"""The files of a prediction run, shared by every engine that writes them: which images a
``predict`` input names, heatmap file names, one record per prediction, the CSV columns and
cells, one heatmap overlay, and the description of the run's heatmaps.

Heatmap colours (every engine, and the service): the model's fixed range, ``0`` to twice the
region level at the calibrated threshold (``Detector.heatmap_range``; one range per category of a
multi-category model), so colours compare across images, runs, engines and the service's
heatmaps.

The local ``patchbank predict`` (:mod:`patchbank.cli.predictions`) and the Ray engine
(:mod:`patchbank.distributed`) both build their outputs from these functions, so the two write
the same columns with the same formatting.

Record keys (``predictions.json`` / Parquet columns): ``path``, ``score``, ``normalized_score``,
``is_anomalous``, ``threshold`` (on the normalised score), ``map_mean`` (the mean of the image's
anomaly map), ``blurriness`` (-log of the variance of the input's Laplacian: larger is blurrier),
``whole_image_anomalous`` (that mean is above the whole-image check's threshold:
with ``Config.whole_image_check`` an image is anomalous for it too), ``out_of_focus`` (the image is
blurrier than every training image: with ``Config.focus_check`` an image is anomalous for it too),
``other_shape`` (the image is unlike
the training images in shape or size, :meth:`patchbank.io.train_shape.TrainShape.is_other`: its
H / W differs from the one they shared, or its size lies more than twice outside theirs, so it was
stretched or scaled to the model's input and its score is not like theirs); a multi-category model adds
``category`` and ``routed``; a run with heatmaps adds ``heatmap``.  The CSV orders them
:func:`csv_fields` and formats floats with 6 significant digits and booleans as 0 / 1.
"""
from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from patchbank.errors import PatchbankError
from patchbank.io.output_files import check_path_given, check_utf8_name, remove_previous


TABLES = ("predictions.json", "predictions.csv")   # a run's tables, in every engine's output folder
HEATMAP_FOLDER = "heatmaps"                          # its heatmaps' folder there


def model_files(model: Any, weights: Any = None) -> list[Path]:
    """The files a prediction run reads besides its images (the model file, or each file of an
    exported model's folder, and a ``--weights`` file): no output may be one of them."""
    files = [Path(p) for p in (model, weights) if p is not None]
    return [f for p in files for f in (sorted(p.iterdir()) if p.is_dir() else [p])]


def expand_inputs(inputs: tuple[str, ...] | list[str], out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Files as given; folders -> their images (sorted), or, for a folder holding only
    sub-folders (like MVTec's ``test/``), the images of all sub-folders, recursively
    (:func:`nested_images`).

    In a folder (flat or nested) anything without an image extension is skipped with one
    warning naming how many and the first few; an entry WITH an image extension is never
    skipped: one that cannot be read (a broken link, a loop of links, a FIFO) is an error
    naming it, as when it is given directly.  Prediction results are never read as inputs
    when a nested folder is scanned (a flat folder's sub-folders are not read anyway): the
    run's own outputs in ``out_dir`` (its tables and heatmaps folder, everything below it;
    :func:`outputs_below`) where ``out_dir`` is that folder or lies below it, and an earlier
    run's tables and the heatmaps they name (:func:`earlier_results`) are skipped with one
    warning naming where they lie; a user's own files beside them are read as any others.
    Duplicates (same resolved path) are dropped, first occurrence kept, with a warning saying
    how many.

    Raises:
        PatchbankError: an empty, missing or unreadable input, a folder without images, an
            unreadable entry with an image extension in a folder, or a list file or table
            given as a file (:func:`check_not_a_listing`).
    """
    from patchbank.io.images import is_image_file, list_images, not_an_input

    paths: list[Path] = []
    for raw in inputs:
        check_path_given(raw, "an input path")
        p = Path(raw)
        if p.is_dir():
            if any(is_image_file(c) for c in p.iterdir()):
                paths.extend(list_images(p))
            else:
                paths.extend(nested_images(p, skip=outputs_below(p, out_dir)))
        elif p.is_file():
            paths.append(check_not_a_listing(p))
        else:
            raise PatchbankError(not_an_input(p))
    return check_names(unique_paths(paths))


LIST_SUFFIXES = (".txt", ".lst")        # a list file of image paths (the Ray engine's inputs)
TABLE_SUFFIXES = (".parquet", ".csv")   # a table of image paths (the Ray engine's inputs)


def check_not_a_listing(path: Path) -> Path:
    """``path``, a file given as an input, unless its name says it is a list file or a table of
    image paths (:data:`LIST_SUFFIXES`, :data:`TABLE_SUFFIXES`), which the Ray engine reads
    (:mod:`patchbank.distributed.inputs`) and no image decoder does: a one-line error saying so."""
    if path.suffix.lower() in LIST_SUFFIXES + TABLE_SUFFIXES:
        raise PatchbankError(f"{path} is not an image: list files ({', '.join(LIST_SUFFIXES)}) and tables "
                             f"({', '.join(TABLE_SUFFIXES)}) of image paths are read by predict --engine ray; "
                             f"the local engine takes image files and folders")
    return path


def outputs_below(folder: Path, out_dir: str | os.PathLike | None) -> list[Path]:
    """A run's outputs (``out_dir``'s :data:`TABLES` and :data:`HEATMAP_FOLDER`) that scanning
    the input ``folder`` would reach, as paths relative to ``folder``: all of them when
    ``out_dir`` is ``folder`` or lies below it, none when ``out_dir`` is None or lies elsewhere
    (an input folder at or below the heatmaps folder was given by the user: read as given).
    Paths are compared resolved (links, ``..``; ``out_dir`` need not exist)."""
    if out_dir is None:
        return []
    try:
        rel = Path(out_dir).resolve().relative_to(folder.resolve())
    except ValueError:
        return []
    return [rel / name for name in (*TABLES, HEATMAP_FOLDER)]


def nested_images(folder: Path, skip: Sequence[Path] = ()) -> list[Path]:
    """The images of every sub-folder of ``folder``, recursively, sorted, except those inside
    hidden folders (``.ipynb_checkpoints``: skipped with a warning counting them) and the
    results of prediction runs: everything at or below ``skip`` (paths relative to ``folder``:
    the run's own outputs, :func:`outputs_below`) and an earlier run's tables and the heatmaps
    they name (:func:`earlier_results`), skipped with one warning naming where they lie.

    Every other entry that is not a folder (``notes.txt``), and a link to a folder (not walked),
    is skipped with ONE warning for ``folder`` naming how many and the first few (as
    :func:`~patchbank.io.images.list_images` warns for a flat folder); an unreadable entry with
    an image extension is an error (:func:`~patchbank.io.images.refuse_unreadable`).

    Raises:
        PatchbankError: an unreadable entry with an image extension, or no image at all.
    """
    from patchbank.io.images import IMAGE_EXTENSIONS, is_image_file, refuse_unreadable, warn_skipped

    entries = _without_results(sorted(folder.rglob("*")), folder, skip)
    visible = [c for c in entries if not _hidden(c.relative_to(folder))]
    hidden_images = sum(is_image_file(c) for c in entries) - sum(is_image_file(c) for c in visible)
    if hidden_images:     # .ipynb_checkpoints copies and the like
        warnings.warn(f"{folder}: skipped {hidden_images} image(s) inside hidden folders "
                      f"(names starting with '.')")
    refuse_unreadable(visible)
    images = [c for c in visible if is_image_file(c)]
    if not images:
        raise PatchbankError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {folder}")
    warn_skipped(folder, [_skipped_name(c, folder) for c in visible
                           if not is_image_file(c) and (c.is_symlink() or not c.is_dir())])
    return images


def _without_results(entries: list[Path], folder: Path, outputs: Sequence[Path]) -> list[Path]:
    """``entries`` of the input ``folder`` less the results of prediction runs among them:
    those at or below one of ``outputs`` (this run's own, relative to ``folder``) and an earlier
    run's tables and the heatmaps they name (:func:`earlier_results`), with one warning
    counting the files skipped and naming the runs' folders."""
    earlier = earlier_results(entries)
    kept, runs, skipped = [], set(), 0
    for entry in entries:
        parts = entry.relative_to(folder).parts
        own = next((o for o in outputs if parts[:len(o.parts)] == o.parts), None)
        if own is None and entry not in earlier:
            kept.append(entry)
            continue
        runs.add(folder / own.parent if own is not None else earlier[entry])
        skipped += not entry.is_dir()
    if runs:
        warnings.warn(f"{folder}: skipped {skipped} file(s) that patchbank predict wrote (tables, heatmaps) in "
                      f"{', '.join(sorted(map(str, runs)))}: results are never read as inputs")
    return kept


def earlier_results(entries: list[Path]) -> dict[Path, Path]:
    """The results of earlier prediction runs among a scanned folder's ``entries``: each
    folder holding a table (:data:`TABLES`) and a heatmaps folder is a run's, and its tables
    and the heatmaps they name (:func:`named_heatmaps`) are results, not product images.
    Returns {result file: its run's folder}."""
    runs = {e.parent for e in entries if e.name in TABLES and (e.parent / HEATMAP_FOLDER).is_dir()}
    results = {}
    for run in sorted(runs):
        files = [run / name for name in TABLES if (run / name).is_file()]
        files += named_heatmaps(run, f"the images in {run / HEATMAP_FOLDER} are read as inputs")
        results.update(dict.fromkeys(files, run))
    return results


def _hidden(relative: Path) -> bool:
    """Whether a path below an input folder passes through a hidden folder."""
    return any(part.startswith(".") for part in relative.parts[:-1])


def _skipped_name(entry: Path, folder: Path) -> str:
    """How a skipped entry is named in the warning: its path below ``folder``, ``/`` after a folder."""
    return entry.relative_to(folder).as_posix() + ("/" if entry.is_dir() else "")


def check_names(paths: list[Path]) -> list[Path]:
    """``paths``, each of which must be valid UTF-8: predictions.csv and .json name every image
    in UTF-8, so a file name holding other bytes (a Latin-1 ``é``, say) is a one-line error
    showing its bytes, before anything is computed or written."""
    for p in paths:
        check_utf8_name(p, "image file name", "the prediction files name it in UTF-8")
    return paths


def unique_paths(paths: list[Path]) -> list[Path]:
    """``paths`` without repeats of the same resolved file (first occurrence kept), with one
    warning saying how many were dropped."""
    seen: set[Path] = set()
    unique = []
    for p in paths:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    if len(unique) < len(paths):
        warnings.warn(f"{len(paths) - len(unique)} of {len(paths)} inputs name an image given "
                      f"already (the same file, or a link to it); each image is predicted once",
                      UserWarning, stacklevel=3)
    return unique


def heatmap_names(paths: list[Path]) -> list[str]:
    """One distinct heatmap file name per image, decided by the whole list (deterministic: the
    same list gives the same names, on every engine).

    Each image's own name is ``<stem>.png``; where stems collide (``test/good/000.png`` and
    ``test/spot/000.png``) the parent folder's name is prefixed: ``good_000.png``,
    ``spot_000.png``.  Where own names still collide (``cam/frame.png``, ``cam/frame.jpg``) the
    first keeps it and each later one gets the smallest ``_<k>`` suffix (k >= 1) that is no
    image's own name and not given already (``cam_frame_2.png`` when an input
    ``cam/cam_frame_1.png`` owns ``cam_frame_1.png``), so no two images share a heatmap file.
    Names are compared without case (``A.png`` and ``a.png`` are one file on the case-insensitive
    file systems of macOS, Windows and exFAT drives)."""
    stems = [p.stem for p in paths]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s.casefold()] = counts.get(s.casefold(), 0) + 1
    own = [f"{p.parent.name}_{s}" if counts[s.casefold()] > 1 and p.parent.name else s
           for p, s in zip(paths, stems)]
    taken = {n.casefold() for n in own}
    given: set[str] = set()
    out = []
    for n in own:
        name, k = n, 0
        while name.casefold() in given or (k and name.casefold() in taken):
            k += 1
            name = f"{n}_{k}"
        given.add(name.casefold())
        out.append(f"{name}.png")
    return out


def prediction_record(path: Any, prediction: Any, threshold: float, *, other_shape: bool,
                      routed: bool | None = None, heatmap: Any = None) -> dict[str, Any]:
    """One record of a prediction (see the module docstring); ``other_shape``: the image is
    unlike the training images in shape or size (:meth:`patchbank.io.train_shape.TrainShape.is_other`);
    ``routed`` is given for a multi-category model (None: single-category), ``heatmap`` for a
    run with heatmaps."""
    rec = {"path": str(path), "score": float(prediction.score),
           "normalized_score": float(prediction.normalized_score),
           "is_anomalous": bool(prediction.is_anomalous), "threshold": float(threshold),
           "map_mean": float(prediction.map_mean), "blurriness": float(prediction.blurriness),
           "whole_image_anomalous": bool(prediction.whole_image_anomalous),
           "out_of_focus": bool(prediction.out_of_focus),
           "other_shape": bool(other_shape)}
    if routed is not None:
        rec["category"] = prediction.category
        rec["routed"] = bool(routed)
    if heatmap is not None:
        rec["heatmap"] = str(heatmap)
    return rec


def csv_fields(multi: bool, heatmaps: bool) -> list[str]:
    """The CSV's columns, in order."""
    return (["path"] + (["category", "routed"] if multi else [])
            + ["score", "normalized_score", "is_anomalous", "threshold", "map_mean",
               "blurriness", "whole_image_anomalous", "out_of_focus", "other_shape"]
            + (["heatmap"] if heatmaps else []))


def csv_row(rec: dict[str, Any]) -> dict[str, Any]:
    """A record's CSV cells: floats with 6 significant digits, booleans as 0 / 1."""
    return {**rec, "score": f"{rec['score']:.6g}", "normalized_score": f"{rec['normalized_score']:.6g}",
            "threshold": f"{rec['threshold']:.6g}", "is_anomalous": int(rec["is_anomalous"]),
            "map_mean": f"{rec['map_mean']:.6g}", "blurriness": f"{rec['blurriness']:.6g}",
            "whole_image_anomalous": int(rec["whole_image_anomalous"]),
            "out_of_focus": int(rec["out_of_focus"]), "other_shape": int(rec["other_shape"]),
            **({"routed": int(rec["routed"])} if "routed" in rec else {})}


def overlay_writer(image_path: Any, anomaly_map: np.ndarray, config: Any, vmin: float,
                   vmax: float) -> Callable[[Path], None]:
    """A function writing the heatmap overlay PNG of one prediction to a given path: the map
    mapped back onto the ORIGINAL image (through the resize and crop; the band the crop cut off
    drawn grey, not inspected), coloured on ``vmin``..``vmax``."""
    from patchbank.io.heatmap import save_overlay
    from patchbank.io.image_coords import to_original
    from patchbank.io.images import open_rgb

    image = np.asarray(open_rgb(str(image_path)))
    amap = to_original(anomaly_map, image.shape[:2], config)
    return lambda tmp: save_overlay(tmp, image, amap, vmin, vmax, overwrite=True)


HEATMAP_RANGE_TEXT = ("the model's fixed range per category: 0 to twice the region level at the "
                      "calibrated threshold (Detector.heatmap_range); the same in every run")


def heatmap_note(folder: Path, ranges: dict[str | None, tuple[float, float]] | None) -> dict[str, Any]:
    """The ``heatmaps`` entry of ``predictions.json``: the folder, the colormap and the colour
    ranges (``ranges``: category -> (vmin, vmax), None as the key of a single-category model;
    None when the writer does not know them).  ``vmin`` / ``vmax`` are set when there is one range."""
    one = next(iter(ranges.values())) if ranges and len(ranges) == 1 else (None, None)
    note: dict[str, Any] = {"folder": str(folder), "colormap": "jet", "range": HEATMAP_RANGE_TEXT,
                            "vmin": one[0], "vmax": one[1]}
    if ranges and None not in ranges:
        note["ranges"] = {c: [lo, hi] for c, (lo, hi) in ranges.items()}
    return note


def named_heatmaps(run_dir: Path, if_unreadable: str) -> list[Path]:
    """The heatmaps in ``run_dir/heatmaps`` that the ``predictions.json`` (else the
    ``predictions.csv``) of a run in ``run_dir`` names and that exist: by file name, ``.png``
    files directly in that folder only, so a table, edited or not, can name nothing else.  A
    table that cannot be read names none, with a one-line warning ending in ``if_unreadable``
    (what follows from that)."""
    json_path, csv_path = (run_dir / name for name in TABLES)
    names: list[str] = []
    try:
        if json_path.is_file():
            with open(json_path, encoding="utf-8") as fh:
                records = json.load(fh).get("predictions") or []
            names = [r["heatmap"] for r in records if isinstance(r, dict) and isinstance(r.get("heatmap"), str)]
        elif csv_path.is_file():
            with open(csv_path, newline="", encoding="utf-8") as fh:
                names = [row["heatmap"] for row in csv.DictReader(fh) if row.get("heatmap")]
    except (OSError, ValueError, AttributeError, TypeError, csv.Error) as exc:
        warnings.warn(f"cannot read the previous run's table in {run_dir} ({exc}); {if_unreadable}",
                      UserWarning, stacklevel=2)
        return []
    heat_dir = run_dir / HEATMAP_FOLDER
    found = {heat_dir / Path(n).name for n in names if n.lower().endswith(".png")}
    return sorted(p for p in found if p.is_file() or p.is_symlink())


def remove_previous_run(out_dir: Path, also: tuple[Path, ...] = (), keep: Iterable[Path] = ()) -> None:
    """With ``--overwrite``, before anything new is written into ``out_dir``: remove a previous
    run's ``predictions.json``, ``predictions.csv`` and ``also`` (the Ray engine's Parquet
    table), then the heatmaps its table named (:func:`named_heatmaps`), so neither an old
    table beside new heatmaps nor old heatmaps of images the new run does not score are left
    to be read as its results.  Files the previous run did not name are never touched, nor
    is a heatmap among ``keep`` (the files this run reads: an input of this run stays, with
    one warning; :func:`inputs_among`)."""
    json_path, csv_path = (out_dir / name for name in TABLES)
    heat_dir = out_dir / HEATMAP_FOLDER
    stale = named_heatmaps(out_dir, f"the heatmaps it named, if any, stay in {heat_dir}")
    read = inputs_among(stale, keep)
    if read:
        warnings.warn(f"kept {len(read)} heatmap(s) of the previous run in {heat_dir} that this run reads as "
                      f"inputs ({read[0].name}{', ...' if len(read) > 1 else ''}); no table names them now",
                      UserWarning, stacklevel=2)
    remove_previous((json_path, csv_path, *also))     # the old set stops reading as a run first
    remove_previous([p for p in stale if p not in read])


def inputs_among(files: list[Path], inputs: Iterable[Path]) -> list[Path]:
    """Those of ``files`` that are among ``inputs`` (compared resolved: links, ``..``), in order;
    ``inputs`` are only resolved when ``files`` is not empty."""
    if not files:
        return []
    resolved = {Path(p).resolve() for p in inputs}
    return [f for f in files if f.resolve() in resolved]
