"""Engines for SQLite and PostgreSQL, the table's creation, the batched insert-or-ignore
and the retention delete: what the writer and the queries both need from the database."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, create_engine, delete
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

from nbship.common.sqlite import sqlite_engine, writer
from nbship.prediction_log.entries import _json, _utc
from nbship.prediction_log.schema import COLUMNS, TABLE, metadata, prediction_log

PG_CONNECT_TIMEOUT = 10


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


def _purge(engine: Engine, cutoff: datetime) -> int:
    with writer(engine).begin() as conn:
        result = conn.execute(delete(prediction_log).where(prediction_log.c.ts < _utc(cutoff)))
        return int(result.rowcount or 0)
