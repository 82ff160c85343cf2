"""``patchbank info``: describe a model file (bank, threshold, calibration, configuration)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from patchbank.cli.config_options import DEFAULT_PRESET, field_kind, format_value
from patchbank.config import AUTO_ASPECT_FIELDS, PRESETS, auto_sizes_match
from patchbank.errors import PatchbankError


def format_bytes(n: int | float | None) -> str:
    """``"1.23 MB (1,234,567 bytes)"``; ``"?"`` for None."""
    if n is None:
        return "?"
    return f"{n / 1e6:.2f} MB ({int(n):,} bytes)"


def closest_preset(cfg: dict[str, Any]) -> tuple[str, list[str]]:
    """The preset differing from the config dict ``cfg`` in the fewest fields, and those fields
    (with ``aspect`` auto on both sides, the sizes a fit resolved count as the preset's when their
    pixel counts match, :func:`~patchbank.config.auto_sizes_match`)."""
    best, best_diff = DEFAULT_PRESET, None
    for name, preset in PRESETS.items():
        ref = preset.to_dict()
        resolved = AUTO_ASPECT_FIELDS if cfg.get("aspect") == ref["aspect"] == "auto" \
            and auto_sizes_match(cfg, ref) else ()
        diff = [k for k in ref if k in cfg and k not in resolved and _as_list(cfg[k]) != _as_list(ref[k])]
        if best_diff is None or len(diff) < len(best_diff):
            best, best_diff = name, diff
    return best, best_diff or []


def _number(value: Any, spec: str) -> str:
    """``value`` formatted with ``spec`` if it is a number, else ``"?"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    return "?"


def _as_list(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def format_info(info: dict[str, Any], path: str | None = None, threshold: str | None = None) -> str:
    """Human-readable text for a model's info dict (:meth:`Detector.info`, a model file header):
    one aligned row per item (``threshold``: the fit's threshold line, which names the training
    images above it, in place of the list of training-image names), then the configuration
    marked against the closest preset."""
    info = dict(info)
    info.pop("train_images", None)
    lines: list[str] = []

    def row(label: str, value: Any) -> None:
        lines.append(f"{label:<18} {value}")

    if path:
        row("model", path)
    if "format_version" in info:
        row("format version", info.pop("format_version"))
    cfg = info.pop("config", None) or {}
    _bank_and_calibration_rows(info, cfg, row)
    for key in sorted(info):
        value = info[key]
        row(key.replace("_", " "), json.dumps(value) if isinstance(value, (dict, list)) else value)
    if threshold is not None:
        row("above threshold", threshold.removeprefix("threshold: "))
    if cfg:
        name, diff = closest_preset(cfg)
        lines.append("")
        lines.append(f"config (closest preset: {name}"
                     + (f"; differs in {', '.join(diff)})" if diff else ", unchanged)"))
        for key, value in cfg.items():
            mark = "*" if key in diff else " "
            lines.append(f" {mark} {key:<24} {format_value(value, field_kind(key))}")
    return "\n".join(lines)


def _bank_and_calibration_rows(info: dict[str, Any], cfg: dict[str, Any], row) -> None:
    """Rows for the bank, threshold, calibration, train images and backbone; pops their keys."""
    entries, dim, nbytes = info.pop("bank_entries", None), info.pop("bank_dim", None), info.pop("bank_bytes", None)
    if entries is not None or nbytes is not None:
        shape = f"{entries:,} entries x {dim} dims" if isinstance(entries, int) else f"{entries} x {dim}"
        dtype = cfg.get("bank_dtype")
        row("memory bank", f"{shape}, {format_bytes(nbytes)}" + (f", {dtype}" if dtype else ""))
    if "threshold" in info:
        thr = info.pop("threshold")
        fpr, rule = cfg.get("target_fpr"), cfg.get("threshold_rule", "quantile")
        how = "conformal rank" if rule == "conformal" else "interpolated quantile"
        row("threshold", f"{_number(thr, '.4f')} on the normalised score"
            + (f" (target FPR {fpr:g}, {how} of the training images' leave-one-image-out scores)"
               if fpr is not None else ""))
    map_thr = info.pop("map_threshold", None)
    if map_thr is not None:
        row("whole-image check", f"also anomalous when the anomaly map's mean is above {_number(map_thr, '.4g')} "
            "(set together with the score's: the target FPR is for the two rules at once)")
    blur_thr = info.pop("blur_threshold", None)
    if blur_thr is not None:
        row("focus check", f"also anomalous when blurrier than every training image (blurriness above "
            f"{_number(blur_thr, '.4g')}: at most 1 / (n_train + 1) more new normal images flagged)")
    mean, std = info.pop("score_mean", None), info.pop("score_std", None)
    n_cal = info.pop("n_calibration_images", None)
    info.pop("target_fpr", None)  # shown with the threshold and in the config
    if mean is not None or std is not None:
        row("calibration", f"raw image score mean {_number(mean, '.4g')}, std {_number(std, '.4g')}"
            + (f" over {n_cal} training images (each without its own bank entries)" if n_cal is not None else ""))
    aspect, scale, n = info.pop("train_aspect", None), info.pop("train_scale", None), info.pop("n_train_images", None)
    shapes, flags = [], []
    if aspect is not None:
        shapes.append(f"H / W {_number(aspect, '.2f')}")
        flags.append("another H / W")
    if isinstance(scale, list) and len(scale) == 2:
        shapes.append(f"sizes sqrt(H x W) {_number(scale[0], '.0f')}-{_number(scale[1], '.0f')} px")
        flags.append("a size more than twice outside theirs")
    note = f"{', '.join(shapes)}; a prediction flags images of {' or '.join(flags)}" if shapes else ""
    if n is not None:
        row("train images", f"{n} ({note})" if note else n)
    elif note:                          # an export folder: no count, only the shapes
        row("train images", note)
    env = info.pop("fitted_with", None)
    if isinstance(env, dict):
        row("fitted with", ", ".join(f"{k} {v}" for k, v in env.items()))
    backbone = cfg.get("backbone")
    sha = info.pop("backbone_sha256", None)
    if backbone:
        row("backbone", backbone + (f" (weights sha256 {str(sha)[:16]}...)" if sha else ""))
    elif sha:
        row("backbone sha256", sha)


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the info dict as JSON.")
def info(model: Path, as_json: bool) -> None:
    """Describe a model file (or an export folder): bank size, configuration, threshold, calibration.

    The file is checked as a load would check it (every tensor against the header), except that
    a model fit with its own weights file is described, not refused; a file that does not load
    is a one-line error, never a partial description."""
    if model.is_dir():
        data = export_info(model)
        click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else format_export_info(data, str(model)))
        return
    if not model.is_file():
        raise PatchbankError(f"model file not found: {model}")
    from patchbank.io.model_checks import check_multi_header
    from patchbank.io.model_file import load_model

    tensors, data = load_model(model)   # the header holds the whole info; no backbone is needed
    if data.get("kind") == "multi":
        states = check_multi_header(tensors, data, str(model))
        lines = {name: checked_threshold_text(state, meta, f"{model} [{name}]", routed=True)
                 for name, (state, meta) in states.items()}
    elif "kind" in data:
        raise PatchbankError(f"{model}: kind must be 'multi' or absent, got {data['kind']!r}")
    else:
        line = checked_threshold_text(tensors, data, str(model))
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif data.get("kind") == "multi":
        click.echo(format_multi_info(data, str(model), lines))
    else:
        click.echo(format_info(data, str(model), line))


def checked_threshold_text(tensors: dict[str, Any], meta: dict[str, Any], where: str,
                           routed: bool = False) -> str | None:
    """Check one detector's state as loading it checks it, without building its backbone
    (:func:`patchbank.detector.check_state`: the tensors against the header, the backbone's
    name, the header's calibration numbers against the tensors'), and return the fit's threshold
    line (:func:`patchbank.cli.fit_report.threshold_line`); None for a file that does not record
    which training images calibrated it (written before ``calibration_images``)."""
    from patchbank.cli.fit_report import threshold_line
    from patchbank.config import Config
    from patchbank.detector import check_state

    calibration = check_state(tensors, meta, where, weights_given=True, routed=routed)
    if "calibration_images" not in tensors:
        return None
    return threshold_line(calibration, Config.from_dict(meta["config"]), meta.get("train_images"))


def format_multi_info(data: dict[str, Any], path: str, thresholds: dict[str, str | None] | None = None) -> str:
    """Text for a multi-category header (checked by ``check_multi_header``): the shared part,
    then one block per category (with its threshold line from ``thresholds``, if given)."""
    data = dict(data)
    cats = data.pop("categories")
    head = {k: v for k, v in data.items() if k not in ("category_order", "bank_bytes")}
    head["categories"] = ", ".join(data["category_order"])
    head["banks total"] = format_bytes(data.get("bank_bytes") if isinstance(data.get("bank_bytes"), int) else None)
    parts = [format_info(head, path)]
    for name in data["category_order"]:
        sub = {k: v for k, v in cats[name].items() if k not in ("config", "format_version",
                                                                "patchbank_version")}
        parts.append(f"\n[{name}]\n" + format_info(sub, threshold=(thresholds or {}).get(name)))
    return "\n".join(parts)


def export_info(folder: Path) -> dict[str, Any]:
    """The checked sidecar of an export folder (``patchbank info DIR``), checked as a load checks
    it: every listed file there with its recorded size and, for a sidecar that records them
    (format version 3), every graph and data file's sha256; the calibration arrays refit to the
    sidecar's statistics."""
    from patchbank.export.sidecar import check_graph_files, read_sidecar, sidecar_calibration, sidecar_path

    data = read_sidecar(folder)
    sidecar_calibration(data, sidecar_path(folder))
    check_graph_files(folder, data, list(data.get("graph_sha256", {})))
    return data


def format_export_info(data: dict[str, Any], path: str) -> str:
    """Text for an export folder's checked sidecar (:func:`export_info`): formats, files and their
    sizes, whether their sha256 was checked, the bank in the graph, then the rows of
    :func:`format_info`: the threshold in use (``threshold_override``, else the calibrated one)
    with, when overridden, the calibrated one, and the graph's own when it differs; calibration,
    configuration."""
    bank, files = data["bank"], data["files"]
    cfg = dict(data["config"], bank_dtype=bank["dtype"])
    head = [f"{'export':<18} {path}", f"{'formats':<18} {', '.join(data['formats'])}"
            + (" (ONNX weights as external data)" if data["external_data"] else ""),
            f"{'graph files':<18} " + ", ".join(f"{n} {format_bytes(b)}" for n, b in sorted(files.items()))
            + f"; total {format_bytes(sum(files.values()))}"]
    head += [f"{'note':<18} {note}" for note in data["notes"]]
    override, calibrated = data["threshold_override"], data["calibrated_threshold"]
    in_use = calibrated if override is None else override
    info = {"format_version": data["format_version"], "patchbank_version": data["patchbank_version"],
            "bank_entries": bank["entries"], "bank_dim": bank["dim"], "bank_bytes": bank["bytes"],
            "threshold": in_use, "threshold_override": override,
            "fit_threshold": None if override is None else
            f"{calibrated:.4f} (calibrated at fit; the threshold override replaces it)",
            "graph_threshold": None if data["threshold"] == in_use else
            f"{data['threshold']:.4f} (the graph's own is_anomalous output; predictions decide at the threshold above)",
            "graph_sha256": "every graph file matches the sidecar's (checked now)" if "graph_sha256" in data else
            f"not recorded (export format version {data['format_version']}): the graph files cannot be "
            f"verified; export again to record them",
            "map_threshold": data.get("map_threshold"), "blur_threshold": data.get("blur_threshold"),
            "score_mean": data["score_mean"], "score_std": data["score_std"],
            "n_calibration_images": len(data["calibration_base_scores"]),
            "input_size": data["input_size"], "category": data["category"],
            "backbone_sha256": data["backbone_sha256"],
            "fitted_with": data.get("fitted_with"), "train_aspect": data.get("train_aspect"),
            "train_scale": data.get("train_scale"), "config": cfg}
    return "\n".join(head) + "\n" + format_info({k: v for k, v in info.items() if v is not None})
