"""The software a fit ran on: recorded in every model file (``fitted_with``) and every benchmark.

A refit on other library versions is not the same model to the bit: another Pillow decodes a JPEG
a grey level differently here and there, and the greedy coreset, which takes the farthest row at
each step, then follows another path (docs/performance.md, "A fit on another machine is another
model").  The versions in the header say which software made a model.
"""
from __future__ import annotations

import platform

import numpy as np
import PIL
import torch

MAX_ENTRIES, MAX_NAME, MAX_VERSION = 16, 64, 128   # bounds of a record read back from a file
RECORD_RULE = f"an object of at most {MAX_ENTRIES} library names and version strings"


def library_versions() -> dict[str, str]:
    """``{python, torch, numpy, pillow, machine}``: versions of what decodes, computes and
    selects, and the processor architecture (``platform.machine()``)."""
    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "pillow": PIL.__version__, "machine": platform.machine()}


def is_library_record(value: object) -> bool:
    """Whether ``value`` read from a file can be a :func:`library_versions` record: an object of
    at most ``MAX_ENTRIES`` short strings (it is shown, never used; any names, for the future's
    libraries)."""
    return isinstance(value, dict) and len(value) <= MAX_ENTRIES and all(
        isinstance(k, str) and isinstance(v, str) and len(k) <= MAX_NAME and len(v) <= MAX_VERSION
        for k, v in value.items())
