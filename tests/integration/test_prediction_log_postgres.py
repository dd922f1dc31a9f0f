"""The prediction log on a real PostgreSQL server: the tests of
tests/unit/test_prediction_log.py that take a `store` (there on SQLite) run here with
this module's `store`, and what only PostgreSQL does (a row it refuses)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from nbship.prediction_log import REJECTED_FILE, PredictionLog
from tests.support import free_port, postgres_schema

# pytest collects the test functions a module holds, imported ones too: these run here
# with the `store` below (the `history` fixture as well), their bodies kept in one place
from tests.unit.test_prediction_log import (  # noqa: F401
    Store,
    entry,
    history,
    leftover_segments,
    stored_ids,
    test_a_request_id_recorded_twice_is_stored_once,
    test_acknowledged_entries_survive_kill_9,
    test_entries_and_failures_are_stored_as_given,
    test_entries_are_written_in_batches,
    test_export_csv_and_parquet_round_trip,
    test_full_spool_drops_new_entries_and_counts_them,
    test_many_threads_lose_nothing_and_store_each_request_once,
    test_purge_removes_only_old_rows,
    test_raw_json_is_stored_as_given_without_reencoding,
    test_read_log_filters,
    test_retention_setting_purges_in_the_background,
    test_two_processes_replaying_one_spool_deliver_each_entry_once,
    test_unavailable_database_spools_then_delivers_exactly_once,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def store(postgres_url: str) -> Iterator[Store]:
    """An empty schema of the session's server; `down` is a port nothing listens on."""
    closed = make_url(postgres_url).set(port=free_port()).render_as_string(hide_password=False)
    with postgres_schema(postgres_url) as url:
        yield Store(url=url, down=closed)


def test_a_row_postgresql_refuses_is_set_aside(postgres_url: str, tmp_path: Path) -> None:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = f"{postgres_url}?options=-csearch_path%3D{schema}"
    spool = tmp_path / "spool"
    (tmp_path / "blocker").write_text("")
    try:
        log = PredictionLog(f"sqlite:///{tmp_path / 'blocker' / 'x.db'}", spool).start()
        for i in range(5):
            log.record(entry(f"r{i}"))
        log.close(timeout=5)
        [segment] = leftover_segments(spool)
        lines = segment.read_bytes().splitlines(keepends=True)
        head, rest = lines[2].split(b"\t", 1)  # header, inputs, outputs
        too_long = json.loads(head)
        too_long["request_id"] = "x" * 300  # longer than the column: PostgreSQL refuses
        lines[2] = json.dumps(too_long).encode() + b"\t" + rest
        segment.write_bytes(b"".join(lines))
        with PredictionLog(url, spool, batch_size=4) as again:
            assert again.flush(30)
            stats = again.stats
        assert (stats["written"], stats["rejected"]) == (4, 1)
        assert sorted(stored_ids(url)) == ["r0", "r1", "r3", "r4"]
        [kept] = (spool / REJECTED_FILE).read_text().splitlines()
        assert json.loads(kept)["request_id"] == "x" * 300
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
