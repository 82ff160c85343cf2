"""The FastAPI application of ``patchbank serve``.

:func:`create_app` wires the parts: the body limit (:class:`~patchbank.service.limits.BodyLimit`),
the one-line error handlers (:mod:`~patchbank.service.handlers`), the v2 routes
(:mod:`~patchbank.service.routes`), the web page at ``/`` and OpenAPI docs at ``/docs``.  At
startup it makes the :class:`~patchbank.service.batching.DynamicBatcher` (one inference thread
per model) and loads and warms up the models in the background; ``/v2/health/ready`` answers 200
once that is done.  :func:`app_from_env` is the factory each uvicorn worker process calls when
the server runs several (settings as JSON in :data:`~patchbank.service.settings.SETTINGS_ENV`).
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response

from patchbank import __version__
from patchbank.errors import PatchbankError
from patchbank.service.batching import DynamicBatcher
from patchbank.service.handlers import error_response, install_error_handlers
from patchbank.service.limits import BodyLimit
from patchbank.service.registry import ModelRegistry
from patchbank.service.routes import ServiceState, build_router
from patchbank.service.settings import ServeSettings

__all__ = ["create_app", "app_from_env", "INDEX_HTML"]

INDEX_HTML = Path(__file__).resolve().parent / "static" / "index.html"
log = logging.getLogger("patchbank.service")


def create_app(settings: ServeSettings, registry: ModelRegistry | None = None) -> FastAPI:
    """The application serving ``settings.models``; ``registry`` may hold them already loaded
    (``patchbank serve`` loads them before the server starts, to refuse a bad file early)."""
    state = ServiceState(settings, registry if registry is not None else ModelRegistry(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.batcher = DynamicBatcher(
            lambda key, images: state.registry.predict(key[0], key[1], images),
            max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms, lane=lambda key: key[0])
        loading = asyncio.create_task(_load(state.registry))
        try:
            yield
        finally:
            loading.cancel()
            await state.batcher.close()

    # redirect_slashes off: a path with a trailing slash is a one-line 404, not a bare redirect
    app = FastAPI(title="patchbank", version=__version__, lifespan=lifespan, redirect_slashes=False,
                  description="Training-free visual anomaly detection: score images with the "
                              "served patchbank models (KServe v2 style paths).")
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    install_error_handlers(app)
    app.include_router(build_router(state))
    app.add_api_route("/", _index, methods=["GET", "HEAD"], include_in_schema=False)
    app.state.service = state
    return app


LOAD_PROBLEMS = (PatchbankError, OSError, MemoryError)
"""Failures of loading or warming up that are the input's or the machine's (a bad model or
weights file, a file gone, out of memory), logged in one line; anything else is a bug and is
logged with its traceback."""


async def _load(registry: ModelRegistry) -> None:
    """Load and warm up every model in a thread; a failure leaves the server unready, saying why
    (in the log, and in every 503 until a restart)."""
    try:
        await asyncio.to_thread(registry.start)
    except LOAD_PROBLEMS as exc:
        log.error("loading the models failed: %s; /v2/health/ready answers 503", registry.failure or exc)
    except Exception as exc:
        log.exception("loading the models failed: %s; /v2/health/ready answers 503", registry.failure or exc)


def _index() -> Response:
    """The web page, if one is installed beside this module (``static/index.html``)."""
    if not INDEX_HTML.is_file():
        return error_response(404, "no web page installed (patchbank/service/static/index.html is "
                                   "missing); the API is under /v2 and documented at /docs")
    return FileResponse(INDEX_HTML, media_type="text/html")


def app_from_env() -> FastAPI:
    """The application for a uvicorn worker process: settings from the environment, threads
    set before torch starts, models loaded by the worker itself."""
    from patchbank.runtime.threads import set_threads

    settings = ServeSettings.from_env()
    set_threads(settings.threads)
    return create_app(settings)

