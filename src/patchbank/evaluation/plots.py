"""PNG figures of evaluation results, in one style: matplotlib's object API on an Agg canvas.

matplotlib is imported only when a figure is drawn (it is the optional ``plot`` extra), and no
pyplot state or global backend is touched, so plotting is safe inside a library or a server.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from patchbank.errors import PatchbankError


def new_axes(figsize: tuple[float, float] = (6.4, 4.2), dpi: int = 120) -> tuple[Any, Any]:
    """A new ``(figure, axes)`` pair on an Agg canvas; a clear error when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - depends on the environment
        raise PatchbankError("plots need matplotlib: pip install 'patchbank[plot]'") from None
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def save(fig: Any, path: str | os.PathLike) -> Path:
    """Lay out ``fig`` tightly and write it as PNG; returns the path."""
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def errorbar_lines(ax: Any, xs: Sequence[float], series: dict[str, Sequence[tuple[float | None, float | None]]],
                   markers: dict[str, str] | None = None) -> None:
    """One line with ± error bars per entry of ``series`` (label -> ``(mean, std)`` per x);
    points whose mean is None are left out, a series with no point is not drawn."""
    markers = markers or {}
    for label, cells in series.items():
        pts = [(x, m, s) for x, (m, s) in zip(xs, cells) if m is not None]
        if not pts:
            continue
        px, py, pe = zip(*pts)
        ax.errorbar(px, py, yerr=pe, marker=markers.get(label, "o"), capsize=3, label=label)


def labelled_scatter(ax: Any, x: Sequence[float], y: Sequence[float], labels: Sequence[int],
                     classes: Sequence[tuple[int, str, str]]) -> None:
    """Scatter ``(x, y)`` per class: ``classes`` lists ``(label value, colour, legend name)``."""
    import numpy as np

    x, y, labels = np.asarray(x), np.asarray(y), np.asarray(labels)
    for value, colour, name in classes:
        m = labels == value
        ax.scatter(x[m], y[m], s=10, c=colour, alpha=0.6, label=name)
