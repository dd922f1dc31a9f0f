"""The private BentoML APIs behind `nbship.compat.bentoml_private` are still what it relies
on: each test fails naming the installed BentoML version and the version checked.

The HTTP behaviour is checked on a tiny service run in process (BentoML's own ASGI app
driven through httpx's ASGI transport: no server, no port, no bento).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from typing import Any

import bentoml
import httpx
import pytest
from pydantic import ValidationError

from nbship.compat import bentoml_private
from nbship.compat.bentoml_private import (
    CHECKED_VERSION,
    REQUEST_ERROR_LOGGER,
    ROOT_FIELD,
    request_error_logger,
    root_input_base,
)

pytestmark = pytest.mark.unit


def broken(what: str) -> str:
    return (
        f"bentoml {bentoml.__version__} (nbship's compat layer was checked against"
        f" {CHECKED_VERSION}) no longer provides what {bentoml_private.__name__} relies on:"
        f" {what}. Adapt that module (and this test) to this version."
    )


def private(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        pytest.fail(broken(f"{module}.{name} ({type(exc).__name__}: {exc})"))


def test_the_root_model_is_where_it_was():
    root_model = private("_bentoml_sdk.io_models", "IORootModel")
    assert issubclass(root_model, bentoml.IODescriptor), broken(
        "IORootModel is no longer a bentoml.IODescriptor"
    )


def test_root_input_base_is_a_root_model_with_one_root_field():
    root_model = private("_bentoml_sdk.io_models", "IORootModel")
    base = root_input_base(list[int])
    assert issubclass(base, root_model) and issubclass(base, bentoml.IODescriptor), broken(
        "the base is not an IORootModel"
    )
    assert getattr(base, "__root_input__", None) is True, broken("__root_input__ is not set")
    assert list(base.model_fields) == [ROOT_FIELD], broken(
        f"the root model's fields are {list(base.model_fields)}, not [{ROOT_FIELD!r}]"
    )
    assert getattr(base.model_validate([1, 2]), ROOT_FIELD) == [1, 2], broken(
        "model_validate(obj) does not validate obj as the root"
    )
    assert getattr(base.model_validate_json(b"[3]"), ROOT_FIELD) == [3], broken(
        "model_validate_json(body) does not parse the body as the root"
    )
    with pytest.raises(ValidationError) as rejected:
        base.model_validate([1, "x"])
    locs = [e["loc"] for e in rejected.value.errors()]
    assert locs == [(ROOT_FIELD, 1)], broken(
        f"error locations are {locs}, not under {ROOT_FIELD!r}"
    )
    assert base.model_json_schema().get("root_input") is True, broken(
        "the JSON schema of a root input no longer says root_input"
    )


def test_the_request_error_logger_is_the_http_apps():
    assert private(REQUEST_ERROR_LOGGER, "logger") is request_error_logger(), broken(
        f"{REQUEST_ERROR_LOGGER} logs through another logger"
    )
    log_exception = private(REQUEST_ERROR_LOGGER, "log_exception")
    assert private("_bentoml_impl.server.app", "log_exception") is log_exception, broken(
        "the service app reports failed requests through another function"
    )


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_the_http_app_calls_a_root_input_api_with_the_value_and_logs_rejects(
    monkeypatch: pytest.MonkeyPatch,
):
    parsed: list[bytes] = []

    class Numbers(root_input_base(list[int])):  # type: ignore[misc]
        @classmethod
        def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Any:
            parsed.append(bytes(json_data, "utf-8") if isinstance(json_data, str) else json_data)
            return super().model_validate_json(json_data, **kwargs)

    @bentoml.service(name="nbship_compat_probe")
    class Probe:
        @bentoml.api(input_spec=Numbers, route="/sum")
        async def total(self, numbers: Any, /) -> int:
            return sum(numbers)

    logger = request_error_logger()
    monkeypatch.setattr(logger, "filters", [])  # what the nbship service installs, if any
    records = _Records()
    logger.addHandler(records)

    async def calls() -> tuple[httpx.Response, httpx.Response, dict[str, Any]]:
        app = Probe.to_asgi()
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
                ok = await client.post("/sum", json=[1, 2, 3])
                bad = await client.post("/sum", json=[1, "x"])
                spec = (await client.get("/docs.json")).json()
        return ok, bad, spec

    try:
        ok, bad, spec = asyncio.run(calls())
    except Exception as exc:  # the probe service itself no longer runs in process
        pytest.fail(broken(f"a root-input service fails: {type(exc).__name__}: {exc}"))
    finally:
        logger.removeHandler(records)

    assert ok.status_code == 200 and ok.json() == 6, broken(
        f"a root-input API is not called with the validated value ({ok.status_code} {ok.text})"
    )
    assert parsed == [b"[1,2,3]", b'[1,"x"]'], broken(
        f"the JSON serde does not hand the raw body to model_validate_json ({parsed})"
    )
    assert bad.status_code == 400, broken(f"a ValidationError answers {bad.status_code}")
    assert [e["loc"] for e in bad.json()["detail"]] == [[ROOT_FIELD, 1]], broken(
        f"a 400's detail is not the ValidationError's errors ({bad.text})"
    )
    assert "Numbers" not in spec["components"]["schemas"], broken(
        "the OpenAPI document lists the root model itself"
    )
    (rejected,) = [r for r in records.records if r.exc_info]
    assert rejected.levelno == logging.ERROR and rejected.args, broken(
        "a rejected request is not logged at ERROR with arguments"
    )
    assert rejected.args[0] == "/sum", broken(
        f"the log record's first argument is {rejected.args[0]!r}, not the path"
    )
    assert isinstance(rejected.exc_info[1], ValidationError), broken(
        "the log record does not carry the ValidationError"
    )
