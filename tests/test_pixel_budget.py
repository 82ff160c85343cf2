"""``patchbank.service.pixel_budget.PixelBudget``: the decoded pixels a server holds at once.

Driven with asyncio directly (no server): admission in arrival order, never above the capacity,
released however a holder ends, and a waiter whose request is cancelled leaves the queue.
"""
from __future__ import annotations

import asyncio
import random

import pytest

from patchbank.service.pixel_budget import PixelBudget


def run(coro):
    return asyncio.run(coro)


async def _settle():
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_request_that_fits_is_admitted_at_once_and_released_after():
    async def body():
        budget = PixelBudget(10)
        async with budget.hold(6):
            assert budget.in_use == 6
            async with budget.hold(4):
                assert budget.in_use == 10 and budget.waiting == 0
        assert budget.in_use == 0
    run(body())


def test_requests_are_admitted_in_arrival_order():
    """B (6) waits behind A (6); C (2) would fit beside A but arrives after B, so it waits too;
    when A leaves, B and C both fit and are admitted, B first."""
    async def body():
        budget, order = PixelBudget(10), []
        a_done = asyncio.Event()

        async def holder(name, pixels, until=None):
            async with budget.hold(pixels):
                order.append(name)
                if until is not None:
                    await until.wait()
                await asyncio.sleep(0)

        a = asyncio.create_task(holder("a", 6, a_done))
        await _settle()
        b = asyncio.create_task(holder("b", 6))
        await _settle()
        c = asyncio.create_task(holder("c", 2))
        await _settle()
        assert order == ["a"] and budget.waiting == 2 and budget.in_use == 6
        a_done.set()
        await asyncio.wait_for(asyncio.gather(a, b, c), 5)
        assert order == ["a", "b", "c"] and budget.in_use == 0 and budget.waiting == 0
    run(body())


def test_a_cancelled_waiter_leaves_the_queue_and_lets_the_next_in():
    async def body():
        budget = PixelBudget(10)
        release = asyncio.Event()

        async def holder(pixels, until=None):
            async with budget.hold(pixels):
                if until is not None:
                    await until.wait()

        a = asyncio.create_task(holder(8, release))
        await _settle()
        big = asyncio.create_task(holder(9))       # waits for a
        await _settle()
        small = asyncio.create_task(holder(2))     # fits beside a, but queued behind big
        await _settle()
        assert budget.waiting == 2
        big.cancel()                               # its client went away
        with pytest.raises(asyncio.CancelledError):
            await big
        await asyncio.wait_for(small, 5)           # now first in line, and it fits
        assert budget.waiting == 0 and budget.in_use == 8
        release.set()
        await a
        assert budget.in_use == 0
    run(body())


def test_a_waiter_cancelled_just_as_it_is_admitted_gives_its_pixels_back():
    async def body():
        budget = PixelBudget(10)
        first = budget.hold(10)
        await first.__aenter__()

        async def holder():
            async with budget.hold(5):
                pass

        waiter = asyncio.create_task(holder())
        await _settle()
        assert budget.waiting == 1
        await first.__aexit__(None, None, None)    # admits the waiter: in use 5, its task not yet run
        assert budget.in_use == 5
        waiter.cancel()                            # ... and its client goes away before it runs
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert budget.in_use == 0 and budget.waiting == 0
    run(body())


def test_a_holder_that_fails_releases_its_pixels():
    async def body():
        budget = PixelBudget(5)
        with pytest.raises(RuntimeError):
            async with budget.hold(5):
                raise RuntimeError("scoring failed")
        assert budget.in_use == 0
        async with budget.hold(5):
            assert budget.in_use == 5
    run(body())


def test_many_concurrent_holders_never_exceed_the_capacity_and_all_finish():
    async def body():
        rng = random.Random(0)
        budget, peak = PixelBudget(100), [0]

        async def holder(pixels, pause):
            async with budget.hold(pixels):
                peak[0] = max(peak[0], budget.in_use)
                assert budget.in_use <= budget.capacity
                await asyncio.sleep(pause)

        tasks = [asyncio.create_task(holder(rng.randint(0, 100), rng.random() * 0.002)) for _ in range(200)]
        for t in rng.sample(tasks, 20):            # some clients go away while waiting or holding
            t.cancel()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
        assert sum(isinstance(r, asyncio.CancelledError) for r in results) <= 20
        assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results)
        assert budget.in_use == 0 and budget.waiting == 0 and 50 < peak[0] <= 100
    run(body())


def test_sizes_outside_the_budget_are_refused():
    async def body():
        budget = PixelBudget(10)
        with pytest.raises(ValueError, match="0..10"):
            async with budget.hold(11):
                pass
        with pytest.raises(ValueError):
            PixelBudget(0)
    run(body())
