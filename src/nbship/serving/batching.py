"""Adaptive batching of concurrent requests inside the service (no queue thread):
shipped in the bento beside serving.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

# a caller's records and the future its answer is set on
_Waiting = tuple[list[Any], asyncio.Future[tuple[Any, np.ndarray]]]

# A connection that sent a request within this many seconds before is a caller likely
# to send the next one soon: a client on a keep-alive connection that waits for each
# answer before it asks again (what a load balancer's pool or a service client does).
CALLER_WINDOW_S = 1.0
# The longest a batch waits for such callers, as a share of the mean model call: waiting
# up to one call for a request costs it less than the call of its own it would need.
# (benchmarks/serve.py, the user pipeline at c=8: 2.7 rows per call without the wait,
# 8.0 with it; req/s x1.7.)
WAIT_SHARE = 1.0


class KeptAliveCallers:
    """The connections that sent more than one request within CALLER_WINDOW_S: how
    many requests may still join a batch. A connection seen once (a client opening one
    per request) never counts, so nothing waits for it."""

    def __init__(self, window_s: float = CALLER_WINDOW_S) -> None:
        self.window_s = window_s
        self.last: dict[Hashable, tuple[float, bool]] = {}  # caller -> (seen at, again?)

    def seen(self, caller: Hashable, now: float) -> None:
        before = self.last.get(caller)
        self.last[caller] = (now, before is not None and now - before[0] <= self.window_s)

    def active(self, now: float) -> int:
        since = now - self.window_s
        stale = [c for c, (at, _) in self.last.items() if at < since]
        for caller in stale:
            del self.last[caller]
        return sum(again for _, again in self.last.values())


class MicroBatcher:
    """Adaptive batching: requests waiting for the model are predicted together in one
    model call.

    The first pending request schedules a flush with `call_soon`, so every request parsed
    before it runs joins. A lone caller waits for nothing. When other kept-alive callers
    (KeptAliveCallers) are between two requests, the flush waits for them, until each has
    one pending, the batch is full, or up to `wait_share` of a mean model call has passed:
    a closed-loop client on each of c connections then shares a call with the others
    instead of splitting into small batches that each pay a whole call.
    `predict(rows)` returns `(what answered, one row of output per input row)`; each
    caller gets `(what answered, its own rows)`, in order.
    """

    def __init__(
        self,
        predict: Callable[[list[Any]], tuple[Any, np.ndarray]],
        max_rows: int,
        wait_share: float = WAIT_SHARE,
    ) -> None:
        self.predict = predict
        self.max_rows = max_rows
        self.wait_share = wait_share  # 0: never wait for callers
        self.pending: list[_Waiting] = []
        self.pending_rows = 0
        self.first_at = 0.0  # when the oldest pending request came
        self.timer: asyncio.TimerHandle | None = None  # the flush at the end of a wait
        self.callers = KeptAliveCallers()
        self.call_seconds = 0.0  # moving mean of a model call
        self.requests = 0
        self.calls = 0  # model calls made: fewer than requests when batching happens
        self.waits = 0  # flushes that waited for callers

    async def __call__(
        self, records: list[Any], caller: Hashable | None = None
    ) -> tuple[Any, np.ndarray]:
        """`records`' rows of output; `caller` is the connection they came on (none: a
        caller nobody waits for)."""
        self.requests += 1
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        if caller is not None:
            self.callers.seen(caller, now)
        future = loop.create_future()
        self.pending.append((records, future))
        self.pending_rows += len(records)
        if len(self.pending) == 1:
            self.first_at = now
            loop.call_soon(self.due)
        elif self.timer is not None and self.full(now):
            self.timer.cancel()
            self.timer = None
            loop.call_soon(self.flush)
        return await future

    def stats(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "model_calls": self.calls,
            "waits": self.waits,
            "callers": self.callers.active(time.perf_counter()),
        }

    def full(self, now: float) -> bool:
        """Nobody else is expected: the batch has its rows, or every kept-alive caller."""
        return self.pending_rows >= self.max_rows or len(self.pending) >= self.callers.active(now)

    def due(self) -> None:
        if not self.pending or self.timer is not None:
            return
        now = time.perf_counter()
        left = self.first_at + self.wait_share * self.call_seconds - now
        if left <= 0 or self.full(now):
            self.flush()
            return
        self.waits += 1
        self.timer = asyncio.get_running_loop().call_later(left, self.flush)

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        pending, self.pending, self.pending_rows = self.pending, [], 0
        while pending:
            batch: list[_Waiting] = []
            rows = 0
            while pending and (not batch or rows + len(pending[0][0]) <= self.max_rows):
                batch.append(pending.pop(0))
                rows += len(batch[-1][0])
            self._run(batch)

    def _run(self, batch: list[_Waiting]) -> None:
        self.calls += 1
        t0 = time.perf_counter()
        try:
            answered, proba = self.predict([r for records, _ in batch for r in records])
        except Exception as exc:  # every waiting caller gets the model's error
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            took = time.perf_counter() - t0
            self.call_seconds = took if self.calls == 1 else 0.9 * self.call_seconds + 0.1 * took
        start = 0
        for records, future in batch:
            if not future.done():  # a caller that gave up (disconnect) is skipped
                future.set_result((answered, proba[start : start + len(records)]))
            start += len(records)
