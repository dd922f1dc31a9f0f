"""Adaptive batching of concurrent requests inside the service (no timer, no queue
thread): shipped in the bento beside serving.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

# a caller's records and the future its answer is set on
_Waiting = tuple[list[Any], asyncio.Future[tuple[Any, np.ndarray]]]


class MicroBatcher:
    """Adaptive batching without a timer: requests that reach the event loop while it is
    busy are predicted together in one model call as soon as it is free.

    The first pending request schedules a flush with `call_soon`, so a lone request waits
    for nothing; under concurrency, every request parsed before the flush runs joins it.
    `predict(rows)` returns `(what answered, one row of output per input row)`; each
    caller gets `(what answered, its own rows)`, in order.
    """

    def __init__(
        self, predict: Callable[[list[Any]], tuple[Any, np.ndarray]], max_rows: int
    ) -> None:
        self.predict = predict
        self.max_rows = max_rows
        self.pending: list[_Waiting] = []
        self.requests = 0
        self.calls = 0  # model calls made: fewer than requests when batching happens

    async def __call__(self, records: list[Any]) -> tuple[Any, np.ndarray]:
        self.requests += 1
        future = asyncio.get_running_loop().create_future()
        if not self.pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self.pending.append((records, future))
        return await future

    def stats(self) -> dict[str, int]:
        return {"requests": self.requests, "model_calls": self.calls}

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        while pending:
            batch: list[_Waiting] = []
            rows = 0
            while pending and (not batch or rows + len(pending[0][0]) <= self.max_rows):
                batch.append(pending.pop(0))
                rows += len(batch[-1][0])
            self._run(batch)

    def _run(self, batch: list[_Waiting]) -> None:
        self.calls += 1
        try:
            answered, proba = self.predict([r for records, _ in batch for r in records])
        except Exception as exc:  # every waiting caller gets the model's error
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for records, future in batch:
            if not future.done():  # a caller that gave up (disconnect) is skipped
                future.set_result((answered, proba[start : start + len(records)]))
            start += len(records)
