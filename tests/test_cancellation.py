"""patchbank.service.cancellation: work in a thread runs to its end before a cancellation is
raised, and a request whose client disconnects is stopped where it waits."""
import asyncio
import threading
import time

import pytest

pytest.importorskip("starlette")

from patchbank.service.cancellation import CLIENT_GONE_STATUS, ClientGone, to_the_end, unless_client_gone  # noqa: E402


def test_to_the_end_waits_for_the_thread_then_raises_the_cancellation():
    release, finished = threading.Event(), []

    def work():
        release.wait(10)
        finished.append(time.monotonic())
        return 7

    async def main():
        task = asyncio.create_task(to_the_end(asyncio.to_thread(work)))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.05)
        task.cancel()                       # twice: still waits
        await asyncio.sleep(0.05)
        assert not task.done()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic()

    raised_at = asyncio.run(main())
    assert finished and raised_at >= finished[0]
    assert asyncio.run(to_the_end(asyncio.to_thread(lambda: 5))) == 5      # not cancelled: the result


def test_to_the_end_raises_the_works_own_error():
    def work():
        raise ValueError("bad bytes")

    with pytest.raises(ValueError, match="bad bytes"):
        asyncio.run(to_the_end(asyncio.to_thread(work)))


class FakeRequest:
    """What unless_client_gone reads of a Starlette request: ``receive``, method and path."""

    def __init__(self):
        self.gone = asyncio.Event()
        self.method = "POST"
        self.url = type("U", (), {"path": "/v2/models/m/infer"})()

    async def receive(self):
        await self.gone.wait()
        return {"type": "http.disconnect"}


def test_unless_client_gone_stops_the_work_where_it_waits():
    async def main():
        request, waited = FakeRequest(), asyncio.Event()

        async def work():
            waited.set()
            await asyncio.sleep(30)          # e.g. a place in the pixel queue

        task = asyncio.create_task(unless_client_gone(request, work()))
        await waited.wait()
        request.gone.set()
        with pytest.raises(ClientGone) as info:
            await asyncio.wait_for(task, 5)
        return info.value

    error = asyncio.run(main())
    assert error.status == CLIENT_GONE_STATUS


def test_unless_client_gone_returns_the_result_and_leaves_other_cancellations_alone():
    async def done():
        return "answer"

    async def main():
        assert await unless_client_gone(FakeRequest(), done()) == "answer"
        task = asyncio.create_task(unless_client_gone(FakeRequest(), asyncio.sleep(30)))
        await asyncio.sleep(0.05)
        task.cancel()                        # a server shutting down, not the client: CancelledError
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
