"""Dynamic batching: concurrent requests with the same key run as one call of a blocking function.

:class:`DynamicBatcher` knows nothing of models or images.  ``await submit_all(key, items)``
queues a request's items (a *group*) under ``key``; one worker coroutine per *lane*
(``lane(key)``, by default the key itself) takes groups of one key, oldest first, and runs
``run(key, items) -> results`` in the lane's single worker thread, so at most one call per lane
runs at a time (torch is not asyncio-friendly, and one inference thread per model avoids
oversubscribing the cores).

* **Batching on** (``max_wait_ms > 0``): a call takes the queued items of the key whose oldest
  item waited longest, up to ``max_batch`` items, once that oldest item has waited
  ``max_wait_ms`` or ``max_batch`` items are queued (whichever comes first).  Items that arrive
  while the lane's previous call runs are queued meanwhile and go together into the next call.
  A group larger than ``max_batch`` is split over consecutive calls.
* **Batching off** (``max_wait_ms == 0``): each group runs alone, at once (in chunks of at most
  ``max_batch`` items), never mixed with another request's items.

A request cancelled while it waits (its client went away) leaves: its items not yet taken are
dropped, and ``submit_all`` returns (raises the cancellation) only once a call already running
with some of them has ended, so that its caller frees their inputs when nothing reads them.

``run`` must return one result per item, in the items' order.  A result that is an
``Exception`` instance fails only its own item's request; ``run`` raising (or returning the
wrong number of results) fails every request with an item in that call and nothing else.
Decode and validate inputs before submitting, so that a bad input fails its own request only.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

from patchbank.service.cancellation import wait_out

__all__ = ["DynamicBatcher", "BatchStats"]


@dataclass
class _Item:
    value: Any
    future: asyncio.Future
    arrived: float          # time.monotonic() when its group was queued
    call: asyncio.Future | None = None   # done when the call it was taken into has ended


@dataclass
class BatchStats:
    """Counters of one lane: calls of ``run``, items run, the largest call."""

    calls: int = 0
    items: int = 0
    largest_call: int = 0

    def record(self, n: int) -> None:
        """Count one call of ``n`` items."""
        self.calls += 1
        self.items += n
        self.largest_call = max(self.largest_call, n)


@dataclass
class _Lane:
    executor: ThreadPoolExecutor
    wake: asyncio.Event
    stats: BatchStats
    queues: dict[Hashable, deque] = field(default_factory=dict)   # key -> deque of _Item
    groups: dict[Hashable, deque] = field(default_factory=dict)   # key -> deque of group sizes
    task: asyncio.Task | None = None


class DynamicBatcher:
    """Group concurrent submissions per key into calls of ``run(key, items) -> results``.

    Args:
        run: the blocking function; called in the lane's worker thread.
        max_batch: the most items in one call (>= 1).
        max_wait_ms: how long the oldest queued item may wait for others (0: batching off).
        lane: key -> lane; keys of one lane share one worker thread (default: one per key).

    Create it, and call :meth:`submit_all` / :meth:`submit`, inside a running event loop;
    :meth:`close` stops the workers and their threads.
    """

    def __init__(self, run: Callable[[Hashable, list], Sequence], *, max_batch: int = 16,
                 max_wait_ms: float = 5.0, lane: Callable[[Hashable], Hashable] | None = None):
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if not max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.run = run
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self.lane = lane or (lambda key: key)
        self._lanes: dict[Hashable, _Lane] = {}
        self._stats: dict[Hashable, BatchStats] = {}   # kept after close()
        self._closed = False

    @property
    def batching(self) -> bool:
        """True when requests are grouped (``max_wait_ms > 0``)."""
        return self.max_wait_s > 0

    def stats(self, lane: Hashable) -> BatchStats:
        """The counters of ``lane`` (zeros if it never ran)."""
        return self._stats.get(lane, BatchStats())

    async def submit(self, key: Hashable, item: Any) -> Any:
        """Run one item under ``key``; its result (or its exception raised here)."""
        return (await self.submit_all(key, [item]))[0]

    async def submit_all(self, key: Hashable, items: Sequence) -> list:
        """Run a request's ``items`` under ``key``; their results in order.  The first failed
        item's exception is raised (after every item has finished)."""
        if self._closed:
            raise RuntimeError("the batcher is closed")
        items = list(items)
        if not items:
            return []
        loop = asyncio.get_running_loop()
        lane = self._lane(self.lane(key))
        now = time.monotonic()
        queued = [_Item(v, loop.create_future(), now) for v in items]
        lane.queues.setdefault(key, deque()).extend(queued)
        lane.groups.setdefault(key, deque()).append(len(queued))
        lane.wake.set()
        if lane.task is None:
            lane.task = loop.create_task(self._work(lane))
        try:
            done = await asyncio.gather(*(q.future for q in queued), return_exceptions=True)
        except asyncio.CancelledError:
            # its items not yet taken are dropped (their futures are cancelled); a call that
            # already holds some of them runs on in the lane's thread: wait for it to end, so
            # that the caller lets its inputs go only when nothing reads them any more
            await wait_out({q.call for q in queued if q.call is not None})
            raise
        for value in done:
            if isinstance(value, BaseException):
                raise value
        return list(done)

    def _lane(self, name: Hashable) -> _Lane:
        if name not in self._lanes:
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{name}")
            stats = self._stats.setdefault(name, BatchStats())
            self._lanes[name] = _Lane(executor, asyncio.Event(), stats)
        return self._lanes[name]

    # ------------------------------------------------------------------ the lane's worker
    async def _work(self, lane: _Lane) -> None:
        """Forever: wait for queued items, pick a key, wait out its window, run one call."""
        while True:
            key = _oldest_key(lane)
            if key is None:
                lane.wake.clear()
                await lane.wake.wait()
                continue
            if self.batching:
                await self._fill(lane, key)
            batch = self._take(lane, key)
            if batch:
                await self._call(lane, key, batch)
            del batch   # its inputs (decoded images) are not kept while the lane waits for more

    async def _fill(self, lane: _Lane, key: Hashable) -> None:
        """Wait until ``key`` has ``max_batch`` items queued or its oldest waited ``max_wait_ms``."""
        deadline = lane.queues[key][0].arrived + self.max_wait_s
        while len(lane.queues[key]) < self.max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            lane.wake.clear()
            try:
                await asyncio.wait_for(lane.wake.wait(), left)
            except asyncio.TimeoutError:
                return

    def _take(self, lane: _Lane, key: Hashable) -> list[_Item]:
        """Dequeue the next call's items of ``key``: up to ``max_batch`` (batching off: from
        the oldest group only).  Items whose request was cancelled are dropped."""
        queue, groups = lane.queues[key], lane.groups[key]
        limit = self.max_batch if self.batching else min(self.max_batch, groups[0])
        batch = []
        while queue and len(batch) < limit:
            batch.append(queue.popleft())
            groups[0] -= 1
            if groups[0] == 0:
                groups.popleft()
        if not queue:
            del lane.queues[key], lane.groups[key]
        return [b for b in batch if not b.future.done()]

    async def _call(self, lane: _Lane, key: Hashable, batch: list[_Item]) -> None:
        """Run one call in the lane's thread; hand each future its result or exception."""
        lane.stats.record(len(batch))
        loop = asyncio.get_running_loop()
        ended = loop.create_future()
        for b in batch:
            b.call = ended
        try:
            results = await loop.run_in_executor(lane.executor, self.run, key, [b.value for b in batch])
            results = list(results)
            if len(results) != len(batch):
                raise RuntimeError(f"run returned {len(results)} results for {len(batch)} items")
        except asyncio.CancelledError:   # close() while the call ran
            _fail(batch, RuntimeError("the batcher was closed"))
            raise
        except Exception as exc:   # the call failed: every request with an item in it fails
            _fail(batch, exc)
            return
        finally:
            ended.set_result(None)
        for b, result in zip(batch, results):
            if b.future.done():
                continue
            if isinstance(result, Exception):
                b.future.set_exception(result)
            else:
                b.future.set_result(result)

    async def close(self) -> None:
        """Stop every lane's worker, fail what is still queued, and shut the threads down."""
        self._closed = True
        for lane in self._lanes.values():
            if lane.task is not None:
                lane.task.cancel()
                try:
                    await lane.task
                except asyncio.CancelledError:
                    pass
            for queue in lane.queues.values():
                _fail(queue, RuntimeError("the batcher was closed"))
            lane.executor.shutdown(wait=False, cancel_futures=True)
        self._lanes.clear()


def _fail(items, exc: BaseException) -> None:
    """Fail every still-pending future of ``items`` with ``exc``."""
    for item in items:
        if not item.future.done():
            item.future.set_exception(exc)


def _oldest_key(lane: _Lane) -> Hashable | None:
    """The key whose first queued item arrived first (None: nothing queued)."""
    if not lane.queues:
        return None
    return min(lane.queues, key=lambda k: lane.queues[k][0].arrived)
