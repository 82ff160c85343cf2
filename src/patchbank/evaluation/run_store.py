"""The resume unit of evaluations and studies: one JSON file per category and seed.

A run file ``<runs dir>/<category>__seed<seed>.json`` is a JSON object with ``"format": 1``, the
run's ``"config"`` (:meth:`Config.to_dict`) and a payload under a key the caller names
(``"metrics"`` for ``evaluate``, ``"data"`` for the structure study), plus whatever else the
caller records.  :meth:`RunStore.load` returns a stored run only when it is readable, has this
format, was made with the same config (read with :meth:`Config.from_dict`: a field added to
Config after the run was written takes its default, which by convention is the behaviour from
before the field existed) and holds its payload as an object; anything else is recomputed.  :meth:`RunStore.save` writes atomically (temporary file, then rename), so an
interrupted run never leaves a half-written file that a resume would trust.

Runs also record the data they were computed on, ``"data_fingerprint"``
(:func:`data_fingerprint`: a hash of the category's train, test and mask files -- paths relative
to the category's folder, sizes, mtimes, labels -- plus the counts).  :meth:`RunStore.lookup`
given a fingerprint reuses a run only when config AND fingerprint match; a run file without a
fingerprint (written before fingerprints existed) does not match and is recomputed.  A run file
holding another category or seed is not reused either, nor one whose recorded fields differ
from what the caller expects (``evaluate``: the device, and the backbone weights' sha256).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from patchbank.config import Config
from patchbank.evaluation.reports import write_json
from patchbank.io.datasets import Category

RUN_FORMAT = 1


def run_file_name(category: str, seed: int) -> str:
    """``<category>__seed<seed>.json``; a name with characters other than ``A-Za-z0-9_.-`` has
    them replaced by ``_`` and the first 8 hex digits of its UTF-8 sha256 appended
    (``x_y-1a2b3c4d__seed0.json``), so that two categories never share a file ("x y" and "x_y",
    or two non-Latin names of one length, did)."""
    safe = _safe_name(category)
    if safe != category:
        safe += "-" + hashlib.sha256(category.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{safe}__seed{seed}.json"


def _safe_name(category: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", category)


def legacy_run_file_name(category: str, seed: int) -> str:
    """The file name a run had before :func:`run_file_name` appended the hash (only the
    characters replaced); the same for plain names.  Read by ``patchbank report`` for folders
    written then (the run file records its category, which the reader checks)."""
    return f"{_safe_name(category)}__seed{seed}.json"


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1
    return st.st_size, st.st_mtime_ns


def data_fingerprint(category: Category) -> dict[str, Any]:
    """What a run's metrics depend on in the data, cheaply (file metadata, not contents).

    Every train image, test image (with its label) and mask is listed as ``kind, path relative
    to the category's folder (the deepest folder holding them all), label, size, mtime_ns``;
    the sorted list is hashed.  Moving the whole dataset keeps the fingerprint; adding,
    removing, renaming, relabelling or rewriting a file changes it.

    Returns ``{"sha256", "n_train", "n_test", "n_defective", "n_masks"}``.
    """
    items = ([("train", p, "") for p in category.train]
             + [("test", p, str(y)) for p, y in zip(category.test, category.labels)]
             + [("mask", m, "") for m in category.masks if m is not None])
    absolute = [os.path.abspath(p) for _, p, _ in items]
    root = os.path.commonpath([os.path.dirname(a) for a in absolute]) if absolute else ""
    lines = sorted("\t".join([kind, os.path.relpath(a, root), label, *map(str, _stat(a))])
                   for (kind, _, label), a in zip(items, absolute))
    # surrogateescape: a file name that is not UTF-8 is hashed as its own bytes (UTF-8 names
    # encode as before, so earlier fingerprints stay valid)
    digest = hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()
    return {"sha256": digest, "n_train": len(category.train), "n_test": len(category.test),
            "n_defective": category.n_defective,
            "n_masks": sum(m is not None for m in category.masks)}


def same_config(stored: Any, config: Config) -> bool:
    """A stored config dict describes ``config``: fields added to Config after the run was
    written take their defaults (the behaviour the run had); unreadable dicts never match."""
    try:
        return Config.from_dict(stored) == config
    except (TypeError, ValueError):
        return False


#: Why a stored run is not reused (a reason :meth:`RunStore.lookup` gives -> the words said on
#: stderr before the run is computed again); "missing" and "unreadable" are not said.
STORED_RUN_PROBLEMS = {
    "data changed": "was computed on different data (files, sizes or dates changed)",
    "config": "was computed with another configuration (it is replaced)",
    "no fingerprint": "records no data fingerprint (an older run file)",
    "category": "holds another category's run", "seed": "holds another seed's run",
    "device": "was computed on another device (its timings and float rounding are that device's)",
    "backbone_sha256": "was computed with other backbone weights (the weights file changed)",
    "no device": "records no device (an older run file)",
    "no backbone_sha256": "records no backbone weights' sha256 (an older run file)",
}


class RunStore:
    """Run files of one output folder (``folder`` is created on the first :meth:`save`)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def path(self, category: str, seed: int) -> Path:
        """The file of one category and seed."""
        return self.folder / run_file_name(category, seed)

    def stored_path(self, category: str, seed: int) -> Path:
        """:meth:`path`, or where it does not exist and a folder written before it holds the
        :func:`legacy_run_file_name`, that file (what a reader of old folders opens)."""
        path = self.path(category, seed)
        legacy = self.folder / legacy_run_file_name(category, seed)
        return legacy if not path.exists() and legacy.exists() else path

    def load(self, category: str, seed: int, config: Config, payload: str,
             fingerprint: dict[str, Any] | None = None, expect: dict[str, Any] | None = None
             ) -> dict[str, Any] | None:
        """The stored run if it is complete and was made with ``config`` (and, when given, on the
        data of ``fingerprint``, with ``expect``'s recorded fields); else None.

        Args:
            payload: the key that must hold an object (``"metrics"``, ``"data"``).
        """
        return self.lookup(category, seed, config, payload, fingerprint, expect)[0]

    def lookup(self, category: str, seed: int, config: Config, payload: str,
               fingerprint: dict[str, Any] | None = None, expect: dict[str, Any] | None = None
               ) -> tuple[dict[str, Any] | None, str]:
        """``(run, "")`` for a usable stored run, else ``(None, why)`` with ``why`` one of
        ``"missing"``, ``"unreadable"`` (not this format, or no ``payload`` object), ``"config"``
        (another configuration), ``"category"`` / ``"seed"`` (the file holds another run),
        ``"no fingerprint"`` (an old run file, when ``fingerprint`` is given), ``"data changed"``
        (another fingerprint), a key of ``expect`` whose recorded value differs (``"device"``,
        ``"backbone_sha256"``), or ``"no <key>"`` for one the file does not record (a run written
        before the key was: never trusted, like a run without a fingerprint)."""
        path = self.path(category, seed)
        if not path.exists():
            return None, "missing"
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return None, "unreadable"
        if not isinstance(data, dict) or data.get("format") != RUN_FORMAT \
                or not isinstance(data.get(payload), dict):
            return None, "unreadable"
        if not same_config(data.get("config"), config):
            return None, "config"
        for key, want in {"category": category, "seed": seed}.items():   # absent in the structure study's runs
            if key in data and data[key] != want:
                return None, key
        for key, want in (expect or {}).items():
            if key not in data:
                return None, f"no {key}"
            if data[key] != want:
                return None, key
        if fingerprint is not None:
            stored = data.get("data_fingerprint")
            if not isinstance(stored, dict):
                return None, "no fingerprint"
            if stored != fingerprint:
                return None, "data changed"
        return data, ""

    def save(self, category: str, seed: int, run: dict[str, Any], *, indent: int | None = 2) -> Path:
        """Write ``run`` (which must carry ``format`` and ``config``) atomically; returns the path.

        ``indent=None`` writes one line (compact, for runs that hold long score lists).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        return write_json(self.path(category, seed), run, indent=indent, newline=indent is not None)
