"""The JSON sidecar of an export folder: what the graph expects and what it stands for.

``patchbank_export.json`` holds data only: the format name and version (checked on load), the
patchbank version, the model's configuration (preprocessing: resize, aspect, crop; everything
else for reference; ``weights`` is null: the graph carries the backbone, ``backbone_sha256`` says
which), the backbone's input normalisation (mean, std), the input and output names, the
threshold and calibration statistics, the library versions the model was fitted with
(``fitted_with``, null for a model file written before they were recorded), the bank (entries,
dim, stored dtype, bytes, block rows; with context taps ``dim`` is the whole rows'), which graph
files exist per format (``files``: name -> size in bytes) and whether the ONNX weights are
external data, and any note on how the graph differs from the torch path (``notes``).

The graph files (format version 3): ``graph_sha256`` holds the sha256 of every graph and data
file written (the names of :data:`GRAPH_FILES` and :data:`DATA_FILES`).  A runtime checks the
files it reads against it before loading them (:func:`check_graph_files`, each file hashed once;
``ExportedModel.graph_sha256_`` keeps the hashes), so another model's graph copied into the
folder is refused.  A version 2 sidecar (no ``graph_sha256``) still loads: its files are checked
against their sizes only, and ``patchbank info`` says they cannot be verified.

The operating point (format version 2 on): ``calibration_base_scores`` [n] and
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

Loading (:func:`read_sidecar`) never runs anything the file names.  Every key the sidecar may
hold and its check are one table (:data:`FIELDS`), validated in one loop: an unknown key, a
missing one (keys added during version 2 may be absent from a version 2 sidecar) or a value a
``patchbank export`` could not have written is refused.  The values that follow from the
configuration must be what it gives (``input_size``, ``map_size``, ``target_fpr``; ``input`` is
:data:`INPUT_NAME`, ``outputs`` the graph's; ``mean`` / ``std`` the backbone's registered
normalisation), ``config.backbone`` must be a registered backbone
and ``config.weights`` null (:func:`patchbank.io.model_checks.check_header_weights`, the model
file's rule); the file names are plain names from the fixed tables, each listed file must be
there with its recorded size, and the runtime is chosen by the caller from a registry.  Every
file a runtime reads is listed, so hashed and checked: each format's graph, OpenVINO's
``model.bin`` (read beside ``model.xml`` whatever the sidecar says; :func:`required_files`) and
the ONNX graph's external data, which must be exactly the data file listed (the runtime reads
the locations from the graph itself before loading it: :func:`check_external_data`).  Anything
else is a one-line :class:`~patchbank.errors.PatchbankError` naming the sidecar and the field.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from patchbank.backbones import backbone_normalisation, check_backbone_name
from patchbank.config import BANK_DTYPES, Config
from patchbank.errors import ConfigError, PatchbankError
from patchbank.export.graph import OUTPUTS
from patchbank.io.model_checks import SHA256, check_header_weights
from patchbank.io.model_file import file_sha256
from patchbank.io.train_shape import header_problem
from patchbank.multi import check_category_name
from patchbank.pipeline.calibration import ScoreCalibration, check_recorded
from patchbank.pipeline.structure import COMPONENTS
from patchbank.runtime.environment import RECORD_RULE, is_library_record

SIDECAR_NAME = "patchbank_export.json"
FORMAT_NAME = "patchbank-export"
FORMAT_VERSION = 3
#: the format versions read: 2 (no graph_sha256: its graph files cannot be verified) and 3
READ_VERSIONS = (2, FORMAT_VERSION)
#: the graph files of each format, relative to the export folder (data files beside them)
GRAPH_FILES = {"onnx": "model.onnx", "openvino": "model.xml"}
DATA_FILES = {"onnx": "model.onnx.data", "openvino": "model.bin"}
#: the formats whose data file every export writes (and so every sidecar lists)
ALWAYS_DATA = ("openvino",)
INPUT_NAME = "images"
INPUT_LAYOUT = "NCHW float32"
SEARCH = "exact"        # the graph's search (an approximate index is exported as the exact one)
#: the calibration numbers a sidecar records, checked against its arrays (the graph's baked
#: ``threshold`` is the model's operating point at export, not the calibrated one)
SIDECAR_CALIBRATION_KEYS = ("score_mean", "score_std", "calibrated_threshold", "map_threshold", "blur_threshold")
_BANK_KEYS = ("entries", "dim", "dtype", "bytes", "block_rows")


def sidecar_path(folder: str | Path) -> Path:
    """Where an export folder's sidecar lives."""
    return Path(folder) / SIDECAR_NAME


def sidecar_tmp_path(folder: str | Path) -> Path:
    """The temporary file :func:`write_sidecar` writes and renames over the sidecar."""
    path = sidecar_path(folder)
    return path.with_name(path.name + ".tmp")


def write_sidecar(folder: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` (see :func:`build_sidecar`) as the folder's sidecar; returns its path."""
    path, tmp = sidecar_path(folder), sidecar_tmp_path(folder)
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def format_files(formats: list[str]) -> list[str]:
    """Every graph and data file name an export of ``formats`` may hold, in table order."""
    return [name for f in formats for name in (GRAPH_FILES[f], DATA_FILES[f])]


def required_files(formats: list[str]) -> list[str]:
    """The files a sidecar of ``formats`` must list: each format's graph, and for ``openvino``
    its data file too (OpenVINO reads ``model.bin`` beside ``model.xml`` whatever a sidecar
    says, so it must be listed, hence hashed and checked; ONNX's data file exists only when the
    weights are external data, and the graph names it: :func:`check_external_data`)."""
    return [name for f in formats for name in (GRAPH_FILES[f],) + ((DATA_FILES[f],) if f in ALWAYS_DATA else ())]


def runtime_files(data: dict[str, Any], fmt: str) -> list[str]:
    """The files of a checked sidecar that a runtime reading format ``fmt`` reads: its graph and,
    for ONNX when one was written, its data file (OpenVINO's is always listed: :func:`required_files`)."""
    return [name for name in (GRAPH_FILES[fmt], DATA_FILES[fmt]) if name in data["files"]]


def check_external_data(folder: str | Path, data: dict[str, Any], locations: set[str]) -> None:
    """Refuse an ONNX graph of the export folder ``folder`` (checked sidecar ``data``) whose
    external data ``locations`` (the file names its tensors read, as the graph itself says:
    :func:`~patchbank.export.onnx_writer.external_data_locations`) are not exactly the ONNX data
    file the sidecar lists (none when it lists none): a runtime reads whatever file the graph
    names, so a file the sidecar does not list would be read unchecked.

    Raises:
        PatchbankError: one line naming the sidecar, the graph and the location.
    """
    path, graph, listed = sidecar_path(folder), GRAPH_FILES["onnx"], DATA_FILES["onnx"]
    allowed = {listed} if listed in data["files"] else set()
    stray = sorted(locations - allowed)
    if stray:
        raise PatchbankError(f"{path}: the graph {graph} references external data {_shown(stray[0])} that "
                             f"the sidecar does not list as its data file; export again")
    if allowed - locations:
        raise PatchbankError(f"{path}: lists {listed} but the graph {graph} does not read it; export again")


def build_sidecar(detector, *, version: str, outputs: tuple[str, ...], formats: list[str],
                  bank: dict[str, Any], external_data: bool, notes: list[str]) -> dict[str, Any]:
    """The sidecar dict of ``detector``'s export (the caller adds the files' sizes and sha256
    and the category)."""
    cal, bb = detector.calibration_, detector.backbone
    return {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "patchbank_version": version,
        "config": dict(detector.config.to_dict(), weights=None), "mean": [float(v) for v in bb.mean],
        "std": [float(v) for v in bb.std], "input": INPUT_NAME, "input_layout": INPUT_LAYOUT,
        "input_size": list(detector.config.network_size),
        "map_size": list(detector.config.input_size), "outputs": list(outputs),
        "threshold": float(detector.threshold_), "calibrated_threshold": float(cal.stats_.threshold_),
        "score_mean": float(cal.stats_.mean_), "score_std": float(cal.stats_.std_),
        "target_fpr": float(detector.config.target_fpr), "formats": list(formats), "bank": bank,
        "external_data": bool(external_data), "notes": list(notes),
        "backbone_sha256": detector.backbone_sha256_, "patch_grid": list(detector.grid_),
        "search": SEARCH, "threshold_override": detector.info()["threshold_override"],
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
    """The checked sidecar of the export folder ``folder`` (see the module docstring); the graph
    files' contents are checked by the runtime that reads them (:func:`check_graph_files`).

    Raises:
        PatchbankError: not a folder, no sidecar, not JSON, another format or version, an
            unknown, missing or mistyped field (:data:`FIELDS`), or a listed file that is
            missing or not of its recorded size.
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
    for name, size in data["files"].items():
        file = folder / name
        if not file.is_file():
            raise PatchbankError(f"{path}: lists {name} but {name} is missing; export again")
        actual = file.stat().st_size
        if actual != size:
            raise PatchbankError(f"{file} is {actual} bytes, the sidecar says {size}; export again")
    return data


def check_graph_files(folder: str | Path, data: dict[str, Any], names: list[str]) -> dict[str, str]:
    """The sha256 of the files ``names`` of the export folder ``folder`` (checked sidecar
    ``data``), each read once, checked against the sidecar's ``graph_sha256`` (format version 3;
    a version 2 sidecar has none, and its files are returned unchecked).

    Raises:
        PatchbankError: a file's sha256 is not the sidecar's (one line naming the file).
    """
    recorded = data.get("graph_sha256", {})
    hashes = {name: file_sha256(Path(folder) / name) for name in names}
    for name, digest in hashes.items():
        if name in recorded and digest != recorded[name]:
            raise PatchbankError(f"{Path(folder) / name} does not match the sha256 in the sidecar "
                                 f"(another export's file?); export again")
    return hashes


# ---------------------------------------------------------------------------------- the fields
_ABSENT = object()   # a key the sidecar does not hold


class _Sidecar(NamedTuple):
    """What a field's check may look at: the whole sidecar, its format version and its config."""

    data: dict[str, Any]
    version: int
    config: Config


Check = Callable[[str, Any, _Sidecar], "str | None"]


class Field(NamedTuple):
    """One key a sidecar may hold: ``check(key, value, sidecar)`` gives None for a valid value
    or the problem (one line, without the path); ``value`` is ``_ABSENT`` for a missing key.
    ``since``: the format version from which the key is required (older sidecars may lack it)."""

    check: Check
    since: int = 2


def _shown(value: Any) -> str:
    """``value`` for an error message: its repr, at most 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _rule(rule: str | Callable[[_Sidecar], str], ok: Callable[[Any, _Sidecar], bool]) -> Check:
    """A check that ``ok(value, sidecar)`` holds, worded ``KEY must be RULE`` (``rule`` may be
    worded from the sidecar)."""
    def check(key: str, value: Any, side: _Sidecar) -> str | None:
        if value is not _ABSENT and ok(value, side):
            return None
        want = rule if isinstance(rule, str) else rule(side)
        if value is _ABSENT:
            return f"field {key!r} is missing (it must be {want}); export again"
        return f"{key} must be {want}, got {_shown(value)}"
    return check


def _is(value: Any, kind: type) -> bool:
    """``value`` is of JSON type ``kind`` (a float field takes any finite number; no bool is a number)."""
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, kind)


def _count(value: Any, low: int = 1) -> bool:
    """``value`` is an integer >= ``low`` (no bool)."""
    return _is(value, int) and value >= low


def _numbers(value: Any, size: int | None = None) -> bool:
    """``value`` is a non-empty list of finite numbers (of ``size`` of them, if given)."""
    return (isinstance(value, list) and bool(value) and (size is None or len(value) == size)
            and all(_is(v, float) for v in value))


def _typed(kind: type, rule: str) -> Check:
    return _rule(rule, lambda v, s: _is(v, kind))


def _nullable(kind: type, rule: str) -> Check:
    return _rule(rule, lambda v, s: v is None or _is(v, kind))


def _equal(want: Any) -> Check:
    return _rule(repr(want), lambda v, s: type(v) is type(want) and v == want)


def _from_config(attr: str) -> Check:
    """The value must be the config's ``attr`` (a size as a list, or a number)."""
    def want(side: _Sidecar) -> Any:
        value = getattr(side.config, attr)
        return list(value) if isinstance(value, tuple) else value
    return _rule(lambda s: f"config.{attr} {_shown(want(s))}",
                 lambda v, s: not isinstance(v, bool) and v == want(s))


def _normalisation(part: str) -> Check:
    """``mean`` / ``std``: 3 finite numbers (std positive), those registered for
    ``config.backbone`` (:func:`~patchbank.backbones.backbone_normalisation`) when it has them."""
    def want(side: _Sidecar) -> list[float] | None:
        registered = backbone_normalisation(side.config.backbone)
        return None if registered is None else list(getattr(registered, part))

    def ok(value: Any, side: _Sidecar) -> bool:
        return (_numbers(value, 3) and (part == "mean" or min(value) > 0)
                and want(side) in (None, [float(v) for v in value]))
    return _rule(lambda s: f"the normalisation of backbone {s.config.backbone} {want(s)}" if want(s) else
                 "3 finite numbers" + (" (positive)" if part == "std" else ""), ok)


def _is_category(value: Any) -> bool:
    try:
        check_category_name(value)
    except PatchbankError:
        return False
    return True


def _header_field(key: str, value: Any, side: _Sidecar) -> str | None:
    """``train_aspect`` / ``train_scale``: the model header's rule (:func:`header_problem`)."""
    if value is _ABSENT:
        return f"field {key!r} is missing; export again"
    bad = header_problem({key: value})
    return f"{key} {bad[1]}" if bad else None


def _formats(value: Any, side: _Sidecar) -> bool:
    return (isinstance(value, list) and bool(value) and all(_is(f, str) and f in GRAPH_FILES for f in value)
            and len(set(value)) == len(value))


def _bank(value: Any, side: _Sidecar) -> bool:
    return (isinstance(value, dict) and sorted(value) == sorted(_BANK_KEYS) and value["dtype"] in BANK_DTYPES
            and all(_count(value[k]) for k in _BANK_KEYS if k != "dtype"))


def _files(value: Any, side: _Sidecar) -> bool:
    formats, allowed = side.data["formats"], format_files(side.data["formats"])
    return (isinstance(value, dict) and all(n in allowed and _count(b, 0) for n, b in value.items())
            and all(name in value for name in required_files(formats)))


def _flagged(flag: str, values: str, threshold: str, per_image: bool) -> dict[str, Field]:
    """The two fields present exactly with ``config.<flag>``: ``values`` (a non-empty list of
    finite numbers, one per calibration image if ``per_image``) and a finite ``threshold``."""
    def check(key: str, value: Any, side: _Sidecar) -> str | None:
        data, on = side.data, getattr(side.config, flag)
        size = len(data["calibration_base_scores"]) if per_image else None
        want = f"{size} finite numbers" if per_image else "a non-empty list of finite numbers"
        if on and not (_numbers(data.get(values), size) and _is(data.get(threshold), float)):
            return f"config.{flag} needs {values} ({want}) and a finite {threshold}; export again"
        if not on and (values in data or threshold in data):
            return f"{values} / {threshold} are present but config.{flag} is false"
        return None
    return {values: Field(check), threshold: Field(check)}


#: Every key a sidecar may hold and its check, in the order they are checked (a check may read
#: the keys above it, already checked; ``config`` is parsed before the loop).
FIELDS: dict[str, Field] = {
    "format": Field(_equal(FORMAT_NAME)),
    "format_version": Field(_rule("2 or 3", lambda v, s: _is(v, int) and v in READ_VERSIONS)),
    "patchbank_version": Field(_typed(str, "a version string")),
    "config": Field(_typed(dict, "the model's configuration")),
    "mean": Field(_normalisation("mean")),
    "std": Field(_normalisation("std")),
    "input": Field(_equal(INPUT_NAME)),
    "input_layout": Field(_equal(INPUT_LAYOUT)),
    "input_size": Field(_from_config("network_size")),
    "map_size": Field(_from_config("input_size"), since=3),
    "outputs": Field(_equal(list(OUTPUTS))),
    "threshold": Field(_typed(float, "a finite number")),
    "calibrated_threshold": Field(_typed(float, "a finite number")),
    "threshold_override": Field(_nullable(float, "a finite number or null")),
    "score_mean": Field(_typed(float, "a finite number")),
    "score_std": Field(_typed(float, "a finite number")),
    "target_fpr": Field(_from_config("target_fpr")),
    "formats": Field(_rule(f"a non-empty list of distinct formats among {', '.join(GRAPH_FILES)}", _formats)),
    "files": Field(_rule(lambda s: f"an object of the formats' file names ({', '.join(format_files(s.data['formats']))}) "
                                   f"to sizes in bytes, {', '.join(required_files(s.data['formats']))} among them",
                         _files)),
    "graph_sha256": Field(_rule("an object of the files' names to their sha256 (64 hex digits)",
                                lambda v, s: isinstance(v, dict) and sorted(v) == sorted(s.data["files"])
                                and all(_is(h, str) and SHA256.fullmatch(h) for h in v.values())), since=3),
    "external_data": Field(_rule(f"true exactly when files lists {DATA_FILES['onnx']}",
                                 lambda v, s: _is(v, bool) and v == (DATA_FILES["onnx"] in s.data["files"]))),
    "bank": Field(_rule(f"an object of the bank's {', '.join(_BANK_KEYS)} (positive integers, dtype one of "
                        f"{', '.join(BANK_DTYPES)})", _bank)),
    "notes": Field(_rule("a list of strings", lambda v, s: isinstance(v, list) and all(_is(n, str) for n in v))),
    "backbone_sha256": Field(_rule("null or the backbone weights' sha256 (64 hex digits)",
                                   lambda v, s: v is None or (_is(v, str) and bool(SHA256.fullmatch(v))))),
    "patch_grid": Field(_rule("[rows, columns], two positive integers",
                              lambda v, s: isinstance(v, list) and len(v) == 2 and all(map(_count, v)))),
    "search": Field(_equal(SEARCH)),
    "category": Field(_rule("null or a category name (letters, digits, '_', '.', '-')",
                            lambda v, s: v is None or _is_category(v))),
    "train_aspect": Field(_header_field, since=3),
    "train_scale": Field(_header_field, since=3),
    "fitted_with": Field(_rule(f"{RECORD_RULE}, or null", lambda v, s: v is None or is_library_record(v)), since=3),
    "calibration_base_scores": Field(_rule("a non-empty list of finite numbers", lambda v, s: _numbers(v))),
    "calibration_descriptors": Field(_rule(
        lambda s: f"{len(s.data['calibration_base_scores'])} rows of {len(COMPONENTS)} finite numbers "
                  f"(one per calibration base score)",
        lambda v, s: isinstance(v, list) and len(v) == len(s.data["calibration_base_scores"])
        and all(_numbers(row, len(COMPONENTS)) for row in v))),
    **_flagged("whole_image_check", "calibration_map_means", "map_threshold", per_image=True),
    **_flagged("focus_check", "training_blurriness", "blur_threshold", per_image=False),
}


def _check_fields(data: Any, path: Path) -> None:
    """Refuse a sidecar that is not this format in a version read here, holds a key not in
    :data:`FIELDS`, or fails a field's check (one line naming ``path`` and the field)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise PatchbankError(f"{path}: not a patchbank export sidecar (format must be {FORMAT_NAME!r})")
    version = data.get("format_version")
    if not _is(version, int) or version not in READ_VERSIONS:
        raise PatchbankError(f"{path}: export format version {version!r} is not supported (this "
                             f"patchbank reads versions {' and '.join(map(str, READ_VERSIONS))}); export again")
    unknown = sorted(set(data) - set(FIELDS), key=str)
    if unknown:
        raise PatchbankError(f"{path}: unknown field {_shown(unknown[0])} (not written by patchbank export); "
                             f"export again")
    side = _Sidecar(data, version, _sidecar_config(data, path))
    for key, field in FIELDS.items():
        value = data.get(key, _ABSENT)
        if value is _ABSENT and version < field.since:
            continue
        problem = field.check(key, value, side)
        if problem:
            raise PatchbankError(f"{path}: {problem}")


def _sidecar_config(data: dict[str, Any], path: Path) -> Config:
    """The sidecar's parsed config: valid (:meth:`Config.from_dict`), naming a registered backbone
    and no weights file (:func:`~patchbank.io.model_checks.check_header_weights`)."""
    try:
        config = Config.from_dict(data.get("config"))
    except (ConfigError, TypeError) as exc:
        raise PatchbankError(f"{path}: invalid config ({' '.join(str(exc).split())})") from None
    check_backbone_name(config.backbone, str(path))
    check_header_weights(data, str(path), hint="an export carries its backbone in its graph; export "
                         "the model again")
    return config


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
    check_recorded(cal, data, SIDECAR_CALIBRATION_KEYS, str(path), "export again")
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
