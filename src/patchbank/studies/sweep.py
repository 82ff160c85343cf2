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

import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from patchbank.config import Config
from patchbank.errors import PatchbankError

PLOT_METRICS = ("image_auroc", "pixel_auroc", "aupro")


def value_text(value: Any) -> str:
    """A swept value the way it is typed: ``0.25``, ``none``, ``320x768``, ``2,3``, ``true``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        if len(value) == 2 and all(isinstance(v, int) for v in value) and value[0] == value[1]:
            return str(value[0])
        sep = "x" if len(value) == 2 and all(isinstance(v, int) for v in value) else ","
        return sep.join(str(v) for v in value)
    return str(value)


def value_dir(param: str, value: Any) -> str:
    """Folder of one value: ``kappa-0.25``, ``projection_dim-none``, ``image_size-320x768``."""
    return f"{param}-{re.sub(r'[^A-Za-z0-9.]+', '-', value_text(value)).strip('-')}"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def sweep(root: str | os.PathLike, param: str, values: Sequence[Any], preset: str = "lmf-core",
          overrides: dict[str, Any] | None = None, categories: Sequence[str] | None = None,
          seeds: Sequence[int] = (0,), out_dir: str | os.PathLike = "sweep", resume: bool = True,
          progress: bool = True, *, plot: bool = True, kind: str = "auto", device: str = "cpu",
          command: str | None = None) -> dict[str, Any]:
    """Evaluate ``preset`` + ``overrides`` with ``param`` set to each of ``values``.

    Every configuration is validated before the first fit.  Returns ``{"rows", "markdown",
    "files"}`` (files: csv, json, md and, with ``plot``, png).
    """
    from patchbank.evaluation.runner import evaluate, write_comparison

    overrides = dict(overrides or {})
    values = list(values)
    fields = Config.__dataclass_fields__
    if param not in fields:
        raise PatchbankError(f"unknown config field {param!r} to sweep")
    if param == "seed":
        raise PatchbankError("seed is not swept; use --seeds")
    if param in overrides:
        raise PatchbankError(f"{param} is both swept and overridden; give it only once")
    if not values:
        raise PatchbankError(f"no values to sweep for {param}")
    configs = []
    for v in values:
        try:
            configs.append(Config.preset(preset, **{**overrides, param: v}))
        except ValueError as exc:
            raise PatchbankError(f"{param}={value_text(v)}: {exc}") from None
    stored = [getattr(c, param) for c in configs]  # normalised (sizes become (h, w))
    dup = sorted({value_text(v) for i, v in enumerate(stored) if v in stored[:i]})
    if dup:
        raise PatchbankError(f"duplicate values for {param}: {', '.join(dup)}")
    seeds = [int(s) for s in seeds]
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PatchbankError(f"output path is not a folder: {out}")
    out.mkdir(parents=True, exist_ok=True)
    if command is None:
        command = (f"patchbank.studies.sweep.sweep({str(root)!r}, {param!r}, {values!r}, preset={preset!r}, "
                   f"overrides={overrides!r}, categories={categories!r}, seeds={tuple(seeds)!r}, "
                   f"out_dir={str(out)!r})")
    rows = []
    for i, v in enumerate(stored, start=1):
        if progress:
            print(f"[sweep {i}/{len(stored)}] {param}={value_text(v)}", file=sys.stderr, flush=True)
        sub = value_dir(param, v)
        res = evaluate(root, preset, {**overrides, param: v}, categories=categories, seeds=seeds,
                       out_dir=out / sub, resume=resume, progress=progress, kind=kind,
                       device=device, command=command)
        rows.append({"label": value_text(v), "detail": None, "dir": sub,
                     "overrides": {param: list(v) if isinstance(v, tuple) else v},
                     "value": list(v) if isinstance(v, tuple) else v,
                     "config": res["summary"]["config"], "summary": res["summary"]})
    default = getattr(Config.preset(preset, **overrides), param)
    meta = {"kind": "sweep", "param": param, "values": [r["value"] for r in rows], "preset": preset,
            "preset_value": list(default) if isinstance(default, tuple) else default,
            "common_overrides": overrides, "seeds": seeds, "command": command,
            "dataset_root": str(root)}
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

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - depends on the environment
        raise PatchbankError("the sweep plot needs matplotlib: pip install 'patchbank[plot]'") from None
    from patchbank.evaluation.runner import LABELS

    values = [r["value"] for r in rows]
    numeric = all(_is_number(v) for v in values)
    xs = [float(v) for v in values] if numeric else list(range(len(values)))
    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    markers = {"image_auroc": "o", "pixel_auroc": "s", "aupro": "^"}
    for m in metrics:
        pts = [(x, r["summary"]["mean"][m]["mean"], r["summary"]["mean"][m]["std"])
               for x, r in zip(xs, rows) if r["summary"]["mean"][m]["mean"] is not None]
        if not pts:
            continue
        px, py, pe = zip(*pts)
        ax.errorbar(px, py, yerr=pe, marker=markers.get(m, "o"), capsize=3, label=LABELS[m])
    if numeric and min(xs) > 0 and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
    if numeric:
        ax.set_xticks(xs)
        ax.set_xticklabels([value_text(v) for v in values])
        ax.minorticks_off()
    else:
        ax.set_xticks(xs)
        ax.set_xticklabels([value_text(v) for v in values])
    if default is not None:
        x0 = float(default) if numeric else values.index(list(default) if isinstance(default, tuple) else default)
        ax.axvline(x0, color="tab:red", linestyle="--", linewidth=1, label="preset value")
    ax.set_xlabel(param)
    ax.set_ylabel("metric (mean ± std over seeds)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path
