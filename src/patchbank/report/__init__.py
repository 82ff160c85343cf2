"""``patchbank report``: one self-contained HTML page from a ``predict`` or ``evaluate`` folder.

Modules, one idea each: :mod:`~patchbank.report.results` (reading and checking the folder),
:mod:`~patchbank.report.curves` (ROC / PR points, operating point),
:mod:`~patchbank.report.charts` (inline SVG), :mod:`~patchbank.report.thumbnails` (embedded
JPEG thumbnails), :mod:`~patchbank.report.cards` (one image on the page),
:mod:`~patchbank.report.predict_page` and :mod:`~patchbank.report.evaluate_page` (the page
models), :mod:`~patchbank.report.render` (the Jinja2 template ``templates/report.html.j2``) and
:mod:`~patchbank.report.build` (:func:`build_report`, :func:`write_report`).
"""
from __future__ import annotations

from patchbank.report.build import REPORT_NAME, build_report, write_report

__all__ = ["REPORT_NAME", "build_report", "write_report"]
