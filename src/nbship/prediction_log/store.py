"""The prediction log: every request the service answers, stored in a SQL database.

One `LogEntry` per request (request id, time, model tag, inputs, outputs, latency, and
for failures the error class and message) goes to the table `prediction_log` of a SQLite
file (the default) or of any PostgreSQL database given by URL.

Writing (`PredictionLog`)
    `record(entry)` runs on the request path. It encodes the entry as one line (JSON
    header, inputs, outputs) and appends it with a single unbuffered `os.writev` to a
    segment file of a local spool (no fsync per record), then returns: about 10 µs,
    never an exception (a 1,000-record request's raw JSON, ~200 KB, is written as it
    came, neither copied nor decoded: ~0.1 ms). A background thread reads the spool
    about once a second and inserts what it finds in one transaction (multi-row
    insert-or-ignore on the unique `request_id`, so delivering a line twice stores it
    once), then deletes the segments whose rows are all committed.

Guarantees
    * An entry `record` accepted (it returned True) is in the page cache of a spool
      file, which a killed process (kill -9, OOM kill) cannot lose: the next process
      that opens a `PredictionLog` on the same spool folder adopts the dead process's
      spool and delivers it.
    * A database that is down, locked or refusing connections never fails or slows a
      prediction: entries wait in the spool and are retried with backoff (up to
      `max_backoff` seconds apart), each stored exactly once.
    * The only loss while the machine runs: when the spool holds `max_spool_bytes`, new
      entries are dropped (`record` returns False, the `dropped` counter counts them, a
      warning is logged at most once a minute). Entries the database itself refuses (a
      value it cannot store) are set aside in `<spool>/rejected.jsonl`, counted in
      `rejected`, and logged.
    * A crash of the machine itself (kernel, power) can lose the last seconds: nothing
      is fsynced per record, the spool is fsynced only while the database fails (at
      most once a second), and SQLite commits with `synchronous=NORMAL` (WAL: never
      corrupt, the newest transactions may roll back). `sqlite_synchronous="FULL"`
      syncs every commit, at a measured cost on the request path (an fsync in the
      thread makes the spool appends wait on ext4's journal; see the benchmark).

Spool layout: `<spool_dir>/<pid>-<token>/seg-00000001.jsonl, ...` with a `.lock` file a
living process holds an exclusive `flock` on. A starting process (and every running one,
every 30 s) adopts the folders whose lock is free, so no two processes deliver the same
segments. Start the log in the process that serves (after any fork), on a local disk;
the spool holds request data (files are 0600).

Reading: `read_log` (a pandas DataFrame), `count`, `export_log` (CSV or Parquet, written
atomically) and `purge` (retention; `PredictionLog(retention=...)` also purges hourly).

This module is copied into the bento: it imports only the standard library and
SQLAlchemy (pandas and pyarrow lazily, for reading and export).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    func,
    inspect,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

from nbship.common.sqlite import database_file, sqlite_engine, writer

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

TABLE = "prediction_log"
LOG_URL_ENV = "NBSHIP_LOG_URL"  # where the servers log ("off": nowhere); overrides config
# entry kinds besides "predict": POST /feedback's labels, POST /admin/retrain's requests
FEEDBACK_KIND = "feedback"
RETRAIN_REQUEST_KIND = "retrain-request"
DEFAULT_FILE = "prediction_log.db"
LOCK_NAME = ".lock"
REJECTED_FILE = "rejected.jsonl"
PG_CONNECT_TIMEOUT = 10
ADOPT_SECONDS = 30.0  # how often a running log looks for spools of dead processes
PURGE_SECONDS = 3600.0  # how often the retention setting is applied
WARN_SECONDS = 60.0  # the same warning at most this often
SYNC_SECONDS = 1.0  # spool fsync at most this often (only while the database fails)
READ_CHUNK = 4 << 20
STALE_NEW_DIR_SECONDS = 3600.0
# longest strings kept (a longer one is cut: a database refusing it would block the log)
_LIMITS = {
    "request_id": 255,
    "kind": 32,
    "model_tag": 255,
    "status": 32,
    "error_class": 255,
    "error_message": 8192,
}
COLUMNS = (
    "request_id",
    "ts",
    "kind",
    "model_tag",
    "inputs",
    "outputs",
    "latency_ms",
    "status",
    "http_status",
    "error_class",
    "error_message",
    "n_records",
)

metadata = MetaData()
prediction_log = Table(
    TABLE,
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("request_id", String(_LIMITS["request_id"]), nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("kind", String(_LIMITS["kind"]), nullable=False),
    Column("model_tag", String(_LIMITS["model_tag"])),
    Column("inputs", JSON(none_as_null=True)),
    Column("outputs", JSON(none_as_null=True)),
    Column("latency_ms", Float),
    Column("status", String(_LIMITS["status"]), nullable=False),
    Column("http_status", Integer, nullable=False),
    Column("error_class", String(_LIMITS["error_class"])),
    Column("error_message", Text),
    Column("n_records", Integer, nullable=False),
    UniqueConstraint("request_id", name="uq_prediction_log_request_id"),
    Index("ix_prediction_log_ts", "ts"),
    Index("ix_prediction_log_model_tag", "model_tag"),
)


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


def url_for_sqlite(path: str | os.PathLike[str]) -> str:
    """The SQLAlchemy URL of a SQLite file (made absolute)."""
    return f"sqlite:///{Path(path).expanduser().resolve()}"


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


def _raw_bytes(value: RawJSON) -> bytes | None:
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


def _utc(value: datetime) -> datetime:
    # SQLite keeps no offset: every stored time is UTC
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


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


def _sqlite_values(row: dict[str, Any]) -> tuple[Any, ...]:
    """DBAPI values for SQLite, in COLUMNS order; the time in SQLAlchemy's format."""
    t = row["ts"]
    stamp = (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d} "
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}.{t.microsecond:06d}"
    )
    return (
        row["request_id"],
        stamp,
        row["kind"],
        row["model_tag"],
        row["inputs"],
        row["outputs"],
        row["latency_ms"],
        row["status"],
        row["http_status"],
        row["error_class"],
        row["error_message"],
        row["n_records"],
    )


def _postgresql_values(row: dict[str, Any]) -> tuple[Any, ...]:
    """DBAPI values for PostgreSQL, in COLUMNS order (the SQL casts the JSON text)."""
    return tuple(row[name] for name in COLUMNS)


def _loads(text: str) -> Any:
    """JSON from the database; text that is not JSON is returned as it is."""
    try:
        return json.loads(text)
    except ValueError:
        return text


# engines ----------------------------------------------------------------------------------


def _backend(url: str) -> str:
    return make_url(url).get_backend_name()


def _engine(url: str, synchronous: str = "FULL") -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        connect_args: dict[str, Any] = {}
        if parsed.get_driver_name() in ("psycopg", "psycopg2") and (
            "connect_timeout" not in parsed.query
        ):
            connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT
        return create_engine(
            url,
            pool_pre_ping=True,
            json_serializer=_json,
            json_deserializer=_loads,
            connect_args=connect_args,
        )
    return sqlite_engine(
        url, synchronous=synchronous, json_serializer=_json, json_deserializer=_loads
    )


def _create_table(engine: Engine) -> None:
    # through the writer (BEGIN IMMEDIATE on SQLite); a process creating it at the same
    # moment makes the first try fail (locked, duplicate type): the second sees the table
    try:
        metadata.create_all(writer(engine))
    except DBAPIError:
        metadata.create_all(writer(engine))


class _Inserter:
    """Insert-or-ignore on `request_id`, many rows per statement, written as driver SQL:
    no per-row SQLAlchemy work, and the driver lets go of the GIL a few times per
    statement rather than per row (as executemany does), so the request thread is made
    to hand the GIL over far less often."""

    def __init__(self, backend: str) -> None:
        self.rows = 1000  # per statement: 12,000 parameters
        if backend == "sqlite":
            import sqlite3

            if sqlite3.sqlite_version_info < (3, 32):  # at most 999 parameters before
                self.rows = 999 // len(COLUMNS)
            one = "(" + ", ".join("?" * len(COLUMNS)) + ")"
            self.values: Callable[[dict[str, Any]], tuple[Any, ...]] = _sqlite_values
        elif backend == "postgresql":
            casts = {"ts": "::timestamptz", "inputs": "::json", "outputs": "::json"}
            one = "(" + ", ".join(f"%s{casts.get(name, '')}" for name in COLUMNS) + ")"
            self.values = _postgresql_values
        else:
            raise ValueError(f"the prediction log needs SQLite or PostgreSQL, not {backend!r}")
        self._one = one
        self._head = f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES "
        self._tail = " ON CONFLICT (request_id) DO NOTHING"
        self._full = self._head + ", ".join([one] * self.rows) + self._tail

    def sql(self, n: int) -> str:
        if n == self.rows:
            return self._full
        return self._head + ", ".join([self._one] * n) + self._tail

    def __call__(self, conn: Any, rows: list[dict[str, Any]]) -> None:
        for start in range(0, len(rows), self.rows):
            chunk = rows[start : start + self.rows]
            params = [value for row in chunk for value in self.values(row)]
            conn.exec_driver_sql(self.sql(len(chunk)), tuple(params))


def _brief(exc: BaseException) -> str:
    """One line about an error, without the SQL and parameters SQLAlchemy adds."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


def _refused(exc: BaseException) -> bool:
    """The database refused these values (not: it is unreachable, locked or missing)."""
    if isinstance(exc, DataError | IntegrityError):
        return True
    return isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)


# the spool ----------------------------------------------------------------------------------


class _Segment:
    """One spool file. `size` and `closed` change under the log's lock (the writer's
    side); `done` (bytes delivered) and `fd` (for reading) belong to the thread."""

    __slots__ = ("closed", "done", "fd", "owner", "path", "size", "synced")

    def __init__(self, path: Path, size: int, closed: bool, owner: _Adopted | None) -> None:
        self.path = path
        self.size = size
        self.closed = closed
        self.owner = owner  # None: this process's own segment
        self.done = 0
        self.fd: int | None = None
        self.synced = False


class _Adopted:
    """A dead process's spool folder this log holds the lock of and delivers."""

    __slots__ = ("lock_fd", "path", "segments")

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self.lock_fd = lock_fd
        self.segments = 0


def _segment_name(seq: int) -> str:
    return f"seg-{seq:08d}.jsonl"


def _release(path: Path, lock_fd: int, remove: bool) -> None:
    """Unlocks a spool folder; `remove`: it is empty of segments, delete it first."""
    if remove:
        with contextlib.suppress(OSError):
            (path / LOCK_NAME).unlink()
    os.close(lock_fd)
    if remove:
        with contextlib.suppress(OSError):
            path.rmdir()


class PredictionLog:
    """Records `LogEntry`s on the request path; a background thread stores them.

        log = PredictionLog(url_for_sqlite("prediction_log.db"), Path("spool")).start()
        log.record(entry)      # cheap, never raises; False: the entry was dropped
        log.close()            # delivers what it can, leaves the rest in the spool

    `batch_size` rows go in one transaction at most; the thread wakes every
    `flush_interval` seconds or when `batch_size` entries are waiting (few, large
    transactions: each hand-over of the GIL between the thread and the request loop
    costs the request loop time, see the benchmark). `max_spool_bytes` bounds the spool
    (this process's and what it adopted); `segment_bytes` is the size at which a spool
    file is closed and a new one begun. `max_backoff`: longest wait between retries
    while the database fails. `retention` (optional) deletes rows older than that, at
    start and hourly. `sqlite_synchronous`: see the module's guarantees.
    """

    def __init__(
        self,
        url: str,
        spool_dir: str | os.PathLike[str],
        *,
        batch_size: int = 5000,
        flush_interval: float = 1.0,
        max_spool_bytes: int = 256 << 20,
        segment_bytes: int = 4 << 20,
        max_backoff: float = 30.0,
        retention: timedelta | None = None,
        sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ) -> None:
        if _backend(url) not in ("sqlite", "postgresql"):
            shown = make_url(url).render_as_string(hide_password=True)
            raise ValueError(f"the prediction log needs SQLite or PostgreSQL, not {shown!r}")
        if batch_size < 1 or flush_interval <= 0 or max_spool_bytes < 1 or segment_bytes < 1:
            raise ValueError("batch_size, flush_interval and the byte sizes must be positive")
        if retention is not None and retention <= timedelta(0):
            raise ValueError("retention must be positive")
        if sqlite_synchronous not in ("NORMAL", "FULL"):
            raise ValueError("sqlite_synchronous is NORMAL or FULL")
        self._synchronous = sqlite_synchronous
        self.url = url
        self.spool_dir = Path(spool_dir)
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_spool_bytes = max_spool_bytes
        self._segment_bytes = segment_bytes
        self._max_backoff = max_backoff
        self._retention = retention
        self._idle_seconds = max(1.0, 4 * flush_interval)

        # writer side, under _lock
        self._lock = threading.Lock()
        self._accepting = False
        self._dir: Path | None = None
        self._lock_fd: int | None = None
        self._seq = 0
        self._fd: int | None = None
        self._cur: _Segment | None = None
        self._own: dict[int, _Segment] = {}
        self._spool_bytes = 0  # own segment files not deleted yet
        self._foreign_bytes = 0  # adopted segment files not deleted yet
        self._recorded = 0
        self._settled = 0  # own complete lines delivered, rejected or unreadable
        self._dropped = 0
        self._record_errors = 0
        self._last_write = 0.0
        self._wake_sent = False

        # the thread's side
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()  # more to deliver, or flush/close
        self._kick = threading.Event()  # cut a backoff short (flush/close)
        self._stop = threading.Event()
        self._scanned = threading.Event()  # the first look for dead spools is done
        self._engine: Engine | None = None
        self._inserter: _Inserter | None = None
        self._schema = False
        self._foreign: list[_Segment] = []
        self._adopted: dict[Path, _Adopted] = {}
        self._warned: dict[str, float] = {}
        self._reported_drops = 0
        self._last_sync = 0.0
        self._written = 0
        self._replayed = 0
        self._db_errors = 0
        self._rejected = 0
        self._corrupt = 0
        self._batches = 0
        self._purged = 0

    def __repr__(self) -> str:
        url = make_url(self.url).render_as_string(hide_password=True)
        return f"PredictionLog({url!r}, {str(self.spool_dir)!r})"

    def __enter__(self) -> PredictionLog:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # lifecycle ----------------------------------------------------------------------------

    def start(self) -> PredictionLog:
        """Claims a spool folder of its own and starts the delivery thread (which first
        adopts spools left by dead processes). Raises only if the spool folder cannot be
        made; the database is not touched here."""
        if self._thread is not None:
            raise RuntimeError("this prediction log was already started")
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        # made under a dot name and renamed once locked: others adopt only locked-able
        # folders without a dot, so they never see one between mkdir and flock
        fresh = self.spool_dir / f".new-{token}"
        fresh.mkdir()
        lock_fd = os.open(fresh / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        own = self.spool_dir / token
        os.rename(fresh, own)
        with self._lock:
            self._dir, self._lock_fd = own, lock_fd
            self._accepting = True
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Stops taking entries, makes one last delivery attempt (up to `timeout`
        seconds) and releases the spool: what is still in it is delivered by the next
        process that starts a log on the same spool folder."""
        with self._lock:
            self._accepting = False
            self._close_current()
        if self._thread is None:
            return
        self._stop.set()
        self._kick.set()
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning(
                "prediction log: still delivering after %.0f s; the rest stays in %s",
                timeout,
                self.spool_dir,
            )

    def flush(self, timeout: float = 30.0) -> bool:
        """Waits until everything recorded before the call (and the spools of dead
        processes found at start) is in the database; False if that did not happen
        within `timeout` seconds (the database is down, say)."""
        deadline = time.monotonic() + timeout
        thread = self._thread
        if thread is None:
            return True
        self._kick.set()
        self._wake.set()
        while not self._scanned.is_set():
            if not thread.is_alive() or time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        with self._lock:
            targets = [(s, s.size) for s in self._own.values()]
        targets += [(s, s.size) for s in list(self._foreign)]
        while any(segment.done < size for segment, size in targets):
            if not thread.is_alive() or time.monotonic() >= deadline:
                return False
            self._wake.set()
            time.sleep(0.005)
        return True

    @property
    def stats(self) -> dict[str, int]:
        """Counters: `recorded` (accepted by `record`), `written` (delivered to the
        database, own and adopted), `replayed` (of those, from dead processes' spools),
        `spooled_pending` (accepted, not delivered yet), `spool_bytes`, `dropped` (spool
        full or log closed), `record_errors` (an entry that could not be encoded or
        written), `db_errors` (failed delivery attempts), `rejected` (rows the database
        refused), `corrupt` (unreadable spool lines), `batches` (transactions), `purged`."""
        with self._lock:
            return {
                "recorded": self._recorded,
                "written": self._written,
                "replayed": self._replayed,
                "spooled_pending": self._recorded - self._settled,
                "spool_bytes": self._spool_bytes + self._foreign_bytes,
                "dropped": self._dropped,
                "record_errors": self._record_errors,
                "db_errors": self._db_errors,
                "rejected": self._rejected,
                "corrupt": self._corrupt,
                "batches": self._batches,
                "purged": self._purged,
            }

    # the request path -----------------------------------------------------------------------

    def record(self, entry: LogEntry) -> bool:
        """Spools one entry for the database. True: it is acknowledged (in a spool file,
        delivered even if this process is killed now); False: it was dropped (spool
        full, log not running) or could not be encoded, and counted. Never raises."""
        try:
            parts = _encode(entry)
            length = sum(map(len, parts))
            with self._lock:
                if not self._accepting or (
                    self._spool_bytes + self._foreign_bytes + length > self._max_spool_bytes
                ):
                    self._dropped += 1
                    return False
                if self._fd is None:
                    self._open_segment()
                cur = self._cur
                try:  # one system call, like a write of the joined line (no copy of it)
                    written = os.writev(self._fd, parts)  # type: ignore[arg-type]
                except OSError:
                    written = -1
                if written != length:  # disk full or I/O error
                    self._record_errors += 1
                    if written > 0:  # a partial line ends this segment: the next is clean
                        cur.size += written  # type: ignore[union-attr]
                        self._spool_bytes += written
                    self._close_current()
                    return False
                cur.size += written  # type: ignore[union-attr]
                self._spool_bytes += written
                self._recorded += 1
                self._last_write = time.monotonic()
                if cur.size >= self._segment_bytes:  # type: ignore[union-attr]
                    self._close_current()
                wake = not self._wake_sent and self._recorded - self._settled >= self._batch_size
                if wake:
                    self._wake_sent = True
            if wake:
                self._wake.set()
            return True
        except Exception:  # an entry JSON cannot encode, no spool folder, ...
            with self._lock:
                self._record_errors += 1
            return False

    def _open_segment(self) -> None:  # under _lock
        assert self._dir is not None
        self._seq += 1
        path = self._dir / _segment_name(self._seq)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        self._fd = os.open(path, flags, 0o600)  # requests may hold personal data
        self._cur = _Segment(path, 0, closed=False, owner=None)
        self._own[self._seq] = self._cur

    def _close_current(self) -> None:  # under _lock
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        if self._cur is not None:
            self._cur.closed = True
        self._fd, self._cur = None, None

    # the delivery thread ----------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        next_scan = next_purge = 0.0
        while True:
            stopping = self._stop.is_set()
            if not stopping and time.monotonic() >= next_scan:
                try:
                    self._scan()
                except Exception as exc:
                    self._warn("scan", "prediction log: looking for spools failed: %s", exc)
                self._scanned.set()
                next_scan = time.monotonic() + ADOPT_SECONDS
            try:
                self._connect()
                self._deliver()
                if self._retention is not None and time.monotonic() >= next_purge:
                    cutoff = datetime.now(UTC) - self._retention
                    self._purged += _purge(self._connect(), cutoff)
                    next_purge = time.monotonic() + PURGE_SECONDS
                failures = 0
            except Exception as exc:
                failures += 1
                self._db_errors += 1
                self._schema = False  # the table may be gone: check again next time
                self._warn("db", "prediction log: cannot deliver, spooling (%s)", _brief(exc))
                self._sync_spool()
            finally:
                self._housekeeping(stopping)
            if stopping:
                break
            if failures:
                delay = min(self._max_backoff, 0.05 * 2 ** min(failures, 20))
                self._kick.wait(delay * random.uniform(0.5, 1.0))
                self._kick.clear()
            else:
                self._wake.wait(self._flush_interval)
                self._wake.clear()
                with self._lock:
                    self._wake_sent = False
        self._shutdown()

    def _warn(self, key: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._warned.get(key, -WARN_SECONDS) >= WARN_SECONDS:
            self._warned[key] = now
            logger.warning(message, *args)

    def _connect(self) -> Engine:
        if self._engine is None:
            engine = _engine(self.url, self._synchronous)
            self._inserter = _Inserter(engine.dialect.name)
            self._engine = engine
        if not self._schema:
            _create_table(self._engine)
            self._schema = True
        return self._engine

    def _deliver(self) -> None:
        """Everything in the spool, batch by batch; raises if the database fails."""
        while True:
            rows, marks = self._next_batch()
            if not marks:
                return
            rejected = self._store(rows) if rows else 0
            replayed = own_lines = 0
            for segment, end, lines, delivered, bad in marks:
                segment.done = end
                self._corrupt += bad
                if segment.owner is None:
                    own_lines += lines
                else:
                    replayed += delivered
            self._written += len(rows) - rejected
            self._replayed += replayed
            with self._lock:
                self._settled += own_lines
            self._remove_delivered()

    def _segments(self) -> list[_Segment]:
        """Adopted segments first, then this process's, oldest first."""
        with self._lock:
            own = list(self._own.values())
        return [*self._foreign, *own]

    def _next_batch(
        self,
    ) -> tuple[list[dict[str, Any]], list[tuple[_Segment, int, int, int, int]]]:
        """Up to `batch_size` rows, oldest first, and for each segment read: (segment,
        end offset, complete lines, rows, unreadable lines)."""
        rows: list[dict[str, Any]] = []
        marks: list[tuple[_Segment, int, int, int, int]] = []
        for segment in self._segments():
            room = self._batch_size - len(rows)
            if room <= 0:
                break
            with self._lock:
                size, closed = segment.size, segment.closed
            if segment.done >= size:
                continue
            try:
                end, taken, lines, bad = self._read(segment, size, closed, room)
            except FileNotFoundError:  # removed behind our back: nothing to deliver
                self._warn("missing", "prediction log: %s disappeared", segment.path)
                with self._lock:
                    segment.closed = True
                end, taken, lines, bad = size, [], 0, 1
            if end > segment.done:
                rows.extend(taken)
                marks.append((segment, end, lines, len(taken), bad))
        return rows, marks

    def _read(
        self, segment: _Segment, size: int, closed: bool, room: int
    ) -> tuple[int, list[dict[str, Any]], int, int]:
        """Up to `room` lines of `segment` from where delivery stands: (end offset,
        rows, complete lines read, unreadable lines and fragments)."""
        if segment.fd is None:
            segment.fd = os.open(segment.path, os.O_RDONLY | os.O_CLOEXEC)
        pos, rows, lines, bad, chunk = segment.done, [], 0, 0, READ_CHUNK
        while pos < size and lines < room:
            data = os.pread(segment.fd, min(chunk, size - pos), pos)
            if not data:  # shorter than it should be: nothing more to read
                self._warn("short", "prediction log: %s is shorter than expected", segment.path)
                return size, rows, lines, bad + 1
            start = 0  # where the next line of `data` begins
            while lines < room:
                newline = data.find(b"\n", start)
                if newline < 0:
                    break
                row = self._parse(data, start, newline, segment)
                if row is None:
                    bad += 1
                else:
                    rows.append(row)
                start = newline + 1
                lines += 1
            if start == 0:  # not one complete line
                if pos + len(data) < size:  # a line longer than the chunk
                    chunk *= 2
                    continue
                if closed:  # a last line without its newline: cut short by a kill
                    row = None
                    if segment.owner is not None:  # (ours: a failed write, never acked)
                        row = self._parse(data, 0, len(data), segment, validate=True)
                    if row is None:
                        bad += 1
                    else:
                        rows.append(row)  # all but the newline made it: keep it
                    pos = size
                break
            pos += start
            chunk = READ_CHUNK
        return pos, rows, lines, bad

    def _parse(
        self, data: bytes, start: int, end: int, segment: _Segment, validate: bool = False
    ) -> dict[str, Any] | None:
        try:
            return _row(data, start, end, validate)
        except Exception:
            self._warn("corrupt", "prediction log: unreadable line in %s skipped", segment.path)
            return None

    def _store(self, rows: list[dict[str, Any]]) -> int:
        """One transaction; rows the database refuses are found by halving the batch
        and set aside. Returns how many were; raises if the database failed."""
        assert self._engine is not None and self._inserter is not None
        try:
            with writer(self._engine).begin() as conn:
                self._inserter(conn, rows)
            self._batches += 1
            return 0
        except Exception as exc:
            if not _refused(exc):
                raise
            if len(rows) == 1:
                self._reject(rows[0], exc)
                return 1
            half = len(rows) // 2
            return self._store(rows[:half]) + self._store(rows[half:])

    def _reject(self, row: dict[str, Any], exc: BaseException) -> None:
        self._rejected += 1
        logger.warning(
            "prediction log: the database refused request %s (%s); kept in %s",
            row.get("request_id"),
            _brief(exc),
            self.spool_dir / REJECTED_FILE,
        )
        doc = {**row, "ts": row["ts"].isoformat(), "refused": _brief(exc)}
        fd = os.open(
            self.spool_dir / REJECTED_FILE,
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
            0o600,
        )
        try:
            os.write(fd, (_LENIENT.encode(doc) + "\n").encode())
        finally:
            os.close(fd)

    def _remove_delivered(self) -> None:
        """Deletes closed segments whose rows are all committed."""
        for segment in self._segments():
            with self._lock:
                finished = segment.closed and segment.done >= segment.size
            if not finished:
                continue
            if segment.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(segment.fd)
                segment.fd = None
            with contextlib.suppress(FileNotFoundError):
                segment.path.unlink()
            owner = segment.owner
            if owner is None:
                with self._lock:
                    self._own = {k: s for k, s in self._own.items() if s is not segment}
                    self._spool_bytes -= segment.size
                continue
            self._foreign.remove(segment)
            with self._lock:
                self._foreign_bytes -= segment.size
            owner.segments -= 1
            if owner.segments == 0:
                _release(owner.path, owner.lock_fd, remove=True)
                del self._adopted[owner.path]

    def _housekeeping(self, stopping: bool) -> None:
        try:
            with self._lock:
                cur = self._cur
                if (
                    cur is not None
                    and cur.done >= cur.size
                    and time.monotonic() - self._last_write >= self._idle_seconds
                ):
                    self._close_current()  # idle and delivered: its file can go
                dropped = self._dropped
            self._remove_delivered()
            if dropped > self._reported_drops and not stopping:
                self._warn(
                    "full",
                    "prediction log: spool full (%d bytes), %d entries dropped so far",
                    self._max_spool_bytes,
                    dropped,
                )
                self._reported_drops = dropped
        except Exception as exc:
            self._warn("housekeeping", "prediction log: spool housekeeping failed: %s", exc)

    def _sync_spool(self) -> None:
        """fsync what waits in the spool (the database is failing, it may wait long)."""
        now = time.monotonic()
        if now - self._last_sync < SYNC_SECONDS:
            return
        self._last_sync = now
        try:
            folders: set[Path] = set()
            for segment in self._segments():
                if segment.synced or segment.done >= segment.size:
                    continue
                if segment.fd is None:
                    segment.fd = os.open(segment.path, os.O_RDONLY | os.O_CLOEXEC)
                os.fsync(segment.fd)
                folders.add(segment.path.parent)
                with self._lock:
                    segment.synced = segment.closed
            for folder in folders:
                fd = os.open(folder, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except Exception as exc:
            self._warn("sync", "prediction log: spool fsync failed: %s", exc)

    def _scan(self) -> None:
        """Adopts the spool folders of dead processes (their lock is free)."""
        try:
            folders = sorted(p for p in self.spool_dir.iterdir() if p.is_dir())
        except OSError as exc:
            self._warn("scan", "prediction log: cannot list %s: %s", self.spool_dir, exc)
            folders = []
        for folder in folders:
            if folder == self._dir or folder in self._adopted:
                continue
            try:
                if folder.name.startswith("."):
                    self._remove_stale(folder)
                else:
                    self._adopt(folder)
            except OSError as exc:
                self._warn("adopt", "prediction log: cannot adopt %s: %s", folder, exc)

    def _adopt(self, folder: Path) -> None:
        try:
            lock_fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:  # being removed by whoever delivered it
            with contextlib.suppress(OSError):
                folder.rmdir()
            return
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(lock_fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return  # its process is alive (or another one adopted it)
            raise
        try:  # the lock we hold must still be the folder's (not one just removed)
            current = os.stat(folder / LOCK_NAME).st_ino == os.fstat(lock_fd).st_ino
        except FileNotFoundError:
            current = False
        if not current:
            os.close(lock_fd)
            return
        owner = _Adopted(folder, lock_fd)
        try:
            segments = [
                _Segment(path, path.stat().st_size, closed=True, owner=owner)
                for path in sorted(folder.glob("seg-*.jsonl"))
            ]
        except BaseException:
            os.close(lock_fd)  # unlocked: adopted again at the next look
            raise
        if not segments:
            _release(folder, lock_fd, remove=True)
            return
        owner.segments = len(segments)
        self._adopted[folder] = owner
        self._foreign.extend(segments)
        with self._lock:
            self._foreign_bytes += sum(s.size for s in segments)
        logger.info(
            "prediction log: adopted %d spool file(s) of a stopped process from %s",
            len(segments),
            folder,
        )

    def _remove_stale(self, folder: Path) -> None:
        """A `.new-*` folder a process died in before it was ready (never segments)."""
        if time.time() - folder.stat().st_mtime < STALE_NEW_DIR_SECONDS:
            return
        lock_fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            return
        _release(folder, lock_fd, remove=True)

    def _shutdown(self) -> None:
        """After the last attempt: delete what was delivered, unlock everything."""
        for segment in self._segments():
            if segment.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(segment.fd)
                segment.fd = None
        for owner in list(self._adopted.values()):
            _release(owner.path, owner.lock_fd, remove=False)
        self._adopted.clear()
        self._foreign.clear()
        with self._lock:
            own_left = bool(self._own)
            folder, lock_fd = self._dir, self._lock_fd
            self._lock_fd = None
        if folder is not None and lock_fd is not None:
            _release(folder, lock_fd, remove=not own_left)
        if self._engine is not None:
            self._engine.dispose()


# reading, export, retention ---------------------------------------------------------------


@contextlib.contextmanager
def _reader(url: str) -> Iterator[Engine | None]:
    """An engine, or None when there is no log to read (no SQLite file, no table)."""
    database = database_file(url) if _backend(url) == "sqlite" else None
    if database is not None and not database.exists():
        yield None
        return
    engine = _engine(url)
    try:
        yield engine if inspect(engine).has_table(TABLE) else None
    finally:
        engine.dispose()


def _where(
    since: datetime | None,
    until: datetime | None,
    model_tag: str | None,
    kind: str | None,
    status: str | None,
) -> list[Any]:
    c = prediction_log.c
    conditions: list[Any] = []
    if since is not None:
        conditions.append(c.ts >= _utc(since))
    if until is not None:
        conditions.append(c.ts < _utc(until))
    if model_tag is not None:
        conditions.append(c.model_tag == model_tag)
    if kind is not None:
        conditions.append(c.kind == kind)
    if status is not None:
        conditions.append(c.status == status)
    return conditions


def read_log(
    url: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    model_tag: str | None = None,
    kind: str | None = None,
    status: str | None = None,
    limit: int | None = None,
    request_ids: Collection[str] | None = None,
) -> pd.DataFrame:
    """The log's rows in time order, one column per `COLUMNS` entry: `ts` is a UTC
    timestamp, `inputs`/`outputs` decoded JSON (dicts, lists, None). Filters: `since`
    (inclusive) and `until` (exclusive) times (naive = UTC), equality on `model_tag`,
    `kind`, `status`, membership in `request_ids`; `limit` keeps the most recent rows.
    An empty frame when there is no log yet."""
    import pandas as pd

    c = prediction_log.c
    conditions = _where(since, until, model_tag, kind, status)
    if request_ids is not None:
        conditions.append(c.request_id.in_(list(request_ids)))
    query = (
        select(*(c[name] for name in COLUMNS)).where(*conditions).order_by(c.ts.desc(), c.id.desc())
    )
    if limit is not None:
        query = query.limit(limit)
    with _reader(url) as engine:
        if engine is None:
            rows = []
        else:
            with engine.connect() as conn:
                rows = list(conn.execute(query).all())
    rows.reverse()
    columns = {name: [row[i] for row in rows] for i, name in enumerate(COLUMNS)}
    frame = pd.DataFrame(columns, columns=list(COLUMNS))
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    for name in ("latency_ms",):
        frame[name] = frame[name].astype("float64")
    for name in ("http_status", "n_records"):
        frame[name] = frame[name].astype("int64")
    for name in ("inputs", "outputs"):
        frame[name] = frame[name].astype(object)
    return frame


def count(
    url: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    model_tag: str | None = None,
    kind: str | None = None,
    status: str | None = None,
) -> int:
    """How many rows match the filters (see `read_log`)."""
    query = select(func.count()).select_from(prediction_log)
    query = query.where(*_where(since, until, model_tag, kind, status))
    with _reader(url) as engine:
        if engine is None:
            return 0
        with engine.connect() as conn:
            return int(conn.execute(query).scalar_one())


def export_log(
    url: str,
    path: str | os.PathLike[str],
    fmt: Literal["csv", "parquet"] | None = None,
    **filters: Any,
) -> int:
    """Writes the rows matching `filters` (those of `read_log`, `limit` too) to a CSV or
    Parquet file (`fmt`, else from the suffix: .csv, .parquet, .pq) and returns how many.
    `inputs`/`outputs` are JSON strings in both formats (empty when null), `ts` an ISO
    UTC time in CSV and a UTC timestamp in Parquet. The file appears complete or not at
    all (written beside it, then renamed)."""
    target = Path(path)
    if fmt is None:
        suffix = target.suffix.lower()
        fmt = "csv" if suffix == ".csv" else "parquet" if suffix in (".parquet", ".pq") else None
        if fmt is None:
            raise ValueError(f"cannot tell the format of {target.name}: give fmt=csv|parquet")
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"unknown export format {fmt!r} (csv or parquet)")
    frame = read_log(url, **filters)
    for name in ("inputs", "outputs"):
        frame[name] = [None if v is None else _json(v) for v in frame[name]]
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            if fmt == "csv":
                frame.to_csv(out, index=False, date_format="%Y-%m-%dT%H:%M:%S.%f%z")
            else:
                frame.to_parquet(out, index=False)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return len(frame)


def _purge(engine: Engine, cutoff: datetime) -> int:
    with writer(engine).begin() as conn:
        result = conn.execute(delete(prediction_log).where(prediction_log.c.ts < _utc(cutoff)))
        return int(result.rowcount or 0)


def purge(url: str, older_than: timedelta, *, now: datetime | None = None) -> int:
    """Deletes the rows older than `older_than` (before `now` - older_than) and returns
    how many; the retention setting."""
    if older_than < timedelta(0):
        raise ValueError("older_than must not be negative")
    cutoff = (datetime.now(UTC) if now is None else _utc(now)) - older_than
    with _reader(url) as engine:
        return 0 if engine is None else _purge(engine, cutoff)
