"""A request whose client has gone stops, and work it started in a thread ends before its share.

uvicorn does not cancel a request's handler when the client disconnects: the handler would go on
waiting for its decoded-pixel share (:class:`~patchbank.service.pixel_budget.PixelBudget`) and
its place in a dynamic batch, then decode and score images nobody will read, while clients that
time out and retry multiply the work.  :func:`unless_client_gone` runs the handler's work while
it listens for the client's ``http.disconnect``; on it, the work is cancelled where it waits
(it leaves the pixel queue, its unstarted batch items are dropped) and :class:`ClientGone` is
raised, whose answer goes nowhere (status 499, nginx's "client closed request").  A body the
client stops sending half-way (``starlette.requests.ClientDisconnect``) is answered the same
way by the error handlers.

Cancelling must not free a pixel share while a thread still holds the images it was counted
for: :func:`to_the_end` awaits a thread's work to its end even when cancelled, then re-raises the
cancellation; the batcher waits for a running call that holds a cancelled request's images.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, TypeVar

from starlette.requests import Request

from patchbank.service.errors import ServiceError

__all__ = ["ClientGone", "CLIENT_GONE_STATUS", "unless_client_gone", "to_the_end", "wait_out"]

T = TypeVar("T")
CLIENT_GONE_STATUS = 499
log = logging.getLogger("patchbank.service")


class ClientGone(ServiceError):
    """The client disconnected before its answer (nobody reads this error's answer)."""

    def __init__(self, message: str = "the client disconnected before its answer; the request was "
                                      "stopped"):
        super().__init__(CLIENT_GONE_STATUS, message)


async def unless_client_gone(request: Request, work: Awaitable[T]) -> T:
    """``await work``, cancelled when ``request``'s client disconnects (then :class:`ClientGone`).

    Call it once the request's body has been read: it listens on the request's ``receive``,
    which after the body yields only ``http.disconnect`` (when the client goes, or once the
    response is complete)."""
    task = asyncio.current_task()
    state = {"gone": False, "finished": False}

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        if not state["finished"]:
            state["gone"] = True
            task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if state["gone"] and task.uncancel() == 0:   # our cancellation, and no other pending
            log.info("%s %s: the client went away before its answer; the request was stopped",
                     request.method, request.url.path)
            raise ClientGone() from None
        raise
    finally:
        state["finished"] = True
        watcher.cancel()


async def wait_out(futures: set[asyncio.Future]) -> bool:
    """Wait until every one of ``futures`` is done, through cancellations of the caller; True
    when the caller was cancelled meanwhile (it re-raises that itself)."""
    cancelled = False
    while any(not f.done() for f in futures):
        try:
            await asyncio.wait(futures)
        except asyncio.CancelledError:
            cancelled = True
    return cancelled


async def to_the_end(work: Awaitable[T]) -> T:
    """``await work`` (e.g. ``asyncio.to_thread(...)``) to its end even when the caller is
    cancelled meanwhile; then the cancellation is raised (the result dropped), else the result
    (or the work's exception) is returned (raised)."""
    future: asyncio.Future[Any] = asyncio.ensure_future(work)
    if await wait_out({future}):
        raise asyncio.CancelledError
    return future.result()
