"""The OpenAPI document (/docs.json) as the service really answers: BentoML documents
its own error bodies with a string `detail`, where a refused request's is a list of
{type, loc, msg}; it knows nothing of the size limit's 413, of the routes of the info app
(/info, /admin/*) or of the 503 a /feedback without a log answers.

`amend` rewrites BentoML's document (a pure function of it); `OpenAPIDocument` is the
ASGI middleware that serves the amended one in place of BentoML's, built once. What the
service answers is checked against this document by tests/e2e/test_fuzz.py.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DOCUMENT_PATH = "/docs.json"
API_ROUTES = ("/predict", "/feedback")  # BentoML's API routes: bodies it validates
BEARER = "adminToken"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _detail(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {
        "type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}},
    }}}}  # fmt: skip


# one refused request: BentoML's validation answer, and the size and depth limits' too
REFUSAL_SCHEMAS: dict[str, Any] = {
    "ErrorDetail": {
        "type": "object",
        "required": ["type", "loc", "msg"],
        "properties": {
            "type": {"type": "string", "description": "the rule broken, e.g. missing"},
            "loc": {
                "type": "array",
                "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "description": "where: a field, or a row's index then the field; body",
            },
            "msg": {"type": "string"},
            "url": {"type": "string"},
        },
    },
    # BentoML's name, referenced by the 400 of its every route: replaced, not added
    "InvalidArgument": {
        "type": "object",
        "title": "InvalidArgument",
        "required": ["error", "detail"],
        "properties": {
            "error": {"type": "string", "title": "Message"},
            "detail": {"type": "array", "items": _ref("ErrorDetail")},
        },
        "description": "A refused request: each error names its field and rule",
    },
    "ServiceError": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
}


def _info_routes() -> dict[str, Any]:
    unauthorized = _detail("no valid bearer token (or NBSHIP_ADMIN_TOKEN unset on the server)")
    not_loaded = _detail("the model is not loaded yet")
    admin = {"security": [{BEARER: []}], "tags": ["Admin"]}
    return {
        "/info": {"get": {
            "summary": "The model served now, why, and how",
            "tags": ["Service APIs"],
            "responses": {"200": _json("the model served", {
                "type": "object",
                "required": ["model_tag", "bento_name", "bento_model_tag", "task", "source",
                             "reason", "inference", "batching", "metadata"],
                "properties": {
                    "model_tag": {"type": "string"}, "bento_name": {"type": "string"},
                    "bento_model_tag": {"type": "string"},
                    "task": {"type": "string", "enum": ["classification", "regression"]},
                    "source": {"type": "string", "enum": ["registry", "bento"]},
                    "reason": {"type": "string"}, "inference": {"type": "string"},
                    "batching": {"type": "object"}, "metadata": {"type": "object"},
                    "prediction_log": {
                        "type": "object", "required": ["state"],
                        "properties": {"state": {"type": "string"}},
                        "description": "state: on, or off and why; then the log's counters",
                    },
                    "champion_check": {"anyOf": [{"type": "object"}, {"type": "null"}],
                                       "description": "the last registry check: when, why"},
                },
            }), "503": not_loaded},
        }},
        "/admin/reload": {"post": {
            **admin,
            "summary": "Ask the registry for the champion now; switch to it if it changed",
            "responses": {"200": _json("what the check found", {
                "type": "object", "required": ["model_tag", "changed"],
                "properties": {"model_tag": {"type": "string"}, "changed": {"type": "boolean"},
                               "reason": {"type": "string"}, "previous": {"type": "string"}},
            }), "401": unauthorized, "503": not_loaded},
        }},
        "/admin/retrain": {"post": {
            **admin,
            "summary": "Record a retrain request for `nbship retrain watch`",
            "responses": {"202": _json("recorded", {
                "type": "object", "required": ["requested", "ts"],
                "properties": {"requested": {"type": "string"}, "ts": {"type": "string"}},
            }), "401": unauthorized,
                "503": _detail("the log is unavailable: nothing was recorded")},
        }},
    }  # fmt: skip


def amend(spec: dict[str, Any], *, max_bytes: int, max_depth: int) -> dict[str, Any]:
    """BentoML's OpenAPI document `spec`, changed in place to what the service answers."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(REFUSAL_SCHEMAS)
    refusal = _ref("InvalidArgument")
    limits = {
        "400": _json(f"a refused body: a rule of the schema, malformed JSON, or JSON nested"
                     f" more than {max_depth} levels deep", refusal),
        "413": _json(f"a body over {max_bytes} bytes, refused before it is read in full",
                     refusal),
        "415": _json("a form or BentoML's pickle: the service takes JSON", refusal),
    }  # fmt: skip
    for path in API_ROUTES:
        operation = spec.get("paths", {}).get(path, {}).get("post")
        if operation is not None:
            operation["responses"].update(limits)
            # a missing body is refused (400): OpenAPI's default is an optional one
            operation.get("requestBody", {})["required"] = True
    feedback = spec.get("paths", {}).get("/feedback", {}).get("post")
    if feedback is not None:
        feedback["responses"]["200"] = _json("kept in the prediction log's spool", {
            "type": "object", "required": ["accepted", "feedback_id"],
            "properties": {"accepted": {"type": "integer"}, "feedback_id": {"type": "string"}},
        })  # fmt: skip
        feedback["responses"]["503"] = _json(
            "the prediction log is off or failing: nothing was kept", _ref("ServiceError")
        )
    spec.setdefault("paths", {}).update(_info_routes())
    spec["components"].setdefault("securitySchemes", {})[BEARER] = {
        "type": "http",
        "scheme": "bearer",
        "description": "the server's NBSHIP_ADMIN_TOKEN",
    }
    return spec


class OpenAPIDocument:
    """Serves `amend(BentoML's document)` at /docs.json: BentoML's answer is read the
    first time, amended, and kept (the document does not change while serving)."""

    def __init__(self, app: ASGIApp, *, amend: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.app = app
        self.amend = amend
        self.document: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != DOCUMENT_PATH:
            await self.app(scope, receive, send)
            return
        if self.document is None:
            status, body = await _read_answer(self.app, scope, receive)
            if status != 200:  # BentoML's own failure, passed on as it was
                await _send_json(send, status, body)
                return
            self.document = json.dumps(self.amend(json.loads(body))).encode()
        await _send_json(send, 200, self.document)


async def _read_answer(app: ASGIApp, scope: Scope, receive: Receive) -> tuple[int, bytes]:
    status = 500
    chunks: list[bytes] = []

    async def keep(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, keep)
    return status, b"".join(chunks)


async def _send_json(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
