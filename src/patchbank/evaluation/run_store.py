"""The resume unit of evaluations and studies: one JSON file per category and seed.

A run file ``<runs dir>/<category>__seed<seed>.json`` is a JSON object with ``"format": 1``, the
run's ``"config"`` (:meth:`Config.to_dict`) and a payload under a key the caller names
(``"metrics"`` for ``evaluate``, ``"data"`` for the structure study), plus whatever else the
caller records.  :meth:`RunStore.load` returns a stored run only when it is readable, has this
format, was made with the same config and holds its payload as an object; anything else is
recomputed.  :meth:`RunStore.save` writes atomically (temporary file, then rename), so an
interrupted run never leaves a half-written file that a resume would trust.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from patchbank.config import Config
from patchbank.evaluation.reports import write_json

RUN_FORMAT = 1


def run_file_name(category: str, seed: int) -> str:
    """``<category>__seed<seed>.json``, characters other than ``A-Za-z0-9_.-`` replaced by ``_``."""
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', category)}__seed{seed}.json"


class RunStore:
    """Run files of one output folder (``folder`` is created on the first :meth:`save`)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def path(self, category: str, seed: int) -> Path:
        """The file of one category and seed."""
        return self.folder / run_file_name(category, seed)

    def load(self, category: str, seed: int, config: Config, payload: str) -> dict[str, Any] | None:
        """The stored run if it is complete and was made with ``config``; else None.

        Args:
            payload: the key that must hold an object (``"metrics"``, ``"data"``).
        """
        try:
            with open(self.path(category, seed), encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("format") != RUN_FORMAT \
                or data.get("config") != config.to_dict() or not isinstance(data.get(payload), dict):
            return None
        return data

    def save(self, category: str, seed: int, run: dict[str, Any], *, indent: int | None = 2) -> Path:
        """Write ``run`` (which must carry ``format`` and ``config``) atomically; returns the path.

        ``indent=None`` writes one line (compact, for runs that hold long score lists).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        return write_json(self.path(category, seed), run, indent=indent, newline=indent is not None)
