"""The prediction log on a real SQLite file: nothing that `record` acknowledged is lost
(threads, an unavailable database, kill -9), each request is stored once, and the
query/export/retention functions. The tests taking `store` run on PostgreSQL too, in
tests/integration/test_prediction_log_postgres.py (a server: not a unit test)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url

from nbship.prediction_log import (
    COLUMNS,
    LogEntry,
    PredictionLog,
    RawJSON,
    count,
    export_log,
    new_request_id,
    purge,
    read_log,
    url_for_sqlite,
)
from tests.support import PROJECT, wait_until

pytestmark = pytest.mark.unit

NOW = datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class Store:
    url: str  # a working database, empty
    down: str  # the same kind of database, unavailable


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """SQLite (the integration module's `store` is PostgreSQL, for the same tests)."""
    (tmp_path / "blocker").write_text("a file where the database's folder should be")
    return Store(
        url=url_for_sqlite(tmp_path / "db" / "log.db"),
        down=f"sqlite:///{tmp_path / 'blocker' / 'log.db'}",
    )


def entry(
    request_id: str | None = None,
    *,
    ts: datetime | None = None,
    model_tag: str | None = "clf:v1",
    kind: str = "predict",
    failed: bool = False,
    i: int = 0,
) -> LogEntry:
    if failed:
        return LogEntry(
            request_id=request_id or new_request_id(),
            ts=ts or datetime.now(UTC),
            kind=kind,
            model_tag=model_tag,
            inputs={"bill_length_mm": "long", "island": None},
            outputs=None,
            latency_ms=0.4,
            status="error",
            http_status=400,
            error_class="ValidationError",
            error_message="bill_length_mm: Input should be a valid number",
            n_records=1,
        )
    return LogEntry(
        request_id=request_id or new_request_id(),
        ts=ts or datetime.now(UTC),
        kind=kind,
        model_tag=model_tag,
        inputs=[{"bill_length_mm": 39.1 + i, "island": "Torgersen", "year": 2007}],
        outputs=[{"label": "Adelie", "probabilities": {"Adelie": 0.9, "Gentoo": 0.1}}],
        latency_ms=1.25,
        status="ok",
        http_status=200,
        n_records=1,
    )


def stored_ids(url: str) -> list[str]:
    return list(read_log(url)["request_id"])


def wait_for(condition: Any, timeout: float = 30.0) -> None:
    assert wait_until(condition, timeout, 0.02), "timed out"


def leftover_segments(spool: Path) -> list[Path]:
    return sorted(spool.glob("*/seg-*.jsonl"))


# delivery -------------------------------------------------------------------------------


def test_many_threads_lose_nothing_and_store_each_request_once(
    store: Store, tmp_path: Path
) -> None:
    threads, per_thread = 8, 1500
    with PredictionLog(store.url, tmp_path / "spool", batch_size=300) as log:

        def send(t: int) -> None:
            for i in range(per_thread):
                assert log.record(entry(f"t{t}-{i}", i=i))

        workers = [threading.Thread(target=send, args=(t,)) for t in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert log.flush(60)
        stats = log.stats
    sent = {f"t{t}-{i}" for t in range(threads) for i in range(per_thread)}
    ids = stored_ids(store.url)
    assert len(ids) == len(sent) == count(store.url)
    assert set(ids) == sent
    assert stats["recorded"] == stats["written"] == len(sent)
    assert stats["spooled_pending"] == 0
    assert stats["dropped"] == stats["record_errors"] == stats["db_errors"] == 0
    assert stats["batches"] <= len(sent) / 10
    assert leftover_segments(tmp_path / "spool") == []
    assert list((tmp_path / "spool").iterdir()) == []  # a clean close removes its folder


def test_flush_waits_for_what_was_recorded_before_it_under_load(tmp_path: Path) -> None:
    url = url_for_sqlite(tmp_path / "log.db")
    stop = threading.Event()
    with PredictionLog(url, tmp_path / "spool") as log:

        def keep_sending() -> None:
            i = 0
            while not stop.is_set():
                log.record(entry(f"bg{i}"))
                i += 1

        sender = threading.Thread(target=keep_sending)
        sender.start()
        try:
            for i in range(200):
                assert log.record(entry(f"fg{i}"))
            assert log.flush(30)  # returns though entries keep coming
            stored = set(stored_ids(url))
        finally:
            stop.set()
            sender.join()
    assert {f"fg{i}" for i in range(200)} <= stored


def test_entries_are_written_in_batches(store: Store, tmp_path: Path) -> None:
    commits: list[str] = []
    target = make_url(store.url)

    def on_commit(conn: Any) -> None:
        if conn.engine.url == target:
            commits.append("commit")

    event.listen(Engine, "commit", on_commit)
    try:
        with PredictionLog(store.url, tmp_path / "spool", batch_size=100) as log:
            for i in range(2000):
                log.record(entry(f"r{i}", i=i))
            assert log.flush(60)
            batches = log.stats["batches"]
    finally:
        event.remove(Engine, "commit", on_commit)
    assert count(store.url) == 2000
    assert 20 <= batches <= len(commits) < 2000 / 10  # (commits also count table creation)


def test_entries_and_failures_are_stored_as_given(store: Store, tmp_path: Path) -> None:
    naive = datetime(2026, 3, 1, 12, 30, 15, 250000)  # naive: taken as UTC
    paris = datetime(2026, 3, 1, 14, 0, tzinfo=UTC).astimezone(ZoneInfo("Europe/Paris"))
    with PredictionLog(store.url, tmp_path / "spool") as log:
        assert log.record(entry("ok-1", ts=naive, i=1))
        assert log.record(entry("bad-1", ts=paris, failed=True, model_tag=None))
        assert log.flush(30)
    frame = read_log(store.url)
    assert list(frame.columns) == list(COLUMNS)
    ok, bad = frame.iloc[0], frame.iloc[1]
    assert ok["request_id"] == "ok-1"
    assert ok["ts"] == pd.Timestamp("2026-03-01 12:30:15.25", tz="UTC")
    assert ok["inputs"] == [{"bill_length_mm": 40.1, "island": "Torgersen", "year": 2007}]
    assert ok["outputs"][0]["probabilities"] == {"Adelie": 0.9, "Gentoo": 0.1}
    assert (ok["status"], ok["http_status"], ok["n_records"]) == ("ok", 200, 1)
    assert ok["latency_ms"] == 1.25 and pd.isna(ok["error_class"])
    assert bad["ts"] == pd.Timestamp("2026-03-01 14:00", tz="UTC")
    assert bad["outputs"] is None and pd.isna(bad["model_tag"])
    assert (bad["status"], bad["http_status"]) == ("error", 400)
    assert bad["error_class"] == "ValidationError"
    assert "valid number" in bad["error_message"]


def test_raw_json_is_stored_as_given_without_reencoding(store: Store, tmp_path: Path) -> None:
    pretty = RawJSON(b'[\n\t{"island": "Dream",\r\n "bill_length_mm": 39.5}\n]')
    accented = RawJSON('{"island": "Dr\u00e9am"}'.encode())  # non-ASCII: re-encoded
    with PredictionLog(store.url, tmp_path / "spool") as log:
        assert log.record(
            replace(entry("raw-1"), inputs=pretty, outputs=RawJSON(b'[{"label":"A"}]'))
        )
        assert log.record(replace(entry("raw-2"), inputs=accented))
        assert log.flush(30)
    frame = read_log(store.url).set_index("request_id")
    assert frame.loc["raw-1", "inputs"] == [{"island": "Dream", "bill_length_mm": 39.5}]
    assert frame.loc["raw-1", "outputs"] == [{"label": "A"}]
    assert frame.loc["raw-2", "inputs"] == {"island": "Dr\u00e9am"}


def test_a_request_id_recorded_twice_is_stored_once(store: Store, tmp_path: Path) -> None:
    with PredictionLog(store.url, tmp_path / "spool") as log:
        assert log.record(entry("same", i=1))
        assert log.flush(30)
        assert log.record(entry("same", i=2))
        assert log.record(entry("twin", i=1))
        assert log.record(entry("twin", i=2))  # twice in one batch
        assert log.flush(30)
    frame = read_log(store.url)
    assert sorted(frame["request_id"]) == ["same", "twin"]
    first = frame.set_index("request_id")["inputs"]
    assert first["same"][0]["bill_length_mm"] == first["twin"][0]["bill_length_mm"] == 40.1


def test_record_never_raises(tmp_path: Path) -> None:
    url = url_for_sqlite(tmp_path / "log.db")
    log = PredictionLog(url, tmp_path / "spool")
    assert log.record(entry()) is False  # not started: dropped, counted
    log.start()
    circular: list[Any] = []
    circular.append(circular)
    bad = LogEntry("c", NOW, "predict", None, circular, None, 1.0, "ok", 200)
    assert log.record(bad) is False
    assert log.record("not an entry") is False  # type: ignore[arg-type]
    odd = LogEntry("n", NOW, "predict", None, {"x": float("nan"), "s": {1, 2}}, None, 1, "ok", 200)
    assert log.record(odd) is True  # NaN is stored as null, a set as a list
    assert log.record(LogEntry("x" * 300, NOW, "predict", None, None, None, 1, "ok", 200))
    assert log.flush(30)
    log.close()
    assert log.record(entry()) is False  # closed
    stats = log.stats
    assert (stats["record_errors"], stats["dropped"], stats["written"]) == (2, 2, 2)
    frame = read_log(url).set_index("request_id")
    assert frame.loc["n", "inputs"] == {"x": None, "s": [1, 2]}
    assert "x" * 255 in frame.index  # cut to the column's length


def test_record_many_spools_its_entries_in_one_write(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shadow's answers: the good ones acknowledged and stored, one that cannot be
    encoded counted, and all of them in a single write under one hold of the lock."""
    circular: list[Any] = []
    circular.append(circular)
    bad = LogEntry("bad", NOW, "predict", None, circular, None, 1.0, "ok", 200)
    with PredictionLog(store.url, tmp_path / "spool") as log:
        writes: list[int] = []
        real = os.writev
        monkeypatch.setattr(os, "writev", lambda fd, parts: writes.append(len(parts))
                            or real(fd, parts))  # fmt: skip
        good = [entry(f"s{i}", i=i) for i in range(5)]
        assert log.record_many([*good[:2], bad, *good[2:]]) == 5
        assert len(writes) == 1
        assert log.record_many([]) == 0 and len(writes) == 1
        assert log.flush(30)
        assert log.stats["record_errors"] == 1
    assert sorted(stored_ids(store.url)) == [f"s{i}" for i in range(5)]


def test_record_many_into_a_full_spool_drops_them_all_and_counts_them(tmp_path: Path) -> None:
    log = PredictionLog(url_for_sqlite(tmp_path / "log.db"), tmp_path / "spool",
                        max_spool_bytes=2_000).start()  # fmt: skip
    try:
        assert log.record_many([entry(f"r{i}") for i in range(100)]) == 0
        assert log.stats["dropped"] == 100
    finally:
        log.close(timeout=10)


def test_a_partial_write_counts_the_whole_lines_in_it() -> None:
    from nbship.prediction_log.spool import _whole_lines

    parts = [b"one\ntwo\nthr", b"ee\n"]
    assert [_whole_lines(parts, n) for n in (1, 4, 7, 8, 12, 15)] == [0, 1, 1, 2, 2, 3]


# an unavailable database ---------------------------------------------------------------------


def test_unavailable_database_spools_then_delivers_exactly_once(
    store: Store, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    sent = [f"r{i}" for i in range(700)]
    log = PredictionLog(store.down, spool, max_backoff=0.1, segment_bytes=50_000).start()
    for request_id in sent:
        assert log.record(entry(request_id)) is True  # never raises, never blocks
    wait_for(lambda: log.stats["db_errors"] >= 2)
    assert log.flush(0.2) is False
    stats = log.stats
    assert (stats["written"], stats["spooled_pending"]) == (0, len(sent))
    log.close(timeout=10)
    assert len(leftover_segments(spool)) > 1  # kept, in several segments

    with PredictionLog(store.url, spool) as again:
        assert again.flush(60)
        assert again.stats["replayed"] == len(sent)
    assert sorted(stored_ids(store.url)) == sorted(sent)
    assert leftover_segments(spool) == []
    with PredictionLog(store.url, spool) as third:  # nothing left to deliver twice
        assert third.flush(30)
        assert third.stats["replayed"] == 0
    assert count(store.url) == len(sent)


def test_sqlite_coming_back_is_used_by_the_running_log(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("not a folder yet")
    url = url_for_sqlite(blocker / "log.db")
    with PredictionLog(url, tmp_path / "spool", max_backoff=0.1) as log:
        for i in range(300):
            assert log.record(entry(f"r{i}"))
        wait_for(lambda: log.stats["db_errors"] >= 2)
        blocker.unlink()  # the database can be made now
        assert log.flush(30)
        stats = log.stats
    assert (stats["written"], stats["spooled_pending"]) == (300, 0)
    assert count(url) == 300


def test_full_spool_drops_new_entries_and_counts_them(store: Store, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    log = PredictionLog(store.down, spool, max_spool_bytes=30_000, max_backoff=0.1).start()
    acked = [f"r{i}" for i in range(1000) if log.record(entry(f"r{i}"))]
    stats = log.stats
    assert 0 < len(acked) < 1000
    assert stats["dropped"] == 1000 - len(acked)
    assert stats["spool_bytes"] <= 30_000
    assert acked == [f"r{i}" for i in range(len(acked))]  # the first ones are kept
    log.close(timeout=10)
    with PredictionLog(store.url, spool) as again:
        assert again.flush(60)
    assert sorted(stored_ids(store.url)) == sorted(acked)


def test_unreadable_spool_lines_are_skipped(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    down = f"sqlite:///{tmp_path / 'blocker' / 'x.db'}"
    (tmp_path / "blocker").write_text("")
    log = PredictionLog(down, spool).start()
    for i in range(3):
        log.record(entry(f"r{i}"))
    log.close(timeout=5)
    [segment] = leftover_segments(spool)
    with segment.open("ab") as out:
        out.write(b"not json\n")
        out.write(b'{"request_id": "cut short by a kill", "ts"')  # no newline
    url = url_for_sqlite(tmp_path / "log.db")
    with PredictionLog(url, spool) as again:
        assert again.flush(30)
        stats = again.stats
    assert (stats["written"], stats["corrupt"]) == (3, 2)
    assert sorted(stored_ids(url)) == ["r0", "r1", "r2"]
    assert leftover_segments(spool) == []


def test_a_last_line_only_missing_its_newline_is_delivered(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    (tmp_path / "blocker").write_text("")
    log = PredictionLog(f"sqlite:///{tmp_path / 'blocker' / 'x.db'}", spool).start()
    for i in range(3):
        log.record(entry(f"r{i}"))
    log.close(timeout=5)
    [segment] = leftover_segments(spool)
    segment.write_bytes(segment.read_bytes()[:-1])  # a kill between the data and the LF
    url = url_for_sqlite(tmp_path / "log.db")
    with PredictionLog(url, spool) as again:
        assert again.flush(30)
        assert (again.stats["written"], again.stats["corrupt"]) == (3, 0)
    assert read_log(url)["inputs"][2] == entry(i=0).inputs


# processes: kill -9, replay by several at once --------------------------------------------------

CHILD = """
import sys, time
from datetime import UTC, datetime
from nbship.prediction_log import LogEntry, PredictionLog
url, spool, n, interval = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
log = PredictionLog(url, spool, flush_interval=interval, batch_size=100, max_backoff=0.1)
log.start()
for i in range(n):
    entry = LogEntry(f"k{i}", datetime.now(UTC), "predict", "clf:v1", [{"x": i}],
                     [{"label": "a"}], 1.0, "ok", 200, n_records=1)
    assert log.record(entry)
print("acked", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("database", ["down", "up"])
def test_acknowledged_entries_survive_kill_9(store: Store, tmp_path: Path, database: str) -> None:
    """Acknowledged (record returned True) then SIGKILL: with the database down nothing
    was delivered; with it up the process was killed mid-delivery. The next log on the
    same spool delivers every entry, once."""
    spool, n = tmp_path / "spool", 3000
    url = store.down if database == "down" else store.url
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(spool), str(n), "0.02"],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "acked\n", child.stderr.read()  # type: ignore[union-attr]
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode == -signal.SIGKILL
    before = count(store.url)
    if database == "down":
        assert before == 0 and leftover_segments(spool)
    with PredictionLog(store.url, spool) as log:
        assert log.flush(60)
        replayed = log.stats["replayed"]
    ids = stored_ids(store.url)
    assert len(ids) == n and set(ids) == {f"k{i}" for i in range(n)}
    assert replayed >= n - before  # (what was delivered before the kill may come again)
    assert leftover_segments(spool) == []


REPLAYER = """
import json, sys
from nbship.prediction_log import PredictionLog
log = PredictionLog(sys.argv[1], sys.argv[2], batch_size=100).start()
done = log.flush(120)
stats = log.stats
log.close()
print(json.dumps({"done": done, **stats}))
"""


def test_two_processes_replaying_one_spool_deliver_each_entry_once(
    store: Store, tmp_path: Path
) -> None:
    spool, dead, per_process = tmp_path / "spool", 4, 1500
    for p in range(dead):  # spools left behind while the database was down
        log = PredictionLog(store.down, spool, segment_bytes=40_000).start()
        for i in range(per_process):
            assert log.record(entry(f"p{p}-{i}"))
        log.close(timeout=5)
    assert len(list(spool.iterdir())) == dead
    replayers = [
        subprocess.Popen(
            [sys.executable, "-c", REPLAYER, store.url, str(spool)],
            cwd=PROJECT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for proc in replayers:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        results.append(json.loads(out.splitlines()[-1]))
    assert all(r["done"] for r in results)
    assert sum(r["replayed"] for r in results) == dead * per_process  # none delivered twice
    ids = stored_ids(store.url)
    assert len(ids) == dead * per_process == len(set(ids))
    assert list(spool.iterdir()) == []


def test_two_running_logs_on_one_spool_keep_to_their_own(tmp_path: Path) -> None:
    url = url_for_sqlite(tmp_path / "log.db")
    spool = tmp_path / "spool"
    with PredictionLog(url, spool) as one, PredictionLog(url, spool) as two:
        for i in range(500):
            one.record(entry(f"a{i}"))
            two.record(entry(f"b{i}"))
        assert one.flush(30) and two.flush(30)
        assert one.stats["replayed"] == two.stats["replayed"] == 0
        assert one.stats["written"] == two.stats["written"] == 500
    assert count(url) == 1000


# reading, export, retention -----------------------------------------------------------------


def day(n: int) -> datetime:
    return datetime(2026, 1, 1, 9, 0, tzinfo=UTC) + timedelta(days=n)


@pytest.fixture
def history(store: Store, tmp_path: Path) -> str:
    """Ten requests over ten days: v1 on even days, v2 on odd ones; days 3 and 7 failed;
    day 9 is feedback."""
    with PredictionLog(store.url, tmp_path / "spool") as log:
        for n in range(10):
            log.record(
                entry(
                    f"d{n}",
                    ts=day(n),
                    model_tag="clf:v2" if n % 2 else "clf:v1",
                    kind="feedback" if n == 9 else "predict",
                    failed=n in (3, 7),
                    i=n,
                )
            )
        assert log.flush(30)
    return store.url


def test_read_log_filters(history: str) -> None:
    url = history
    assert list(read_log(url)["request_id"]) == [f"d{n}" for n in range(10)]
    assert list(read_log(url, model_tag="clf:v2")["request_id"]) == ["d1", "d3", "d5", "d7", "d9"]
    assert list(read_log(url, status="error")["request_id"]) == ["d3", "d7"]
    assert list(read_log(url, kind="feedback")["request_id"]) == ["d9"]
    window = read_log(url, since=day(2), until=day(5))  # since inclusive, until exclusive
    assert list(window["request_id"]) == ["d2", "d3", "d4"]
    naive = read_log(url, since=day(8).replace(tzinfo=None))
    assert list(naive["request_id"]) == ["d8", "d9"]
    assert list(read_log(url, limit=3)["request_id"]) == ["d7", "d8", "d9"]  # the latest
    assert count(url) == 10
    assert count(url, model_tag="clf:v1", since=day(4)) == 3
    assert read_log(url, model_tag="nope").empty


def test_export_csv_and_parquet_round_trip(history: str, tmp_path: Path) -> None:
    url = history
    csv = tmp_path / "out" / "v2.csv"
    assert export_log(url, csv, model_tag="clf:v2") == 5
    back = pd.read_csv(csv)
    assert list(back.columns) == list(COLUMNS)
    assert list(back["request_id"]) == ["d1", "d3", "d5", "d7", "d9"]
    assert pd.to_datetime(back["ts"]).tolist() == [pd.Timestamp(day(n)) for n in (1, 3, 5, 7, 9)]
    assert json.loads(back["inputs"][0]) == [
        {"bill_length_mm": 40.1, "island": "Torgersen", "year": 2007}
    ]
    assert pd.isna(back["outputs"][1])  # d3 failed: no outputs
    assert back["error_class"][1] == "ValidationError"
    assert json.loads(back["outputs"][2])[0]["label"] == "Adelie"

    parquet = tmp_path / "out" / "errors.parquet"
    assert export_log(url, parquet, status="error") == 2
    table = pd.read_parquet(parquet)
    assert list(table["request_id"]) == ["d3", "d7"]
    assert str(table["ts"].dtype).startswith("datetime64") and str(table["ts"].dt.tz) == "UTC"
    assert table["ts"].tolist() == [pd.Timestamp(day(3)), pd.Timestamp(day(7))]
    assert json.loads(table["inputs"][0]) == {"bill_length_mm": "long", "island": None}
    assert table["http_status"].tolist() == [400, 400]

    window = tmp_path / "out" / "window.pq"
    assert export_log(url, window, since=day(8)) == 2
    assert export_log(url, tmp_path / "out" / "all.data", fmt="csv") == 10
    assert export_log(url, tmp_path / "out" / "none.csv", model_tag="nope") == 0
    assert pd.read_csv(tmp_path / "out" / "none.csv").columns.tolist() == list(COLUMNS)
    with pytest.raises(ValueError, match="format"):
        export_log(url, tmp_path / "out" / "x.json")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["all.data", "errors.parquet", "none.csv", "v2.csv", "window.pq"]


def test_purge_removes_only_old_rows(history: str) -> None:
    url = history
    now = day(10)
    assert purge(url, timedelta(days=7), now=now) == 3  # days 0, 1, 2
    assert list(read_log(url)["request_id"]) == [f"d{n}" for n in range(3, 10)]
    assert purge(url, timedelta(days=7), now=now) == 0
    with pytest.raises(ValueError):
        purge(url, timedelta(days=-1))


def test_retention_setting_purges_in_the_background(store: Store, tmp_path: Path) -> None:
    recent = datetime.now(UTC)
    with PredictionLog(store.url, tmp_path / "spool") as log:
        log.record(entry("old", ts=recent - timedelta(days=40)))
        log.record(entry("new", ts=recent))
        assert log.flush(30)
    with PredictionLog(store.url, tmp_path / "spool", retention=timedelta(days=30)) as log:
        wait_for(lambda: log.stats["purged"] == 1)
    assert stored_ids(store.url) == ["new"]


def test_reading_a_log_that_does_not_exist(tmp_path: Path) -> None:
    url = url_for_sqlite(tmp_path / "none.db")
    frame = read_log(url)
    assert frame.empty and list(frame.columns) == list(COLUMNS)
    assert count(url) == 0
    assert purge(url, timedelta(days=1)) == 0
    assert not (tmp_path / "none.db").exists()  # reading creates nothing


def test_refuses_other_databases_and_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="SQLite or PostgreSQL"):
        PredictionLog("mysql://u@h/db", tmp_path)
    with pytest.raises(ValueError):
        PredictionLog(url_for_sqlite(tmp_path / "x.db"), tmp_path, batch_size=0)


def test_record_cost_is_microseconds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A rough figure, not an assertion on time (the benchmark has the real numbers)."""
    entries = [entry(f"r{i}", i=i) for i in range(5000)]
    with PredictionLog(url_for_sqlite(tmp_path / "log.db"), tmp_path / "spool") as log:
        started = time.perf_counter()
        for item in entries:
            log.record(item)
        per_call = (time.perf_counter() - started) / len(entries) * 1e6
        assert log.flush(30)
    with capsys.disabled():
        print(f"\nrecord(): {per_call:.1f} µs per call (delivery running alongside)")
    assert count(url_for_sqlite(tmp_path / "log.db")) == len(entries)
