"""The service's adaptive batcher: concurrent callers share model calls and each gets
its own rows back."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from nbship.serving.batching import MicroBatcher

pytestmark = pytest.mark.unit


class Model:
    """Answers row r with [r, 2r]; remembers the size of every call."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, rows: list[int]) -> tuple[str, np.ndarray]:
        self.calls.append(len(rows))
        return f"call-{len(self.calls)}", np.array([[r, 2 * r] for r in rows], dtype=float)


def test_concurrent_callers_share_one_call_and_get_their_own_rows():
    model = Model()
    batcher = MicroBatcher(model, max_rows=1000)

    async def run():
        requests = [[i] for i in range(20)] + [[100, 101, 102]]
        return requests, await asyncio.gather(*(batcher(r) for r in requests))

    requests, answers = asyncio.run(run())
    for rows, (answered, answer) in zip(requests, answers, strict=True):
        assert answered == "call-1" and answer.tolist() == [[r, 2 * r] for r in rows]
    assert model.calls == [23]
    assert batcher.stats() == {"requests": 21, "model_calls": 1, "waits": 0, "callers": 0}


def test_a_lone_request_is_not_held_back():
    model = Model()
    batcher = MicroBatcher(model, max_rows=10)

    async def run():
        first = await batcher([1])
        second = await batcher([2])
        return first, second

    (by_first, first), (by_second, second) = asyncio.run(run())
    assert first.tolist() == [[1, 2]] and second.tolist() == [[2, 4]]
    assert (by_first, by_second) == ("call-1", "call-2")
    assert model.calls == [1, 1]


def test_batches_never_exceed_max_rows():
    model = Model()
    batcher = MicroBatcher(model, max_rows=5)

    async def run():
        return await asyncio.gather(*(batcher([i, i + 1, i + 2]) for i in range(0, 30, 3)))

    answers = asyncio.run(run())
    assert [a[:, 0].tolist() for _, a in answers] == [[i, i + 1, i + 2] for i in range(0, 30, 3)]
    assert max(model.calls) <= 5 and sum(model.calls) == 30


def test_a_model_error_reaches_every_caller_of_that_batch():
    def broken(rows):
        raise ValueError("model exploded")

    batcher = MicroBatcher(broken, max_rows=10)

    async def run():
        return await asyncio.gather(batcher([1]), batcher([2]), return_exceptions=True)

    results = asyncio.run(run())
    assert all(isinstance(r, ValueError) and "exploded" in str(r) for r in results)


# --- waiting for kept-alive callers ---------------------------------------------------


class SlowModel(Model):
    """A model call that takes `seconds` (it blocks the loop, as a real one does)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def __call__(self, rows: list[int]) -> tuple[str, np.ndarray]:
        time.sleep(self.seconds)
        return super().__call__(rows)


async def warm(batcher: MicroBatcher, callers: list[str]) -> None:
    """Each caller sends twice, one after the other: kept-alive callers now."""
    for caller in callers * 2:
        await batcher([0], caller)


def test_a_batch_waits_for_a_kept_alive_caller_between_two_requests():
    model = SlowModel(0.05)
    batcher = MicroBatcher(model, max_rows=100)

    async def run():
        await warm(batcher, ["a", "b"])
        calls = len(model.calls)

        async def b_later():
            await asyncio.sleep(0.01)  # b sends its next request after a's: a waits for it
            return await batcher([2], "b")

        answers = await asyncio.gather(batcher([1], "a"), b_later())
        return model.calls[calls:], answers

    calls, ((_, a), (_, b)) = asyncio.run(run())
    assert calls == [2]  # one call for both
    assert a.tolist() == [[1, 2]] and b.tolist() == [[2, 4]]
    assert batcher.stats()["waits"] >= 1 and batcher.stats()["callers"] == 2


def test_the_wait_ends_once_every_kept_alive_caller_has_a_request_pending():
    model = SlowModel(0.2)  # a wait of up to 0.2 s if it did not end sooner
    batcher = MicroBatcher(model, max_rows=100)

    async def run():
        await warm(batcher, ["a", "b"])

        async def b_later():
            await asyncio.sleep(0.01)
            return await batcher([2], "b")

        t0 = time.perf_counter()
        await asyncio.gather(batcher([1], "a"), b_later())
        return time.perf_counter() - t0

    took = asyncio.run(run())
    # one model call (0.2 s) after b came at 0.01 s, not the wait's bound on top of it
    assert took < 0.2 + 0.15, took


def a_alone_after_warming(batcher: MicroBatcher, rows: list[int]) -> float:
    """Seconds `a`'s request of `rows` takes once a and b are kept-alive callers and b
    has gone quiet."""

    async def run():
        await warm(batcher, ["a", "b"])
        t0 = time.perf_counter()
        await batcher(rows, "a")
        return time.perf_counter() - t0

    return asyncio.run(run())


def test_a_caller_that_does_not_come_is_waited_for_at_most_about_one_call():
    model = SlowModel(0.05)
    took = a_alone_after_warming(MicroBatcher(model, max_rows=100), [1])
    assert 0.05 <= took < 3 * 0.05 + 0.1, took
    assert model.calls[-1] == 1


def test_a_lone_caller_and_callers_seen_once_never_wait():
    model = SlowModel(0.01)
    batcher = MicroBatcher(model, max_rows=100)

    async def run():
        for _ in range(5):
            await batcher([1], "alone")  # the only kept-alive caller: nobody to wait for
        for i in range(5):
            await batcher([1], f"new-connection-{i}")  # a connection per request
        await batcher([1])  # no caller known

    asyncio.run(run())
    assert batcher.stats()["waits"] == 0 and model.calls == [1] * 11


def test_a_full_batch_does_not_wait():
    # max_rows already: b is not waited for
    took = a_alone_after_warming(MicroBatcher(SlowModel(0.2), max_rows=3), [1, 2, 3])
    assert took < 0.2 + 0.15, took


def test_a_batcher_told_not_to_wait_does_not():
    model = SlowModel(0.05)
    batcher = MicroBatcher(model, max_rows=100, wait_share=0.0)

    async def run():
        await warm(batcher, ["a", "b"])
        await batcher([1], "a")

    asyncio.run(run())
    assert batcher.stats()["waits"] == 0
