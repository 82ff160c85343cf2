"""Errors with an HTTP status.  Every error the service answers is ONE JSON line
``{"error": "<one line>"}``; the status says whose fault it is.

:class:`ServiceError` is a :class:`~patchbank.errors.PatchbankError` carrying its status; any
other ``PatchbankError`` raised while serving a request (an unreadable image, a bad threshold)
is the client's input and answers 400.
"""
from __future__ import annotations

from patchbank.errors import PatchbankError

__all__ = ["ServiceError", "bad_request", "not_found", "too_large", "unsupported_media",
           "not_ready", "one_line"]


class ServiceError(PatchbankError):
    """A one-line error answered with HTTP ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(one_line(message))
        self.status = int(status)


def one_line(text: object) -> str:
    """``text`` with every run of whitespace collapsed to one space (never empty)."""
    return " ".join(str(text).split()) or "error"


def bad_request(message: str) -> ServiceError:
    """400: a bad image, bad base64, a bad option value."""
    return ServiceError(400, message)


def not_found(message: str) -> ServiceError:
    """404: an unknown model or category."""
    return ServiceError(404, message)


def too_large(message: str) -> ServiceError:
    """413: a request over the size limit or with too many images."""
    return ServiceError(413, message)


def unsupported_media(message: str) -> ServiceError:
    """415: a content type the endpoint does not read."""
    return ServiceError(415, message)


def not_ready(message: str) -> ServiceError:
    """503: the models are still loading (or failed to load)."""
    return ServiceError(503, message)
