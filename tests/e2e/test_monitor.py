"""`nbship monitor` on traffic logged by a real server: training-like traffic raises no
alert; shifted traffic raises the drift alert, recorded and posted to a local webhook."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pandas as pd
import pytest

from nbship.prediction_log import count, url_for_sqlite
from tests.conftest import Project
from tests.support import free_port, start, stop, wait_http

pytestmark = pytest.mark.e2e

BENTOML = str(Path(sys.executable).with_name("bentoml"))
NBSHIP = str(Path(sys.executable).with_name("nbship"))


class Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook():
    server = HTTPServer(("127.0.0.1", free_port()), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Hook.received = []
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", Hook.received
    finally:
        server.shutdown()
        server.server_close()


def _traffic(project: Project, tmp: Path, db: Path, bodies: list[dict]) -> None:
    port = free_port()
    env = {"BENTOML_HOME": str(tmp / "home"), "NBSHIP_LOG_URL": url_for_sqlite(db),
           "NBSHIP_LOG_SPOOL": str(tmp / f"spool-{db.stem}")}  # fmt: skip
    proc = start([BENTOML, "serve", str(project.bento), "--host", "127.0.0.1", "--port",
                  str(port)], tmp / f"serve-{db.stem}.log", env=env)  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc, timeout=90)

        async def send() -> list[int]:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                return [(await client.post("/predict", json=b)).status_code for b in bodies]

        assert set(asyncio.run(send())) == {200}
    finally:
        stop(proc)  # SIGTERM: the log is flushed on the way out
    assert count(url_for_sqlite(db)) == len(bodies)


def test_monitor_alerts_on_drift_only(built_project: Project, tmp_path: Path, webhook):
    url, received = webhook
    project = built_project.copy_to(tmp_path / "project")
    cfg = project.config
    cfg["monitoring"]["sinks"] = [{"type": "log"}, {"type": "webhook", "url": url}]
    project.write_config(cfg)
    columns = cfg["features"]["numeric"] + cfg["features"]["categorical"]
    train = pd.read_parquet(project.root / "data" / "train.parquet")[columns]
    like_training = json.loads(train.sample(80, random_state=1).to_json(orient="records"))
    shifted = [
        {**r, "island": "Torgersen",
         "body_mass_g": min(6500.0, (r["body_mass_g"] or 4000) + 1500)}
        for r in like_training
    ]  # fmt: skip

    def monitor(db: Path) -> subprocess.CompletedProcess[str]:
        env = {**project.env, "NBSHIP_LOG_URL": url_for_sqlite(db)}
        return subprocess.run([NBSHIP, "monitor", "-p", str(project.path), "--hours", "2", "-o",
                               str(tmp_path / f"{db.stem}.html")], env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip

    _traffic(project, tmp_path, tmp_path / "calm.db", like_training)
    calm = monitor(tmp_path / "calm.db")
    assert calm.returncode == 0, calm.stderr
    assert "ALERT" not in calm.stdout and received == []
    page = (tmp_path / "calm.html").read_text()
    assert page.count("<svg") >= 5 and "<script" not in page

    _traffic(project, tmp_path, tmp_path / "drift.db", shifted)
    drift = monitor(tmp_path / "drift.db")
    assert drift.returncode == 0, drift.stderr
    assert "ALERT feature-drift" in drift.stdout
    assert [a["rule"] for a in received[0]["alerts"]] == ["feature-drift"]
    again = monitor(tmp_path / "drift.db")  # the same window: recorded and sent once
    assert "ALERT feature-drift" in again.stdout and len(received) == 1
