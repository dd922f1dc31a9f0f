"""POST /feedback: validated like /predict, acknowledged only once spooled, so a kill -9
right after the answers loses none of it."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from nbship.prediction_log import read_log, url_for_sqlite
from tests.conftest import Project
from tests.support import free_port, kill9, start, stop, wait_http, wait_until

pytestmark = pytest.mark.e2e

BENTOML = str(Path(sys.executable).with_name("bentoml"))
RECORD = {"island": "Biscoe", "bill_length_mm": 45.2, "bill_depth_mm": 15.1,
          "flipper_length_mm": 215, "body_mass_g": 5200, "sex": "male"}  # fmt: skip


def _serve(project: Project, tmp: Path, env: dict[str, str]):
    port = free_port()
    proc = start([BENTOML, "serve", str(project.bento), "--host", "127.0.0.1", "--port",
                  str(port)], tmp / f"serve-{port}.log",
                 env={"BENTOML_HOME": str(tmp / "home"), **env})  # fmt: skip
    wait_http(f"http://127.0.0.1:{port}/readyz", proc, timeout=90)
    return f"http://127.0.0.1:{port}", proc


def test_feedback_is_validated_and_survives_a_kill_9(built_project: Project, tmp_path: Path):
    db = tmp_path / "log.db"
    env = {"NBSHIP_LOG_URL": url_for_sqlite(db), "NBSHIP_LOG_SPOOL": str(tmp_path / "spool")}
    url, proc = _serve(built_project, tmp_path, env)
    try:
        predicted = httpx.post(f"{url}/predict", json=RECORD, timeout=10)
        request_id = predicted.headers["x-request-id"]
        good = [
            {"items": [{"request_id": request_id, "label": "Gentoo"}]},
            {
                "items": [
                    {"record": RECORD, "label": "Gentoo"},
                    {"record": RECORD, "label": "Adelie"},
                ]
            },
        ]
        acks = [httpx.post(f"{url}/feedback", json=body, timeout=10) for body in good]
        bad = {
            "label": {"items": [{"request_id": request_id, "label": "Dodo"}]},
            "island": {"items": [{"record": {**RECORD, "island": "Atlantis"}, "label": "Gentoo"}]},
            "exactly one of request_id": {"items": [{"label": "Gentoo"}]},
        }
        refused = {
            field: httpx.post(f"{url}/feedback", json=b, timeout=10) for field, b in bad.items()
        }
        kill9(proc)
    finally:
        stop(proc)
    assert [a.status_code for a in acks] == [200, 200], [a.text for a in acks]
    for field, response in refused.items():
        assert response.status_code == 400, (field, response.text)
        assert field in response.text and "Traceback" not in response.text

    url, proc = _serve(built_project, tmp_path, env)  # adopts the killed server's spool
    try:
        log = wait_until(lambda: _both_stored(db), 30, 0.3)
    finally:
        stop(proc)
    assert log is not None, "the killed server's feedback did not reach the log"
    assert sorted(log["request_id"]) == sorted(a.json()["feedback_id"] for a in acks)
    items = [i for inputs in log["inputs"] for i in inputs]
    assert {"request_id": request_id, "label": "Gentoo", "row": 0, "record": None} in items
    assert sum(i["record"] == RECORD for i in items) == 2


def _both_stored(db: Path):
    log = read_log(url_for_sqlite(db), kind="feedback")
    return log if len(log) == 2 else None


def test_feedback_without_a_store_is_refused_not_lost(built_project: Project, tmp_path: Path):
    url, proc = _serve(built_project, tmp_path, {"NBSHIP_LOG_URL": "off"})
    try:
        response = httpx.post(f"{url}/feedback", json={"items": [{"record": RECORD,
                              "label": "Gentoo"}]}, timeout=10)  # fmt: skip
    finally:
        stop(proc)
    assert response.status_code == 503
