"""The service's adaptive batcher: concurrent callers share model calls and each gets
its own rows back."""

from __future__ import annotations

import asyncio

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
    assert batcher.stats() == {"requests": 21, "model_calls": 1}


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
