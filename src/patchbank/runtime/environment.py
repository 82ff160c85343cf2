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

FIELDS = ("python", "torch", "numpy", "pillow", "machine")


def library_versions() -> dict[str, str]:
    """``{python, torch, numpy, pillow, machine}``: versions of what decodes, computes and
    selects, and the processor architecture (``platform.machine()``)."""
    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "pillow": PIL.__version__, "machine": platform.machine()}
