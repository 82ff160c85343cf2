"""Reading a results folder: the output of ``patchbank predict`` or of ``patchbank evaluate``.

:func:`read_results` decides the kind from the files present -- ``predictions.json`` (predict;
it wins when both are there) or ``summary.json`` (evaluate, with its ``runs/`` files) -- and
checks the shape of what it reads, so the page builder can trust it.  Every problem a user can
fix (no such folder, neither file, unreadable or corrupt JSON, a file that is not what its name
says) is a one-line :class:`~patchbank.errors.PatchbankError` naming the file.  Missing run files,
and run files written before runs recorded their test images, are not errors: the run is kept
with a ``problem`` text that the page shows.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchbank.config import Config
from patchbank.errors import PatchbankError
from patchbank.evaluation.run_store import RunStore, same_config

PREDICTIONS = "predictions.json"
SUMMARY = "summary.json"
PREDICTION_KEYS = ("path", "score", "normalized_score", "is_anomalous", "threshold")
IMAGE_KEYS = ("path", "label", "score", "normalized_score", "is_anomalous", "threshold")
NO_IMAGES = ("this run file has no per-image records (it was written before evaluate stored "
             "them); rerun evaluate with --no-resume to get its curves and images")


@dataclass
class PredictResults:
    """A ``predict`` output folder: ``data`` is its ``predictions.json``, checked."""

    folder: Path
    data: dict[str, Any]

    @property
    def records(self) -> list[dict[str, Any]]:
        """The per-image records of ``predictions.json``, in the file's order."""
        return self.data["predictions"]


@dataclass
class EvaluateRun:
    """One category x seed of an evaluate folder: its run file (None when missing), and what is
    wrong with it for the report (None when it has everything)."""

    category: str
    seed: int
    path: Path
    run: dict[str, Any] | None
    problem: str | None = None

    @property
    def images(self) -> list[dict[str, Any]] | None:
        """The run's per-image records, or None when the run file lacks them."""
        return None if self.run is None else self.run.get("images")


@dataclass
class EvaluateResults:
    """An ``evaluate`` output folder: ``summary`` is its ``summary.json``; ``runs`` one entry per
    category and seed the summary names, categories in summary order, then seeds."""

    folder: Path
    summary: dict[str, Any]
    runs: list[EvaluateRun] = field(default_factory=list)


def read_json(path: Path, what: str) -> Any:
    """The parsed JSON of ``path``; unreadable or corrupt files are one-line errors naming it.

    ``what`` names the file's role in messages (``"predictions file"``)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise PatchbankError(f"{what} not found: {path}") from None
    except UnicodeDecodeError:
        raise PatchbankError(f"{what} {path} is not UTF-8 text (corrupt JSON)") from None
    except json.JSONDecodeError as exc:
        raise PatchbankError(f"{what} {path} is corrupt JSON ({exc.msg} at line {exc.lineno}, "
                             f"column {exc.colno})") from None
    except OSError as exc:
        raise PatchbankError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def read_results(folder: str | os.PathLike) -> PredictResults | EvaluateResults:
    """Read a ``predict`` or ``evaluate`` output folder (see the module docstring).

    Raises:
        PatchbankError: ``folder`` is not a folder, holds neither ``predictions.json`` nor
            ``summary.json``, or one of the files read is unreadable, corrupt or of the wrong shape.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PatchbankError(f"results folder not found: {folder}" if not folder.exists()
                             else f"not a folder: {folder}; give the output folder of predict or evaluate")
    if (folder / PREDICTIONS).exists():
        return read_predict(folder)
    if (folder / SUMMARY).exists():
        return read_evaluate(folder)
    raise PatchbankError(f"{folder} holds neither {PREDICTIONS} (the output of patchbank predict) "
                         f"nor {SUMMARY} (the output of patchbank evaluate){_hint(folder)}")


def _hint(folder: Path) -> str:
    """``"; found one in <sub>"`` for the first sub-folder holding either file (demo's layout)."""
    try:
        subs = sorted(p for p in folder.iterdir() if p.is_dir())
    except OSError:
        return ""
    for sub in subs:
        for name in (PREDICTIONS, SUMMARY):
            if (sub / name).is_file():
                return f"; found {name} in {sub}"
    return ""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_records(records: Any, keys: tuple[str, ...], path: Path, where: str) -> None:
    """Each record an object with ``keys``: ``path`` a string, the decision a boolean, the
    numbers numbers (NaN allowed: a NaN score is anomalous), ``label`` 0 or 1."""
    if not isinstance(records, list):
        raise PatchbankError(f"{path}: {where} is not a list")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise PatchbankError(f"{path}: {where}[{i}] is not an object")
        missing = [k for k in keys if k not in rec]
        if missing:
            raise PatchbankError(f"{path}: {where}[{i}] lacks {', '.join(missing)}")
        bad = [k for k in keys if k not in ("path", "is_anomalous", "label") and not _is_number(rec[k])]
        if not isinstance(rec["path"], str):
            bad.insert(0, "path")
        if not isinstance(rec["is_anomalous"], bool):
            bad.append("is_anomalous")
        if "label" in keys and rec["label"] not in (0, 1):
            bad.append("label")
        if bad:
            raise PatchbankError(f"{path}: {where}[{i}] has a bad {', '.join(bad)}")


def read_predict(folder: Path) -> PredictResults:
    """``folder/predictions.json``, checked: an object with a ``predictions`` list of records
    holding :data:`PREDICTION_KEYS`, and ``heatmaps`` null or an object."""
    path = folder / PREDICTIONS
    data = read_json(path, "predictions file")
    if not isinstance(data, dict) or "predictions" not in data:
        raise PatchbankError(f"{path} is not a patchbank predictions file (no 'predictions' list)")
    _check_records(data["predictions"], PREDICTION_KEYS, path, "predictions")
    if not isinstance(data.get("heatmaps"), (dict, type(None))):
        raise PatchbankError(f"{path}: 'heatmaps' is neither null nor an object")
    threshold = data.get("threshold")
    if threshold is not None and not _is_number(threshold):
        raise PatchbankError(f"{path}: 'threshold' is not a number")
    return PredictResults(folder, data)


def read_evaluate(folder: Path) -> EvaluateResults:
    """``folder/summary.json`` (checked: ``categories`` an object of per-metric ``{mean, std}``,
    ``seeds`` a list of integers) and the run file of each category and seed."""
    path = folder / SUMMARY
    summary = read_json(path, "summary file")
    if not isinstance(summary, dict) or not isinstance(summary.get("categories"), dict) \
            or not isinstance(summary.get("seeds"), list) or not isinstance(summary.get("metrics"), list):
        raise PatchbankError(f"{path} is not a patchbank evaluate summary (needs 'categories', "
                             f"'seeds' and 'metrics')")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in summary["seeds"]):
        raise PatchbankError(f"{path}: 'seeds' is not a list of integers")
    for cat, entry in summary["categories"].items():
        if not isinstance(entry, dict) or not all(isinstance(v, dict) for v in entry.values()):
            raise PatchbankError(f"{path}: category {cat!r} is not an object of {{mean, std}} entries")
    store = RunStore(folder / "runs")
    runs = [read_run(store.stored_path(cat, seed), cat, seed, summary.get("config"))
            for cat in summary["categories"] for seed in summary["seeds"]]
    return EvaluateResults(folder, summary, runs)


#: A run that is not the summary's (an evaluation stopped part-way, then a report).
NOT_THE_SUMMARYS = ("the run file was computed with another configuration than summary.json (an "
                    "evaluation that stopped part-way?); its numbers are not the table's: run "
                    "patchbank evaluate again")


def _summarys_config(stored: Any, summary_config: dict[str, Any], seed: int) -> bool:
    """A run's config dict is the summary's (which is the first seed's) at the run's ``seed``,
    compared as the resume compares them (:func:`~patchbank.evaluation.run_store.same_config`:
    a field added to Config after a reused run was written takes its default)."""
    try:
        want = Config.from_dict(summary_config).replace(seed=seed)
    except (TypeError, ValueError):
        return False
    return same_config(stored, want)


def read_run(path: Path, category: str, seed: int, config: dict[str, Any] | None = None) -> EvaluateRun:
    """One run file: missing -> a run with a ``problem``; corrupt -> an error; holding another
    category or seed, or (``config``: the summary's) another configuration than the summary's
    seed aside -> a run with that ``problem`` (:data:`NOT_THE_SUMMARYS`); without ``images`` ->
    a run with :data:`NO_IMAGES` as its problem."""
    if not path.exists():
        return EvaluateRun(category, seed, path, None, f"run file {path} is missing")
    run = read_json(path, "run file")
    if not isinstance(run, dict) or not isinstance(run.get("metrics"), dict):
        raise PatchbankError(f"{path} is not a patchbank run file (no 'metrics' object)")
    if run.get("category", category) != category or run.get("seed", seed) != seed:
        return EvaluateRun(category, seed, path, run, f"run file {path} holds the run of "
                           f"{run.get('category')!r} seed {run.get('seed')!r}, not this one")
    if config is not None and not _summarys_config(run.get("config"), config, seed):
        return EvaluateRun(category, seed, path, run, NOT_THE_SUMMARYS)
    if "images" not in run:
        return EvaluateRun(category, seed, path, run, NO_IMAGES)
    _check_records(run["images"], IMAGE_KEYS, path, "images")
    labels = {rec["label"] for rec in run["images"]}
    if labels != {0, 1}:
        return EvaluateRun(category, seed, path, run, "the run's test images are not both good and "
                                                      "defective; no curves can be drawn")
    return EvaluateRun(category, seed, path, run)

