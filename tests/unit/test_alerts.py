"""Alert rules on real prediction-log files: the configuration's errors name the key, a
window's metrics come from what the service logs, synthetic drift fires the drift rule
and traffic drawn from the training data fires nothing, each alert is recorded once,
and sinks (a log line, a webhook on 127.0.0.1) get it without ever raising."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from nbship.config import ConfigError
from nbship.drift import reference_profile
from nbship.operate.alert_rules import Alert, MonitorConfig, Rule, Sink, evaluate, parse_config
from nbship.operate.alert_sinks import send
from nbship.operate.alert_store import AlertStore
from nbship.operate.windows import UNKNOWN_FIELD, failed_fields, window_metrics
from nbship.pipeline.contract import Contract, load_suite, record_model
from nbship.pipeline.data import load_source, split
from nbship.prediction_log import (
    LogEntry,
    PredictionLog,
    new_request_id,
    read_log,
    url_for_sqlite,
)
from tests.support import PROJECT, free_port

pytestmark = pytest.mark.unit

NUMERIC = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
CATEGORICAL = ["island", "sex"]
FEATURES = NUMERIC + CATEGORICAL
CLASSES = ("Adelie", "Chinstrap", "Gentoo")
START = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)  # on the hour: windows align
HOUR = timedelta(hours=1)

# the example of the issue, as env.yaml would hold it
EXAMPLE_CONFIG: dict[str, Any] = {
    "window_minutes": 60,
    "min_rows": 30,
    "alerts": [
        {"name": "feature-drift", "metric": "drift_psi_max", "op": ">", "threshold": 0.2},
        {"name": "errors", "metric": "error_rate", "op": ">", "threshold": 0.05},
        {"name": "slow", "metric": "latency_p99_ms", "op": ">", "threshold": 200},
        {"name": "mix", "metric": "prediction_share:Gentoo", "op": ">", "threshold": 0.6},
    ],
    "sinks": [{"type": "log"}],
}


# traffic helpers (test_monitor uses them too) -------------------------------------------------


def penguin_data() -> pd.DataFrame:
    return load_source("palmerpenguins:load_penguins")


def training_profile(penguins: pd.DataFrame) -> dict[str, Any]:
    train = split(penguins, "species", test_size=0.25, golden_size=60, seed=42).train
    return reference_profile(train, NUMERIC, CATEGORICAL, target="species")


def _value(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


def ok_entries(
    rows: pd.DataFrame,
    start: datetime,
    span: timedelta = HOUR,
    *,
    model_tag: str = "penguins:v1",
    latency_ms: float = 5.0,
    seed: int = 0,
) -> list[LogEntry]:
    """One successful one-record request per row, spread over [start, start + span).
    The "prediction" is the row's species: what a perfect model would answer."""
    rng = np.random.default_rng(seed)
    entries = []
    for i, row in enumerate(rows.to_dict(orient="records")):
        label = str(row["species"])
        probabilities = {c: (0.9 if c == label else 0.05) for c in CLASSES}
        entries.append(
            LogEntry(
                request_id=new_request_id(),
                ts=start + span * (i + 0.5) / len(rows),
                kind="predict",
                model_tag=model_tag,
                inputs={name: _value(row[name]) for name in FEATURES},
                outputs=[{"label": label, "probabilities": probabilities}],
                latency_ms=float(rng.lognormal(math.log(latency_ms), 0.3)),
                status="ok",
                http_status=200,
                n_records=1,
            )
        )
    return entries


def pydantic_message(record: dict[str, Any]) -> str:
    """The message pydantic gives for a bad record, checked against the real suite."""
    suite = load_suite(PROJECT / "expectations" / "penguins.json")
    model = record_model(Contract.from_suite(suite, FEATURES))
    try:
        model.model_validate(record)
    except ValidationError as exc:
        return str(exc)
    raise AssertionError("the record is valid")


def rejected_entry(ts: datetime, message: str) -> LogEntry:
    return LogEntry(
        request_id=new_request_id(),
        ts=ts,
        kind="predict",
        model_tag="penguins:v1",
        inputs={"island": "Mars"},
        outputs=None,
        latency_ms=0.5,
        status="error",
        http_status=400,
        error_class="ValidationError",
        error_message=message,
        n_records=1,
    )


def server_error_entry(ts: datetime) -> LogEntry:
    return LogEntry(
        request_id=new_request_id(),
        ts=ts,
        kind="predict",
        model_tag="penguins:v1",
        inputs={"island": "Dream"},
        outputs=None,
        latency_ms=3.0,
        status="error",
        http_status=500,
        error_class="RuntimeError",
        error_message="model exploded",
        n_records=1,
    )


def write_log(url: str, spool: Path, entries: Iterable[LogEntry]) -> None:
    with PredictionLog(url, spool) as log:
        for entry in entries:
            assert log.record(entry)
        assert log.flush()


def sample(penguins: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    return penguins.sample(n=n, replace=True, random_state=seed).reset_index(drop=True)


# fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def penguins() -> pd.DataFrame:
    return penguin_data()


@pytest.fixture(scope="module")
def profile(penguins: pd.DataFrame) -> dict[str, Any]:
    return training_profile(penguins)


@pytest.fixture
def log_url(tmp_path: Path) -> str:
    return url_for_sqlite(tmp_path / "log.db")


class Receiver:
    """A webhook receiver on 127.0.0.1: keeps every request's path, headers and body."""

    def __init__(self, status: int = 200) -> None:
        self.requests: list[dict[str, Any]] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                received.append(
                    {
                        "path": self.path,
                        "content_type": self.headers.get("Content-Type"),
                        "body": json.loads(self.rfile.read(length)),
                    }
                )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:  # keep the test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook?token=secret"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def an_alert(rule: str = "feature-drift", start: datetime = START, value: float = 0.9) -> Alert:
    return Alert(
        rule=rule,
        metric="drift_psi_max",
        op=">",
        value=value,
        threshold=0.2,
        window_start=start,
        window_end=start + HOUR,
    )


# configuration ------------------------------------------------------------------------------


def test_the_example_configuration_parses() -> None:
    config = parse_config(
        {**EXAMPLE_CONFIG, "sinks": [{"type": "log"}, {"type": "webhook", "url": "http://h/x"}]}
    )
    assert config.window == HOUR
    assert config.min_rows == 30
    assert [r.name for r in config.rules] == ["feature-drift", "errors", "slow", "mix"]
    assert config.rules[3] == Rule("mix", "prediction_share:Gentoo", ">", 0.6)
    assert config.sinks == (Sink("log"), Sink("webhook", url="http://h/x", timeout_s=5.0))
    assert parse_config(None) == MonitorConfig()
    assert parse_config({}).sinks == (Sink("log"),)
    assert parse_config({"sinks": []}).sinks == ()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"alerts": [{"name": "a", "metric": "drift_max", "op": ">", "threshold": 1}]},
            r"monitoring\.alerts\[0\]\.metric: unknown metric 'drift_max' \(known: .*error_rate",
        ),
        (
            {"alerts": [{"name": "a", "metric": "error_rate", "op": "=>", "threshold": 1}]},
            r"monitoring\.alerts\[0\]\.op: unknown operator '=>'",
        ),
        (
            {"alerts": [{"name": "a", "metric": "error_rate", "op": ">"}]},
            r"monitoring\.alerts\[0\]\.threshold: missing",
        ),
        (
            {"alerts": [{"name": "a", "metric": "error_rate", "op": ">", "threshold": "high"}]},
            r"monitoring\.alerts\[0\]\.threshold: must be a finite number, got 'high'",
        ),
        (
            {"alerts": [{"name": "a", "metric": "error_rate", "op": ">", "treshold": 1}]},
            r"monitoring\.alerts\[0\]: unknown key\(s\) \['treshold'\]",
        ),
        (
            {"alerts": [{"name": "a", "metric": "prediction_share:", "op": ">", "threshold": 1}]},
            r"monitoring\.alerts\[0\]\.metric: unknown metric 'prediction_share:'",
        ),
        (
            {
                "alerts": [
                    {"name": "a", "metric": "error_rate", "op": ">", "threshold": 1},
                    {"name": "a", "metric": "requests", "op": "<", "threshold": 1},
                ]
            },
            r"monitoring\.alerts\[1\]\.name: duplicate rule name 'a'",
        ),
        ({"alerts": {"name": "a"}}, r"monitoring\.alerts: expected a list"),
        ({"window_minutes": 0}, r"monitoring\.window_minutes: must be a positive number"),
        ({"min_rows": 2.5}, r"monitoring\.min_rows: must be a positive integer"),
        ({"windows": 3}, r"monitoring: unknown key\(s\) \['windows'\]"),
        ({"sinks": [{"type": "pager"}]}, r"monitoring\.sinks\[0\]\.type: unknown sink type"),
        ({"sinks": [{"type": "webhook"}]}, r"monitoring\.sinks\[0\]\.url: missing"),
        (
            {"sinks": [{"type": "webhook", "url": "ftp://h/x"}]},
            r"monitoring\.sinks\[0\]\.url: not an http\(s\) URL",
        ),
        (
            {"sinks": [{"type": "webhook", "url": "http://h/x", "timeout_s": -1}]},
            r"monitoring\.sinks\[0\]\.timeout_s: must be a positive number",
        ),
    ],
)
def test_configuration_errors_name_the_key(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({**EXAMPLE_CONFIG, **change})


# validation failures ----------------------------------------------------------------------


def test_failed_fields_from_what_the_service_logs() -> None:
    text = pydantic_message(
        {
            "bill_length_mm": "long",
            "bill_depth_mm": 1,
            "flipper_length_mm": 200,
            "body_mass_g": 4000,
            "island": "Mars",
            "sex": None,
        }
    )
    assert failed_fields(text) == ["bill_length_mm", "bill_depth_mm", "island"]
    # a batch: locations like "3.island"; the same field twice counts once
    batch = "2 validation errors for predict request\n3.island\n  Input should be ...\n"
    batch += "4.island\n  Input should be ...\n"
    assert failed_fields(batch) == ["island"]
    as_json = json.dumps([{"loc": [0, "sex"], "msg": "x"}, {"loc": ["body"], "msg": "y"}])
    assert failed_fields(as_json) == ["sex", "body"]
    assert failed_fields(json.dumps({"errors": [{"loc": ["island"]}]})) == ["island"]
    # what the service logs: BentoML's JSON answer to an invalid request
    answer = {
        "error": "2 validation error for predict request",
        "detail": [
            {"type": "literal_error", "loc": [0, "island"], "msg": "Input should be 'Biscoe'"},
            {"type": "missing", "loc": [1, "body_mass_g"], "msg": "Field required"},
        ],
    }
    assert failed_fields(json.dumps(answer)) == ["island", "body_mass_g"]
    # BentoML's other shape: a list holding the error text
    assert failed_fields(json.dumps([{"error": text}])) == [
        "bill_length_mm",
        "bill_depth_mm",
        "island",
    ]
    assert failed_fields(json.dumps({"error": "body is not JSON"}), FEATURES) == [UNKNOWN_FIELD]
    assert failed_fields("bill_length_mm: Input should be a valid number") == ["bill_length_mm"]
    # prose: the known field names it mentions, else unknown
    assert failed_fields("the value of body_mass_g is too big", FEATURES) == ["body_mass_g"]
    assert failed_fields("something went wrong", FEATURES) == [UNKNOWN_FIELD]
    assert failed_fields(None) == [UNKNOWN_FIELD]


# window metrics -----------------------------------------------------------------------------


def test_window_metrics_from_a_real_log(
    log_url: str, tmp_path: Path, penguins: pd.DataFrame, profile: dict[str, Any]
) -> None:
    rows = sample(penguins, 100, 0)
    entries = ok_entries(rows, START, latency_ms=5.0)
    valid = {"bill_length_mm": 40.0, "bill_depth_mm": 18.0, "flipper_length_mm": 190.0}
    bad_island = pydantic_message({**valid, "body_mass_g": 3800, "island": "Mars", "sex": None})
    entries += [rejected_entry(START + timedelta(minutes=i), bad_island) for i in range(4)]
    bad_both = "bill_length_mm: Input should be a valid number\nsex: Input should be 'male'"
    entries += [rejected_entry(START + timedelta(minutes=30), bad_both)]
    entries += [server_error_entry(START + timedelta(minutes=40)) for _ in range(5)]
    # outside the window, and not a prediction: neither counts
    entries += ok_entries(rows.head(10), START + HOUR)
    feedback = ok_entries(rows.head(3), START)
    entries += [dataclasses.replace(e, kind="feedback") for e in feedback]
    write_log(log_url, tmp_path / "spool", entries)

    m = window_metrics(read_log(log_url), profile, window_start=START, window_end=START + HOUR)
    assert m["requests"] == 110
    assert m["errors"] == 10
    assert m["error_rate"] == pytest.approx(10 / 110)
    assert m["server_errors"] == 5
    assert m["server_error_rate"] == pytest.approx(5 / 110)
    assert m["validation_failures"] == 5
    assert m["validation_fields"] == {"island": 4, "bill_length_mm": 1, "sex": 1}
    assert m["validation_failures:island"] == 4
    assert m["validation_failures:body_mass_g"] == 0
    assert m["records"] == 100
    assert m["models"] == {"penguins:v1": 110}
    assert 3.0 < m["latency_p50_ms"] < 8.0 < m["latency_p99_ms"] < 20.0
    expected = rows["species"].value_counts(normalize=True)
    for label in CLASSES:
        assert m[f"prediction_share:{label}"] == pytest.approx(expected.get(label, 0.0))
    assert m["drifted_features"] == 0
    assert m["drift_psi_max"] == 0.0  # nothing changed significantly
    assert set(m["drift"]) == set(FEATURES)
    assert m["drift"]["body_mass_g"]["n"] == 100
    assert m["dq"] is None  # no suite given
    json.dumps({k: v for k, v in m.items() if not k.startswith("window_")}, allow_nan=False)


def test_small_windows_give_no_rates(
    log_url: str, tmp_path: Path, penguins: pd.DataFrame, profile: dict[str, Any]
) -> None:
    entries = ok_entries(sample(penguins, 10, 1), START)
    entries.append(server_error_entry(START + timedelta(minutes=1)))
    write_log(log_url, tmp_path / "spool", entries)
    m = window_metrics(read_log(log_url), profile)
    assert (m["requests"], m["errors"]) == (11, 1)
    for name in ("error_rate", "latency_p99_ms", "prediction_share:Gentoo", "drift_psi_max"):
        assert m[name] is None, name
    assert m["drift"]["island"]["enough_rows"] is False
    rules = parse_config(EXAMPLE_CONFIG).rules
    assert evaluate(rules, m) == []
    # an empty log: zeros and Nones, no errors
    empty = window_metrics(read_log(url_for_sqlite(tmp_path / "none.db")), profile)
    assert empty["requests"] == 0
    assert empty["error_rate"] is None


def test_the_suite_runs_on_the_windows_inputs(
    log_url: str, tmp_path: Path, penguins: pd.DataFrame, profile: dict[str, Any]
) -> None:
    rows = sample(penguins, 60, 2).dropna(subset=["sex"])
    rows.loc[rows.index[:20], "sex"] = np.nan  # a third without sex: the suite allows 5%
    write_log(log_url, tmp_path / "spool", ok_entries(rows, START))
    suite = PROJECT / "expectations" / "penguins.json"
    m = window_metrics(read_log(log_url), profile, suite_path=suite)
    assert m["dq_failures"] == 1
    (failure,) = m["dq"]["failures"]
    assert failure["expectation"] == "expect_column_values_to_not_be_null"
    assert failure["column"] == "sex"
    # only the features' expectations: no species, year, or table-level column set
    assert m["dq"]["evaluated"] > 10
    assert m["dq"]["success"] is False


# rules on synthetic drift ---------------------------------------------------------------------


def metrics_of(
    url: str, spool: Path, rows: pd.DataFrame, profile: dict[str, Any]
) -> dict[str, Any]:
    write_log(url, spool, ok_entries(rows, START))
    return window_metrics(read_log(url), profile, window_start=START, window_end=START + HOUR)


def test_traffic_like_the_training_data_fires_no_rule(
    tmp_path: Path, penguins: pd.DataFrame, profile: dict[str, Any]
) -> None:
    rules = parse_config(EXAMPLE_CONFIG).rules
    for seed in range(3):
        url = url_for_sqlite(tmp_path / f"log{seed}.db")
        m = metrics_of(url, tmp_path / f"spool{seed}", sample(penguins, 150, seed), profile)
        assert m["drifted_features"] == 0
        assert evaluate(rules, m) == [], m["drift_psi_max"]


def test_a_shifted_numeric_column_fires_the_drift_rule(
    log_url: str, tmp_path: Path, penguins: pd.DataFrame, profile: dict[str, Any]
) -> None:
    rows = sample(penguins, 150, 0)
    rows["body_mass_g"] = rows["body_mass_g"] + 800
    m = metrics_of(log_url, tmp_path / "spool", rows, profile)
    assert m["drift"]["body_mass_g"]["drifted"]
    assert m["drifted_features"] == 1
    assert m["drift_psi_max"] == m["drift_psi:body_mass_g"] > 1.0
    assert m["drift_psi:bill_length_mm"] == 0.0
    (alert,) = evaluate(parse_config(EXAMPLE_CONFIG).rules, m)
    assert (alert.rule, alert.metric, alert.op, alert.threshold) == (
        "feature-drift",
        "drift_psi_max",
        ">",
        0.2,
    )
    assert alert.value == m["drift_psi_max"]
    assert (alert.window_start, alert.window_end) == (START, START + HOUR)
    assert "feature-drift: drift_psi_max = " in alert.message


def test_a_changed_category_mix_fires_the_drift_rule(
    log_url: str, tmp_path: Path, penguins: pd.DataFrame, profile: dict[str, Any]
) -> None:
    rows = sample(penguins, 150, 1)
    rows["island"] = "Torgersen"
    m = metrics_of(log_url, tmp_path / "spool", rows, profile)
    assert [n for n, r in m["drift"].items() if r["drifted"]] == ["island"]
    assert [a.rule for a in evaluate(parse_config(EXAMPLE_CONFIG).rules, m)] == ["feature-drift"]


def test_error_latency_and_mix_rules_fire(
    log_url: str, tmp_path: Path, penguins: pd.DataFrame, profile: dict[str, Any]
) -> None:
    rows = sample(penguins, 100, 3)
    rows["species"] = "Gentoo"  # the model says Gentoo to everything
    entries = ok_entries(rows, START, latency_ms=400.0)
    entries += [server_error_entry(START + timedelta(minutes=i)) for i in range(10)]
    write_log(log_url, tmp_path / "spool", entries)
    m = window_metrics(read_log(log_url), profile, window_start=START, window_end=START + HOUR)
    fired = {a.rule: a for a in evaluate(parse_config(EXAMPLE_CONFIG).rules, m)}
    assert sorted(fired) == ["errors", "mix", "slow"]
    assert fired["errors"].value == pytest.approx(10 / 110)
    assert fired["mix"].value == 1.0
    assert fired["slow"].value > 200
    below = [Rule("few", "requests", "<", 50), Rule("many", "requests", ">=", 110)]
    assert [a.rule for a in evaluate(below, m)] == ["many"]
    assert evaluate([Rule("x", "prediction_share:Unicorn", ">", 0.1)], m) == []


# the store ------------------------------------------------------------------------------------


def test_an_alert_is_recorded_once_per_rule_and_window(tmp_path: Path) -> None:
    url = url_for_sqlite(tmp_path / "alerts.db")
    with AlertStore(url) as store:
        first = store.record([an_alert(), an_alert("errors")])
        assert [a.rule for a in first] == ["feature-drift", "errors"]
        # the same rule and window again (a later run, another value): not new
        assert store.record([an_alert(value=1.5)]) == []
        # the next window is another alert
        assert len(store.record([an_alert(start=START + HOUR)])) == 1
    with AlertStore(url) as store:  # reopened: still there, once each
        stored = store.alerts()
        assert [(a.rule, a.window_start) for a in stored] == [
            ("errors", START),
            ("feature-drift", START),
            ("feature-drift", START + HOUR),
        ]
        assert stored[1].value == 0.9  # the first recording is kept
        assert stored[1].window_end == START + HOUR
        assert stored[1].created_at.tzinfo is not None
        assert [a.window_start for a in store.alerts(since=START + HOUR)] == [START + HOUR]
        assert len(store.alerts(until=START + HOUR)) == 2


def test_the_store_shares_the_prediction_logs_database(
    log_url: str, tmp_path: Path, penguins: pd.DataFrame
) -> None:
    write_log(log_url, tmp_path / "spool", ok_entries(sample(penguins, 5, 0), START))
    with AlertStore(log_url) as store:
        assert len(store.record([an_alert()])) == 1
    assert len(read_log(log_url)) == 5


# sinks ----------------------------------------------------------------------------------------


def test_the_webhook_receives_the_alerts_as_json(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    alerts = [an_alert(), an_alert("errors")]
    caplog.set_level(logging.WARNING, logger="nbship.operate.alerts")
    deliveries = send(alerts, [Sink("log"), Sink("webhook", url=receiver.url, timeout_s=2)])
    assert [(d.ok, d.error) for d in deliveries] == [(True, None), (True, None)]
    assert deliveries[1].sink == f"webhook http://127.0.0.1:{receiver.server.server_port}"
    (request,) = receiver.requests
    assert request["path"] == "/hook?token=secret"
    assert request["content_type"] == "application/json"
    body = request["body"]
    assert body["source"] == "nbship"
    assert [a["rule"] for a in body["alerts"]] == ["feature-drift", "errors"]
    first = body["alerts"][0]
    assert first["metric"] == "drift_psi_max"
    assert first["value"] == 0.9
    assert first["threshold"] == 0.2
    assert first["window_start"] == START.isoformat()
    assert first["window_end"] == (START + HOUR).isoformat()
    assert first["message"] == alerts[0].message
    lines = [r.getMessage() for r in caplog.records if r.name == "nbship.operate.alerts"]
    assert lines == [f"ALERT {alerts[0].message}", f"ALERT {alerts[1].message}"]
    assert send([], [Sink("webhook", url=receiver.url)]) == []  # nothing to say: no call
    assert len(receiver.requests) == 1


def test_a_dead_or_failing_webhook_does_not_stop_the_other_sinks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="nbship.operate.alerts")
    dead = Sink("webhook", url=f"http://127.0.0.1:{free_port()}/hook?token=secret", timeout_s=1)
    with Receiver(status=500) as failing:
        sinks: Sequence[Sink] = [dead, Sink("webhook", url=failing.url, timeout_s=2), Sink("log")]
        deliveries = send([an_alert()], sinks)
        assert len(failing.requests) == 1
    assert [d.ok for d in deliveries] == [False, False, True]
    assert "URLError" in str(deliveries[0].error)
    assert "HTTPError" in str(deliveries[1].error)
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("WARNING", f"ALERT {an_alert().message}") in messages
    failures = [m for level, m in messages if level == "ERROR"]
    assert len(failures) == 2
    assert all("alert sink webhook http://127.0.0.1:" in m for m in failures)
    assert not any("secret" in m for _, m in messages)  # the URL's token is not logged
