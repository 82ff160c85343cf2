"""Inline SVG charts for the report: a score histogram with threshold lines, ROC and PR curves.

Each function returns one ``<svg>`` element as a string (the page's CSS styles it through the
class names; no script, no external resource, so the page works offline).  Coordinates are
drawn in a fixed ``viewBox`` and scale with the page.  The exact data drawn rides along as
``data-*`` attributes (``data-x`` / ``data-y`` on a curve, ``data-counts`` / ``data-edges`` on a
histogram series; numbers as ``%.10g`` separated by spaces), so a test -- or a reader of the
page source -- can check them without measuring pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Sequence

import numpy as np

CURVE_SIZE = (340, 300)
HIST_SIZE = (960, 260)
MARGIN = (52, 14, 16, 46)   # left, right, top, bottom
HIST_BINS = 30


@dataclass
class Series:
    """Values of one histogram series; ``css`` is its class (``all``, ``good``, ``defect``)."""

    name: str
    values: Sequence[float]
    css: str


def numbers(values) -> str:
    """Space-separated ``%.10g`` numbers (the ``data-*`` attribute text)."""
    return " ".join(f"{float(v):.10g}" for v in values)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering ``[lo, hi]`` (steps 1, 2 or 5 times a power of 10)."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / n
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


class _Frame:
    """The plotting area of a ``width`` x ``height`` chart and the data ranges mapped onto it."""

    def __init__(self, size: tuple[int, int], xr: tuple[float, float], yr: tuple[float, float]):
        self.width, self.height = size
        left, right, top, bottom = MARGIN
        self.x0, self.x1, self.y0, self.y1 = left, self.width - right, self.height - bottom, top
        self.xr, self.yr = xr, yr

    def x(self, v: float) -> float:
        """Data x -> pixel x."""
        lo, hi = self.xr
        return self.x0 + (v - lo) / (hi - lo) * (self.x1 - self.x0)

    def y(self, v: float) -> float:
        """Data y -> pixel y (up is larger)."""
        lo, hi = self.yr
        return self.y0 - (v - lo) / (hi - lo) * (self.y0 - self.y1)

    def axes(self, xticks: list[float], yticks: list[float], xlabel: str, ylabel: str) -> list[str]:
        """Grid lines, tick labels, the frame and the axis titles."""
        out = []
        for t in xticks:
            px = self.x(t)
            out.append(f'<line class="grid" x1="{px:.1f}" y1="{self.y1}" x2="{px:.1f}" y2="{self.y0}"/>')
            out.append(f'<text class="tick" x="{px:.1f}" y="{self.y0 + 14}" text-anchor="middle">{t:g}</text>')
        for t in yticks:
            py = self.y(t)
            out.append(f'<line class="grid" x1="{self.x0}" y1="{py:.1f}" x2="{self.x1}" y2="{py:.1f}"/>')
            out.append(f'<text class="tick" x="{self.x0 - 5}" y="{py + 3.5:.1f}" text-anchor="end">{t:g}</text>')
        out.append(f'<rect class="frame" x="{self.x0}" y="{self.y1}" width="{self.x1 - self.x0}" '
                   f'height="{self.y0 - self.y1}"/>')
        out.append(f'<text class="axis-title" x="{(self.x0 + self.x1) / 2:.1f}" y="{self.height - 8}" '
                   f'text-anchor="middle">{escape(xlabel)}</text>')
        out.append(f'<text class="axis-title" transform="translate(13,{(self.y0 + self.y1) / 2:.1f}) rotate(-90)" '
                   f'text-anchor="middle">{escape(ylabel)}</text>')
        return out

    def svg(self, css: str, title: str, body: list[str], data: str = "") -> str:
        """The ``<svg>`` element around ``body``; ``title`` is its accessible name."""
        return (f'<svg class="chart {css}" viewBox="0 0 {self.width} {self.height}" role="img" '
                f'aria-label="{escape(title)}"{data} xmlns="http://www.w3.org/2000/svg">'
                f'<title>{escape(title)}</title>' + "".join(body) + "</svg>")


def _bin_edges(series: Sequence[Series], thresholds: Sequence[tuple[str, float]], bins: int) -> np.ndarray:
    """Common edges over every finite value and threshold (padded when all are equal)."""
    vals = np.concatenate([np.asarray(s.values, dtype=np.float64) for s in series] +
                          [np.asarray([t for _, t in thresholds], dtype=np.float64)])
    vals = vals[np.isfinite(vals)]
    lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (0.0, 1.0)
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.02
    return np.linspace(lo - pad, hi + pad, bins + 1)


def histogram_svg(series: Sequence[Series], thresholds: Sequence[tuple[str, float]], *, title: str,
                  xlabel: str, bins: int = HIST_BINS) -> str:
    """Overlaid histograms of ``series`` on common bins, with a dashed vertical line per
    ``(label, value)`` threshold.  Non-finite values are left out (the caller says how many)."""
    edges = _bin_edges(series, thresholds, bins)
    counts = [np.histogram(np.asarray(s.values, dtype=np.float64)[np.isfinite(s.values)], edges)[0]
              for s in series]
    top = max([int(c.max()) for c in counts if c.size] + [1])
    yticks = [t for t in nice_ticks(0, top, 4) if float(t).is_integer()]
    f = _Frame(HIST_SIZE, (float(edges[0]), float(edges[-1])), (0.0, max(top, yticks[-1]) * 1.08))
    body = f.axes(nice_ticks(edges[0], edges[-1], 8), yticks, xlabel, "images")
    for s, c in zip(series, counts):
        bars = [f'<rect x="{f.x(edges[i]):.2f}" y="{f.y(n):.2f}" width="{f.x(edges[i + 1]) - f.x(edges[i]):.2f}" '
                f'height="{f.y(0) - f.y(n):.2f}"><title>{escape(s.name)}: {n} in [{edges[i]:.3g}, '
                f'{edges[i + 1]:.3g})</title></rect>' for i, n in enumerate(c) if n]
        body.append(f'<g class="bars {escape(s.css)}" data-name="{escape(s.name)}" data-counts="{numbers(c)}" '
                    f'data-edges="{numbers(edges)}">' + "".join(bars) + "</g>")
    for i, (label, value) in enumerate(thresholds):
        if math.isfinite(value):
            px = f.x(value)
            body.append(f'<line class="threshold" x1="{px:.1f}" y1="{f.y1}" x2="{px:.1f}" y2="{f.y0}" '
                        f'data-value="{value:.10g}"/>')
            body.append(f'<text class="threshold-label" x="{px + 4:.1f}" y="{f.y1 + 12 + 12 * i}">'
                        f'{escape(label)} {value:.3g}</text>')
    return f.svg("histogram", title, body)


def curve_svg(x, y, *, kind: str, title: str, area: str,
              marker: tuple[float, float, str] | None = None) -> str:
    """A ROC (``kind="roc"``: straight segments, chance diagonal) or PR (``kind="pr"``: the
    step curve whose area is the average precision) chart of points ``x``, ``y`` in [0, 1].

    ``area`` is printed in the chart (``"AUROC 0.973"``); ``marker`` ``(x, y, text)`` is the
    operating point, drawn as a dot captioned "threshold" with ``text`` as its tooltip.
    """
    f = _Frame(CURVE_SIZE, (0.0, 1.0), (0.0, 1.02))
    ticks = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    labels = (("false-positive rate (good flagged)", "true-positive rate (defects flagged)") if kind == "roc"
              else ("recall (defects flagged)", "precision (flagged that are defects)"))
    body = f.axes(ticks, ticks, *labels)
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if kind == "roc":
        body.append(f'<line class="diag" x1="{f.x(0):.1f}" y1="{f.y(0):.1f}" x2="{f.x(1):.1f}" y2="{f.y(1):.1f}"/>')
        px, py = x, y
    else:   # precision p_k holds over recall (r_{k-1}, r_k]
        starts = np.concatenate(([0.0], x[:-1]))
        px, py = np.column_stack((starts, x)).ravel(), np.repeat(y, 2)
    points = " ".join(f"{f.x(a):.2f},{f.y(b):.2f}" for a, b in zip(px, py))
    body.append(f'<polyline class="curve" points="{points}" data-kind="{kind}" data-x="{numbers(x)}" '
                f'data-y="{numbers(y)}"/>')
    ax, anchor = (f.x1 - 6, "end") if kind == "roc" else (f.x0 + 6, "start")
    body.append(f'<text class="area" x="{ax}" y="{f.y0 - 8}" text-anchor="{anchor}">{escape(area)}</text>')
    if marker is not None:
        mx, my, text = marker
        body.append(f'<circle class="op" cx="{f.x(mx):.2f}" cy="{f.y(my):.2f}" r="5" data-x="{mx:.10g}" '
                    f'data-y="{my:.10g}"><title>{escape(text)}</title></circle>')
        anchor, dx = ("start", 8) if mx < 0.75 else ("end", -8)
        ty = f.y(my) + (16 if my > 0.85 else -8)
        body.append(f'<text class="op-label" x="{f.x(mx) + dx:.1f}" y="{ty:.1f}" text-anchor="{anchor}">'
                    f'threshold</text>')
    return f.svg(f"curve {kind}", title, body)
