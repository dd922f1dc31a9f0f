"""The alerts recorded so far: one SQL table, each rule at most once per window.

`AlertStore` keeps the `alerts` table of a SQL database (a SQLite file by default; the
prediction log's database is fine). `record` stores the alerts not stored yet and returns
them, the ones to send: two monitor runs over overlapping periods see the same windows
(`windows.window_bounds`), so an alert is sent once however often the monitor runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    insert,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from nbship.common.sqlite import sqlite_engine
from nbship.common.timeutil import EPOCH, utc
from nbship.operate.alert_rules import Alert

ALERTS_TABLE = "alerts"
# an alert with no window is keyed on this instead (NULLs never collide in a unique key)
_NO_TIME = EPOCH

_metadata = MetaData()
alerts_table = Table(
    ALERTS_TABLE,
    _metadata,
    Column("id", Integer, primary_key=True),
    Column("rule", String(255), nullable=False),
    Column("metric", String(255), nullable=False),
    Column("op", String(4), nullable=False),
    Column("value", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("window_start", DateTime(timezone=True), nullable=False),
    Column("window_end", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("message", Text),
    UniqueConstraint("rule", "window_start", "window_end", name="uq_alerts_rule_window"),
)


def _store_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    return sqlite_engine(url)


def _insert_ignoring_duplicates(engine: Engine) -> Callable[[], Any]:
    backend = engine.dialect.name
    if backend == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    elif backend == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert  # type: ignore[assignment]
    else:
        return lambda: insert(alerts_table)
    return lambda: dialect_insert(alerts_table).on_conflict_do_nothing()


class AlertStore:
    """The alerts recorded so far, in the table `alerts` of a SQL database (SQLite file
    by default; the prediction log's database is fine). Each rule is recorded at most
    once per window: recording it again is a no-op."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine = _store_engine(url)
        _metadata.create_all(self._engine)
        self._insert = _insert_ignoring_duplicates(self._engine)

    def __enter__(self) -> AlertStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._engine.dispose()

    def record(self, alerts: Iterable[Alert]) -> list[Alert]:
        """Stores the alerts not stored yet (same rule, same window) and returns them:
        the ones to send."""
        new = []
        for alert in alerts:
            row = {
                "rule": alert.rule,
                "metric": alert.metric,
                "op": alert.op,
                "value": alert.value,
                "threshold": alert.threshold,
                "window_start": utc(alert.window_start or _NO_TIME),
                "window_end": utc(alert.window_end or _NO_TIME),
                "created_at": utc(alert.created_at),
                "message": alert.message,
            }
            try:
                with self._engine.begin() as conn:
                    inserted = conn.execute(self._insert().values(**row)).rowcount
            except IntegrityError:  # a database without insert-or-ignore: a duplicate
                inserted = 0
            if inserted:
                new.append(alert)
        return new

    def alerts(self, since: datetime | None = None, until: datetime | None = None) -> list[Alert]:
        """The recorded alerts whose window overlaps [since, until), oldest window first."""
        c = alerts_table.c
        query = select(alerts_table).order_by(c.window_start, c.rule, c.id)
        if since is not None:
            query = query.where(c.window_end > utc(since))
        if until is not None:
            query = query.where(c.window_start < utc(until))
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()

        def when(value: datetime) -> datetime | None:
            value = utc(value)
            return None if value == _NO_TIME else value

        return [
            Alert(
                rule=r["rule"],
                metric=r["metric"],
                op=r["op"],
                value=float(r["value"]),
                threshold=float(r["threshold"]),
                window_start=when(r["window_start"]),
                window_end=when(r["window_end"]),
                created_at=utc(r["created_at"]),
            )
            for r in rows
        ]
