"""`nbship release check`'s guard rails on a real registry and a real prediction log: a
canary worse on labelled feedback, or answering unlike the champion, is rolled back once
and alerted; one within its rails, a shadow, or no release, is left alone."""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nbship.config import GuardSettings
from nbship.operate.alert_rules import Sink
from nbship.operate.release_guard import check_release
from nbship.prediction_log import FEEDBACK_KIND, LogEntry, PredictionLog, url_for_sqlite
from nbship.registry.versions import Registry

pytestmark = pytest.mark.unit

CLASSES = ["Adelie", "Gentoo"]


def answer(label: str) -> list[dict]:
    return [{"label": label, "probabilities": {c: float(c == label) for c in CLASSES}}]


def write_log(url: str, spool: Path, tags: dict[str, str], accuracy: dict[str, float],
              labels_of: dict[str, str] | None = None, n: int = 300) -> None:  # fmt: skip
    """n answers split between the arms' tags, each labelled; an arm answers correctly
    with its `accuracy`, or always `labels_of[arm]`."""
    rng = random.Random(7)
    start = datetime.now(UTC) + timedelta(seconds=1)
    entries, feedback = [], []
    for i in range(n):
        arm = "champion" if i % 2 else "canary"
        truth = CLASSES[i % 4 // 2]
        other = (labels_of or {}).get(arm) or CLASSES[1 - CLASSES.index(truth)]
        said = truth if rng.random() < accuracy[arm] else other
        if arm in (labels_of or {}):
            said = other
        rid = f"r{i}"
        at = start + timedelta(milliseconds=i)
        entries.append(LogEntry(request_id=rid, ts=at, kind="predict", model_tag=tags[arm],
                                inputs={}, outputs=answer(said), latency_ms=2.0, status="ok",
                                http_status=200, n_records=1))  # fmt: skip
        feedback.append({"label": truth, "request_id": rid, "row": 0, "record": None})
    entries.append(LogEntry(request_id="fb", ts=start + timedelta(seconds=1), kind=FEEDBACK_KIND,
                            model_tag=None, inputs=feedback, outputs=None, latency_ms=0.0,
                            status="ok", http_status=200, n_records=len(feedback)))  # fmt: skip
    with PredictionLog(url, spool) as log:
        for e in entries:
            assert log.record(e)
        assert log.flush()


@pytest.fixture
def registry(tmp_path: Path):
    with Registry(f"sqlite:///{tmp_path / 'registry.db'}") as reg:
        for tag in ("clf:v1", "clf:v2"):
            reg.register(tag, {"candidate": "c", "task": "classification", "classes": CLASSES})
        reg.promote("clf:v1", actor="t", reason="first")
        yield reg


TAGS = {"champion": "clf:v1", "canary": "clf:v2"}


def test_a_canary_worse_on_feedback_is_rolled_back_and_alerted(registry, tmp_path, caplog):
    url = url_for_sqlite(tmp_path / "log.db")
    started = registry.start_release("clf:v2", "canary", 0.5, actor="t", reason="try")
    write_log(url, tmp_path / "spool", TAGS, {"champion": 0.95, "canary": 0.6})
    guard = GuardSettings(max_answer_psi=None)  # only the metric
    with caplog.at_level(logging.WARNING, logger="nbship.operate.alerts"):
        result = check_release(registry, url, "clf", guard, [Sink("log")], actor="check")
    assert result.rolled_back and result.release is not None and result.release.id == started.id
    (breach,) = result.breaches
    assert breach.metric == "accuracy canary - champion" and breach.value < -0.2
    ended = registry.releases("clf")[0]
    assert ended.outcome == "rolled_back" and ended.end_reason is not None
    assert ended.end_reason.startswith("worse on labelled feedback: accuracy canary - champion")
    assert "release_guard:canary clf:v2: accuracy canary - champion" in caplog.text
    again = check_release(registry, url, "clf", guard, [Sink("log")], actor="check")
    assert again.release is None and not again.rolled_back  # nothing runs any more


def test_a_canary_answering_unlike_the_champion_is_rolled_back(registry, tmp_path):
    url = url_for_sqlite(tmp_path / "log.db")
    registry.start_release("clf:v2", "canary", 0.5, actor="t", reason="try")
    # it answers Gentoo to everything (no feedback needed to see that)
    write_log(url, tmp_path / "spool", TAGS, {"champion": 0.95, "canary": 0.0},
              labels_of={"canary": "Gentoo"})  # fmt: skip
    guard = GuardSettings(on_worse_metric=False)
    result = check_release(registry, url, "clf", guard, [], actor="check")
    assert result.rolled_back and [b.metric for b in result.breaches] == ["answer_psi"]
    assert "answers unlike the champion's" in (registry.releases("clf")[0].end_reason or "")


def test_within_its_rails_a_canary_keeps_running(registry, tmp_path):
    url = url_for_sqlite(tmp_path / "log.db")
    registry.start_release("clf:v2", "canary", 0.5, actor="t", reason="try")
    write_log(url, tmp_path / "spool", TAGS, {"champion": 0.9, "canary": 0.9})
    result = check_release(registry, url, "clf", GuardSettings(), [], actor="check")
    assert not result.rolled_back and result.breaches == []
    assert result.report is not None and result.report["verdict"] != "champion is better"
    assert registry.active_release("clf") is not None
    registry.start_release("clf:v2", "shadow", 1.0, actor="t", reason="look")
    shadow = check_release(registry, url, "clf", GuardSettings(), [], actor="check")
    assert shadow.release is not None and shadow.report is None  # a shadow answers nobody
