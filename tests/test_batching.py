"""patchbank.service.batching.DynamicBatcher with a fake ``run`` (no torch, no server)."""
import asyncio
import threading
import time

import pytest

from patchbank.service.batching import DynamicBatcher


class FakeRun:
    """Records every call as ``(key, items, thread name)``; results are ``(key, item * 10)``;
    an item ``"boom"`` makes the whole call raise, an item ``"bad"`` gives an exception result
    for that item only; ``delay`` seconds per call."""

    def __init__(self, delay=0.0):
        self.calls = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, key, items):
        with self.lock:
            self.calls.append((key, list(items), threading.current_thread().name))
        time.sleep(self.delay)
        if "boom" in items:
            raise RuntimeError(f"call for {key} failed")
        return [ValueError(f"bad item in {key}") if i == "bad" else (key, i * 10) for i in items]


def _run(coro):
    return asyncio.run(coro)


async def _spread(batcher, requests, gap_s=0.0):
    """Submit ``[(key, items), ...]`` concurrently (``gap_s`` apart); results or exceptions."""
    async def one(i, key, items):
        await asyncio.sleep(i * gap_s)
        return await batcher.submit_all(key, items)

    try:
        return await asyncio.gather(*(one(i, k, v) for i, (k, v) in enumerate(requests)),
                                    return_exceptions=True)
    finally:
        await batcher.close()


def test_requests_within_the_window_run_as_one_call_with_results_in_order():
    run = FakeRun()
    batcher = DynamicBatcher(run, max_batch=16, max_wait_ms=200)
    out = _run(_spread(batcher, [("m", [1, 2]), ("m", [3]), ("m", [4, 5, 6])], gap_s=0.01))
    assert out == [[("m", 10), ("m", 20)], [("m", 30)], [("m", 40), ("m", 50), ("m", 60)]]
    assert [c[:2] for c in run.calls] == [("m", [1, 2, 3, 4, 5, 6])]
    stats = batcher.stats("m")
    assert (stats.calls, stats.items, stats.largest_call) == (1, 6, 6)


def test_a_full_batch_runs_without_waiting_out_the_window():
    run = FakeRun()
    batcher = DynamicBatcher(run, max_batch=4, max_wait_ms=10_000)
    t0 = time.monotonic()
    out = _run(_spread(batcher, [("m", [1, 2, 3, 4])]))
    assert time.monotonic() - t0 < 5
    assert out == [[("m", i * 10) for i in (1, 2, 3, 4)]]


def test_max_batch_bounds_every_call_and_splits_a_large_request():
    run = FakeRun()
    batcher = DynamicBatcher(run, max_batch=3, max_wait_ms=50)
    out = _run(_spread(batcher, [("m", list(range(7))), ("m", [7, 8])]))
    assert out == [[("m", i * 10) for i in range(7)], [("m", 70), ("m", 80)]]
    sizes = [len(c[1]) for c in run.calls]
    assert max(sizes) <= 3 and sum(sizes) == 9
    assert [i for c in run.calls for i in c[1]] == list(range(9))   # first come, first run


def test_keys_are_never_mixed_and_each_lane_has_one_thread():
    run = FakeRun()
    batcher = DynamicBatcher(run, max_batch=16, max_wait_ms=100, lane=lambda key: key[0])
    requests = [(("a", None), [1]), (("b", None), [2]), (("a", "x"), [3]), (("a", None), [4])]
    out = _run(_spread(batcher, requests, gap_s=0.005))
    assert out == [[(("a", None), 10)], [(("b", None), 20)], [(("a", "x"), 30)], [(("a", None), 40)]]
    for key, items, _ in run.calls:
        assert all((key, i * 10) in [r for res in out for r in res] for i in items)
    by_key = {}
    for key, items, _ in run.calls:
        by_key.setdefault(key, []).extend(items)
    assert by_key == {("a", None): [1, 4], ("b", None): [2], ("a", "x"): [3]}
    threads = {key[0]: set() for key, _, _ in run.calls}
    for key, _, thread in run.calls:
        threads[key[0]].add(thread)
    assert all(len(t) == 1 for t in threads.values()) and threads["a"] != threads["b"]


def test_a_failing_call_fails_only_the_requests_in_it():
    run = FakeRun()
    batcher = DynamicBatcher(run, max_batch=16, max_wait_ms=100)
    out = _run(_spread(batcher, [("m", [1]), ("m", ["boom"]), ("other", [2])], gap_s=0.005))
    assert isinstance(out[0], RuntimeError) and isinstance(out[1], RuntimeError)   # same call
    assert "call for m failed" in str(out[1])
    assert out[2] == [("other", 20)]


def test_an_exception_result_fails_only_its_own_request():
    run = FakeRun()
    batcher = DynamicBatcher(run, max_batch=16, max_wait_ms=100)
    out = _run(_spread(batcher, [("m", [1]), ("m", ["bad"]), ("m", [3, 4])], gap_s=0.005))
    assert len(run.calls) == 1
    assert out[0] == [("m", 10)] and out[2] == [("m", 30), ("m", 40)]
    assert isinstance(out[1], ValueError) and "bad item in m" in str(out[1])


def test_a_wrong_number_of_results_fails_the_call():
    batcher = DynamicBatcher(lambda key, items: [1], max_batch=16, max_wait_ms=50)
    out = _run(_spread(batcher, [("m", [1, 2])]))
    assert isinstance(out[0], RuntimeError) and "1 results for 2 items" in str(out[0])


def test_items_queued_while_a_call_runs_go_together_into_the_next_call():
    run = FakeRun(delay=0.2)
    batcher = DynamicBatcher(run, max_batch=16, max_wait_ms=1)
    out = _run(_spread(batcher, [("m", [1])] + [("m", [i]) for i in range(2, 6)], gap_s=0.02))
    assert [r[0][1] for r in out] == [10, 20, 30, 40, 50]
    assert [c[1] for c in run.calls] == [[1], [2, 3, 4, 5]]


def test_batching_off_runs_each_request_alone():
    run = FakeRun(delay=0.05)
    batcher = DynamicBatcher(run, max_batch=2, max_wait_ms=0)
    assert not batcher.batching
    out = _run(_spread(batcher, [("m", [1, 2, 3]), ("m", [4]), ("m", [5])]))
    assert out == [[("m", 10), ("m", 20), ("m", 30)], [("m", 40)], [("m", 50)]]
    assert [c[1] for c in run.calls] == [[1, 2], [3], [4], [5]]   # chunks of max_batch, never mixed


def test_a_cancelled_request_is_dropped_and_the_others_still_run():
    run = FakeRun(delay=0.1)
    batcher = DynamicBatcher(run, max_batch=16, max_wait_ms=1)

    async def main():
        first = asyncio.create_task(batcher.submit_all("m", [1]))
        await asyncio.sleep(0.02)            # the first call is running
        doomed = asyncio.create_task(batcher.submit_all("m", [2]))
        kept = asyncio.create_task(batcher.submit_all("m", [3]))
        await asyncio.sleep(0)
        doomed.cancel()
        try:
            return await first, await kept
        finally:
            await batcher.close()

    assert _run(main()) == ([("m", 10)], [("m", 30)])
    assert [c[1] for c in run.calls] == [[1], [3]]


def test_bad_settings_and_use_after_close():
    with pytest.raises(ValueError, match="max_batch"):
        DynamicBatcher(FakeRun(), max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        DynamicBatcher(FakeRun(), max_wait_ms=-1)

    async def main():
        batcher = DynamicBatcher(FakeRun())
        assert await batcher.submit("m", 2) == ("m", 20)
        assert await batcher.submit_all("m", []) == []
        await batcher.close()
        with pytest.raises(RuntimeError, match="closed"):
            await batcher.submit("m", 1)

    _run(main())


def test_a_calls_inputs_are_let_go_once_its_results_are_handed_back():
    """The lane's worker keeps no reference to a finished call's items while it waits for the
    next one: a request's decoded images must not outlive it (docs/serving.md)."""
    import gc
    import weakref

    class Image:     # stands in for a decoded image
        pass

    async def body():
        batcher = DynamicBatcher(lambda key, items: [1] * len(items), max_batch=4, max_wait_ms=1)
        image = Image()
        ref = weakref.ref(image)
        assert await batcher.submit_all("m", [image]) == [1]
        del image
        for _ in range(5):
            await asyncio.sleep(0.01)   # the lane's worker is now waiting for the next call
        gc.collect()
        alive = ref() is not None
        await batcher.close()
        return alive

    assert _run(body()) is False


def test_a_request_cancelled_while_its_call_runs_returns_only_when_the_call_has_ended():
    """A request cancelled (its client went away) while a call holding its items runs in the
    lane's thread: ``submit_all`` raises the cancellation only after that call has returned, so
    the caller frees the items' inputs (and the service their pixel share) when nothing reads
    them any more; its queued, unstarted items are dropped."""
    started, release = threading.Event(), threading.Event()
    ended_at = []

    def run(key, items):
        started.set()
        release.wait(10)
        ended_at.append(time.monotonic())
        return list(items)

    async def main():
        batcher = DynamicBatcher(run, max_batch=2, max_wait_ms=0)
        task = asyncio.create_task(batcher.submit_all("k", [1, 2, 3]))   # calls of [1, 2], then [3]
        while not started.is_set():
            await asyncio.sleep(0.005)
        task.cancel()
        await asyncio.sleep(0.1)
        assert not task.done()                 # still waiting: the call holds items 1 and 2
        threading.Timer(0.1, release.set).start()
        with pytest.raises(asyncio.CancelledError):
            await task
        cancelled_at = time.monotonic()
        stats = batcher.stats("k")
        await batcher.close()
        return cancelled_at, stats

    cancelled_at, stats = _run(main())
    assert ended_at and cancelled_at >= ended_at[0]
    assert stats.calls == 1 and stats.items == 2          # item 3 was never run
