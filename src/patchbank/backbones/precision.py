"""Full float32 convolutions on a GPU for the duration of a backbone call.

cuDNN runs float32 convolutions in TF32 by default (``torch.backends.cudnn.allow_tf32``): a GPU's
features then differ from the CPU's by about 1e-3 relative, enough for the greedy coreset to
choose other rows and for a GPU-fitted model to give other maps and thresholds than a CPU-fitted
one (docs/performance.md, "GPU").  :func:`full_float32_convolutions` turns TF32 convolutions off
while any backbone call runs and gives the flag back its earlier value when the last one ends,
so the process's own setting (a user's training code in the same process) is left alone.  The
flag is process-wide in torch, so calls in several threads share one count under a lock: none
of them restores it while another still runs.  Matrix products are full float32 by default.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import torch

_LOCK = threading.Lock()
_active = 0          # backbone calls inside the context now
_saved = None        # the flag's value when the first of them entered


@contextmanager
def full_float32_convolutions() -> Iterator[None]:
    """cuDNN TF32 convolutions off inside; the earlier setting back when the last caller leaves."""
    global _active, _saved
    with _LOCK:
        if _active == 0:
            _saved = torch.backends.cudnn.allow_tf32
            torch.backends.cudnn.allow_tf32 = False
        _active += 1
    try:
        yield
    finally:
        with _LOCK:
            _active -= 1
            if _active == 0:
                torch.backends.cudnn.allow_tf32 = _saved
