"""The decoded pixels a server process holds at once, over all its requests.

A request's images are decoded before they are scored and held until its scores are back
(``docs/serving.md``, "How uploads are decoded"), and its maps, heatmaps and masks are drawn at
the images' own size.  :class:`PixelBudget` bounds the sum over the requests in flight: a request
holds its images' pixels (counted from their headers, before anything is decoded) from the
decoding until its answer is written.  Requests are admitted in arrival order, each as soon as
it fits: a large request waits for the pixels ahead of it to be released and is not overtaken by
smaller ones that arrive after it.  One request larger than the whole budget could never be
admitted; the endpoint refuses it (413) before asking.

All of it runs on the event loop (no locks): :meth:`hold` is an ``async with``.  A request whose
client goes away while it waits (its task cancelled) leaves the queue without holding anything.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import AsyncIterator

__all__ = ["PixelBudget"]


class PixelBudget:
    """At most ``capacity`` pixels held at once (see the module docstring)."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.in_use = 0
        self._waiting: deque[tuple[int, asyncio.Future]] = deque()

    @property
    def waiting(self) -> int:
        """Requests queued for their pixels now."""
        return len(self._waiting)

    @contextlib.asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        """Hold ``pixels`` (0 to ``capacity``) for the body of ``async with``: at once when no
        earlier request waits and they fit, else after the earlier waiters have been admitted and
        enough is released; released when the body ends, however it ends."""
        if not 0 <= pixels <= self.capacity:
            raise ValueError(f"pixels must be in 0..{self.capacity}, got {pixels}")
        if not self._waiting and self.in_use + pixels <= self.capacity:
            self.in_use += pixels
        else:
            granted = asyncio.get_running_loop().create_future()
            self._waiting.append((pixels, granted))
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():   # admitted as it was cancelled
                    self._release(pixels)
                else:
                    with contextlib.suppress(ValueError):        # (already dropped by _admit)
                        self._waiting.remove((pixels, granted))
                    self._admit()                                # the head may have left
                raise
        try:
            yield
        finally:
            self._release(pixels)

    def _release(self, pixels: int) -> None:
        self.in_use -= pixels
        self._admit()

    def _admit(self) -> None:
        """Admit waiters from the head of the queue while the head fits."""
        while self._waiting and self.in_use + self._waiting[0][0] <= self.capacity:
            pixels, granted = self._waiting.popleft()
            if granted.done():       # its request was cancelled and has not left the queue yet
                continue
            self.in_use += pixels
            granted.set_result(None)
