"""Labelled feedback: from log entries (request ids resolved to the logged inputs, new
records as given) to a training table, and into the split without moving the golden set."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from nbship.operate.feedback import labelled_feedback, new_labels
from nbship.pipeline import data
from nbship.pipeline.training import Features
from nbship.prediction_log import LogEntry, PredictionLog, url_for_sqlite
from nbship.project import log_url

pytestmark = pytest.mark.unit

FEATURES = Features(("bill_length_mm", "body_mass_g"), ("island", "sex"))
T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)


def _record(i: int) -> dict:
    return {"bill_length_mm": 40.0 + i, "body_mass_g": 4000 + i, "island": "Dream",
            "sex": "male" if i % 2 else None}  # fmt: skip


def _entry(rid: str, kind: str, inputs, minutes: int, *, ok: bool = True) -> LogEntry:
    n = len(inputs) if isinstance(inputs, list) else 1
    return LogEntry(
        request_id=rid, ts=T0 + timedelta(minutes=minutes), kind=kind, model_tag="clf:v1",
        inputs=inputs, outputs=None, latency_ms=1.0, status="ok" if ok else "error",
        http_status=200 if ok else 400, n_records=n,
    )  # fmt: skip


def _write(url: str, spool: Path, entries: list[LogEntry]) -> None:
    with PredictionLog(url, spool) as log:
        for e in entries:
            assert log.record(e)
        assert log.flush()


def _fb(label: Any, request_id: str | None = None, row: int = 0, record: dict | None = None):
    return {"label": label, "request_id": request_id, "row": row, "record": record}


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = url_for_sqlite(tmp_path / "log.db")
    _write(url, tmp_path / "spool", [
        _entry("single", "predict", _record(0), 0),
        _entry("batch", "predict", [_record(1), _record(2), _record(3)], 1),
        _entry("refused", "predict", _record(4), 2, ok=False),
        _entry("fb-1", "feedback", [
            _fb("Gentoo", "single"),
            _fb("Adelie", "batch", row=2),
            _fb("Adelie", "batch", row=7),  # no such row
            _fb("Adelie", "unknown"),  # never logged (or purged)
            _fb("Adelie", "refused"),  # a refused request has no prediction to label
            _fb("Chinstrap", record=_record(9)),
        ], 3),
        _entry("fb-2", "feedback", [_fb("Chinstrap", "single")], 4),  # relabelled
    ])  # fmt: skip
    return url


def test_feedback_becomes_rows_of_logged_inputs_and_new_records(url: str):
    frame, summary = labelled_feedback(url, FEATURES, "species")
    assert _rows(frame) == [
        {**_record(0), "species": "Chinstrap"},  # the later label wins
        {**_record(3), "species": "Adelie"},  # row 2 of the batch
        {**_record(9), "species": "Chinstrap"},
    ]
    assert list(frame.columns) == [*FEATURES.columns, "species"]
    assert frame["bill_length_mm"].dtype == "float64" and frame["island"].dtype == "str"
    assert frame["sex"].isna().tolist() == [True, False, False]
    assert (summary.rows, summary.entries, summary.items) == (3, 2, 7)
    assert (summary.unresolved, summary.superseded) == (3, 1)
    assert summary.until == T0 + timedelta(minutes=4)
    assert summary.labels == {"Adelie": 1, "Chinstrap": 2}
    assert summary.fingerprint == data.fingerprint(frame)


def _rows(frame: pd.DataFrame) -> list[dict]:
    """The rows as dicts, a missing value as None (as in the logged JSON)."""
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


def test_an_empty_log_gives_an_empty_typed_table(tmp_path: Path):
    frame, summary = labelled_feedback(url_for_sqlite(tmp_path / "none.db"), FEATURES, "species")
    assert frame.empty and list(frame.columns) == [*FEATURES.columns, "species"]
    assert summary.rows == 0 and summary.until is None and summary.as_dict()["until"] is None


def test_new_labels_counts_items_since_a_time(url: str):
    assert new_labels(url, None) == 7
    assert new_labels(url, T0 + timedelta(minutes=3, seconds=30)) == 1
    assert new_labels(url, T0 + timedelta(hours=1)) == 0


def test_log_url_is_the_servers_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("NBSHIP_LOG_URL", raising=False)
    assert log_url(tmp_path, "sqlite:///log.db") == url_for_sqlite(tmp_path / "log.db")
    assert log_url(tmp_path, "postgresql+psycopg://h/db") == "postgresql+psycopg://h/db"
    monkeypatch.setenv("NBSHIP_LOG_URL", "sqlite:////srv/log.db")
    assert log_url(tmp_path, "sqlite:///log.db") == "sqlite:////srv/log.db"


def _penguins() -> pd.DataFrame:
    import palmerpenguins

    return palmerpenguins.load_penguins()


def test_feedback_joins_train_and_test_and_the_golden_set_stays():
    raw = _penguins()
    feedback = raw.sample(40, random_state=1)[[*FEATURES.columns, "species"]]
    alone = data.split(raw, "species", test_size=0.25, golden_size=20, seed=3)
    parts, counts = data.split_with_feedback(raw, feedback, "species", 0.25, 20, 3)
    assert counts == {"train": 30, "test": 10}
    assert len(parts.train) == len(alone.train) + 30 and len(parts.test) == len(alone.test) + 10
    pd.testing.assert_frame_equal(parts.golden, alone.golden)
    cols = [*FEATURES.columns, "species"]  # (columns feedback lacks, like year, become float)
    pd.testing.assert_frame_equal(parts.train.head(len(alone.train))[cols], alone.train[cols])
    assert parts.test.tail(10)["species"].nunique() == 3  # stratified


def test_too_little_feedback_all_goes_to_training():
    raw = _penguins()
    parts, counts = data.split_with_feedback(
        raw, raw.head(2)[["island", "species"]], "species", 0.25, 20, 3
    )
    assert counts == {"train": 2, "test": 0}
    empty, none = data.split_with_feedback(raw, raw.iloc[:0], "species", 0.25, 20, 3)
    assert none == {"train": 0, "test": 0}
    assert len(empty.train) == len(parts.train) - 2


def test_numeric_labels_of_a_regressor_stay_numbers(tmp_path: Path):
    url = url_for_sqlite(tmp_path / "log.db")
    _write(url, tmp_path / "spool", [
        _entry("single", "predict", _record(0), 0),
        _entry("batch", "predict", [_record(1), _record(2)], 1),
        _entry("fb-1", "feedback", [
            _fb(3650.5, "single"),
            _fb(4100, "batch", row=1),  # a JSON integer is a number too
            _fb(2875.25, record=_record(9)),
            _fb(1.0, "unknown"),
        ], 2),
        _entry("fb-2", "feedback", [_fb(3700.0, "single")], 3),  # relabelled
    ])  # fmt: skip
    frame, summary = labelled_feedback(url, FEATURES, "body_mass")
    assert frame["body_mass"].dtype == "float64"
    assert frame["body_mass"].tolist() == [3700.0, 4100.0, 2875.25]
    assert frame["island"].dtype == "str" and frame["bill_length_mm"].dtype == "float64"
    assert (summary.task, summary.rows, summary.unresolved, summary.superseded) == (
        "regression", 3, 1, 1,
    )  # fmt: skip
    assert summary.labels == {} and summary.label_range == [2875.25, 4100.0]
    assert summary.as_dict()["label_range"] == [2875.25, 4100.0]
    assert summary.fingerprint == data.fingerprint(frame)
    # the task given: an empty log still gives a numeric target column
    empty, _ = labelled_feedback(
        url_for_sqlite(tmp_path / "none.db"), FEATURES, "body_mass", task="regression"
    )
    assert empty.empty and empty["body_mass"].dtype == "float64"
    # a classifier's labels stay text, even when given as the task
    labelled, _ = labelled_feedback(url, FEATURES, "body_mass", task="classification")
    assert labelled["body_mass"].dtype == "str"
    with pytest.raises(ValueError, match="unknown task"):
        labelled_feedback(url, FEATURES, "body_mass", task="ranking")
