"""Limits checked on a request body before anything parses it: its size (413) and how
deeply its JSON nests (400), as one ASGI middleware in front of the API routes.

Without it BentoML reads and parses a body of any size in full (a 26 MB body of 200,000
records was parsed before the batch limit refused it), and a body of 100,000 nested
arrays reached `json.loads`, whose RecursionError was answered 500. The answers use the
shape of BentoML's own 400 (`{"error": str, "detail": [{"type", "loc", "msg"}]}`), so a
client reads every refusal the same way, and the request log around this middleware
records them like any other answer.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import numpy as np
from pydantic_core import to_json

from nbship.config import BentoSettings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_REQUEST_ENV = "NBSHIP_MAX_REQUEST_MB"  # overrides serving.json's max_request_bytes
# env.yaml's default (the schema's, defined once), for a bento built before the setting
DEFAULT_MAX_REQUEST_MB: float = BentoSettings.model_fields["max_request_mb"].default
# records are flat objects; a feedback item holds one: {"items": [{"record": {...}}]} is 4
MAX_JSON_DEPTH = 32
# what BentoML reads as other than JSON: its pickle format (refused on a public server
# with a list, not its error object) and forms (a JSON body sent as one answered 500):
# refused here, in the documented shape; any other media type is read as JSON
REFUSED_MEDIA_TYPES = frozenset(
    {
        b"application/vnd.bentoml+pickle",
        b"multipart/form-data",
        b"application/x-www-form-urlencoded",
    }
)
SETTING = f"bento.max_request_mb in env.yaml, or {MAX_REQUEST_ENV} where it is served"

# every byte but the ones the depth scan needs: quotes (strings), brackets (nesting)
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_QUOTE = ord('"')
# a bracket as a step of the depth, as int8: +1 opens, -1 (255) closes
_STEPS = bytes(1 if b in b"[{" else 255 if b in b"]}" else 0 for b in range(256))


def mb_to_bytes(megabytes: float) -> int:
    return int(megabytes * 1_000_000)


def max_request_bytes(config: dict[str, Any]) -> int:
    """The size limit of a bento: $NBSHIP_MAX_REQUEST_MB, else serving.json's
    `max_request_bytes` (from env.yaml's bento.max_request_mb), else the default (a bento
    built before the setting existed). ValueError on a value that is not a positive
    number: a server must not start with a limit it does not have."""
    if raw := os.environ.get(MAX_REQUEST_ENV):
        try:
            megabytes = float(raw)
        except ValueError:
            raise ValueError(f"{MAX_REQUEST_ENV}={raw!r} is not a number of megabytes") from None
        if not megabytes > 0:
            raise ValueError(f"{MAX_REQUEST_ENV}={raw!r} must be more than 0")
        return mb_to_bytes(megabytes)
    configured = config.get("max_request_bytes")
    return int(configured) if configured else mb_to_bytes(DEFAULT_MAX_REQUEST_MB)


def nesting_depth(body: bytes) -> int:
    """How deeply the arrays and objects of a JSON text nest (brackets inside strings do
    not count); a malformed text is measured as far as it goes.

    No parser and no Python loop over the body: a few passes in C and numpy, so a
    1,000-record batch costs ~0.3 ms and a 2 MB hostile body some 20 ms."""
    if b"\\" in body:
        # escapes first, left to right as JSON reads them: `\\` is one character, then
        # `\"` is a quote inside a string; any other backslash escapes a letter
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = body.translate(None, _NOT_STRUCTURE)  # quotes and brackets only
    if not structure:
        return 0
    codes = np.frombuffer(structure, dtype=np.uint8)
    # after an odd number of quotes a byte is inside a string (an unclosed one runs on)
    outside = (np.cumsum(codes == _QUOTE, dtype=np.int32) & 1) == 0
    steps = np.frombuffer(structure.translate(_STEPS), dtype=np.int8) * outside
    return int(np.cumsum(steps, dtype=np.int32).max())


def error_body(error: str, kind: str, message: str) -> bytes:
    """A refusal in the shape of BentoML's validation answer (one error, on the body)."""
    return to_json({"error": error, "detail": [{"type": kind, "loc": ["body"], "msg": message}]})


class RequestLimits:
    """Refuses a POST body over `max_bytes` (413: at once when Content-Length says so,
    else as soon as the bytes read pass it, without reading the rest), nested deeper
    than `max_depth` (400) or of a refused media type (415); other requests reach the
    app with the body as it came."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        refused = self._refuse_headers(dict(scope.get("headers", ())))
        if refused is None:
            body, refused = await self._read(receive)
            if refused is None:
                if body is None:  # the client left: nothing to answer
                    return
                refused = self._refuse_body(body)
                if refused is None:
                    await self.app(scope, _replay(body, receive), send)
                    return
        await _answer(send, *refused)

    def _refuse_headers(self, headers: dict[bytes, bytes]) -> tuple[int, bytes] | None:
        media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if media_type in REFUSED_MEDIA_TYPES:
            message = f"the service takes application/json, not {media_type.decode('latin-1')}"
            return 415, error_body("unsupported media type", "media_type", message)
        declared = _content_length(headers)
        if declared is not None and declared > self.max_bytes:
            return self._too_large(f"{declared} bytes")
        return None

    async def _read(self, receive: Receive) -> tuple[bytes | None, tuple[int, bytes] | None]:
        """The whole body; or what to answer once it passed the limit (the rest is not
        read); or neither when the client disconnected."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None, None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None, self._too_large(f"more than {self.max_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None

    def _refuse_body(self, body: bytes) -> tuple[int, bytes] | None:
        if nesting_depth(body) > self.max_depth:
            message = (
                f"JSON nested more than {self.max_depth} levels deep (arrays and objects):"
                f" the limit is {self.max_depth}"
            )
            return 400, error_body("request nested too deeply", "json_too_deep", message)
        return None

    def _too_large(self, size: str) -> tuple[int, bytes]:
        message = (
            f"the request body ({size}) is over the limit of {self.max_bytes} bytes"
            f" ({self.max_bytes / 1_000_000:g} MB; {SETTING})"
        )
        return 413, error_body("request body too large", "body_too_large", message)


def _content_length(headers: dict[bytes, bytes]) -> int | None:
    try:
        return int(headers[b"content-length"])
    except (KeyError, ValueError):  # the HTTP server refuses a malformed one before this
        return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body, read already, as one message; then the client's own messages
    (a disconnect) as they come."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    # a refusal before the body was read: the connection is not reused for what follows
    if status == 413:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
