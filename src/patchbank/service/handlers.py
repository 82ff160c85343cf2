"""Exception handlers: every error is answered as ONE JSON line ``{"error": "..."}``.

* :class:`~patchbank.service.errors.ServiceError` -- its own status (400, 404, 413, 415, 503...);
* any other :class:`~patchbank.errors.PatchbankError` -- 400 (the client's input was refused:
  an unreadable image, a bad threshold);
* ``RequestValidationError`` -- 422 naming the first bad field (400 for a malformed JSON body);
* Starlette's ``HTTPException`` (unknown path 404, wrong method 405, a bad multipart body 400)
  -- its status; a body over the limit found while FastAPI read it -- 413;
* ``ClientDisconnect`` (the client went away while sending its body) -- 499, logged in one
  line, like a request stopped when its client left (:mod:`~patchbank.service.cancellation`);
* anything else is a bug: 500 with a one-line message; Starlette re-raises it after answering,
  so the server logs its traceback.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from patchbank.errors import PatchbankError
from patchbank.service.cancellation import ClientGone
from patchbank.service.errors import ServiceError, one_line

__all__ = ["install_error_handlers", "error_response"]

log = logging.getLogger("patchbank.service")

def error_response(status: int, message: object) -> JSONResponse:
    """``{"error": "<one line>"}`` with ``status``."""
    return JSONResponse({"error": one_line(message)}, status_code=status)


async def _patchbank_error(request: Request, exc: PatchbankError) -> JSONResponse:
    status = exc.status if isinstance(exc, ServiceError) else 400
    return error_response(status, exc)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if not errors:
        return error_response(422, "invalid request")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return error_response(400, f"malformed JSON body ({first.get('msg', 'invalid JSON')})")
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return error_response(422, f"{where}: {first.get('msg', 'invalid value')}{more}")


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    cause = exc.__cause__
    if isinstance(cause, ServiceError):   # e.g. the body limit, raised while FastAPI read a body
        return error_response(cause.status, cause)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no such path: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        detail = f"method {request.method} is not allowed on {request.url.path}"
    return JSONResponse({"error": one_line(detail)}, status_code=exc.status_code, headers=exc.headers)


async def _client_disconnect(request: Request, exc: ClientDisconnect) -> JSONResponse:
    gone = ClientGone("the client disconnected before its request body was complete")
    log.info("%s %s: %s", request.method, request.url.path, gone)
    return error_response(gone.status, gone)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises the exception after this response is sent, and the server (uvicorn)
    # logs it with its traceback: no second log line here
    return error_response(500, f"internal error ({type(exc).__name__}); see the server log")


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers above on ``app``."""
    app.add_exception_handler(PatchbankError, _patchbank_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)
    app.add_exception_handler(Exception, _unexpected)
