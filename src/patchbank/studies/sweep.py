"""One-factor sensitivity sweeps (LMF-Core Table 6, Figures 2-3): evaluate per value of one field.

:func:`sweep` runs :func:`~patchbank.evaluation.runner.evaluate` once per value of one Config field (on
top of a preset and fixed overrides) into ``out_dir/<field>-<value>/`` (resumable like
evaluate), then writes ``sweep.csv``, ``sweep.json``, ``sweep.md`` (one row per value, the
mean-over-categories cells as mean ± std over seeds) and ``sweep.png``: image AUROC, pixel AUROC
and AUPRO against the value with ± std error bars.  Numeric values are plotted on a numeric axis
(logarithmic when all are positive and span a factor of 10 or more, like the paper's r axis), any
other values (``none``, sizes, names) at even positions in the given order.  The preset's own value,
when swept, is marked with a dashed vertical line (the paper's red "default operating point").
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

from patchbank.backbones import create_backbone
from patchbank.config import DEFAULT_PRESET, Config
from patchbank.errors import PatchbankError
from patchbank.evaluation import plots
from patchbank.evaluation.inputs import out_folder, preset_config, say
from patchbank.evaluation.reports import LABELS, write_comparison
from patchbank.evaluation.runner import categories_to_score, evaluate

PLOT_METRICS = ("image_auroc", "pixel_auroc", "aupro")
# fields only the backbone can check (its block count, the weights file): a sweep over one of
# them builds each value's backbone before the first fit, so a bad last value fails at once
BACKBONE_FIELDS = ("backbone", "weights", "layers", "context_taps")
SIZE_FIELDS = ("image_size", "crop_size")   # (h, w) values, typed 320x768
_MARKERS = {"image_auroc": "o", "pixel_auroc": "s", "aupro": "^"}


def value_text(value: Any, param: str | None = None) -> str:
    """A swept value the way it is typed: ``0.25``, ``none``, ``320x768`` (a size field's
    ``(h, w)``; ``320`` when square), ``2,3`` (any other list, e.g. layers), ``true``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        if param in SIZE_FIELDS and len(value) == 2:
            return str(value[0]) if value[0] == value[1] else f"{value[0]}x{value[1]}"
        return ",".join(str(v) for v in value)
    return str(value)


def value_dir(param: str, value: Any) -> str:
    """Folder of one value: ``kappa-0.25``, ``projection_dim-none``, ``image_size-320x768``,
    ``layers-2-4``.  A value whose text holds characters other than letters, digits, ``.`` and
    ``,`` (``-1,3``) has them replaced and the first 8 hex digits of the text's sha256 appended,
    so two values never share a folder (``1,3`` and ``-1,3`` did)."""
    text = value_text(value, param)
    name = text.replace(",", "-")
    if re.search(r"[^A-Za-z0-9.,]", text):
        name = re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") + "-" + \
            hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{param}-{name}"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _json_value(v: Any) -> Any:
    """A Config value as JSON has it (tuples become lists)."""
    return list(v) if isinstance(v, tuple) else v


def _swept_values(param: str, values: list[Any], preset: str, overrides: dict[str, Any]) -> list[Any]:
    """The values as Config stores them (sizes become ``(h, w)``), every configuration validated."""
    if param not in Config.__dataclass_fields__:
        raise PatchbankError(f"unknown config field {param!r} to sweep")
    if param == "seed":
        raise PatchbankError("seed is not swept; use --seeds")
    if param in overrides:
        raise PatchbankError(f"{param} is both swept and overridden; give it only once")
    if not values:
        raise PatchbankError(f"no values to sweep for {param}")
    configs = [preset_config(preset, {**overrides, param: v}, context=f"{param}={value_text(v, param)}: ")
               for v in values]
    stored = [getattr(cfg, param) for cfg in configs]
    dup = sorted({value_text(v, param) for i, v in enumerate(stored) if v in stored[:i]})
    if dup:
        raise PatchbankError(f"duplicate values for {param}: {', '.join(dup)}")
    if param in BACKBONE_FIELDS:
        for cfg, v in zip(configs, stored):
            try:
                create_backbone(cfg.backbone, cfg.weights, cfg.layers, "cpu", cfg.context_taps)
            except PatchbankError as exc:
                raise PatchbankError(f"{param}={value_text(v, param)}: {exc}") from None
    return stored


def check_same_sweep(out_dir: str | os.PathLike, param: str, preset: str, overrides: dict[str, Any],
                     root: str | os.PathLike) -> None:
    """Refuse (one line) a sweep into a folder whose ``sweep.json`` records another sweep (another
    parameter, preset, common overrides or dataset root): writing this one's tables would replace
    that one's.  The same sweep again (more values, more seeds) resumes in place."""
    path = Path(out_dir) / "sweep.json"
    if not path.is_file():
        return
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        before = (meta["param"], meta["preset"], meta["common_overrides"], os.path.realpath(meta["dataset_root"]))
    except (OSError, ValueError, KeyError, TypeError):
        raise PatchbankError(f"{path} is not a sweep's table; write this sweep to another folder") from None
    now = (param, preset, json.loads(json.dumps(overrides, default=_json_value)), os.path.realpath(root))
    if before != now:
        what = (f"of {before[0]}" if before[0] != param else
                f"with preset {before[1]}" if before[1] != preset else
                f"with the overrides {before[2]}" if before[2] != now[2] else f"of the data in {before[3]}")
        raise PatchbankError(f"{out_dir} holds a sweep {what} (sweep.json); this sweep would replace its "
                             f"tables: write it to another folder (-o)")


def sweep(root: str | os.PathLike, param: str, values: Sequence[Any], preset: str = DEFAULT_PRESET,
          overrides: dict[str, Any] | None = None, categories: Sequence[str] | None = None,
          seeds: Sequence[int] = (0,), out_dir: str | os.PathLike = "sweep", resume: bool = True,
          progress: bool = True, *, plot: bool = True, kind: str = "auto", device: str = "cpu",
          command: str | None = None) -> dict[str, Any]:
    """Evaluate ``preset`` + ``overrides`` with ``param`` set to each of ``values``.

    Every configuration is validated before the first fit.  Returns ``{"rows", "markdown",
    "files"}`` (files: csv, json, md and, with ``plot``, png).
    """
    overrides = dict(overrides or {})
    values = list(values)
    stored = _swept_values(param, values, preset, overrides)
    seeds = [int(s) for s in seeds]
    categories_to_score(root, categories, kind)   # before the folder is made
    check_same_sweep(out_dir, param, preset, overrides, root)
    out = out_folder(out_dir)
    if command is None:
        command = (f"patchbank.studies.sweep.sweep({str(root)!r}, {param!r}, {values!r}, preset={preset!r}, "
                   f"overrides={overrides!r}, categories={categories!r}, seeds={tuple(seeds)!r}, "
                   f"out_dir={str(out)!r})")
    rows = []
    for i, v in enumerate(stored, start=1):
        say(progress, f"[sweep {i}/{len(stored)}] {param}={value_text(v, param)}")
        sub = value_dir(param, v)
        res = evaluate(root, preset, {**overrides, param: v}, categories=categories, seeds=seeds,
                       out_dir=out / sub, resume=resume, progress=progress, kind=kind,
                       device=device, command=command)
        rows.append({"label": value_text(v, param), "detail": None, "dir": sub,
                     "overrides": {param: _json_value(v)}, "value": _json_value(v),
                     "config": res["summary"]["config"], "summary": res["summary"]})
    default = getattr(Config.preset(preset, **overrides), param)
    meta = {"kind": "sweep", "param": param, "values": [r["value"] for r in rows], "preset": preset,
            "preset_value": _json_value(default), "common_overrides": overrides, "seeds": seeds,
            "command": command, "dataset_root": str(root)}
    files = write_comparison(out, "sweep", param, rows, meta)
    markdown = files.pop("markdown")
    if plot:
        name = Path(str(root)).name or str(root)
        title = (f"{preset} on {name}: {param} sweep "
                 f"({len(seeds)} seed{'s' if len(seeds) != 1 else ''}, mean ± std)")
        files["png"] = plot_sweep(rows, param, out / "sweep.png", title=title,
                                  default=default if default in stored else None)
    return {"rows": rows, "markdown": markdown, "files": files}


def plot_sweep(rows: list[dict[str, Any]], param: str, path: str | os.PathLike, *, title: str = "",
               default: Any = None, metrics: Sequence[str] = PLOT_METRICS) -> Path:
    """PNG of ``metrics`` (mean ± std error bars) against the swept value; returns its path.

    Numeric values on a numeric axis (logarithmic when all are positive and span a factor of 10
    or more), others at even positions; ``default`` (the preset's value) as a dashed red line.
    """
    values = [r["value"] for r in rows]
    numeric = all(_is_number(v) for v in values)
    xs = [float(v) for v in values] if numeric else list(range(len(values)))
    fig, ax = plots.new_axes()
    series = {LABELS[m]: [(r["summary"]["mean"][m]["mean"], r["summary"]["mean"][m]["std"]) for r in rows]
              for m in metrics}
    plots.errorbar_lines(ax, xs, series, {LABELS[m]: _MARKERS.get(m, "o") for m in metrics})
    if numeric and min(xs) > 0 and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([value_text(v, param) for v in values])
    if numeric:
        ax.minorticks_off()
    if default is not None:
        x0 = float(default) if numeric else values.index(_json_value(default))
        ax.axvline(x0, color="tab:red", linestyle="--", linewidth=1, label="preset value")
    ax.set_xlabel(param)
    ax.set_ylabel("metric (mean ± std over seeds)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return plots.save(fig, path)
