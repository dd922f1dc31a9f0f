"""Continuous learning end to end: two running servers, labelled feedback from a shifted
population (by request id and as new records), the retrain trigger fires by itself, the
new model passes the gates, and both servers switch to it (one under load) without a failed
request and answers differently where the feedback said it was wrong. Then feedback
that would make the model worse: the retrain runs, the gates refuse it, nothing changes.
Last, POST /admin/retrain: token-checked, it records a request the watcher acts on."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from nbship.config import RetrainSettings
from nbship.operate.retrain import due
from nbship.prediction_log import RETRAIN_REQUEST_KIND, count, url_for_sqlite
from nbship.registry.versions import Registry
from tests.conftest import NBSHIP, Project
from tests.support import (
    free_port,
    info,
    load_until,
    start,
    stop,
    wait_for_tag,
    wait_http,
    wait_until,
)

pytestmark = pytest.mark.e2e

BENTOML = str(Path(sys.executable).with_name("bentoml"))
TOKEN = "test-admin-token"
RECORD = {"island": "Biscoe", "bill_length_mm": 45.2, "bill_depth_mm": 15.1,
          "flipper_length_mm": 215, "body_mass_g": 5200, "sex": "male"}  # fmt: skip


def shifted(n: int, seed: int) -> list[dict]:
    """Penguins the training data has none of (Adelie-sized, on Torgersen, with bills of
    60-69 mm, inside the suite's range): the first model calls them something else."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "island": "Torgersen",
        "bill_length_mm": rng.uniform(60, 69, n).round(1),
        "bill_depth_mm": rng.uniform(17, 20, n).round(1),
        "flipper_length_mm": rng.uniform(185, 200, n).round(0),
        "body_mass_g": rng.uniform(3300, 4200, n).round(0),
        "sex": rng.choice(["male", "female"], n),
    })  # fmt: skip
    return frame.to_dict(orient="records")


def _labels(url: str, records: list[dict]) -> tuple[list[str], httpx.Response]:
    response = httpx.post(f"{url}/predict", json=records, timeout=30)
    assert response.status_code == 200, response.text
    return [p["label"] for p in response.json()["predictions"]], response


def _post_feedback(url: str, items: list[dict]) -> None:
    response = httpx.post(f"{url}/feedback", json={"items": items}, timeout=30)
    assert response.status_code == 200, response.text


def _wait_logged(db_url: str, kind: str, n: int, timeout: float = 30) -> None:
    reached = wait_until(lambda: count(db_url, kind=kind) >= n, timeout, 0.3)
    assert reached, f"{kind} entries did not reach the log"


def test_feedback_retrains_and_the_server_switches(built_project: Project, tmp_path: Path):
    project = built_project.copy_to(tmp_path / "project")
    first = project.summary["model_tag"]
    cfg = project.config
    cfg["retrain"] = {"every_labels": 80, "every_hours": None, "poll_seconds": 1}
    # retrain the champion's estimator on the new data, and a policy sized to a golden
    # set of 12 rows, where one changed probability is already a share of 0.083
    with Registry(f"sqlite:///{project.path / 'registry.db'}") as registry:
        cfg["candidates"] = [registry.get(first).candidate]
    cfg["gates"]["max_diff_share"] = 0.25
    project.write_config(cfg)
    db = url_for_sqlite(project.path / "prediction_log.db")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "BENTOML_HOME": str(tmp_path / "home"),
        "NBSHIP_REGISTRY_URL": f"sqlite:///{project.path / 'registry.db'}",
        "NBSHIP_MODEL_STORE": str(project.path / "model-store"),
        "NBSHIP_MODEL_CACHE": str(tmp_path / "cache"),
        "NBSHIP_RELOAD_SECONDS": "0.5",
        "NBSHIP_ADMIN_TOKEN": TOKEN,
        "NBSHIP_LOG_URL": db,
        "NBSHIP_LOG_SPOOL": str(tmp_path / "spool"),
    }
    server = start([BENTOML, "serve", str(project.bento.resolve()), "--host", "127.0.0.1",
                    "--port", str(port)], tmp_path / "serve.log", env=env)  # fmt: skip
    # a second server on the same registry (its own spool), that nobody tells anything
    port2 = free_port()
    replica = start([BENTOML, "serve", str(project.bento.resolve()), "--host", "127.0.0.1",
                     "--port", str(port2)], tmp_path / "replica.log",
                    env={**env, "NBSHIP_LOG_SPOOL": str(tmp_path / "spool2")})  # fmt: skip
    watcher = None
    try:
        wait_http(f"{url}/readyz", server, timeout=90)
        wait_http(f"http://127.0.0.1:{port2}/readyz", replica, timeout=90)
        probes = shifted(40, seed=99)
        before, _ = _labels(url, probes)
        assert before.count("Adelie") <= 10, before  # the first model gets them wrong

        # true labels: for 40 logged predictions (by request id and row) and 40 new records
        _, answered = _labels(url, shifted(40, seed=1))
        request_id = answered.headers["x-request-id"]
        _post_feedback(url, [{"request_id": request_id, "row": i, "label": "Adelie"}
                             for i in range(40)])  # fmt: skip
        _post_feedback(url, [{"record": r, "label": "Adelie"} for r in shifted(40, seed=2)])
        _wait_logged(db, "feedback", 2)

        # the trigger (every 80 labels) starts a retrain by itself; load runs meanwhile
        async def retrain_under_load() -> tuple[list[tuple[int, str]], str | None]:
            nonlocal watcher
            done = asyncio.Event()
            load = asyncio.create_task(load_until(url, done, RECORD))
            watcher = start([NBSHIP, "retrain", "watch"], tmp_path / "watch.log",
                            env=project.env, cwd=project.path)  # fmt: skip
            new = await asyncio.to_thread(_wait_for_new_champion, project, first, 240)
            switched = new is not None and await asyncio.to_thread(wait_for_tag, url, new)
            await asyncio.sleep(1)
            done.set()
            return await load, new if switched else None

        answers, second = asyncio.run(retrain_under_load())
        stop(watcher)
        assert second is not None, (tmp_path / "watch.log").read_text()
        assert {status for status, _ in answers} == {200}, "no request fails during the swap"
        tags = [tag for _, tag in answers]
        assert tags[0] == first and tags[-1] == second

        assert wait_for_tag(f"http://127.0.0.1:{port2}", second)  # every server switches
        after, answered = _labels(url, probes)
        assert answered.json()["model"] == second
        assert after.count("Adelie") >= 36, after  # it learnt from the feedback
        assert _labels(url, [RECORD])[0] == ["Gentoo"]  # and still knows the rest
        served = info(url)
        assert served["model_tag"] == second and served["source"] == "registry"
        assert served["metadata"]["feedback"]["rows"] == 80

        # the run is recorded: trigger, verdict, the data it learnt from (fingerprinted)
        runs = project.run("retrain", "status", "--json")
        run = json.loads(runs.stdout)[0]
        assert run["state"] == "succeeded" and run["promoted"] and run["model_tag"] == second
        assert run["trigger"].startswith("80 new labels")
        with Registry(f"sqlite:///{project.path / 'registry.db'}") as registry:
            version = registry.get(second)
            assert version.extra["feedback"]["rows"] == 80
            assert version.extra["data_fingerprints"]["feedback"] == run["feedback"]["fingerprint"]
            metric = next(g for g in version.gates if g["gate"] == "metric")
            assert metric["evidence"]["challenger"] > metric["evidence"]["champion"]
            assert "same" in metric["evidence"]["scored_on"]

        # feedback that ties the species to the sex column: the gates refuse the result
        normal = pd.read_parquet(project.root / "data" / "train.parquet").head(150)
        records = normal[list(RECORD)].dropna().to_dict(orient="records")
        _post_feedback(url, [{"record": r, "label": "Gentoo" if r["sex"] == "male" else
                              "Adelie"} for r in records])  # fmt: skip
        _wait_logged(db, "feedback", 3)
        result = project.run("retrain", "--wait")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "NOT promoted" in result.stdout
        third = project.summary["model_tag"]
        assert third not in (first, second) and not project.summary["promoted"]
        with Registry(f"sqlite:///{project.path / 'registry.db'}") as registry:
            assert registry.alias("penguins_classifier", "champion").tag == second
            assert any(not g["passed"] for g in registry.get(third).gates)
        admin = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.post(f"{url}/admin/reload", headers=admin,
                          timeout=30).json()["model_tag"] == second  # fmt: skip

        # POST /admin/retrain records a request (the server trains nothing) that the
        # watcher acts on; without the token: 401 and nothing recorded
        asked_at = datetime.now(UTC)
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            assert httpx.post(f"{url}/admin/retrain", headers=headers).status_code == 401
        requested = httpx.post(f"{url}/admin/retrain", headers=admin, timeout=10)
        assert requested.status_code == 202, requested.text
        _wait_logged(db, RETRAIN_REQUEST_KIND, 1)
        time.sleep(1.5)  # nothing else arrives
        assert count(db, kind=RETRAIN_REQUEST_KIND) == 1
        assert due(project.path, RetrainSettings(), db, since=asked_at) == "admin request"
    finally:
        if watcher is not None:
            stop(watcher)
        stop(server)
        stop(replica)


def _wait_for_new_champion(project: Project, old: str, timeout: float) -> str | None:
    def new_champion() -> str | None:
        with Registry(f"sqlite:///{project.path / 'registry.db'}") as registry:
            champion = registry.alias("penguins_classifier", "champion")
        return champion.tag if champion is not None and champion.tag != old else None

    return wait_until(new_champion, timeout, interval=1)
