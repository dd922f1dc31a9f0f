"""Every served request and feedback item: written by serving, read by operate.

One `LogEntry` per request goes to the table `prediction_log` of a SQLite file (the
default) or of a PostgreSQL database given by URL. The modules, each importing only
those above it:

    schema    the table, its columns, where the log is (`url_for_sqlite`; its URL: nbship.project)
    entries   `LogEntry`, `RawJSON`, the entry kinds, and the spool line's encoding
    database  engines, the batched insert-or-ignore, the retention delete
    spool     the on-disk spool `record` appends to and the thread reads back
    writer    `PredictionLog`: the spool and its delivery thread
    queries   `read_log`, `count`, `export_log`, `purge`

Shipped in the bento with serving, so importing it costs only the standard library and
SQLAlchemy (pandas and pyarrow are imported by the queries that need them).
"""

from nbship.prediction_log.entries import (
    FEEDBACK_KIND,
    RETRAIN_REQUEST_KIND,
    SHADOW_KIND,
    SHADOW_SUFFIX,
    LogEntry,
    RawJSON,
    new_request_id,
)
from nbship.prediction_log.queries import count, export_log, purge, read_log
from nbship.prediction_log.schema import COLUMNS, url_for_sqlite
from nbship.prediction_log.writer import REJECTED_FILE, PredictionLog

__all__ = [
    "COLUMNS",
    "FEEDBACK_KIND",
    "REJECTED_FILE",
    "RETRAIN_REQUEST_KIND",
    "SHADOW_KIND",
    "SHADOW_SUFFIX",
    "LogEntry",
    "PredictionLog",
    "RawJSON",
    "count",
    "export_log",
    "new_request_id",
    "purge",
    "read_log",
    "url_for_sqlite",
]
