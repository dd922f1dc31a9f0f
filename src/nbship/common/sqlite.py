"""SQLite engines that several processes can share (the registry, the prediction log
and the alert store may all be one file, written by servers and CLI commands at once).

WAL lets readers run beside a writer; a busy timeout makes a writer wait for the lock
instead of failing; and a connection marked as a writer (`writer(engine)`) takes the
write lock when its transaction begins (BEGIN IMMEDIATE), so two processes never both
read and then try to upgrade to write, which SQLite refuses at once without waiting.
Shipped in the bento with the modules that use it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

BUSY_SECONDS = 30
WRITE_OPTION = "nbship_write"


def database_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for other databases (a PostgreSQL URL's database is
    a name, not a path), memory databases and URI forms."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def file_id(path: os.PathLike[str] | str) -> tuple[int, int] | None:
    """Which file is at `path` now (device, inode), None when none is: an open SQLite
    connection goes on using a file that was deleted or replaced, never the new one."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def sqlite_engine(url: str, *, synchronous: str | None = None, **kwargs: Any) -> Engine:
    """An engine for a SQLite URL (its folder made if missing); `kwargs` go to
    `create_engine` (e.g. JSON serializers)."""
    database = database_file(url)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": BUSY_SECONDS}, **kwargs)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # take over transactions from pysqlite so writers can BEGIN IMMEDIATE
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_SECONDS * 1000}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        if synchronous:
            cursor.execute(f"PRAGMA synchronous = {synchronous}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        write = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def writer(engine: Engine) -> Engine:
    """The same engine, its transactions taking the write lock up front."""
    return engine.execution_options(**{WRITE_OPTION: True})
