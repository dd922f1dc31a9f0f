"""The session's bento served for real, fed hostile bodies and fuzzed by schemathesis
against its own OpenAPI document: no server error, no answer unlike the document, no
traceback, and every refused request still one row of the prediction log."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from benchmarks.fuzz import TOKEN, fuzz, served
from nbship.prediction_log import read_log, url_for_sqlite
from tests.conftest import Project
from tests.support import wait_until

pytestmark = pytest.mark.e2e

RECORD = {"island": "Biscoe", "bill_length_mm": 45.2, "bill_depth_mm": 15.1,
          "flipper_length_mm": 215, "body_mass_g": 5200, "sex": "male"}  # fmt: skip
# CI's bound: ~25 cases per operation and phase (some 300 in all), at most 40 s of it
EXAMPLES, SECONDS = 25, 40


@dataclass(frozen=True)
class Served:
    url: str
    folder: Path  # the log database, the spool and the server's output

    @property
    def log_url(self) -> str:
        return url_for_sqlite(self.folder / "log.db")


@pytest.fixture(scope="module")
def server(built_project: Project, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("fuzz")
    with served(built_project.bento, folder) as url:
        yield Served(url, folder)
    output = (folder / "serve.log").read_text()
    assert "Traceback" not in output, output[-4000:]


def logged(server: Served, ids: list[str]) -> dict[str, dict]:
    """The log's rows of these request ids, once they all arrived (or what came in 30 s)."""

    def rows() -> dict[str, dict] | None:
        log = read_log(server.log_url)
        found = {r["request_id"]: r for r in log.to_dict("records") if r["request_id"] in ids}
        return found if len(found) == len(ids) else None

    return wait_until(rows, 30, 0.3) or {}


def test_hostile_bodies_are_refused_as_documented_and_logged(server: Served):
    nested = b"[" * 100_000 + b"]" * 100_000
    huge = json.dumps([RECORD] * 200_000).encode()  # 26 MB: 200,000 records
    with httpx.Client(base_url=server.url, timeout=30) as client:
        deep = client.post("/predict", content=nested, headers={"content-type": "application/json"})
        t0 = time.perf_counter()
        big = client.post("/predict", content=huge, headers={"content-type": "application/json"})
        big_seconds = time.perf_counter() - t0
        form = client.post("/predict", content=b"{}", headers={
            "content-type": "multipart/form-data; boundary=x"})  # fmt: skip
        ok = client.post("/predict", json=RECORD)
    assert deep.status_code == 400, deep.text
    assert deep.json()["detail"][0]["type"] == "json_too_deep"
    assert big.status_code == 413, big.text[:500]
    limit = big.json()["detail"][0]["msg"]
    assert "limit of 2000000 bytes" in limit and "max_request_mb" in limit
    # refused on its Content-Length: not read (let alone parsed) in full
    assert big_seconds < 2, big_seconds
    assert form.status_code == 415 and ok.status_code == 200
    responses = [deep, big, form, ok]
    assert all("Traceback" not in r.text for r in responses)
    ids = [r.headers["x-request-id"] for r in responses]
    rows = logged(server, ids)
    assert sorted(rows) == sorted(ids), "an answered request without its row"
    assert [rows[i]["http_status"] for i in ids] == [400, 413, 415, 200]


def test_the_documented_api_holds_under_fuzzing(server: Served, tmp_path: Path):
    report = fuzz(server.url, examples=EXAMPLES, seconds=SECONDS, workdir=tmp_path, token=TOKEN)
    assert report.operations >= 9, report.summary()  # the model, info and admin routes
    assert report.cases >= 200, report.summary()  # a run that tested next to nothing fails
    assert report.server_errors == 0, report.output
    assert report.failures == [] and report.errors == [], report.output
    assert report.exit_code == 0, report.output
