"""The request log's ASGI middleware: the entry is in the spool before the answer's last
byte is sent, the live metrics see it after (off the answer's latency), and a failure
on either side still leaves both."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from nbship.prediction_log import LogEntry, PredictionLog, RawJSON, read_log, url_for_sqlite
from nbship.serving.request_log import HEADER, RequestLogMiddleware

pytestmark = pytest.mark.unit

BODY = json.dumps([{"island": "Dream", "bill_length_mm": 39.5}] * 3).encode()
ANSWER = (
    b'{"model":"clf:v1","predictions":['
    + b",".join([b'{"label":"A","probabilities":{"A":1.0}}'] * 3)
    + b"]}"
)


class Spy:
    """Stands for the prediction log and the live metrics; keeps the order of events."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.entries: list[LogEntry] = []

    def record(self, entry: LogEntry) -> bool:
        self.events.append("record")
        self.entries.append(entry)
        return True

    def observe(self, entry: LogEntry) -> None:
        self.events.append("observe")
        self.entries.append(entry)


def app_answering(chunks: list[bytes], status: int = 200) -> Any:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": status, "headers": []})
        for i, chunk in enumerate(chunks):
            more = i < len(chunks) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": more})

    return app


def call(middleware: RequestLogMiddleware, events: list[str], fail_send: bool = False) -> list:
    sent: list[dict] = []
    parts = [BODY[:40], BODY[40:]]

    async def receive() -> dict:
        body = parts.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(parts)}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body"):
            events.append("last byte")
            if fail_send:
                raise OSError("the client went away")
        sent.append(message)

    scope = {"type": "http", "path": "/predict", "method": "POST"}
    asyncio.run(middleware(scope, receive, send))
    return sent


def middleware(app: Any, spy: Spy, log: Any = None) -> RequestLogMiddleware:
    return RequestLogMiddleware(
        app,
        log=lambda: spy if log is None else log,  # type: ignore[arg-type,return-value]
        routes={"/predict": "predict"},
        model_tag=lambda: "clf:v1",
        observe=spy.observe,
    )


def test_logged_before_the_last_byte_observed_after() -> None:
    events: list[str] = []
    spy = Spy(events)
    sent = call(middleware(app_answering([ANSWER[:30], ANSWER[30:]]), spy), events)
    assert events == ["record", "last byte", "observe"]
    logged, observed = spy.entries
    assert logged is observed
    assert isinstance(logged.inputs, RawJSON) and logged.inputs == BODY
    assert json.loads(logged.outputs) == json.loads(ANSWER)["predictions"]
    assert (logged.model_tag, logged.status, logged.n_records) == ("clf:v1", "ok", 3)
    request_id = dict(sent[0]["headers"])[HEADER].decode()
    assert logged.request_id == request_id


def test_a_failed_send_is_still_logged_and_observed() -> None:
    events: list[str] = []
    spy = Spy(events)
    with pytest.raises(OSError):
        call(middleware(app_answering([ANSWER]), spy), events, fail_send=True)
    assert events == ["record", "last byte", "observe"]


def test_an_app_failing_before_answering_is_logged_as_an_error() -> None:
    async def broken(scope: dict, receive: Any, send: Any) -> None:
        await receive()
        raise RuntimeError("boom")

    events: list[str] = []
    spy = Spy(events)
    with pytest.raises(RuntimeError):
        call(middleware(broken, spy), events)
    assert events == ["record", "observe"]
    assert (spy.entries[0].status, spy.entries[0].http_status) == ("error", 500)


def test_a_failing_observer_does_not_fail_the_request(tmp_path: Path) -> None:
    events: list[str] = []
    url = url_for_sqlite(tmp_path / "log.db")
    with PredictionLog(url, tmp_path / "spool") as log:
        logged = RequestLogMiddleware(
            app_answering([ANSWER]),
            log=lambda: log,
            routes={"/predict": "predict"},
            model_tag=lambda: "clf:v1",
            observe=lambda entry: 1 / 0,  # type: ignore[func-returns-value]
        )
        sent = call(logged, events)
        assert log.flush(30)
    assert events == ["last byte"] and sent[-1]["body"] == ANSWER
    frame = read_log(url)
    assert frame["inputs"][0] == json.loads(BODY)
    assert frame["outputs"][0] == json.loads(ANSWER)["predictions"]
