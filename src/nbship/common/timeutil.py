"""Aware UTC datetimes, the one convention for every time the project stores or shows.

SQLite keeps no UTC offset, so a time read back from it is naive; every stored time is
UTC, so a naive datetime is taken as UTC rather than as local time.
"""

from __future__ import annotations

from datetime import UTC, datetime

# the Unix epoch: where windows are aligned from, and the stand-in for "no time"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utc(value: datetime) -> datetime:
    """`value` as an aware UTC datetime (a naive one is taken to be UTC already)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
