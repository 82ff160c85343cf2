"""The .patchbank model file: one safetensors file whose header metadata holds the JSON state.

Tensors (bank, projection, fusion statistics, ...) are stored with safetensors, which never
executes code on load; the configuration and scalar state are JSON in the metadata under the
key ``patchbank``, with ``format_version``.  A file written by another format version, or any
file that is not a patchbank model, is refused with a one-line error.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from patchbank.errors import PatchbankError
from patchbank.io.output_files import check_utf8_name, current_umask

FORMAT_NAME = "patchbank"
FORMAT_VERSION = 2  # 2: structure descriptors, multi-category models
#: The safetensors metadata of a model file: the format, its version and the JSON header.
METADATA_KEYS = ("format", "format_version", "patchbank")


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes (hex), read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_path(path: Any) -> Path:
    """``path`` as a :class:`Path`; anything but a non-empty str / PathLike, or a path that is not
    valid UTF-8 (safetensors opens files only by UTF-8 names: such a file could be written but
    never read back), is a one-line error."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise PatchbankError(f"a model file path must be a non-empty str or path, got {path!r}")
    check_utf8_name(path, "model file path", "the model file reader opens files by UTF-8 names only")
    return Path(path)


def save_model(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
               overwrite: bool = False) -> int:
    """Write ``tensors`` and the JSON-serialisable ``meta`` to ``path`` atomically (a temporary
    file in the same folder, then a rename); returns the size written in bytes.

    A new file gets the mode a new file gets under the current umask (``0666 & ~umask``), like
    any file the user writes; a file replaced (``overwrite``) keeps its mode, and a link to one
    stays a link (the file it points to is replaced).  Without ``overwrite`` an existing file is
    never replaced, not even one that appears while this file is written (the final name is
    created exclusively: two processes saving to the same new path cannot both succeed).  A
    missing or unwritable folder is a one-line :class:`PatchbankError`."""
    path = model_path(path)
    if path.is_dir():
        raise PatchbankError(f"{path} is a folder; give a model file name")
    if path.exists() and not overwrite:
        raise _exists(path)
    if overwrite and path.is_symlink() and path.exists():
        path = Path(os.path.realpath(path))      # the link's file is replaced, the link kept
    mode = (path.stat().st_mode & 0o7777) if overwrite and path.is_file() else 0o666 & ~current_umask()
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise PatchbankError(f"folder for the model file does not exist: {folder}")
    header = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION),
              "patchbank": json.dumps(meta, sort_keys=True)}
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".patchbank-", dir=folder)
        os.close(fd)
        save_file(tensors, tmp, metadata=header)
        os.chmod(tmp, mode)   # mkstemp made it 0600
        if overwrite:
            os.replace(tmp, path)
        else:
            _create_exclusively(tmp, path)
    except OSError as exc:
        raise PatchbankError(f"cannot write model file {path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path.stat().st_size


def _exists(path: Path) -> PatchbankError:
    return PatchbankError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")


def _create_exclusively(tmp: str, path: Path) -> None:
    """Give the finished file ``tmp`` the name ``path`` unless ``path`` exists, atomically: a
    hard link fails if the name is taken; where hard links are unsupported, the name is
    reserved with ``O_CREAT | O_EXCL`` and then replaced by the finished file."""
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        raise _exists(path) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK,
                             errno.ENOSYS, errno.EACCES):
            raise
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        raise _exists(path) from None
    os.replace(tmp, path)


def load_model(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_model`: ``(tensors, meta)``.  A missing file, a file of
    another format version and anything that is not a readable patchbank model are refused
    with a one-line :class:`PatchbankError`; no code is executed on load."""
    return _read(path, with_tensors=True)


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header (``meta``) of a model file, checked as :func:`load_model` checks it,
    without reading any tensor."""
    return _read(path, with_tensors=False)[1]


def _read(path: str | os.PathLike, with_tensors: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = model_path(path)
    if not path.is_file():
        raise PatchbankError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("format") != FORMAT_NAME or "patchbank" not in header:
                raise PatchbankError(f"{path} is not a patchbank model file")
            extra = sorted(set(header) - set(METADATA_KEYS))
            if extra:
                raise PatchbankError(f"{path} has safetensors metadata {extra[0]!r}, which a patchbank "
                                     f"model file does not hold (only {', '.join(METADATA_KEYS)})")
            version = header.get("format_version")
            if version != str(FORMAT_VERSION):
                raise PatchbankError(f"{path} has model format version {version}; this patchbank "
                                     f"reads version {FORMAT_VERSION} (refit or use a matching release)")
            tensors = {k: f.get_tensor(k) for k in f.keys()} if with_tensors else {}
    except PatchbankError:
        raise
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise PatchbankError(f"{path} is not a readable patchbank model file ({type(exc).__name__})") from None
    try:
        meta = json.loads(header["patchbank"])
    except (ValueError, RecursionError):   # JSONDecodeError is a ValueError; absurdly deep nesting
        raise PatchbankError(f"{path} has a corrupt patchbank header") from None
    if not isinstance(meta, dict) or not meta:
        raise PatchbankError(f"{path} has an empty or invalid patchbank header "
                             f"(a JSON object is expected, got {_describe(meta)})")
    return tensors, meta


def _describe(value: Any) -> str:
    return "an empty object" if value == {} else type(value).__name__
