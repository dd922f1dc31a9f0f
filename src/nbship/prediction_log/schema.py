"""The prediction log's table and where it lives: its columns and their lengths, shared
by the writer and the queries (one definition, so both always agree)."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

TABLE = "prediction_log"
DEFAULT_FILE = "prediction_log.db"
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


def url_for_sqlite(path: str | os.PathLike[str]) -> str:
    """The SQLAlchemy URL of a SQLite file (made absolute)."""
    return f"sqlite:///{Path(path).expanduser().resolve()}"
