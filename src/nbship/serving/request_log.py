"""The service side of the prediction log: an ASGI middleware that gives every request
to the logged routes an id (the `x-request-id` response header) and records it after
the response has been sent, failures (validation errors included) as well as answers.

The request and response bodies are captured as they pass and the entry is recorded just
before the last byte of the answer goes out, so every answered request is logged.
`PredictionLog.record` only appends a line to a local spool: the request path pays for
decoding the bodies and one write, never for the database. The live metrics (`observe`)
see the entry once the answer has gone out: the client is not kept waiting for them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, NamedTuple

from nbship.prediction_log import LogEntry, PredictionLog, RawJSON, new_request_id

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HEADER = b"x-request-id"


class CurrentRequest(NamedTuple):
    """The logged request being answered, as the route's code sees it: a shadow model's
    answer is logged under its id, a release routes on a header, the batcher waits for
    callers on kept-alive connections."""

    id: str
    headers: list[tuple[bytes, bytes]]
    client: tuple[str, int] | None  # the connection's peer (ASGI `client`)


CURRENT_REQUEST: ContextVar[CurrentRequest | None] = ContextVar("nbship_request", default=None)
# how the service writes an answer (serving.py): {"model":"<tag>","predictions":[...]},
# with "arm" between the two while a canary or A/B release runs
ANSWER_HEAD = b'{"model":'
ANSWER_SPLIT = b',"predictions":'
# the key every answered record's object has, per task: counting it counts the records
# (a key inside a JSON string has its quotes escaped, so it cannot be miscounted)
RECORD_KEYS = {"classification": b'"label":', "regression": b'"prediction":'}
logger = logging.getLogger("bentoml.nbship.log")


def _decode(body: bytes) -> Any:
    """The JSON of a body; text (cut) when it is not JSON, e.g. a malformed request, or
    when it nests too deeply for the parser (a refused request is still logged)."""
    try:
        return json.loads(body) if body else None
    except (ValueError, RecursionError):
        return body[:2000].decode("utf-8", "replace")


def entry_for(
    *,
    request_id: str,
    started: datetime,
    latency_ms: float,
    kind: str,
    status: int,
    request_body: bytes,
    response_body: bytes,
    model_tag: str | None,
    record_key: bytes = RECORD_KEYS["classification"],
) -> LogEntry:
    """One log entry from what passed over the wire. An answer in the service's own
    format is logged from its bytes, without decoding the request or the answer;
    `record_key` is the key of each answered record's object."""
    split = response_body.find(ANSWER_SPLIT) if response_body.startswith(ANSWER_HEAD) else -1
    if 200 <= status < 300 and split > 0 and response_body.endswith(b"}"):
        # the head is small: {"model":"<tag>"} or {"model":"<tag>","arm":"canary"}
        head = json.loads(response_body[:split] + b"}")
        return LogEntry(
            request_id=request_id, ts=started, kind=kind,
            model_tag=head["model"],
            inputs=RawJSON(request_body),
            outputs=RawJSON(response_body[split + len(ANSWER_SPLIT) : -1]),
            latency_ms=latency_ms, status="ok", http_status=status,
            n_records=response_body.count(record_key),  # one per answered record
        )  # fmt: skip
    inputs = _decode(request_body)
    answer = _decode(response_body)
    n_records = len(inputs) if isinstance(inputs, list) else (1 if inputs is not None else 0)
    if 200 <= status < 300 and isinstance(answer, dict):
        return LogEntry(
            request_id=request_id, ts=started, kind=kind,
            model_tag=answer.get("model", model_tag), inputs=inputs,
            outputs=answer.get("predictions"), latency_ms=latency_ms, status="ok",
            http_status=status, n_records=n_records,
        )  # fmt: skip
    error_class = "ValidationError" if 400 <= status < 500 else "ServerError"
    message = json.dumps(answer) if not isinstance(answer, str) else answer
    return LogEntry(
        request_id=request_id, ts=started, kind=kind, model_tag=model_tag, inputs=inputs,
        outputs=None, latency_ms=latency_ms, status="error", http_status=status,
        error_class=error_class, error_message=message, n_records=n_records,
    )  # fmt: skip


class RequestLogMiddleware:
    """Logs POSTs to `routes` ({path: kind}) into `log`; `model_tag()` names the model
    serving now (for failures, whose response does not say); `record_key` is the key
    of each record's object in an answer (RECORD_KEYS, by task)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        log: Callable[[], PredictionLog | None],
        routes: dict[str, str],
        model_tag: Callable[[], str | None],
        observe: Callable[[LogEntry], None] | None = None,
        record_key: bytes = RECORD_KEYS["classification"],
    ) -> None:
        self.app = app
        self.record_key = record_key
        self.log = log
        self.routes = routes
        self.model_tag = model_tag
        self.observe = observe  # also sees every entry (live metrics), log on or off

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = self.routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if kind is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        client = scope.get("client")
        CURRENT_REQUEST.set(CurrentRequest(request_id, scope.get("headers") or [],
                                           tuple(client) if client else None))  # fmt: skip
        started = datetime.now(UTC)
        t0 = time.perf_counter()
        request_chunks: list[bytes] = []
        response_chunks: list[bytes] = []
        status = 500

        async def receive_logged() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                request_chunks.append(message.get("body", b""))
            return message

        recorded = False

        def record() -> LogEntry | None:
            nonlocal recorded
            recorded = True
            request_body, response_body = b"".join(request_chunks), b"".join(response_chunks)
            # BentoML's request timeout keeps every request's context, and with it these
            # closures, for its whole length (30 s): not the bodies as well
            request_chunks.clear()
            response_chunks.clear()
            return self._record(
                request_id=request_id, started=started, kind=kind, status=status,
                latency_ms=(time.perf_counter() - t0) * 1000,
                request_body=request_body, response_body=response_body,
            )  # fmt: skip

        async def send_logged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (HEADER, request_id.encode())]
            elif message["type"] == "http.response.body":
                response_chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    # in the spool before the client has the last byte: an answered
                    # request is a logged one, even if the process is killed right after
                    entry = record()
                    try:
                        await send(message)
                    finally:
                        # the live metrics after the last byte, off the answer's latency
                        # (still before this task lets another request run)
                        self._observe(entry)
                    return
            await send(message)

        try:
            await self.app(scope, receive_logged, send_logged)
        finally:
            if not recorded:  # the app failed before answering
                self._observe(record())

    def _record(self, **fields: Any) -> LogEntry | None:
        """The request's entry, spooled when the log is on; None if nobody wants it."""
        log = self.log()
        if log is None and self.observe is None:
            return None
        try:
            entry = entry_for(**fields, model_tag=self.model_tag(), record_key=self.record_key)
            if log is not None:
                log.record(entry)
            return entry
        # logging must never fail a request that was already answered
        except Exception:
            logger.exception("could not log request %s", fields.get("request_id"))
            return None

    def _observe(self, entry: LogEntry | None) -> None:
        """Live metrics, after the answer has gone out (they are not on its latency)."""
        if entry is None or self.observe is None:
            return
        try:
            self.observe(entry)
        except Exception:
            logger.exception("could not observe request %s", entry.request_id)
