"""The dashboard in a real headless browser: a real registry (two versions, the second
promoted) and a real prediction log (a few hundred requests over the last hours, some
failed) in SQLite files, `nbship dashboard` on 127.0.0.1 for a project pointed at them,
and Debian's
chromium driven by selenium: the page shows the champion, the charts render, the
versions are listed, the inline refresh runs, and the console stays free of errors."""

from __future__ import annotations

import asyncio
import json
import random
import re
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from nbship.drift import reference_profile
from nbship.pipeline.data import load_source
from nbship.prediction_log import LogEntry, PredictionLog, count, url_for_sqlite
from nbship.registry.versions import Registry
from tests.support import PROJECT, free_port, headless_chromium, start, stop, wait_http

pytestmark = pytest.mark.e2e

NBSHIP = str(Path(sys.executable).with_name("nbship"))
MODEL = "penguins_classifier"  # env.yaml's bento.name: the model `nbship dashboard` shows
OLD, NEW = f"{MODEL}:v1oldaaaaaaaaaaa", f"{MODEL}:v2newbbbbbbbbbbb"
NUMERIC = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
CATEGORICAL = ["island", "sex"]
REQUESTS = 360
HOURS = 3
CHARTS = {"traffic", "latency", "errors", "drift"}
HOSTILE = "<img src=x onerror=alert(1)>"


def _metadata(candidate: str, f1: float, profile: dict) -> dict:
    """What the pipeline registers (package.py), shortened."""
    return {
        "candidate": candidate,
        "params": {"C": 1.0} if candidate == "logreg" else {"n_estimators": 30},
        "metrics": {
            "test": {"accuracy": f1 + 0.01, "f1_macro": f1, "log_loss": 0.1},
            "train": {"accuracy": 1.0, "f1_macro": 1.0, "log_loss": 0.02},
        },
        "selection": {"metric": "f1_macro", "value": f1},
        "train_seconds": 0.2,
        "predict_ms": {"single": 1.5},
        "data_fingerprint": "sha256:" + "0" * 64,
        "definition_hash": "sha256:" + "1" * 64,
        "versions": {"scikit-learn": "1.6"},
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "features": NUMERIC + CATEGORICAL,
        "target": "species",
        "classes": ["Adelie", "Chinstrap", "Gentoo"],
        "drift_profile": profile,
    }


def _registry(url: str, profile: dict) -> None:
    with Registry(url) as registry:
        registry.register(OLD, _metadata("logreg", 0.95, profile), bento_tag=f"{MODEL}:b1")
        registry.promote(OLD, actor="e2e", reason="first model")
        registry.register(NEW, _metadata("forest", 0.97, profile), bento_tag=f"{MODEL}:b2")
        registry.promote(NEW, actor="e2e", reason="better f1_macro")


def _log(url: str, spool: Path, penguins) -> None:
    """REQUESTS requests spread over the last HOURS hours: the old model first, then the
    new one; every 20th rejected (422), every 45th a server error."""
    records = json.loads(penguins[NUMERIC + CATEGORICAL].to_json(orient="records"))
    species = list(penguins["species"])
    rng = random.Random(7)
    now = datetime.now(UTC)
    log = PredictionLog(url, spool).start()
    try:
        for i in range(REQUESTS):
            ts = now - timedelta(hours=HOURS) + timedelta(hours=HOURS) * (i + 0.5) / REQUESTS
            row = rng.randrange(len(records))
            tag = OLD if i < REQUESTS // 2 else NEW
            ok = i % 20 != 7 and i % 45 != 11
            status = 200 if ok else 422 if i % 20 == 7 else 500
            label = species[row]
            shares = {c: 0.9 if c == label else 0.05 for c in ("Adelie", "Chinstrap", "Gentoo")}
            outputs = [{"label": label, "probabilities": shares}] if ok else None
            message = None
            if status == 422:
                message = '{"error": "bad input", "detail": [{"loc": [0, "island"]}]}'
            elif status == 500:
                message = "boom"
            entry = LogEntry(
                request_id=f"req-{i:05d}",
                ts=ts,
                kind="predict",
                model_tag=tag,
                inputs=[records[row]],
                outputs=outputs,
                latency_ms=rng.uniform(2.0, 20.0),
                status="ok" if ok else "error",
                http_status=status,
                error_class=None if ok else "ValidationError" if status == 422 else "ServerError",
                error_message=message,
                n_records=1,
            )
            assert log.record(entry)
    finally:
        log.close()
    assert count(url) == REQUESTS


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory):
    """`nbship dashboard` on a free port of 127.0.0.1: yields its base URL. The project
    is the example's configuration; its registry and log are the files made here, named
    by the same environment overrides a deployment uses."""
    tmp = tmp_path_factory.mktemp("dashboard")
    penguins = load_source("palmerpenguins:load_penguins")
    profile = reference_profile(penguins, NUMERIC, CATEGORICAL, target="species")
    registry_url, log_url = url_for_sqlite(tmp / "registry.db"), url_for_sqlite(tmp / "log.db")
    _registry(registry_url, profile)
    _log(log_url, tmp / "spool", penguins)
    (tmp / "profile.json").write_text(json.dumps(profile))
    project = tmp / "project"
    project.mkdir()
    for name in ("env.yaml", "pipeline.yaml"):
        shutil.copy2(PROJECT / name, project / name)
    env = {"NBSHIP_REGISTRY_URL": registry_url, "NBSHIP_LOG_URL": log_url}
    port = free_port()
    cmd = [
        NBSHIP, "dashboard", "--project", str(project), "--profile", str(tmp / "profile.json"),
        "--window-minutes", "30", "--period-hours", "6", "--refresh-seconds", "2",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    proc = start(cmd, tmp / "dashboard.log", env=env, cwd=project)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory):
    with headless_chromium(tmp_path_factory.mktemp("chromium")) as browser:
        yield browser


def _charts(driver) -> dict[str, tuple[float, float]]:
    """{chart name: (width, height)} of every displayed [data-chart] svg, read in one
    script call (the refresh may replace the elements at any time)."""
    script = """
      return Array.from(document.querySelectorAll('[data-chart] svg')).map((svg) => {
        const box = svg.getBoundingClientRect();
        const style = getComputedStyle(svg);
        const shown = style.display !== 'none' && style.visibility !== 'hidden';
        return [svg.closest('[data-chart]').dataset.chart, shown ? box.width : 0,
                shown ? box.height : 0];
      });
    """
    return {name: (w, h) for name, w, h in driver.execute_script(script)}


def test_dashboard_in_a_headless_browser(driver, dashboard: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    started = time.monotonic()
    driver.get(dashboard + "/")
    assert "nbship dashboard" in driver.title

    champion = driver.find_element(By.ID, "champion")
    assert champion.is_displayed()
    assert NEW in champion.text and OLD not in champion.text

    charts = _charts(driver)
    assert set(charts) >= CHARTS, charts
    assert all(w > 100 and h > 50 for w, h in charts.values()), charts
    svg = driver.find_element(By.CSS_SELECTOR, '[data-chart="traffic"] svg')
    assert svg.is_displayed() and svg.size["width"] > 0 and svg.size["height"] > 0

    versions = driver.find_element(By.ID, "versions").text
    assert OLD in versions and NEW in versions
    rows = driver.find_elements(By.CSS_SELECTOR, "#versions tbody tr")
    assert len(rows) == 2 and NEW in rows[0].text and "champion" in rows[0].text

    # one refresh cycle of the inline script (every 2 s): it re-reads /api/summary and
    # /fragment and counts its successful refreshes on <body>
    WebDriverWait(driver, 15, poll_frequency=0.2).until(
        lambda d: int(d.execute_script("return document.body.dataset.refreshes || 0")) >= 1
    )
    assert driver.find_element(By.ID, "refresh-status").text == ""
    assert NEW in driver.find_element(By.ID, "champion").text
    assert set(_charts(driver)) >= CHARTS
    assert driver.find_element(By.CSS_SELECTOR, '[data-field="period.requests"]').text == str(
        REQUESTS
    )

    # everything the page loaded came from the dashboard itself
    loaded = driver.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name)"
    )
    assert loaded and all(url.startswith(dashboard + "/") for url in loaded), loaded
    external_scripts = "return Array.from(document.scripts).filter((s) => s.src).length"
    assert driver.execute_script(external_scripts) == 0
    assert not driver.execute_script(
        "return document.querySelectorAll('link[href^=http], img[src^=http], "
        "iframe, object, embed').length"
    )

    # the console: a probe shows the log is captured, then nothing SEVERE
    driver.execute_script("console.warn('nbship-e2e-probe')")
    entries = driver.get_log("browser")
    assert any("nbship-e2e-probe" in e["message"] for e in entries), entries
    severe = [e for e in entries if e["level"] == "SEVERE"]
    assert not severe, severe
    assert time.monotonic() - started < 30


def test_dashboard_html_and_json(dashboard: str) -> None:
    page = httpx.get(dashboard + "/", timeout=30)
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    html = page.text
    assert '<meta http-equiv="Content-Security-Policy"' in html
    external = [u for u in re.findall(r"(?:https?:)?//[\w.-]+", html) if "127.0.0.1" not in u]
    assert not external, external
    assert not re.search(r"<script[^>]*\bsrc=", html)
    assert "no traffic yet" not in html

    summary = httpx.get(dashboard + "/api/summary", timeout=30).json()
    assert summary["champion"]["tag"] == NEW
    assert summary["champion"]["selection"] == {"name": "f1_macro", "value": 0.97}
    assert [v["tag"] for v in summary["versions"]] == [NEW, OLD]
    assert summary["versions"][0]["aliases"] == ["champion"]
    period = summary["period"]
    errors = sum(1 for i in range(REQUESTS) if i % 20 == 7 or i % 45 == 11)
    assert period["requests"] == REQUESTS and period["errors"] == errors
    assert period["error_rate"] == pytest.approx(errors / REQUESTS)
    assert 2.0 <= period["latency_p50_ms"] <= period["latency_p99_ms"] <= 20.0
    assert sum(period["models"].values()) == REQUESTS
    assert summary["versions"][0]["requests"] + summary["versions"][1]["requests"] == REQUESTS
    assert summary["drift"]["source"] == "given"
    assert summary["drift"]["latest"] is not None
    assert set(summary["drift"]["period"]) == set(NUMERIC + CATEGORICAL)
    assert summary["alerts"] is None  # no alert store in the log's database
    assert summary["problems"] == []
    assert httpx.get(dashboard + "/healthz", timeout=5).text == "ok"
    # a Host header other than 127.0.0.1/localhost is refused (DNS rebinding)
    assert httpx.get(dashboard + "/", headers={"host": "evil.test"}).status_code == 400


def test_empty_sources_render_no_traffic_yet(tmp_path: Path) -> None:
    """No registry, no log yet: the page still renders, and nothing is created."""
    from nbship.operate.dashboard import create_app

    registry, log = tmp_path / "registry.db", tmp_path / "log.db"
    app = create_app(
        registry_url=url_for_sqlite(registry),
        log_url=url_for_sqlite(log),
        model_name=HOSTILE,
        profile=None,
    )

    async def fetch() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return await client.get("/"), await client.get("/api/summary")

    page, answer = asyncio.run(fetch())
    summary = answer.json()
    assert page.status_code == 200
    assert "no traffic yet" in page.text and 'id="champion"' in page.text
    assert "No model versions registered yet" in page.text
    assert summary["champion"] is None and summary["versions"] == []
    assert summary["period"]["requests"] == 0 and summary["problems"] == []
    assert not registry.exists() and not log.exists()
    assert HOSTILE not in page.text and "&lt;img src=x onerror=alert(1)&gt;" in page.text


def test_champions_drift_reference_and_stored_alerts(tmp_path: Path) -> None:
    """Without a profile the champion's stored `drift_profile` is the reference; alerts
    in the log's database (the monitor's default store) are listed."""
    from nbship.operate.alert_rules import Alert
    from nbship.operate.alert_store import AlertStore
    from nbship.operate.dashboard import _live, build_summary

    profile = reference_profile(load_source("palmerpenguins:load_penguins"), NUMERIC, CATEGORICAL)
    registry_url, log_url = url_for_sqlite(tmp_path / "r.db"), url_for_sqlite(tmp_path / "l.db")
    _registry(registry_url, profile)
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    alert = Alert("errors", "error_rate", ">", 0.5, 0.05, start, start + timedelta(hours=1))
    with AlertStore(log_url) as store:
        store.record([alert])
    summary = build_summary(registry_url=registry_url, log_url=log_url, model_name=MODEL)
    assert summary["drift"]["source"] == "champion"
    assert set(summary["drift"]["period"]) == set(NUMERIC + CATEGORICAL)
    assert [a["rule"] for a in summary["alerts"]] == ["errors"]
    assert summary["champion"]["tag"] == NEW and summary["period"]["requests"] == 0
    assert "no traffic yet" in _live(summary, 0.2) and "error_rate" in _live(summary, 0.2)
