"""The JSON sidecar of an export folder: what the graph expects and what it stands for.

``patchbank_export.json`` holds data only: the format name and version (checked on load), the
patchbank version, the model's configuration (preprocessing: resize, aspect, crop; everything
else for reference), the backbone's input normalisation (mean, std), the input and output names,
the threshold and calibration statistics, the library versions the model was fitted with
(``fitted_with``, null for a model file written before they were recorded), the bank (entries, dim, stored dtype, bytes, block
rows; with context taps ``dim`` is the whole rows' and ``bytes`` counts both stored copies, the
map's columns and the whole rows), which graph files exist per format and whether the ONNX weights are external data, and
any note on how the graph differs from the torch path (``notes``).

The operating point (format version 2): ``calibration_base_scores`` [n] and
``calibration_descriptors`` [n, 3] are the calibration images' S_base and map descriptors, the
arrays a model file keeps; :func:`sidecar_calibration` refits the
:class:`~patchbank.pipeline.calibration.ScoreCalibration` from them (and checks it gives the
sidecar's mean, std and calibrated threshold), so an export moves its threshold and draws its
region and heatmap colours with the torch model's own maths.  ``threshold`` is the threshold
baked into the graph (its ``is_anomalous`` output); ``threshold_override`` is the operating
point in use, null for the calibrated one (as in a model file's header): written by
``patchbank export`` from the model and by ``PUT /v2/models/NAME/threshold`` with
``persist: true`` (:func:`write_threshold_override`).  A version 1 sidecar (no arrays) is
refused with "export again".  With ``config.whole_image_check``, ``calibration_map_means`` [n]
(their maps' means) and ``map_threshold`` (the check's threshold on a map's mean, also baked into
the graph's ``is_anomalous``) are required; without it they are absent.  Likewise with
``config.focus_check``: ``training_blurriness`` [n_train] (every training image's) and
``blur_threshold`` (their largest, baked into the graph's ``is_anomalous``).

Loading (:func:`read_sidecar`) never runs anything the file names: the file names must be plain
names inside the folder, each format's files come from a fixed table (:data:`GRAPH_FILES`), and
the runtime is chosen by the caller from a registry.  Anything else is a one-line
:class:`~patchbank.errors.PatchbankError`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from patchbank.config import Config
from patchbank.errors import ConfigError, PatchbankError
from patchbank.io.train_shape import header_problem
from patchbank.pipeline.calibration import ScoreCalibration
from patchbank.pipeline.structure import COMPONENTS
from patchbank.runtime.environment import RECORD_RULE, is_library_record

SIDECAR_NAME = "patchbank_export.json"
FORMAT_NAME = "patchbank-export"
FORMAT_VERSION = 2
#: the graph files of each format, relative to the export folder (data files beside them)
GRAPH_FILES = {"onnx": "model.onnx", "openvino": "model.xml"}
DATA_FILES = {"onnx": "model.onnx.data", "openvino": "model.bin"}
INPUT_NAME = "images"

_REQUIRED = {"format": str, "format_version": int, "patchbank_version": str, "config": dict,
             "mean": list, "std": list, "input": str, "outputs": list, "threshold": float,
             "calibrated_threshold": float, "score_mean": float, "score_std": float,
             "formats": list, "bank": dict, "external_data": bool, "notes": list,
             "calibration_base_scores": list, "calibration_descriptors": list}
#: relative tolerance of the refitted calibration's mean, std and threshold against the sidecar's
CALIBRATION_RTOL = 1e-9


def sidecar_path(folder: str | Path) -> Path:
    """Where an export folder's sidecar lives."""
    return Path(folder) / SIDECAR_NAME


def write_sidecar(folder: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` (see :func:`build_sidecar`) as the folder's sidecar; returns its path."""
    path = sidecar_path(folder)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def build_sidecar(detector, *, version: str, outputs: tuple[str, ...], formats: list[str],
                  bank: dict[str, Any], external_data: bool, notes: list[str]) -> dict[str, Any]:
    """The sidecar dict of ``detector``'s export (the caller adds file sizes)."""
    cal, bb = detector.calibration_, detector.backbone
    return {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "patchbank_version": version,
        "config": detector.config.to_dict(), "mean": [float(v) for v in bb.mean],
        "std": [float(v) for v in bb.std], "input": INPUT_NAME, "input_layout": "NCHW float32",
        "input_size": list(detector.config.network_size),
        "map_size": list(detector.config.input_size), "outputs": list(outputs),
        "threshold": float(detector.threshold_), "calibrated_threshold": float(cal.stats_.threshold_),
        "score_mean": float(cal.stats_.mean_), "score_std": float(cal.stats_.std_),
        "target_fpr": float(detector.config.target_fpr), "formats": list(formats), "bank": bank,
        "external_data": bool(external_data), "notes": list(notes),
        "backbone_sha256": detector.backbone_sha256_, "patch_grid": list(detector.grid_),
        "search": "exact", "threshold_override": detector.info()["threshold_override"],
        **detector.train_shape_.header(), "fitted_with": detector.fitted_with_,
        "calibration_base_scores": [float(v) for v in cal.base_scores_],
        "calibration_descriptors": [[float(v) for v in row] for row in cal.descriptors_],
        **({} if cal.map_means_ is None else {
            "calibration_map_means": [float(v) for v in cal.map_means_],
            "map_threshold": float(cal.map_threshold_)}),
        **({} if cal.training_blurriness_ is None else {
            "training_blurriness": [float(v) for v in cal.training_blurriness_],
            "blur_threshold": float(cal.blur_threshold_)}),
    }


def read_sidecar(folder: str | Path) -> dict[str, Any]:
    """The checked sidecar of the export folder ``folder`` (see the module docstring).

    Raises:
        PatchbankError: not a folder, no sidecar, not JSON, another format or version, a
            missing or mistyped field, an unknown format, or a graph file that is missing.
    """
    folder = Path(folder)
    path = sidecar_path(folder)
    if not folder.is_dir():
        raise PatchbankError(f"{folder} is not an export folder (run 'patchbank export MODEL -o DIR' "
                             f"to make one)")
    if not path.is_file():
        raise PatchbankError(f"{folder} is not an export folder: {SIDECAR_NAME} not found (run "
                             f"'patchbank export MODEL -o DIR' to make one)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PatchbankError(f"{path}: not a readable JSON sidecar ({' '.join(str(exc).split())})") from None
    _check_fields(data, path)
    for fmt in data["formats"]:
        graph = folder / GRAPH_FILES[fmt]
        if not graph.is_file():
            raise PatchbankError(f"{path}: lists format {fmt} but {graph.name} is missing")
    return data


def _check_fields(data: Any, path: Path) -> None:
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise PatchbankError(f"{path}: not a patchbank export sidecar (format must be {FORMAT_NAME!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise PatchbankError(f"{path}: export format version {data.get('format_version')!r} is not "
                             f"supported (this patchbank reads version {FORMAT_VERSION}); export again")
    for key, kind in _REQUIRED.items():
        if not _is(data.get(key), kind):
            raise PatchbankError(f"{path}: field {key!r} is missing or not a {kind.__name__}")
    if not data["formats"] or any(f not in GRAPH_FILES for f in data["formats"]):
        raise PatchbankError(f"{path}: formats must be a non-empty list of {', '.join(GRAPH_FILES)}, "
                             f"got {data['formats']!r}")
    for key in ("mean", "std"):
        if len(data[key]) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                          and math.isfinite(v) and (key == "mean" or v > 0)
                                          for v in data[key]):
            raise PatchbankError(f"{path}: {key} must be 3 finite numbers")
    try:
        config = Config.from_dict(data["config"])
    except (ConfigError, TypeError) as exc:
        raise PatchbankError(f"{path}: invalid config ({' '.join(str(exc).split())})") from None
    _check_operating_point(data, path, config.whole_image_check, config.focus_check)


def _check_operating_point(data: dict[str, Any], path: Path, whole: bool, focus: bool) -> None:
    """``threshold_override`` a finite number or null, ``train_aspect`` a positive number or null,
    ``train_scale`` null or a [low, high] pair (:func:`~patchbank.io.train_shape.check_scale_range`),
    ``fitted_with`` the fit's library versions or null;
    the calibration arrays [n] and [n, 3] of finite numbers; with ``whole`` (the config's
    ``whole_image_check``) the map means [n] and ``map_threshold``, without it neither; with
    ``focus`` (``focus_check``) ``training_blurriness`` (a non-empty list) and ``blur_threshold``,
    without it neither."""
    if data.get("threshold_override") is not None and not _is(data["threshold_override"], float):
        raise PatchbankError(f"{path}: threshold_override must be a finite number or null, "
                             f"got {data['threshold_override']!r}")
    bad_shape = header_problem(data)   # train_aspect, train_scale: absent in older exports
    if bad_shape:
        raise PatchbankError(f"{path}: {' '.join(bad_shape)}")
    env = data.get("fitted_with")       # likewise
    if env is not None and not is_library_record(env):
        raise PatchbankError(f"{path}: fitted_with must be {RECORD_RULE}, or null")
    base, phi = data["calibration_base_scores"], data["calibration_descriptors"]
    if not base or not all(_is(v, float) for v in base):
        raise PatchbankError(f"{path}: calibration_base_scores must be a non-empty list of finite numbers")
    if len(phi) != len(base) or not all(isinstance(row, list) and len(row) == len(COMPONENTS)
                                        and all(_is(v, float) for v in row) for row in phi):
        raise PatchbankError(f"{path}: calibration_descriptors must be {len(base)} rows of "
                             f"{len(COMPONENTS)} finite numbers (one per calibration base score)")
    for on, flag, values, threshold, size, want in (
            (whole, "whole_image_check", "calibration_map_means", "map_threshold", len(base),
             f"{len(base)} finite numbers"),
            (focus, "focus_check", "training_blurriness", "blur_threshold", None,
             "a non-empty list of finite numbers")):
        got = data.get(values)
        if on and not (isinstance(got, list) and got and (size is None or len(got) == size)
                       and all(_is(v, float) for v in got) and _is(data.get(threshold), float)):
            raise PatchbankError(f"{path}: config.{flag} needs {values} ({want}) and a finite "
                                 f"{threshold}; export again")
        if not on and (values in data or threshold in data):
            raise PatchbankError(f"{path}: {values} / {threshold} are present but config.{flag} is false")


def _is(value: Any, kind: type) -> bool:
    """``value`` is of JSON type ``kind`` (a float field takes any finite number; no bool is a number)."""
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, kind)


def sidecar_config(data: dict[str, Any]) -> Config:
    """The model configuration a checked sidecar records (preprocessing, input size)."""
    return Config.from_dict(data["config"])


def sidecar_calibration(data: dict[str, Any], path: str | Path) -> ScoreCalibration:
    """The :class:`ScoreCalibration` of a checked sidecar, refitted from its calibration arrays
    and set to its operating point (``threshold_override``).

    Raises:
        PatchbankError: the refitted mean, std or calibrated threshold is not the sidecar's (the
            arrays do not belong to this export).
    """
    means, blur = data.get("calibration_map_means"), data.get("training_blurriness")
    cal = ScoreCalibration(sidecar_config(data)).fit(np.asarray(data["calibration_base_scores"], np.float64),
                                                     np.asarray(data["calibration_descriptors"], np.float64),
                                                     None, None if means is None else np.asarray(means, np.float64),
                                                     None if blur is None else np.asarray(blur, np.float64))
    got = {"score_mean": cal.stats_.mean_, "score_std": cal.stats_.std_,
           "calibrated_threshold": cal.stats_.threshold_}
    if cal.map_threshold_ is not None:
        got["map_threshold"] = cal.map_threshold_
    if cal.blur_threshold_ is not None:
        got["blur_threshold"] = cal.blur_threshold_
    for key, value in got.items():
        if not math.isclose(value, data[key], rel_tol=CALIBRATION_RTOL, abs_tol=1e-12):
            raise PatchbankError(f"{path}: the calibration arrays give {key} {value!r}, the sidecar "
                                 f"says {data[key]!r}; export again")
    cal.set_threshold(data.get("threshold_override"))
    return cal


def write_threshold_override(folder: str | Path, loaded: dict[str, Any], threshold: float | None) -> Path:
    """Record ``threshold`` (None: the calibrated one) as the export's ``threshold_override``,
    writing the sidecar atomically (:func:`write_sidecar`); the caller holds the sidecar's lock
    (``patchbank.io.output_files.file_lock``).  ``loaded`` is the sidecar the caller runs: if
    the file on disk now differs from it in anything but the override (the folder was exported
    again), nothing is written.

    Raises:
        PatchbankError: the sidecar changed or no longer reads (one line).
    """
    current = read_sidecar(folder)
    others = lambda d: {k: v for k, v in d.items() if k != "threshold_override"}  # noqa: E731
    if others(current) != others(loaded):
        raise PatchbankError(f"{sidecar_path(folder)} changed since it was loaded (exported again?); "
                             f"restart to serve the new export")
    current["threshold_override"] = threshold
    return write_sidecar(Path(folder), current)
