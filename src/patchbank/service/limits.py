"""The request body limit, as ASGI middleware: checked from ``Content-Length`` and while reading.

A request whose ``Content-Length`` is over the limit is answered 413 without passing its body
to the application (a malformed ``Content-Length`` is 400).  Up to :data:`DRAIN_FACTOR` times the
limit the body is read and dropped first, so that a client that sends its whole body before
reading the answer gets the 413 instead of a reset connection; a larger body is answered at once
and the connection closed.  A body that turns out longer while it is read (chunked
transfer, or a lying header) raises :class:`~patchbank.service.errors.ServiceError` 413 from
``receive``, at the first chunk past the limit; the application's error handlers answer it.
"""
from __future__ import annotations

import json
from typing import Any, Callable

from patchbank.service.errors import too_large

__all__ = ["BodyLimit", "DRAIN_FACTOR"]

DRAIN_FACTOR = 4   # bodies up to 4x the limit are read (and dropped) before the 413


class BodyLimit:
    """Wrap an ASGI app so that no HTTP request body over ``max_bytes`` is read."""

    def __init__(self, app: Callable, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    def _message(self) -> str:
        return (f"request body over the limit of {self.max_bytes / 2**20:g} MB "
                f"(--max-request-mb)")

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            text = length.decode("latin-1").strip()
            if not text.isdigit():
                await _answer(send, 400, f"malformed Content-Length header {text!r}")
                return
            if int(text) > self.max_bytes:
                if int(text) <= DRAIN_FACTOR * self.max_bytes:
                    await _drain(receive)
                await _answer(send, 413, self._message())
                return
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise too_large(self._message())
            return message

        await self.app(scope, limited_receive, send)


async def _drain(receive: Callable) -> None:
    """Read the request body to its end (or the client's disconnect), keeping none of it."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def _answer(send: Callable, status: int, message: str) -> None:
    """Send a complete one-line JSON error response."""
    body = json.dumps({"error": message}).encode()
    headers: list[tuple[bytes, Any]] = [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode()),
                                        (b"connection", b"close")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
