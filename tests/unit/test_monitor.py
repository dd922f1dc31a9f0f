"""The monitor on a real prediction-log file with several hours of traffic (normal
hours, a drifted hour, an hour of server errors, a nearly idle hour): the alerts fire
in the right windows, once, reach the webhook, and the HTML report is self-contained,
escaped and shows the drifted hour in its evidence."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from nbship.operate.alert_rules import parse_config
from nbship.operate.alert_store import AlertStore
from nbship.operate.monitor import SECTIONS, build_report, run_monitor
from nbship.operate.windows import window_bounds
from nbship.prediction_log import url_for_sqlite
from tests.support import PROJECT
from tests.unit.test_alerts import (
    EXAMPLE_CONFIG,
    HOUR,
    START,
    Receiver,
    an_alert,
    ok_entries,
    penguin_data,
    pydantic_message,
    rejected_entry,
    sample,
    server_error_entry,
    training_profile,
    write_log,
)

pytestmark = pytest.mark.unit

SUITE = PROJECT / "expectations" / "penguins.json"
ODD_TAG = 'penguins:v2 <b>"&co"</b>'  # text from the log is escaped, never markup
ODD_ISLAND = "<i>Atlantis</i>"


@pytest.fixture(scope="module")
def penguins() -> pd.DataFrame:
    return penguin_data()


@pytest.fixture(scope="module")
def profile(penguins: pd.DataFrame) -> dict[str, Any]:
    return training_profile(penguins)


@pytest.fixture
def traffic(tmp_path: Path, penguins: pd.DataFrame) -> str:
    """Five hours from START: two normal hours (the second with a few rejected
    requests), a drifted hour (heavier penguins, all from Torgersen), a normal hour with
    server errors and two odd islands, and an hour of only 10 requests."""
    url = url_for_sqlite(tmp_path / "log.db")
    bad = pydantic_message(
        {
            "bill_length_mm": 40.0,
            "bill_depth_mm": 18.0,
            "flipper_length_mm": 190.0,
            "body_mass_g": 3800,
            "island": "Mars",
            "sex": None,
        }
    )
    entries = ok_entries(sample(penguins, 150, 10), START, seed=1)
    entries += ok_entries(sample(penguins, 150, 11), START + HOUR, seed=2)
    entries += [rejected_entry(START + HOUR + timedelta(minutes=i), bad) for i in range(3)]
    drifted = sample(penguins, 150, 12)
    drifted["body_mass_g"] = drifted["body_mass_g"] + 800
    drifted["island"] = "Torgersen"
    entries += ok_entries(drifted, START + 2 * HOUR, model_tag=ODD_TAG, seed=3)
    normal = sample(penguins, 150, 13)
    normal.loc[:1, "island"] = ODD_ISLAND
    entries += ok_entries(normal, START + 3 * HOUR, model_tag=ODD_TAG, seed=4)
    entries += [server_error_entry(START + 3 * HOUR + timedelta(minutes=i)) for i in range(20)]
    entries += ok_entries(sample(penguins, 10, 14), START + 4 * HOUR, model_tag=ODD_TAG)
    write_log(url, tmp_path / "spool", entries)
    return url


def test_windows_are_aligned_to_the_clock() -> None:
    since = START + timedelta(minutes=17)
    assert window_bounds(since, since + 2 * HOUR, HOUR) == [
        (START, START + HOUR),
        (START + HOUR, START + 2 * HOUR),
        (START + 2 * HOUR, START + 3 * HOUR),
    ]
    quarter = timedelta(minutes=15)
    assert window_bounds(since, since + timedelta(minutes=1), quarter) == [
        (START + quarter, START + 2 * quarter)
    ]
    with pytest.raises(ValueError, match="after"):
        window_bounds(since, since, HOUR)
    with pytest.raises(ValueError, match="at most"):
        window_bounds(START, START + timedelta(days=365), timedelta(minutes=1))


def test_the_monitor_alerts_once_and_writes_the_report(
    traffic: str, tmp_path: Path, profile: dict[str, Any]
) -> None:
    out = tmp_path / "reports" / "monitor.html"
    with Receiver() as receiver:
        config = {
            **EXAMPLE_CONFIG,
            "sinks": [{"type": "log"}, {"type": "webhook", "url": receiver.url, "timeout_s": 2}],
        }
        since, until = START + timedelta(minutes=5), START + 5 * HOUR
        result = run_monitor(traffic, profile, config, since, until, out, suite_path=SUITE)
        again = run_monitor(traffic, profile, config, since, until, out, suite_path=SUITE)
    assert result.report_path == out
    fired = [(a.rule, a.window_start) for a in result.alerts]
    assert fired == [("feature-drift", START + 2 * HOUR), ("errors", START + 3 * HOUR)]
    assert result.new_alerts == result.alerts
    assert [d.ok for d in result.deliveries] == [True, True]
    # the second run over the same period: the same alerts, none new, nothing sent
    assert [(a.rule, a.window_start) for a in again.alerts] == fired
    assert again.new_alerts == []
    assert again.deliveries == []
    (request,) = receiver.requests
    assert [a["rule"] for a in request["body"]["alerts"]] == ["feature-drift", "errors"]
    with AlertStore(traffic) as store:  # recorded in the log's own database by default
        assert [(a.rule, a.window_start) for a in store.alerts()] == sorted(
            fired, key=lambda f: f[1]
        )

    # the evidence: the drifted hour stands out, the idle hour computes no drift
    windows = result.windows
    assert [w["requests"] for w in windows] == [150, 153, 150, 170, 10]
    mass = [w["drift"]["body_mass_g"]["psi"] for w in windows]
    assert mass[2] > 1.0 > 5 * max(mass[0], mass[1], mass[3])
    assert windows[2]["drift"]["island"]["drifted"]
    assert windows[4]["drift_psi_max"] is None
    assert windows[3]["error_rate"] == pytest.approx(20 / 170)

    html = out.read_text()
    for anchor, title in SECTIONS:
        assert f'<section id="{anchor}"><h2>{title.replace("&", "&amp;")}</h2>' in html
    assert html.count("<svg") >= 11  # requests, 6 distributions, drift, mix, latency, errors
    lowered = html.lower()
    for banned in ("http://", "https://", "<script", "<img", "<iframe", "<link"):
        assert banned not in lowered, banned
    # escaped: the odd model tag (summary) and the odd island (the suite's findings)
    assert "penguins:v2 &lt;b&gt;&quot;&amp;co&quot;&lt;/b&gt;" in html
    assert "<b>" not in html
    assert "&lt;i&gt;Atlantis&lt;/i&gt;" in html
    assert "<i>" not in html
    # the drifted hour's cells are marked in the PSI-per-window table
    drift = html.split('id="drift"')[1].split("</section>")[0]
    rows = re.findall(r"<tr><td>([^<]*)</td>(.*?)</tr>", drift)
    marked = {day: cells.count('class="num drifted"') for day, cells in rows}
    assert marked == {"2025-03-01 08:00 UTC": 0, "2025-03-01 09:00 UTC": 0,
                      "2025-03-01 10:00 UTC": 2, "2025-03-01 11:00 UTC": 0,
                      "2025-03-01 12:00 UTC": 0}  # fmt: skip
    # the alerts, the rejected field, the suite's verdict
    alerts = html.split('id="alerts"')[1].split("</section>")[0]
    assert "2 alert(s)" in alerts
    assert "feature-drift" in alerts and "errors" in alerts
    errors = html.split('id="errors"')[1].split("</section>")[0]
    assert '<td>island</td><td class="num">3</td>' in errors
    quality = html.split('id="quality"')[1].split("</section>")[0]
    assert "expectations failed" in quality
    assert "expect_column_values_to_be_between" in quality  # 800 g over the suite's max
    assert "body_mass_g" in quality
    assert not list(out.parent.glob(".*.tmp"))  # written atomically: no leftovers


def test_a_report_without_profile_suite_or_traffic(tmp_path: Path) -> None:
    empty = url_for_sqlite(tmp_path / "empty.db")
    html = build_report(empty, None, since=START, until=START + 3 * HOUR, window=HOUR)
    for anchor, _ in SECTIONS:
        assert f'<section id="{anchor}">' in html
    assert "No training reference profile" in html
    assert "No expectations suite given" in html
    assert "No alert rules configured" in html
    assert "no alerts in the period" in html
    assert html.count("<svg") >= 3
    assert "http://" not in html and "<script" not in html


def test_a_report_lists_stored_alerts_and_the_rules(
    traffic: str, tmp_path: Path, profile: dict[str, Any]
) -> None:
    alert_url = url_for_sqlite(tmp_path / "alerts.db")
    with AlertStore(alert_url) as store:
        store.record([an_alert("earlier-run", START + HOUR, value=0.42)])
        store.record([an_alert("long-ago", START - 48 * HOUR)])  # outside the period
    rules = parse_config(EXAMPLE_CONFIG).rules
    html = build_report(
        traffic,
        profile,
        since=START,
        until=START + 5 * HOUR,
        window=HOUR,
        rules=rules,
        alert_url=alert_url,
    )
    alerts = html.split('id="alerts"')[1].split("</section>")[0]
    assert "3 alert(s)" in alerts  # the stored one and the two the rules fire
    assert "earlier-run" in alerts and "0.42" in alerts
    assert "long-ago" not in alerts
    for rule in rules:
        assert f"<td>{rule.name}</td>" in alerts
    assert "Gentoo" in html.split('id="mix"')[1]
