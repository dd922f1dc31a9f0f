"""Reading the log: `read_log` (a pandas DataFrame), `count`, `export_log` (CSV or
Parquet, written atomically) and `purge` (retention). pandas is imported when called:
the service imports this package and never reads."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Collection, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Engine, func, inspect, select

from nbship.common.sqlite import database_file
from nbship.prediction_log.database import _engine, _purge
from nbship.prediction_log.entries import _json, _utc
from nbship.prediction_log.schema import COLUMNS, TABLE, prediction_log

if TYPE_CHECKING:
    import pandas as pd


@contextlib.contextmanager
def _reader(url: str) -> Iterator[Engine | None]:
    """An engine, or None when there is no log to read (no SQLite file, no table)."""
    database = database_file(url)
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


def purge(url: str, older_than: timedelta, *, now: datetime | None = None) -> int:
    """Deletes the rows older than `older_than` (before `now` - older_than) and returns
    how many; the retention setting."""
    if older_than < timedelta(0):
        raise ValueError("older_than must not be negative")
    cutoff = (datetime.now(UTC) if now is None else _utc(now)) - older_than
    with _reader(url) as engine:
        return 0 if engine is None else _purge(engine, cutoff)
