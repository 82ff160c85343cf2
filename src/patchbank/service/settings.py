"""The server's settings: which models, the request limits, batching, runtime, device and threads.

One frozen dataclass, :class:`ServeSettings`, built by ``patchbank serve`` and handed to
:func:`patchbank.service.app.create_app`; with several uvicorn workers it travels to each worker
process as JSON in the environment variable :data:`SETTINGS_ENV`
(:func:`patchbank.service.app.app_from_env`).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from patchbank.config import RUNTIMES, check_runtime_options
from patchbank.errors import PatchbankError
from patchbank.io.images import MAX_IMAGE_PIXELS

__all__ = ["ServeSettings", "ModelSpec", "SETTINGS_ENV", "SERVE_RUNTIMES", "MAX_DECODED_PIXELS",
           "parse_model_arg", "check_model_name"]

SETTINGS_ENV = "PATCHBANK_SERVE_SETTINGS"
#: what runs the models: torch (model files) or an export runtime (``patchbank export`` folders)
SERVE_RUNTIMES = RUNTIMES
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
#: The pixels a server process holds decoded at once, over all its requests (a JPEG counted at
#: the reduced scale it decodes at): four images at the per-image budget, about 1.1 GB of 8-bit
#: RGB.  Without it, one request of 64 highly compressible 80-megapixel PNGs (a few MB of body)
#: would take ~19 GB, and any number of requests in flight their sum (service.pixel_budget).
MAX_DECODED_PIXELS = 4 * MAX_IMAGE_PIXELS


@dataclass(frozen=True)
class ModelSpec:
    """A model to serve: the name in its URLs and its file."""

    name: str
    path: str


@dataclass(frozen=True)
class ServeSettings:
    """Everything a server process needs to know (all JSON-able)."""

    models: tuple[ModelSpec, ...] = field(default_factory=tuple)
    max_batch: int = 16               # images per model call
    max_wait_ms: float = 5.0          # batching window; 0 = each request runs alone
    max_request_mb: float = 32.0      # request body limit (Content-Length and bytes read)
    max_images: int = 64              # images per request
    max_pixels: int = MAX_IMAGE_PIXELS   # per image, from its header before decoding
    max_decoded_pixels: int = MAX_DECODED_PIXELS   # held at once, all requests; from the headers
    device: str = "cpu"
    threads: int | None = None        # torch / BLAS threads, an export runtime's threads (None: as they are)
    runtime: str = "torch"            # torch: model files; onnx / openvino: export folders
    weights: str | None = None        # backbone weights file of models fitted with their own
    workers: int = 1                  # server processes (each loads every model; see registry)

    def __post_init__(self):
        if self.max_batch < 1 or self.max_images < 1 or self.max_pixels < 1 or self.workers < 1:
            raise PatchbankError("max_batch, max_images, max_pixels and workers must be >= 1")
        if self.max_decoded_pixels < self.max_pixels:
            raise PatchbankError(f"the decoded-pixel limit (--max-decoded-pixels, {self.max_decoded_pixels:,}) "
                                 f"is below the per-image limit (--max-pixels, {self.max_pixels:,}): no "
                                 f"request could hold one image of the allowed size; lower --max-pixels too")
        if not self.max_wait_ms >= 0 or not self.max_request_mb > 0:
            raise PatchbankError("max_wait_ms must be >= 0 and max_request_mb > 0")
        if self.runtime not in SERVE_RUNTIMES:
            raise PatchbankError(f"runtime must be one of {', '.join(SERVE_RUNTIMES)}, got {self.runtime!r}")
        check_runtime_options(self.runtime, self.device, self.weights)
        names = [m.name for m in self.models]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise PatchbankError(f"model name {twice[0]!r} is given twice; name the models with NAME=PATH")

    @property
    def max_request_bytes(self) -> int:
        """The request body limit in bytes."""
        return int(self.max_request_mb * 1024 * 1024)

    def to_json(self) -> str:
        """The settings as one JSON string (see :meth:`from_json`)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServeSettings":
        """The settings :meth:`to_json` wrote; a one-line error for anything else."""
        try:
            data = json.loads(text)
            data["models"] = tuple(ModelSpec(**m) for m in data["models"])
            return cls(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise PatchbankError(f"invalid serve settings in {SETTINGS_ENV} ({exc})") from None

    @classmethod
    def from_env(cls) -> "ServeSettings":
        """The settings in :data:`SETTINGS_ENV` (set by ``patchbank serve --workers N``)."""
        text = os.environ.get(SETTINGS_ENV)
        if not text:
            raise PatchbankError(f"{SETTINGS_ENV} is not set; start the server with 'patchbank serve'")
        return cls.from_json(text)


def check_model_name(name: str) -> str:
    """``name`` if it can be a model's name in a URL (letters, digits, '_', '.', '-'; not ``.``
    or ``..``, which clients remove from a URL's path as dot segments)."""
    if not _NAME.match(name) or name in (".", ".."):
        raise PatchbankError(f"invalid model name {name!r}: use letters, digits, '_', '.', '-' "
                             f"(name it with NAME=PATH)")
    return name


def parse_model_arg(arg: str) -> ModelSpec:
    """A command-line model: ``PATH`` (a model file, named after its stem; an export folder,
    named after the folder) or ``NAME=PATH``.  An existing path whose name holds '=' is read as
    a path."""
    name, sep, path = arg.partition("=")
    if not sep or Path(arg).exists():
        name, path = (Path(arg).name if Path(arg).is_dir() else Path(arg).stem), arg
    if not path:
        raise PatchbankError(f"model {arg!r}: no file after '='")
    return ModelSpec(check_model_name(name), path)
