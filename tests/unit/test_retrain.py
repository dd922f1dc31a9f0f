"""Retrain triggers and run bookkeeping, against a real log database; one build at a
time per project."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nbship.common.artifacts import write_json
from nbship.config import RetrainSettings
from nbship.operate.retrain import due, runs, runs_dir
from nbship.pipeline.dag import BuildBusy, build_lock
from nbship.prediction_log import (
    RETRAIN_REQUEST_KIND,
    LogEntry,
    PredictionLog,
    url_for_sqlite,
)
from tests.support import PROJECT

pytestmark = pytest.mark.unit

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def _entry(kind: str, minutes: float, n: int) -> LogEntry:
    return LogEntry(
        request_id=f"{kind}-{minutes}", ts=NOW + timedelta(minutes=minutes), kind=kind,
        model_tag="clf:v1", inputs=[{"label": "Adelie"}] * n or None, outputs=None,
        latency_ms=0.0, status="ok", http_status=200, n_records=n,
    )  # fmt: skip


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name in ("env.yaml", "pipeline.yaml"):  # where the feedback summary goes
        shutil.copy2(PROJECT / name, tmp_path / name)
    return tmp_path


def _log(project: Path, *entries: LogEntry) -> str:
    url = url_for_sqlite(project / "log.db")
    with PredictionLog(url, project / "spool") as log:
        for e in entries:
            assert log.record(e)
        assert log.flush()
    return url


def test_labels_since_the_last_export_trigger_a_retrain(project: Path):
    url = _log(project, _entry("feedback", 1, 3), _entry("feedback", 2, 4))
    every_7 = RetrainSettings(every_labels=7)
    since = NOW - timedelta(days=1)
    assert due(project, every_7, url, since=since, now=NOW) == "7 new labels (every 7)"
    assert due(project, RetrainSettings(every_labels=8), url, since=since, now=NOW) is None
    # the last run took in what came before minute 1: 4 labels are new since
    exported = {"until": (NOW + timedelta(minutes=1)).isoformat()}
    write_json(exported, project / "build" / "data" / "feedback.json")
    assert due(project, every_7, url, since=since, now=NOW) is None
    assert due(project, RetrainSettings(every_labels=4), url, since=since, now=NOW) is not None


def test_an_admin_request_and_the_schedule_trigger_a_retrain(project: Path):
    url = _log(project, _entry(RETRAIN_REQUEST_KIND, 5, 0))
    settings = RetrainSettings(every_hours=2)
    assert due(project, settings, url, since=NOW, now=NOW) == "admin request"
    later = NOW + timedelta(minutes=10)  # the request came before the last run started
    assert due(project, settings, url, since=later, now=later + timedelta(hours=1)) is None
    when = later + timedelta(hours=2)
    assert due(project, settings, url, since=later, now=when) == "schedule (every 2 h)"
    assert due(project, RetrainSettings(), url, since=later, now=when) is None


def test_runs_are_listed_newest_first_and_a_killed_one_shows(project: Path):
    folder = runs_dir(project)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    states = [
        {"run_id": "a", "started": "2026-06-01T10:00:00+00:00", "state": "succeeded"},
        {"run_id": "b", "started": "2026-06-01T11:00:00+00:00", "state": "running",
         "pid": dead.pid},
        {"run_id": "c", "started": "2026-06-01T12:00:00+00:00", "state": "running",
         "pid": os.getpid()},
    ]  # fmt: skip
    for state in states:
        write_json(state, folder / f"{state['run_id']}.json")
    (folder / "torn.json").write_text("{")  # a state file being written
    assert [(r["run_id"], r["state"]) for r in runs(project)] == [
        ("c", "running"), ("b", "died"), ("a", "succeeded"),
    ]  # fmt: skip
    assert json.loads((folder / "b.json").read_text())["state"] == "running"


def test_one_build_at_a_time(project: Path):
    with build_lock(project), pytest.raises(BuildBusy, match=f"pid {os.getpid()}"):
        build_lock(project).__enter__()
    with build_lock(project):  # released when the first build ended
        pass


def test_workflow_steps_run_together_but_never_beside_a_whole_build(project: Path):
    # Argo runs independent steps (`nbship build --task`) at once on one shared volume
    two_steps = (build_lock(project, shared=True), build_lock(project, shared=True))
    with two_steps[0], two_steps[1], pytest.raises(BuildBusy):
        build_lock(project).__enter__()
    with build_lock(project), pytest.raises(BuildBusy):
        build_lock(project, shared=True).__enter__()
