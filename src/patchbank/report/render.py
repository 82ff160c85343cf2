"""Rendering a page model to one self-contained HTML document with the packaged Jinja2 template.

The template, ``templates/report.html.j2`` (package data), holds the layout and the CSS; the
page models come from :mod:`~patchbank.report.predict_page` and
:mod:`~patchbank.report.evaluate_page`.  Jinja2 is the ``report`` extra; without it,
:func:`render_page` raises a one-line :class:`~patchbank.errors.PatchbankError` saying what to
install.
"""
from __future__ import annotations

import math
import time
from typing import Any

from patchbank import __version__
from patchbank.errors import PatchbankError
from patchbank.evaluation.reports import real_number

TEMPLATE = "report.html.j2"


def num(value: Any, decimals: int = 3) -> str:
    """A number for the page: ``decimals`` decimals, ``NaN`` / ``inf`` spelled out, ``–`` for None."""
    if value is None:
        return "–"
    value = real_number(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{decimals}f}"


def pct(value: Any, decimals: int = 1) -> str:
    """A share as a percentage (``0.125`` -> ``12.5%``), ``–`` for None."""
    return "–" if value is None else f"{100.0 * real_number(value):.{decimals}f}%"


def environment():
    """The Jinja2 environment: the package's templates, HTML autoescaping, filters ``num`` and ``pct``."""
    try:
        import jinja2
    except ImportError:
        raise PatchbankError("patchbank report needs Jinja2: pip install 'patchbank[report]'") from None
    env = jinja2.Environment(loader=jinja2.PackageLoader("patchbank.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = num
    env.filters["pct"] = pct
    return env


def render_page(page: dict[str, Any], *, thumb_text: str) -> str:
    """The HTML of a page model (``page["kind"]`` ``"predict"`` or ``"evaluate"``); ``thumb_text``
    says how the embedded images were downscaled."""
    context = {**page, "version": __version__, "thumb_text": thumb_text,
               "generated": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    return environment().get_template(TEMPLATE).render(**context)
