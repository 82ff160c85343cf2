"""The .patchbank model file: one safetensors file whose header metadata holds the JSON state.

Tensors (bank, projection, fusion statistics, ...) are stored with safetensors, which never
executes code on load; the configuration and scalar state are JSON in the metadata under the
key ``patchbank``, with ``format_version``.  A file written by another format version, or any
file that is not a patchbank model, is refused with a one-line error.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from patchbank.errors import PatchbankError

FORMAT_NAME = "patchbank"
FORMAT_VERSION = 2  # 2: structure descriptors, multi-category models


def save_model(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
               overwrite: bool = False) -> int:
    """Write ``tensors`` and the JSON-serialisable ``meta`` to ``path`` atomically (a temporary
    file in the same folder, then a rename); refuse to replace an existing file unless
    ``overwrite``, and a missing folder.  Returns the size written in bytes."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise PatchbankError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")
    if path.parent and not path.parent.exists():
        raise PatchbankError(f"folder for the model file does not exist: {path.parent}")
    header = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION),
              "patchbank": json.dumps(meta, sort_keys=True)}
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=".patchbank-", dir=path.parent or ".")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path.stat().st_size


def load_model(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_model`: ``(tensors, meta)``.  A missing file, a file of
    another format version and anything that is not a readable patchbank model are refused
    with a one-line :class:`PatchbankError`; no code is executed on load."""
    path = Path(path)
    if not path.is_file():
        raise PatchbankError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("format") != FORMAT_NAME or "patchbank" not in header:
                raise PatchbankError(f"{path} is not a patchbank model file")
            version = header.get("format_version")
            if version != str(FORMAT_VERSION):
                raise PatchbankError(f"{path} has model format version {version}; this patchbank "
                                     f"reads version {FORMAT_VERSION} (refit or use a matching release)")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except PatchbankError:
        raise
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise PatchbankError(f"{path} is not a readable patchbank model file ({type(exc).__name__})") from None
    try:
        meta = json.loads(header["patchbank"])
    except json.JSONDecodeError:
        raise PatchbankError(f"{path} has a corrupt patchbank header") from None
    return tensors, meta
