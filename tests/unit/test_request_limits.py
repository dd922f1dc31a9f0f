"""The limits checked before a body is parsed (size 413, nesting 400, media type 415), the
request log recording what they refuse, and the OpenAPI document amended to the answers
the service gives: in process, no server. The served API is fuzzed by tests/e2e/test_fuzz.py."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from nbship.pipeline.contract import Contract, load_suite, record_model
from nbship.prediction_log import LogEntry
from nbship.serving import openapi, request_limits
from nbship.serving.request_limits import (
    MAX_REQUEST_ENV,
    RequestLimits,
    max_request_bytes,
    nesting_depth,
)
from nbship.serving.request_log import RequestLogMiddleware, entry_for
from nbship.serving.service import feedback_model
from tests.support import PROJECT

pytestmark = pytest.mark.unit

SUITE = PROJECT / "expectations" / "penguins.json"


def depth(value: Any) -> int:
    """The reference: nesting of a parsed JSON value."""
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


# strings with the characters that could fool a scan: brackets, quotes, backslashes
tricky = st.text(alphabet='[]{}"\\abc\n', max_size=8)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | tricky,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(tricky, children, max_size=4),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(json_values, st.booleans())
def test_nesting_depth_is_the_parsed_depth(value: Any, pretty: bool) -> None:
    text = json.dumps(value, indent=1 if pretty else None, ensure_ascii=False)
    assert nesting_depth(text.encode()) == depth(value)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"[" * 100_000 + b"]" * 100_000, 100_000),
        (b"[" * 100_000, 100_000),  # malformed: measured as far as it goes
        (b'["' + b"[" * 50, 1),  # an unclosed string runs to the end
        (b'{"a": "\\\\"}', 1),  # an escaped backslash, then the closing quote
        (b"", 0),
    ],
)
def test_nesting_depth_of_hostile_and_odd_bodies(body: bytes, expected: int) -> None:
    assert nesting_depth(body) == expected


# --- the middleware ------------------------------------------------------------------


class Recorder:
    """The app behind the limits: what it read of the body, and that it was called."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        self.bodies.append(b"".join(chunks))
        body = b'{"model":"m:1","predictions":[]}'
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def request(
    app: Any, chunks: list[bytes], headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[int, dict | None, int]:
    """POSTs `chunks` to /predict through `app`; the status, the JSON answer and how
    many chunks were read."""
    sent: list[dict] = []
    read = 0

    async def receive() -> dict:
        nonlocal read
        if read >= len(chunks):
            return {"type": "http.disconnect"}
        read += 1
        return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": headers or []}
    asyncio.run(app(scope, receive, send))
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return status, json.loads(body) if body else None, read


def test_a_body_within_the_limits_reaches_the_app_as_it_came() -> None:
    inner = Recorder()
    chunks = [b'[{"a": 1}, ', b'{"a": "[[["}]']
    status, _, _ = request(RequestLimits(inner, max_bytes=100, max_depth=2), chunks)
    assert status == 200 and inner.bodies == [b"".join(chunks)]


def test_a_declared_length_over_the_limit_is_413_before_reading() -> None:
    inner = Recorder()
    headers = [(b"content-length", b"26000000")]
    status, answer, read = request(RequestLimits(inner, max_bytes=1000), [b"x"], headers)
    assert status == 413 and read == 0 and not inner.bodies
    assert answer is not None
    (error,) = answer["detail"]
    assert error["loc"] == ["body"] and "limit of 1000 bytes" in error["msg"]
    assert MAX_REQUEST_ENV in error["msg"]


def test_a_streamed_body_is_refused_once_it_passes_the_limit_unread_after() -> None:
    inner = Recorder()
    chunks = [b"[" + b"1," * 300] * 10  # no Content-Length: chunked
    status, answer, read = request(RequestLimits(inner, max_bytes=1000), chunks)
    assert status == 413 and read == 2 and not inner.bodies  # 601 bytes, then 1,202
    assert answer is not None and "more than 1000 bytes" in answer["detail"][0]["msg"]


def test_deep_nesting_is_a_400_naming_the_rule() -> None:
    inner = Recorder()
    body = b"[" * 100_000 + b"]" * 100_000
    status, answer, _ = request(RequestLimits(inner, max_bytes=10**6, max_depth=32), [body])
    assert status == 400 and not inner.bodies
    assert answer is not None
    assert answer["detail"][0]["type"] == "json_too_deep" and "32" in answer["detail"][0]["msg"]
    # one level less deep than the limit passes
    ok = b"[" * 32 + b"]" * 32
    assert request(RequestLimits(inner, max_bytes=10**6, max_depth=32), [ok])[0] == 200


@pytest.mark.parametrize(
    "media_type",
    [b"application/vnd.bentoml+pickle", b"multipart/form-data; boundary=x",
     b"application/x-www-form-urlencoded"],
)  # fmt: skip
def test_forms_and_pickles_are_415(media_type: bytes) -> None:
    inner = Recorder()
    status, answer, _ = request(
        RequestLimits(inner, max_bytes=1000), [b"{}"], [(b"content-type", media_type)]
    )
    assert status == 415 and not inner.bodies
    assert answer is not None and "application/json" in answer["detail"][0]["msg"]


def test_a_refused_request_is_one_row_of_the_log() -> None:
    entries: list[LogEntry] = []

    class Log:
        def record(self, entry: LogEntry) -> bool:
            entries.append(entry)
            return True

    log = Log()
    app = RequestLogMiddleware(
        RequestLimits(Recorder(), max_bytes=10**6, max_depth=32),
        log=lambda: log,  # type: ignore[arg-type,return-value]
        routes={"/predict": "predict"},
        model_tag=lambda: "m:1",
    )
    status, _, _ = request(app, [b"[" * 100_000 + b"]" * 100_000])
    assert status == 400
    (entry,) = entries
    assert entry.http_status == 400 and entry.status == "error"
    assert "json_too_deep" in (entry.error_message or "")


def test_the_log_keeps_a_body_too_deep_for_the_parser() -> None:
    # the RecursionError once left an answered request without its row
    body = b"[" * 100_000 + b"]" * 100_000
    entry = entry_for(request_id="r", started=datetime.now(UTC),
                      latency_ms=1.0, kind="predict", status=400, request_body=body,
                      response_body=b'{"error": "x"}', model_tag="m:1")  # fmt: skip
    assert isinstance(entry.inputs, str) and entry.http_status == 400


# --- the setting -----------------------------------------------------------------------


def test_the_size_limit_comes_from_the_env_then_the_bento_then_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(MAX_REQUEST_ENV, raising=False)
    assert max_request_bytes({}) == request_limits.mb_to_bytes(
        request_limits.DEFAULT_MAX_REQUEST_MB
    )
    assert max_request_bytes({"max_request_bytes": 12345}) == 12345
    monkeypatch.setenv(MAX_REQUEST_ENV, "0.5")
    assert max_request_bytes({"max_request_bytes": 12345}) == 500_000
    for wrong in ("lots", "0", "-1"):
        monkeypatch.setenv(MAX_REQUEST_ENV, wrong)
        with pytest.raises(ValueError, match=MAX_REQUEST_ENV):
            max_request_bytes({})


def test_env_yaml_sets_the_limit_the_bento_carries(tmp_path: Path) -> None:
    from nbship.config import ConfigError
    from nbship.packaging.bento import max_request_bytes as packaged

    assert packaged(tmp_path) == 2_000_000  # no env.yaml: the setting's default
    (tmp_path / "env.yaml").write_text("bento: {name: x, max_request_mb: 0.25}\n")
    assert packaged(tmp_path) == 250_000
    (tmp_path / "env.yaml").write_text("bento: {name: x, max_request_mb: 0}\n")
    with pytest.raises(ConfigError, match="max_request_mb"):
        packaged(tmp_path)


# --- the documented answers ------------------------------------------------------------


def test_the_feedback_schema_accepts_what_the_model_accepts() -> None:
    contract = Contract.from_suite(load_suite(SUITE), ["bill_length_mm", "island"])
    item = feedback_model(record_model(contract, name="Record"), ["Adelie", "Gentoo"])
    schema = item.model_json_schema()
    record = {"bill_length_mm": 45.2, "island": "Biscoe"}
    bodies = [
        {"label": "Adelie"},  # neither: the schema-valid body that was refused
        {"label": "Adelie", "request_id": "r1"},
        {"label": "Adelie", "record": record},
        {"label": "Adelie", "request_id": "r1", "record": record},  # both
        {"label": "Adelie", "request_id": "r1", "record": None},
        {"label": "Adelie", "request_id": None, "record": record, "row": 2},
        {"label": "Adelie", "request_id": "r1", "row": False},  # lax pydantic: row 0 (CI fuzz)
        {"label": "Adelie", "request_id": "r1", "row": "2"},
    ]
    for body in bodies:
        try:
            item.model_validate(body)
            accepted = True
        except ValidationError:
            accepted = False
        valid = jsonschema.Draft202012Validator(schema).is_valid(body)
        assert valid == accepted, (body, valid, accepted)


BENTOML_DOCUMENT = {
    "openapi": "3.0.2",
    "paths": {
        path: {"post": {"requestBody": {"content": {}}, "responses": {
            "400": {"content": {"application/json": {"schema": {
                "$ref": "#/components/schemas/InvalidArgument"}}}}}}}
        for path in ("/predict", "/feedback")
    },
    "components": {"schemas": {"InvalidArgument": {"type": "object", "properties": {
        "error": {"type": "string"}, "detail": {"type": "string"}}}}},
}  # fmt: skip


def test_the_document_says_what_a_refusal_and_the_other_routes_answer() -> None:
    spec = openapi.amend(json.loads(json.dumps(BENTOML_DOCUMENT)), max_bytes=1000, max_depth=7)
    schemas = spec["components"]["schemas"]
    resolver = {"components": spec["components"]}
    refusal = {**schemas["InvalidArgument"], **resolver}
    # what BentoML's validation and the limits answer is valid; the old string is not
    missing = {"type": "missing", "loc": [0, "island"], "msg": "Field required", "url": "u"}
    answered = {"error": "1 validation error", "detail": [missing]}
    jsonschema.validate(answered, refusal)
    jsonschema.validate(json.loads(request_limits.error_body("e", "json_too_deep", "m")), refusal)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"error": "e", "detail": "a string"}, refusal)
    for path in ("/predict", "/feedback"):
        operation = spec["paths"][path]["post"]
        assert {"400", "413", "415"} <= set(operation["responses"])
        assert "1000 bytes" in operation["responses"]["413"]["description"]
        assert operation["requestBody"]["required"] is True
    assert "503" in spec["paths"]["/feedback"]["post"]["responses"]
    assert {"/info", "/admin/reload", "/admin/retrain"} <= set(spec["paths"])
    assert "401" in spec["paths"]["/admin/reload"]["post"]["responses"]
