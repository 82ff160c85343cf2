"""Scoring images into files: input expansion, heatmap names, predictions.csv / .json / heatmaps.

Shared by ``predict`` and ``demo``.  Nothing is overwritten without ``overwrite=True``: the
outputs are claimed exclusively before the model runs (:class:`PredictionOutputs`, on
:mod:`patchbank.io.output_files`).
"""
from __future__ import annotations

import csv
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import click
import numpy as np

from patchbank.errors import PatchbankError
from patchbank.io.output_files import (MIN_FREE_BYTES, Reservation, check_free_space, check_output_folder,
                                       commit_file, file_lock, make_folder, release_file, reserve_file)


def expand_inputs(inputs: tuple[str, ...]) -> list[Path]:
    """Files as given; folders -> their images (sorted), or, for a folder holding only
    sub-folders (like MVTec's ``test/``), the images of all sub-folders, recursively.

    Duplicates (same resolved path) are dropped, first occurrence kept, with a warning saying
    how many.

    Raises:
        PatchbankError: a missing input, or a folder without images.
    """
    from patchbank.io.images import IMAGE_EXTENSIONS, list_images

    paths: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            direct = [c for c in p.iterdir() if c.is_file() and c.suffix.lower() in IMAGE_EXTENSIONS]
            if direct:
                paths.extend(list_images(p))
            else:
                nested = sorted(c for c in p.rglob("*") if c.is_file() and c.suffix.lower() in IMAGE_EXTENSIONS)
                if not nested:
                    raise PatchbankError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {p}")
                paths.extend(nested)
        elif p.is_file():
            paths.append(p)
        else:
            raise PatchbankError(f"file or folder not found: {p}")
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
                      UserWarning, stacklevel=2)
    return unique


def heatmap_names(paths: list[Path]) -> list[str]:
    """``<stem>.png`` per image; where stems collide (``test/good/000.png`` and
    ``test/spot/000.png``) the parent folder names are prefixed: ``good_000.png``, ``spot_000.png``."""
    stems = [p.stem for p in paths]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    names = [f"{p.parent.name}_{s}" if counts[s] > 1 and p.parent.name else s
             for p, s in zip(paths, stems)]
    used: dict[str, int] = {}
    out = []
    for n in names:
        k = used.get(n, 0)
        used[n] = k + 1
        out.append(f"{n}.png" if k == 0 else f"{n}_{k}.png")
    return out


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

    :meth:`open` checks the folder (writable, not a file, :data:`MIN_FREE_BYTES` free) and, without
    ``overwrite``, creates ``predictions.csv``, ``predictions.json`` and every heatmap PNG
    exclusively as empty placeholders (the CSV and JSON keep a lock while the run lives), so a
    second run into the same folder fails at once naming the file.  :meth:`write` writes every
    file through a temporary file renamed over its placeholder, holding a lock on ``out_dir``, so
    two ``--overwrite`` runs never interleave (the later one replaces the whole set).  Used as a
    context manager, placeholders of a run that fails are removed.
    """

    def __init__(self, out_dir: Path, paths: list[Path], *, heatmaps: bool, overwrite: bool):
        self.out_dir, self.overwrite, self.heatmaps = Path(out_dir), overwrite, heatmaps
        self.csv_path, self.json_path = self.out_dir / "predictions.csv", self.out_dir / "predictions.json"
        self.heat_dir = self.out_dir / "heatmaps"
        self.heat_paths = [self.heat_dir / n for n in heatmap_names(paths)] if heatmaps else []
        self.reserved: dict[Path, Reservation] = {}

    def open(self) -> "PredictionOutputs":
        """Check and claim the outputs (see the class docstring); returns self."""
        check_output_folder(self.out_dir, need_bytes=MIN_FREE_BYTES)
        if self.heatmaps:
            check_output_folder(self.heat_dir)
        make_folder(self.out_dir)
        if self.heatmaps:
            make_folder(self.heat_dir)
        if self.overwrite:
            return self
        try:
            for path in (self.csv_path, self.json_path):
                self.reserved[path] = reserve_file(path, hold_lock=True)
            for path in self.heat_paths:  # no other live run: we hold the CSV/JSON locks
                self.reserved[path] = reserve_file(path)
        except BaseException:
            self.release()
            raise
        return self

    def check_space(self, input_size: tuple[int, int] | None) -> None:
        """Ask for room for the heatmaps (``HEATMAP_BYTES_PER_PIXEL`` per pixel of
        ``input_size`` per image) on top of :data:`MIN_FREE_BYTES`."""
        if self.heat_paths and input_size:
            need = MIN_FREE_BYTES + len(self.heat_paths) * HEATMAP_BYTES_PER_PIXEL * input_size[0] * input_size[1]
            check_free_space(self.heat_dir, need, self.heat_dir)

    def write(self, path: Path, write: Any) -> None:
        """Write one output through a temporary file renamed over its placeholder."""
        commit_file(path, write, self.reserved.get(path))

    def lock(self):
        """The lock on ``out_dir`` held while the files are written."""
        return file_lock(self.out_dir, what=f"the predictions in {self.out_dir}", quiet=True)

    def release(self) -> None:
        """Remove the placeholders not written (a failed run leaves nothing behind)."""
        for res in self.reserved.values():
            release_file(res)

    def __enter__(self) -> "PredictionOutputs":
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def run_predictions(det, paths: list[Path], outputs: PredictionOutputs, *, batch_size: int | None,
                    quiet: bool, model_path: str | None = None,
                    category: str | None = None) -> tuple[dict[str, Any], list]:
    """Predict ``paths`` with ``det`` (a Detector or MultiDetector); write ``predictions.csv``,
    ``predictions.json`` and, with heatmaps, ``heatmaps/<name>.png`` under the opened
    ``outputs`` (:class:`PredictionOutputs`, which refuses existing files without overwrite).

    Returns ``(the JSON dict, the Prediction list)``.  ``category`` (multi-category models only)
    skips routing.

    Heatmap colours use ONE range for the whole run: ``vmin``/``vmax`` = the minimum and maximum
    of all the run's anomaly maps, so colours are comparable between the run's images (not
    between runs).
    """
    from patchbank.multi import MultiDetector   # det exists, so torch is loaded already

    multi = isinstance(det, MultiDetector)
    outputs.check_space(getattr(det.config, "input_size", None))
    if multi:
        preds = det.predict([str(p) for p in paths], category=category, batch_size=batch_size)
    else:
        preds = det.predict([str(p) for p in paths], batch_size=batch_size)
    records = _records(det, paths, preds, multi, category, outputs.heat_paths)
    vmin = vmax = None
    heat_dir = outputs.heat_dir
    result = {
        "model": model_path,
        "threshold": None if multi else float(det.threshold_),
        "threshold_applies_to": "normalized_score",
        **({"categories": det.categories, "routing": "given" if category else "routed"} if multi else {}),
        "n_images": len(records),
        "n_flagged": sum(r["is_anomalous"] for r in records),
        "heatmaps": None,
        "predictions": records,
    }
    with outputs.lock():
        if outputs.heatmaps and preds:
            vmin, vmax = _write_heatmaps(det, paths, preds, outputs, quiet)
        if outputs.heatmaps:
            result["heatmaps"] = {"folder": str(heat_dir), "vmin": vmin, "vmax": vmax,
                                  "colormap": "jet", "range": "min..max of this run's maps"}
        outputs.write(outputs.csv_path, lambda tmp: _write_csv(tmp, records, multi, outputs.heatmaps))
        outputs.write(outputs.json_path, lambda tmp: _write_json(tmp, result))
    return result, preds


def _write_json(path: Path, result: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")


def _records(det, paths, preds, multi: bool, category: str | None, heat_paths: list[Path]) -> list[dict]:
    """One JSON record per prediction (threshold per record: multi models have one per category)."""
    records = []
    for i, (p, pr) in enumerate(zip(paths, preds)):
        threshold = det.detectors_[pr.category].threshold_ if multi else det.threshold_
        rec = {"path": str(p), "score": float(pr.score), "normalized_score": float(pr.normalized_score),
               "is_anomalous": bool(pr.is_anomalous), "threshold": float(threshold)}
        if multi:
            rec["category"] = pr.category
            rec["routed"] = category is None
        if heat_paths:
            rec["heatmap"] = str(heat_paths[i])
        records.append(rec)
    return records


def _write_heatmaps(det, paths, preds, outputs: PredictionOutputs, quiet: bool) -> tuple[float, float]:
    """Overlay PNGs on the ORIGINAL images (each map mapped back through the resize and crop;
    the band the crop cut off drawn grey, not inspected), one colour range for the run;
    returns (vmin, vmax)."""
    from tqdm import tqdm

    from patchbank.io.heatmap import save_overlay
    from patchbank.io.image_coords import to_original
    from patchbank.io.images import open_rgb

    vmin = float(min(float(pr.anomaly_map.min()) for pr in preds))
    vmax = float(max(float(pr.anomaly_map.max()) for pr in preds))
    for p, pr, target in tqdm(list(zip(paths, preds, outputs.heat_paths)), desc="heatmaps", unit="img",
                              disable=quiet, file=sys.stderr, leave=False):
        image = np.asarray(open_rgb(str(p)))
        amap = to_original(pr.anomaly_map, image.shape[:2], det.config)
        outputs.write(target, lambda tmp: save_overlay(tmp, image, amap, vmin, vmax, overwrite=True))
    return vmin, vmax


def _write_csv(path: Path, records: list[dict], multi: bool, heatmaps: bool) -> None:
    fields = (["path"] + (["category", "routed"] if multi else [])
              + ["score", "normalized_score", "is_anomalous", "threshold"] + (["heatmap"] if heatmaps else []))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for rec in records:
            writer.writerow({**rec, "score": f"{rec['score']:.6g}",
                             "normalized_score": f"{rec['normalized_score']:.6g}",
                             "threshold": f"{rec['threshold']:.6g}",
                             "is_anomalous": int(rec["is_anomalous"]),
                             **({"routed": int(rec["routed"])} if multi else {})})


def print_predict_summary(result: dict[str, Any], out_dir: Path, seconds: float) -> None:
    """The ``predict`` summary on stdout: counts, threshold or per-category counts, files written."""
    n, flagged = result["n_images"], result["n_flagged"]
    if result["threshold"] is None:   # multi-category: one threshold per category
        counts: dict[str, int] = {}
        for rec in result["predictions"]:
            counts[rec["category"]] = counts.get(rec["category"], 0) + 1
        how = "given" if result.get("routing") == "given" else "routed"
        click.echo(f"{n} images in {seconds:.1f} s: {flagged} flagged anomalous (per-category "
                   f"thresholds); {how}: " + ", ".join(f"{c} {k}" for c, k in counts.items()))
    else:
        click.echo(f"{n} images in {seconds:.1f} s: {flagged} flagged anomalous "
                   f"(normalised score > {result['threshold']:.3f})")
    click.echo(f"wrote {out_dir / 'predictions.csv'} and {out_dir / 'predictions.json'}")
    if result["heatmaps"]:
        h = result["heatmaps"]
        click.echo(f"heatmaps in {h['folder']} (colour range {h['vmin']:.4g}..{h['vmax']:.4g})")
