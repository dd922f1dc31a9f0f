"""BentoML's request timeout, its timers cancelled (nbship.serving.request_timeout)."""

from __future__ import annotations

import asyncio
from typing import Any

from bentoml._internal.server.http import traffic

from nbship.serving.request_timeout import (
    UPSTREAM,
    CancellingTimeoutMiddleware,
    cancel_request_timers,
)


async def answer(scope: Any, receive: Any, send: Any) -> None:
    if scope.get("slow"):
        await asyncio.sleep(1)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def served(middleware: type, requests: int, slow: bool = False) -> tuple[list[Any], int]:
    """What `requests` requests through `middleware` sent, and how many of its timers
    are still armed once they are answered (asyncio's own loop, whose pending timers
    are a list to read)."""
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    async def run() -> int:
        app = middleware(answer, timeout=0.2 if slow else 30)
        for _ in range(requests):
            await app({"type": "http", "slow": slow}, receive, send)
        loop: Any = asyncio.get_running_loop()
        return sum(
            not handle.cancelled() and handle._callback.__name__ == "_set_timer_out"
            for handle in loop._scheduled
        )

    return sent, asyncio.run(run())


def test_no_timer_outlives_its_request():
    sent, armed = served(CancellingTimeoutMiddleware, 50)
    assert armed == 0
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200] * 50


def test_bentoml_still_leaves_a_timer_per_request():
    # the day this fails, BentoML cancels its own timers: request_timeout can go
    assert served(UPSTREAM, 50)[1] == 50


def test_a_slow_request_still_times_out_with_bentoml_s_answer():
    sent, armed = served(CancellingTimeoutMiddleware, 1, slow=True)
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [504]
    assert b"Not able to process the request in 0.2 seconds" in sent[-1]["body"]
    assert armed == 0


def test_bentoml_builds_its_middlewares_from_the_replaced_class():
    cancel_request_timers()
    from bentoml._internal.server.base_app import BaseAppFactory

    class App(BaseAppFactory):
        name = "probe"

    built = App(timeout=30).middlewares
    assert traffic.TimeoutMiddleware is CancellingTimeoutMiddleware
    assert [m.cls for m in built] == [CancellingTimeoutMiddleware]
