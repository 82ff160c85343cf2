"""The torch device a user asked for, refused in one line where it does not exist here."""
from __future__ import annotations

import torch

from patchbank.errors import PatchbankError


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a :class:`torch.device` (CPU or CUDA only); a CUDA device where CUDA is
    unavailable, or any other device type, is refused in one line."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise PatchbankError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise PatchbankError(f"device {device!r} is not supported; use cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PatchbankError("device 'cuda' requested but CUDA is not available here")
    return dev
