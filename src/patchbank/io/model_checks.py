"""Checks of a model file's state before anything is built from it.

:func:`check_model_state` is called by ``Detector.from_state`` (and so by every single- and
multi-category load) with the tensors and the JSON metadata of one detector.  It refuses, with one
line naming the file and the tensor or field, whatever a fitted detector could not have written.
"""
from __future__ import annotations

from typing import Any

import torch

from patchbank.errors import PatchbankError


def check_model_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any], where: str) -> None:
    """Raise :class:`PatchbankError` unless ``tensors`` / ``meta`` are a consistent fitted state."""
    bank = tensors.get("bank")
    if bank is None or bank.dim() != 2 or bank.shape[0] < 1 or bank.shape[1] < 1:
        raise PatchbankError(f"{where}: the bank must be a non-empty [entries, dim] tensor")
