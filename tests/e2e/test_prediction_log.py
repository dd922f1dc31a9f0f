"""The prediction log behind a real `bentoml serve`: every request, answered or refused,
is one row in a real SQLite file, under concurrency and across a kill -9."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest

from nbship.prediction_log import count, read_log, url_for_sqlite
from tests.conftest import Project
from tests.support import free_port, kill9, start, stop, wait_http, wait_until

pytestmark = pytest.mark.e2e

BENTOML = str(Path(sys.executable).with_name("bentoml"))


def _records(project: Project, n: int) -> list[dict]:
    test = pd.read_parquet(project.root / "data" / "test.parquet")
    columns = project.config["features"]["numeric"] + project.config["features"]["categorical"]
    rows = json.loads(test[columns].to_json(orient="records"))
    return [rows[i % len(rows)] for i in range(n)]


def _serve(project: Project, tmp: Path, db: Path):
    port = free_port()
    env = {
        "BENTOML_HOME": str(tmp / "home"),
        "NBSHIP_LOG_URL": url_for_sqlite(db),
        "NBSHIP_LOG_SPOOL": str(tmp / "spool"),
    }
    proc = start([BENTOML, "serve", str(project.bento), "--host", "127.0.0.1", "--port",
                  str(port)], tmp / f"serve-{port}.log", env=env)  # fmt: skip
    wait_http(f"http://127.0.0.1:{port}/readyz", proc, timeout=90)
    return f"http://127.0.0.1:{port}", proc


def _wait_rows(url: str, expected: int, timeout: float = 30) -> int:
    wait_until(lambda: count(url) >= expected, timeout, 0.3)
    return count(url)


async def _send(server: str, bodies: list[object], concurrency: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=server, timeout=30, limits=limits) as client:
        return await asyncio.gather(*(client.post("/predict", json=b) for b in bodies))


def test_every_request_is_logged_under_load(built_project: Project, tmp_path: Path):
    db = tmp_path / "log.db"
    records = _records(built_project, 300)
    bodies: list[object] = [*records[:250], *(records[i : i + 10] for i in range(250, 300, 10))]
    bad = [{**records[0], "island": "Atlantis"}, {**records[1], "body_mass_g": "heavy"}]
    server, proc = _serve(built_project, tmp_path, db)
    try:
        responses = asyncio.run(_send(server, [*bodies, *bad], concurrency=16))
    finally:
        stop(proc)
    assert [r.status_code for r in responses] == [200] * len(bodies) + [400, 400]
    ids = [r.headers["x-request-id"] for r in responses]
    assert len(set(ids)) == len(ids)

    url = url_for_sqlite(db)
    assert _wait_rows(url, len(responses)) == len(responses)
    log = read_log(url).set_index("request_id")
    assert set(log.index) == set(ids)
    ok = log.loc[ids[0]]
    assert ok["status"] == "ok" and ok["http_status"] == 200 and ok["n_records"] == 1
    assert ok["inputs"] == bodies[0]
    assert ok["outputs"][0]["label"] == responses[0].json()["predictions"][0]["label"]
    assert ok["model_tag"] == responses[0].json()["model"] and ok["latency_ms"] > 0
    batch = log.loc[ids[250]]
    assert batch["n_records"] == 10 and len(batch["outputs"]) == 10
    for rid, field in ((ids[-2], "island"), (ids[-1], "body_mass_g")):
        row = log.loc[rid]
        assert row["status"] == "error" and row["http_status"] == 400
        assert row["error_class"] == "ValidationError" and field in row["error_message"]


def test_acknowledged_requests_survive_a_kill_9(built_project: Project, tmp_path: Path):
    db = tmp_path / "log.db"
    url = url_for_sqlite(db)
    records = _records(built_project, 120)
    server, proc = _serve(built_project, tmp_path, db)
    try:
        responses = asyncio.run(_send(server, records, concurrency=8))
        assert all(r.status_code == 200 for r in responses)
        kill9(proc)  # no shutdown hook, no flush
    finally:
        stop(proc)
    ids = {r.headers["x-request-id"] for r in responses}

    server, proc = _serve(built_project, tmp_path, db)  # same spool: it adopts the old one
    try:
        assert _wait_rows(url, len(ids)) >= len(ids)
    finally:
        stop(proc)
    assert ids <= set(read_log(url)["request_id"])


def test_log_cli_shows_and_exports(built_project: Project, tmp_path: Path):
    import subprocess

    db = tmp_path / "log.db"
    server, proc = _serve(built_project, tmp_path, db)
    try:
        responses = asyncio.run(_send(server, _records(built_project, 5), concurrency=2))
        asyncio.run(_send(server, [{"island": "Atlantis"}], concurrency=1))
    finally:
        stop(proc)
    url = url_for_sqlite(db)
    assert _wait_rows(url, 6) == 6
    env = {**built_project.env, "NBSHIP_LOG_URL": url}
    nbship = str(Path(sys.executable).with_name("nbship"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([nbship, "log", *args, "-p", str(built_project.path)], env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    shown = run("show", "--status", "error")
    assert shown.returncode == 0, shown.stderr
    assert "error" in shown.stdout and "400" in shown.stdout
    assert responses[0].headers["x-request-id"] not in shown.stdout
    exported = run("export", "-o", str(tmp_path / "log.parquet"), "--status", "ok")
    assert exported.returncode == 0, exported.stderr
    frame = pd.read_parquet(tmp_path / "log.parquet")
    assert sorted(frame["request_id"]) == sorted(r.headers["x-request-id"] for r in responses)
    csv = run("export", "-o", str(tmp_path / "log.csv"))
    assert csv.returncode == 0 and len(pd.read_csv(tmp_path / "log.csv")) == 6
    bad = run("export", "-o", str(tmp_path / "log.txt"))
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
