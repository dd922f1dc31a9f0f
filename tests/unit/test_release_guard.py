"""`nbship release check`'s guard rails on a real registry and a real prediction log: a
canary worse on labelled feedback, or answering unlike the champion, is rolled back once
and alerted; one within its rails, a shadow, or no release, is left alone. The watcher's
loop (`guard_release`) checks its own release until it is no longer the running one,
whoever ended it, and never judges the release that replaced it."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from nbship.common.sqlite import database_file
from nbship.config import GuardSettings
from nbship.operate import release_guard
from nbship.operate.alert_rules import Sink
from nbship.operate.release_guard import GuardCheck, check_release, guard_release
from nbship.prediction_log import FEEDBACK_KIND, LogEntry, PredictionLog, url_for_sqlite
from nbship.registry.versions import Registry
from tests.support import wait_until

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
        for tag in ("clf:v1", "clf:v2", "clf:v3"):
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


# the watcher's loop ---------------------------------------------------------------------

FAST = GuardSettings(check_seconds=0.05)


class Watching:
    """`guard_release` in a thread of its own, with its own connection to the registry
    (as the watcher process has), and a count of the rounds that read the log."""

    def __init__(self, registry: Registry, log_url: str, release_id: int,
                 monkeypatch: pytest.MonkeyPatch, guard: GuardSettings = FAST) -> None:  # fmt: skip
        self.rounds = 0
        self.result: GuardCheck | None = None
        self.stop = threading.Event()
        real = release_guard.release_rows

        def counted(*args: Any) -> Any:
            self.rounds += 1
            return real(*args)

        monkeypatch.setattr(release_guard, "release_rows", counted)

        def run() -> None:
            sinks = [Sink("log")]
            with Registry(registry.url) as own:
                self.result = guard_release(own, log_url, "clf", release_id, guard, sinks,
                                            actor="guard", stop=self.stop)  # fmt: skip

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def returned(self, timeout: float = 30) -> bool:
        self.thread.join(timeout)
        self.stop.set()  # a loop that did not return by itself must not outlive the test
        return not self.thread.is_alive()

    def wait_rounds(self, n: int) -> None:
        assert wait_until(lambda: self.rounds >= n, 30, 0.02), f"{self.rounds} rounds"


def test_the_watcher_rolls_a_worse_canary_back_and_returns(registry, tmp_path, monkeypatch):
    url = url_for_sqlite(tmp_path / "log.db")
    started = registry.start_release("clf:v2", "canary", 0.5, actor="t", reason="try")
    write_log(url, tmp_path / "spool", TAGS, {"champion": 0.95, "canary": 0.6})
    watching = Watching(registry, url, started.id, monkeypatch)
    assert watching.returned()
    assert watching.result is not None and watching.result.rolled_back
    ended = registry.releases("clf")[0]
    assert ended.id == started.id and ended.outcome == "rolled_back" and ended.end_actor == "guard"


def test_within_its_rails_the_watcher_runs_until_the_release_is_aborted(
    registry, tmp_path, monkeypatch
):
    url = url_for_sqlite(tmp_path / "log.db")
    started = registry.start_release("clf:v2", "canary", 0.5, actor="t", reason="try")
    write_log(url, tmp_path / "spool", TAGS, {"champion": 0.9, "canary": 0.9})
    watching = Watching(registry, url, started.id, monkeypatch)
    watching.wait_rounds(3)
    assert watching.thread.is_alive() and registry.active_release("clf") is not None
    registry.end_release("clf", "aborted", actor="alice", reason="enough")
    assert watching.returned()
    assert watching.result is not None and not watching.result.rolled_back
    (ended,) = registry.releases("clf")
    assert (ended.outcome, ended.end_actor, ended.end_reason) == ("aborted", "alice", "enough")


def test_a_replaced_release_s_watcher_returns_and_leaves_the_new_one_alone(
    registry, tmp_path, monkeypatch
):
    url = url_for_sqlite(tmp_path / "log.db")
    first = registry.start_release("clf:v2", "canary", 0.5, actor="t", reason="try")
    watching = Watching(registry, url, first.id, monkeypatch)
    watching.wait_rounds(1)
    second = registry.start_release("clf:v3", "canary", 0.5, actor="t", reason="another")
    # v3 is worse: whoever checks the new release would roll it back
    write_log(url, tmp_path / "spool", {"champion": "clf:v1", "canary": "clf:v3"},
              {"champion": 0.95, "canary": 0.6})  # fmt: skip
    assert watching.returned()
    assert check_release(registry, url, "clf", FAST, [], actor="old", release_id=first.id) == (
        GuardCheck(None)
    )
    running = registry.active_release("clf")
    assert running is not None and running.id == second.id
    assert [r.outcome for r in registry.releases("clf")] == [None, "replaced"]
    # its own watcher does roll it back
    own = check_release(registry, url, "clf", FAST, [], actor="new", release_id=second.id)
    assert own.rolled_back


def test_a_shadow_has_no_watcher_to_keep(registry, tmp_path, monkeypatch):
    url = url_for_sqlite(tmp_path / "log.db")
    shadow = registry.start_release("clf:v2", "shadow", 1.0, actor="t", reason="look")
    watching = Watching(registry, url, shadow.id, monkeypatch)
    assert watching.returned()
    assert registry.active_release("clf") == shadow


def failing_once(real: Callable[..., Any]) -> Callable[..., Any]:
    calls = []

    def flaky(*args: Any) -> Any:
        calls.append(args)
        if len(calls) == 1:
            raise OSError("the log's disk went away for a moment")
        return real(*args)

    return flaky


def test_a_transient_error_of_the_log_does_not_end_the_watch(registry, tmp_path, monkeypatch,
                                                              caplog):  # fmt: skip
    url = url_for_sqlite(tmp_path / "log.db")
    started = registry.start_release("clf:v2", "canary", 0.5, actor="t", reason="try")
    write_log(url, tmp_path / "spool", TAGS, {"champion": 0.95, "canary": 0.6})
    monkeypatch.setattr(release_guard, "release_rows", failing_once(release_guard.release_rows))
    with caplog.at_level(logging.WARNING, logger="nbship.operate.release_guard"):
        watching = Watching(registry, url, started.id, monkeypatch)
        assert watching.returned()
    assert watching.rounds == 2  # the failed round, then the one that rolled it back
    assert f"release {started.id}: check failed (OSError: the log's disk went away" in caplog.text
    assert watching.result is not None and watching.result.rolled_back
    assert registry.releases("clf")[0].outcome == "rolled_back"


def test_a_transient_error_of_the_registry_does_not_end_the_watch(registry, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    url = url_for_sqlite(tmp_path / "log.db")
    started = registry.start_release("clf:v2", "canary", 0.5, actor="t", reason="try")
    write_log(url, tmp_path / "spool", TAGS, {"champion": 0.95, "canary": 0.6})
    monkeypatch.setattr(Registry, "active_release", failing_once(Registry.active_release))
    watching = Watching(registry, url, started.id, monkeypatch)
    assert watching.returned()
    assert watching.result is not None and watching.result.rolled_back


def test_a_deleted_sqlite_registry_ends_the_watch(registry, tmp_path, monkeypatch):
    url = url_for_sqlite(tmp_path / "log.db")
    started = registry.start_release("clf:v2", "canary", 0.5, actor="t", reason="try")
    path = tmp_path / "elsewhere" / "registry.db"
    path.parent.mkdir()
    with Registry(f"sqlite:///{path}") as other:
        for tag in ("clf:v1", "clf:v2"):
            other.register(tag, {"candidate": "c", "task": "classification", "classes": CLASSES})
        other.promote("clf:v1", actor="t", reason="first")
        mine = other.start_release("clf:v2", "canary", 0.5, actor="t", reason="try")
        watching = Watching(other, url, mine.id, monkeypatch)
        watching.wait_rounds(1)
        for file in path.parent.iterdir():  # the project was deleted under the watcher
            file.unlink()
        path.parent.rmdir()
        assert watching.returned()
    assert registry.active_release("clf") == started  # another registry: untouched


def test_a_watcher_that_cannot_start_removes_its_pid_file(tmp_path):
    (tmp_path / "env.yaml").write_text("no_such_key: 1\n")
    pid_file = release_guard.watcher_pid_file(tmp_path, 7)  # written by start_watcher
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text("12345\n")
    assert release_guard.main([str(tmp_path), "7"]) == 2
    assert not pid_file.exists()  # `nbship release status` must not see a watcher


def test_only_a_sqlite_registry_can_be_gone(tmp_path):
    # a PostgreSQL URL's database is a name, not a file: its watcher must keep watching
    postgres = SimpleNamespace(url="postgresql://nbship@db.example/nbship")
    assert database_file(postgres.url) is None
    assert not release_guard._registry_gone(postgres)  # type: ignore[arg-type]
    sqlite = SimpleNamespace(url=f"sqlite:///{tmp_path / 'registry.db'}")
    assert release_guard._registry_gone(sqlite)  # type: ignore[arg-type]
    assert database_file("sqlite://") is None  # in memory
