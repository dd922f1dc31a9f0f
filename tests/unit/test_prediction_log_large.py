"""The prediction log's path for large requests (a 1,000-record batch is ~200 KB a line):
raw JSON goes to the spool without being copied or decoded, and the delivery thread
finds lines and fields with `find` on what it read. What is stored must not change."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from nbship.prediction_log import (
    LogEntry,
    PredictionLog,
    RawJSON,
    new_request_id,
    read_log,
    url_for_sqlite,
)
from nbship.prediction_log.entries import _json_bytes, _row

pytestmark = pytest.mark.unit

RECORDS = [
    {"island": "Torgersen", "bill_length_mm": 39.1 + i % 7, "sex": None, "year": 2007}
    for i in range(1000)
]
ANSWER = [{"label": "Adelie", "probabilities": {"Adelie": 0.9, "Gentoo": 0.1}}] * 1000


def entry(request_id: str, inputs: object, outputs: object = None) -> LogEntry:
    return LogEntry(
        request_id=request_id,
        ts=datetime.now(UTC),
        kind="predict",
        model_tag="clf:v1",
        inputs=inputs,
        outputs=outputs,
        latency_ms=9.5,
        status="ok",
        http_status=200,
        n_records=1000,
    )


def down_log(tmp_path: Path) -> tuple[PredictionLog, Path]:
    """A log whose database is unavailable: what it records stays in its spool."""
    (tmp_path / "blocker").write_text("")
    spool = tmp_path / "spool"
    log = PredictionLog(f"sqlite:///{tmp_path / 'blocker' / 'x.db'}", spool, max_backoff=60)
    return log.start(), spool


def test_a_compact_body_is_spooled_as_it_is() -> None:
    body = RawJSON(json.dumps(RECORDS).encode())
    assert _json_bytes(body) is body  # neither copied nor decoded
    pretty = RawJSON(json.dumps(RECORDS, indent=1).encode())  # newlines: blanked
    assert _json_bytes(pretty) == pretty.replace(b"\n", b" ")
    short = RawJSON(b'[\t{"a":\r\n1}]')
    assert _json_bytes(short) == b'[ {"a":  1}]'
    assert _json_bytes([{"a": 1.5}]) == b'[{"a":1.5}]'


def test_large_raw_json_is_stored_as_given(tmp_path: Path) -> None:
    url = url_for_sqlite(tmp_path / "log.db")
    compact = RawJSON(json.dumps(RECORDS).encode())
    pretty = RawJSON(json.dumps(RECORDS, indent="\t").encode("ascii"))
    accented = RawJSON(json.dumps([{"island": "Dr\u00e9am"}] * 500, ensure_ascii=False).encode())
    answer = RawJSON(json.dumps(ANSWER, separators=(",", ":")).encode())
    with PredictionLog(url, tmp_path / "spool") as log:
        assert log.record(entry("compact", compact, answer))
        assert log.record(entry("pretty", pretty, answer))
        assert log.record(entry("accented", accented))  # non-ASCII: encoded again
        assert log.flush(30)
    frame = read_log(url).set_index("request_id")
    assert frame.loc["compact", "inputs"] == RECORDS
    assert frame.loc["compact", "outputs"] == ANSWER
    assert frame.loc["pretty", "inputs"] == RECORDS
    assert frame.loc["accented", "inputs"] == [{"island": "Dr\u00e9am"}] * 500
    assert frame.loc["accented", "outputs"] is None


@pytest.mark.parametrize("blank", [b"", b"  \n ", b" " * 10_000])
def test_blank_raw_json_is_refused(tmp_path: Path, blank: bytes) -> None:
    with PredictionLog(url_for_sqlite(tmp_path / "log.db"), tmp_path / "spool") as log:
        assert log.record(entry("blank", RawJSON(blank))) is False
        assert log.stats["record_errors"] == 1


@pytest.mark.parametrize("size", [1, 1000], ids=["short line", "long line"])
def test_a_line_is_read_from_within_what_was_read(size: int) -> None:
    head = json.dumps({"request_id": "r1", "ts": "2026-03-01T12:00:00+00:00"}).encode()
    value = json.dumps(RECORDS[:size], separators=(",", ":")).encode()
    line = head + b"\t" + value + b"\tnull"
    data = b"garbage\n" + line + b"\nmore"
    start = data.index(head)
    row = _row(data, start, start + len(line))
    assert (row["request_id"], row["inputs"], row["outputs"]) == ("r1", value.decode(), None)
    assert _row(b"\x00" * 5000 + line)["inputs"] == value.decode()  # zeros left by a crash
    for bad in (
        head + b"\t" + value,
        head + b"\t" + value + b"\t[2]\t[3]",
        head + b"\t" + value + b"\t",
        head + b"\t\t" + value,
    ):
        with pytest.raises(ValueError):
            _row(bad)
    with pytest.raises(UnicodeDecodeError):
        _row(head + b"\t" + value + "\t[\u00e9]".encode())
    with pytest.raises(ValueError):
        _row(head + b"\t" + value[:-1] + b"\tnull", validate=True)  # cut short


def test_lines_longer_than_a_read_and_crash_zeros_are_delivered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads smaller than a line (the read doubles until a line fits), a segment left
    with zeros before a line and a cut last line: every whole entry stored once."""
    log, spool = down_log(tmp_path)
    body = RawJSON(json.dumps(RECORDS[:50]).encode())
    for i in range(20):
        assert log.record(entry(f"r{i}", body, RawJSON(b'[{"label":"A"}]')))
    log.close(timeout=5)
    [segment] = sorted(spool.glob("*/seg-*.jsonl"))
    lines = segment.read_bytes().splitlines(keepends=True)
    zeros = b"\x00" * 3000  # what ext4 can leave after a crash: size grown, data not
    segment.write_bytes(b"".join(lines[:10]) + zeros + b"".join(lines[10:]) + lines[0][:500])
    monkeypatch.setattr("nbship.prediction_log.spool.READ_CHUNK", 256)
    url = url_for_sqlite(tmp_path / "log.db")
    with PredictionLog(url, spool) as again:
        assert again.flush(60)
        stats = again.stats
    assert (stats["written"], stats["corrupt"]) == (20, 1)  # the cut line is not JSON
    frame = read_log(url)
    assert sorted(frame["request_id"]) == sorted(f"r{i}" for i in range(20))
    assert all(inputs == RECORDS[:50] for inputs in frame["inputs"])


def test_many_large_entries_in_small_segments(tmp_path: Path) -> None:
    url = url_for_sqlite(tmp_path / "log.db")
    body = RawJSON(json.dumps(RECORDS).encode())
    answer = RawJSON(json.dumps(ANSWER, separators=(",", ":")).encode())
    sent = [new_request_id() for _ in range(60)]
    with PredictionLog(url, tmp_path / "spool", segment_bytes=500_000, batch_size=7) as log:
        for request_id in sent:
            assert log.record(replace(entry(request_id, body, answer), n_records=1000))
        assert log.flush(60)
        stats = log.stats
    assert (stats["written"], stats["corrupt"], stats["record_errors"]) == (60, 0, 0)
    frame = read_log(url)
    assert sorted(frame["request_id"]) == sorted(sent)
    assert frame["inputs"][0] == RECORDS and frame["outputs"][59] == ANSWER
