"""A `LogEntry` and its spool line: encoded on the request path (raw bytes, no copy of a
large body), decoded into a table row by the delivery thread (`find`, not `split`)."""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nbship.common.timeutil import utc as _utc
from nbship.prediction_log.schema import _LIMITS

# entry kinds besides "predict": POST /feedback's labels, POST /admin/retrain's requests
FEEDBACK_KIND = "feedback"
RETRAIN_REQUEST_KIND = "retrain-request"
# a shadow version's answer to a logged request, never returned to the caller: its
# request_id is the answered request's with SHADOW_SUFFIX (request ids are unique)
SHADOW_KIND = "shadow"
SHADOW_SUFFIX = "-shadow"


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One request. `ts` is when it arrived (a naive datetime is taken as UTC);
    `inputs`/`outputs` are anything JSON can hold (numpy values and pydantic models are
    converted); `status` is "ok" or "error"; `n_records` counts the input records."""

    request_id: str
    ts: datetime
    kind: str  # "predict", "feedback", ...
    model_tag: str | None
    inputs: Any
    outputs: Any
    latency_ms: float
    status: str  # "ok" | "error"
    http_status: int
    error_class: str | None = None
    error_message: str | None = None
    n_records: int = 0


def new_request_id() -> str:
    """A fresh unique request id (32 hex digits)."""
    return uuid.uuid4().hex


# encoding (request path) ----------------------------------------------------------------


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):  # pydantic model
        return obj.model_dump(mode="json")
    if hasattr(obj, "tolist"):  # numpy array or scalar
        return obj.tolist()
    if hasattr(obj, "isoformat"):  # datetime, date, time
        return obj.isoformat()
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=str)
    return str(obj)


_LENIENT = json.JSONEncoder(separators=(",", ":"), default=_json_default)
_JSON = json.JSONEncoder(separators=(",", ":"), default=_json_default, allow_nan=False)
_STRICT = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


class RawJSON(bytes):
    """JSON text already made, e.g. a request body the service has just validated: stored
    as it is instead of being parsed and encoded again (1,000 records: ~10 ms saved).
    It must be valid JSON; tabs and newlines in it can only be whitespace, so they are
    blanked to keep the spool's one-line format."""


_BLANK = bytes.maketrans(b"\t\n\r", b"   ")
_WHITESPACE = frozenset(b" \t\n\r")
_SHORT = 4096  # shorter text is copied or split at once: cheaper than looking first


# `value` is a RawJSON, typed bytes: mypy's strict-equality check takes `b"\n" in value` for a
# substring test only on bytes itself, not on a subclass
def _raw_bytes(value: bytes) -> bytes | None:
    """The spool's text of raw JSON, tabs and newlines blanked: a long value without any
    (a compact body) is returned as it is, neither copied nor decoded. None when it must
    be parsed and encoded again (non-ASCII, blank: not JSON)."""
    if not value.isascii():
        return None
    if len(value) < _SHORT:
        blanked = value.translate(_BLANK)
        return blanked if blanked.strip() else None
    if value[-1] in _WHITESPACE and not value.strip():  # (strip copies: only if needed)
        return None
    if b"\n" in value or b"\t" in value or b"\r" in value:
        return value.translate(_BLANK)
    return value


def _json(value: Any) -> str:
    """Compact ASCII JSON; NaN and infinities (not JSON) become null."""
    if isinstance(value, RawJSON):
        raw = _raw_bytes(value)
        if raw is not None:
            return raw.decode("ascii")
        value = json.loads(value)  # non-ASCII text is re-encoded with escapes
    try:
        return _JSON.encode(value)
    except ValueError:  # a NaN somewhere (or a cycle, which raises again)
        return _STRICT.encode(_finite(json.loads(_LENIENT.encode(value))))


def _json_bytes(value: Any) -> bytes:
    """`_json` as bytes; raw JSON that needs no change is returned as it is (a 1,000-record
    body is neither copied nor decoded on the request path)."""
    if isinstance(value, RawJSON):
        raw = _raw_bytes(value)
        if raw is not None:
            return raw
    return _json(value).encode("ascii")


def _cut(value: Any, key: str) -> str:
    text = value if type(value) is str else str(value)
    if "\x00" in text:  # PostgreSQL text cannot hold NUL
        text = text.replace("\x00", "")
    limit = _LIMITS[key]
    return text if len(text) <= limit else text[:limit]


def _encode(e: LogEntry) -> list[bytes]:
    """One spool line, in parts for one `os.writev`: `<header JSON> TAB <inputs JSON> TAB
    <outputs JSON> LF`. JSON escapes every control character, so tabs and newlines only
    ever separate."""
    ts = e.ts
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    elif ts.utcoffset():
        ts = ts.astimezone(UTC)
    latency = float(e.latency_ms)
    head = {
        "request_id": _cut(e.request_id, "request_id"),
        "ts": ts.isoformat(),
        "kind": _cut(e.kind, "kind"),
        "model_tag": None if e.model_tag is None else _cut(e.model_tag, "model_tag"),
        "latency_ms": latency if math.isfinite(latency) else None,
        "status": _cut(e.status, "status"),
        "http_status": int(e.http_status),
        "error_class": None if e.error_class is None else _cut(e.error_class, "error_class"),
        "error_message": None
        if e.error_message is None
        else _cut(e.error_message, "error_message"),
        "n_records": int(e.n_records),
    }
    inputs, outputs = _json_bytes(e.inputs), _json_bytes(e.outputs)
    return [_STRICT.encode(head).encode("ascii"), b"\t", inputs, b"\t", outputs, b"\n"]


# decoding (background thread) -----------------------------------------------------------


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


def _raw(part: bytes | memoryview, validate: bool) -> str | None:
    """A JSON value as the text the writer made (passed to the database as is)."""
    text = str(part, "ascii")  # (from a view: the one copy, straight from what was read)
    if validate:
        json.loads(text)
    elif not text:
        raise ValueError("empty JSON value")
    return None if text == "null" else text


def _row(
    data: bytes, start: int = 0, end: int | None = None, validate: bool = False
) -> dict[str, Any]:
    """A table row from the spool line `data[start:end]` (inputs/outputs as JSON text);
    raises on anything malformed. `validate`: also parse inputs/outputs (a line a kill
    may have cut). A long line is neither copied nor split (`split` goes byte by byte,
    `find` is memchr): a 1,000-record line costs ~60 µs of the GIL rather than ~250."""
    if end is None:
        end = len(data)
    if start < end and data[start] == 0:  # zeros a crash may leave before a line (rare)
        start = end - len(data[start:end].lstrip(b"\x00"))
    inputs: bytes | memoryview
    outputs: bytes | memoryview
    if end - start < _SHORT:
        head, inputs, outputs = data[start:end].split(b"\t")
    else:
        first = data.find(b"\t", start, end)
        second = data.find(b"\t", first + 1, end) if first >= 0 else -1
        if second < 0 or data.find(b"\t", second + 1, end) >= 0:
            raise ValueError("not a spool line (header, inputs, outputs)")
        view = memoryview(data)
        head, inputs, outputs = data[start:first], view[first + 1 : second], view[second + 1 : end]
    d = json.loads(head)
    request_id = d["request_id"]
    if not isinstance(request_id, str):
        raise ValueError("request_id is not a string")
    latency = d.get("latency_ms")
    return {
        "request_id": request_id,
        "ts": _utc(datetime.fromisoformat(d["ts"])),
        "kind": str(d.get("kind") or "predict"),
        "model_tag": _opt(d.get("model_tag")),
        "inputs": _raw(inputs, validate),
        "outputs": _raw(outputs, validate),
        "latency_ms": None if latency is None else float(latency),
        "status": str(d.get("status") or "ok"),
        "http_status": int(d.get("http_status") or 0),
        "error_class": _opt(d.get("error_class")),
        "error_message": _opt(d.get("error_message")),
        "n_records": int(d.get("n_records") or 0),
    }
