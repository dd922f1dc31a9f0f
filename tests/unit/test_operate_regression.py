"""The operating stages for a regressor: its training reference holds its predictions on
the training rows and the target's range; windows of logged regression traffic compute
the predictions' PSI and the share outside the range; rules on them fire; the monitor
report and the dashboard page show the prediction distribution; numeric feedback labels
stay numbers."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from starlette.applications import Starlette

from nbship.drift import check_profile, prediction_drift, profile_task, reference_profile
from nbship.operate.alert_rules import Rule, evaluate, parse_config
from nbship.operate.dashboard import build_summary, create_app
from nbship.operate.monitor import REGRESSION_TITLES, SECTIONS, build_report, run_monitor
from nbship.operate.windows import served_task, window_metrics, window_row
from nbship.prediction_log import LogEntry, new_request_id, read_log, url_for_sqlite
from nbship.registry.versions import Registry
from tests.unit.test_alerts import HOUR, START, write_log

pytestmark = pytest.mark.unit

NUMERIC = ["size", "age"]
CATEGORICAL = ["area"]
FEATURES = NUMERIC + CATEGORICAL
TARGET = "price"
MODEL = "houses"
RULES = {
    "window_minutes": 60,
    "min_rows": 30,
    "alerts": [
        {"name": "range", "metric": "prediction_out_of_range_share", "op": ">", "threshold": 0.1},
        {"name": "predictions", "metric": "prediction_psi", "op": ">", "threshold": 0.2},
    ],
    "sinks": [{"type": "log"}],
}


def houses(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    size = rng.normal(100, 20, n)
    age = rng.integers(0, 60, n).astype(float)
    area = rng.choice(["north", "south", "east"], n)
    price = 3.0 * size - 0.5 * age + rng.normal(0, 5, n) + 50
    return pd.DataFrame({"size": size, "age": age, "area": area, TARGET: price})


def predict(rows: pd.DataFrame) -> np.ndarray:
    """The "model": what a fitted linear regression of these houses would answer."""
    return np.array(3.0 * rows["size"] - 0.5 * rows["age"] + 50, dtype=float)


@pytest.fixture(scope="module")
def train() -> pd.DataFrame:
    return houses(400, 0)


@pytest.fixture(scope="module")
def profile(train: pd.DataFrame) -> dict[str, Any]:
    return reference_profile(
        train, NUMERIC, CATEGORICAL, target=TARGET, predictions=predict(train), task="regression"
    )


def entries(
    rows: pd.DataFrame,
    start: datetime,
    predictions: np.ndarray | None = None,
    *,
    span: timedelta = HOUR,
    model_tag: str = f"{MODEL}:v1",
) -> list[LogEntry]:
    """One successful one-record request per row over [start, start + span), answered
    as serving answers a regressor: {"prediction": number}."""
    values = predict(rows) if predictions is None else predictions
    records = json.loads(rows[FEATURES].to_json(orient="records"))
    return [
        LogEntry(
            request_id=new_request_id(),
            ts=start + span * (i + 0.5) / len(rows),
            kind="predict",
            model_tag=model_tag,
            inputs=record,
            outputs=[{"prediction": float(value)}],
            latency_ms=4.0,
            status="ok",
            http_status=200,
            n_records=1,
        )
        for i, (record, value) in enumerate(zip(records, values, strict=True))
    ]


# the reference ------------------------------------------------------------------------------


def test_a_regression_profile_holds_the_training_predictions_and_target_range(
    train: pd.DataFrame, profile: dict[str, Any]
) -> None:
    assert json.loads(json.dumps(profile, allow_nan=False)) == profile
    check_profile(profile)
    assert profile["task"] == "regression" and profile["target"] == TARGET
    assert "classes" not in profile
    assert profile["target_range"] == [train[TARGET].min(), train[TARGET].max()]
    predicted = profile["predictions"]
    # the same shape as a numeric feature's profile
    assert set(predicted) == set(profile["features"]["size"])
    assert predicted["kind"] == "numeric" and predicted["n"] == len(train)
    assert len(predicted["proportions"]) == len(predicted["edges"]) + 1
    assert predicted["mean"] == pytest.approx(predict(train).mean())
    assert profile_task(profile) == "regression"
    # the task is read from float predictions, or from a float target, when not given
    inferred = reference_profile(train, NUMERIC, CATEGORICAL, target=TARGET,
                                 predictions=list(predict(train)))  # fmt: skip
    assert inferred == profile
    no_predictions = reference_profile(train, NUMERIC, CATEGORICAL, target=TARGET)
    assert no_predictions["task"] == "regression" and "predictions" not in no_predictions
    assert no_predictions["target_range"] == profile["target_range"]


def test_a_classification_profile_is_unchanged(train: pd.DataFrame) -> None:
    labelled = train.assign(band=np.where(train[TARGET] > 300, "dear", "cheap"))
    profile = reference_profile(labelled, NUMERIC, CATEGORICAL, target="band",
                                predictions=np.asarray(labelled["band"]))  # fmt: skip
    assert set(profile["classes"]) == {"dear", "cheap"}
    assert not {"task", "predictions", "target_range"} & set(profile)
    assert profile_task(profile) == "classification"
    # a few integer values are classes, as tasks.infer reads them
    coded = labelled.assign(code=(labelled["band"] == "dear").astype(int))
    assert set(reference_profile(coded, NUMERIC, CATEGORICAL, target="code")["classes"]) == {
        "0",
        "1",
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"target_range": [5.0]}, "target_range"),
        ({"target_range": [9.0, 1.0]}, "target_range"),
        ({"predictions": {"kind": "categorical"}}, "predictions"),
        ({"task": "ranking"}, "task"),
    ],
)
def test_check_profile_refuses_a_broken_regression_profile(
    profile: dict[str, Any], change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        check_profile({**profile, **change})


def test_predictions_must_be_one_per_training_row(train: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="one per row"):
        reference_profile(train, NUMERIC, CATEGORICAL, target=TARGET, predictions=[1.0, 2.0])


def test_prediction_drift_compares_live_predictions_with_training(
    profile: dict[str, Any],
) -> None:
    same = prediction_drift(profile, predict(houses(200, 1)))
    assert same is not None and not same["drifted"] and same["out_of_range_share"] == 0.0
    shifted = prediction_drift(profile, predict(houses(200, 2)) + 80)
    assert shifted is not None and shifted["drifted"] and shifted["psi"] > 1.0
    assert 0 < shifted["out_of_range_share"] < 1
    few = prediction_drift(profile, [1e9] * 5)
    assert few is not None and few["out_of_range"] == 5 and few["out_of_range_share"] is None


# windows and rules --------------------------------------------------------------------------


def test_windows_over_logged_regression_rows(tmp_path: Path, profile: dict[str, Any]) -> None:
    url = url_for_sqlite(tmp_path / "log.db")
    normal = houses(150, 3)
    shifted = houses(150, 4)
    wild = predict(shifted) + 80
    wild[:30] = 1e6  # far above anything the training target held
    log = entries(normal, START) + entries(shifted, START + HOUR, wild)
    log += entries(houses(10, 5), START + 2 * HOUR)  # too few rows to say
    write_log(url, tmp_path / "spool", log)
    frame = read_log(url)
    assert served_task(profile) == "regression"
    assert served_task(None, outputs=frame["outputs"]) == "regression"

    first, second, idle = (
        window_metrics(frame, profile, window_start=START + i * HOUR,
                       window_end=START + (i + 1) * HOUR)
        for i in range(3)
    )  # fmt: skip
    assert first["task"] == "regression" and first["predictions"] == {}
    assert not any(k.startswith("prediction_share:") for k in first)
    assert first["prediction_psi"] == 0.0  # no significant change: 0 for the rules
    assert first["prediction_out_of_range_share"] < 0.05  # the odd one past the noisy target
    assert second["prediction_psi"] > 1.0
    assert second["prediction_drift"]["drifted"]
    outside = int(((wild < profile["target_range"][0]) | (wild > profile["target_range"][1])).sum())
    assert outside >= 30
    assert second["prediction_out_of_range_share"] == pytest.approx(outside / 150)
    assert idle["prediction_psi"] is None and idle["prediction_out_of_range_share"] is None
    row = window_row(first, START, START + HOUR)
    assert row["prediction_p10"] < row["prediction_p50"] < row["prediction_p90"]
    assert row["prediction_out_of_range_share"] == first["prediction_out_of_range_share"]

    rules = parse_config(RULES).rules
    assert evaluate(rules, first) == []
    fired = {a.rule: a for a in evaluate(rules, second)}
    assert sorted(fired) == ["predictions", "range"]
    assert fired["range"].metric == "prediction_out_of_range_share"
    assert fired["range"].value == pytest.approx(outside / 150)
    assert evaluate(rules, idle) == []
    # a classifier's metric names nothing in a regressor's window
    assert evaluate([Rule("mix", "prediction_share:x", ">", 0.0)], second) == []


def test_the_task_of_the_served_model() -> None:
    assert served_task(None) == "classification"
    assert served_task({"features": {}}, {"task": "regression"}) == "regression"
    assert served_task({"features": {}, "classes": {"a": 1.0}}) == "classification"
    assert served_task(None, outputs=[[{"label": "a", "probabilities": {}}]]) == "classification"
    assert served_task(None, outputs=[{"predictions": [{"prediction": 2.5}]}]) == "regression"


# the pages ----------------------------------------------------------------------------------


def test_the_monitor_report_of_a_regressor(tmp_path: Path, profile: dict[str, Any]) -> None:
    url = url_for_sqlite(tmp_path / "log.db")
    shifted = houses(150, 7)
    wild = predict(shifted)
    wild[:40] = -1e5
    log = entries(houses(150, 6), START) + entries(shifted, START + HOUR, wild)
    write_log(url, tmp_path / "spool", log)
    out = tmp_path / "monitor.html"
    result = run_monitor(url, profile, RULES, START, START + 2 * HOUR, out)
    # 40 of 150 far below the range: outside it, and a distribution that changed too
    fired = [(a.rule, a.window_start) for a in result.alerts]
    assert fired == [("range", START + HOUR), ("predictions", START + HOUR)]
    html = out.read_text()
    for anchor, title in SECTIONS:
        shown = REGRESSION_TITLES.get(anchor, title)
        assert f'<section id="{anchor}"><h2>{shown}</h2>' in html
    predictions = html.split('id="mix"')[1].split("</section>")[0]
    assert 'data-chart="predictions"' in predictions
    assert "Prediction distribution" in predictions and "training quantile bin" in predictions
    assert "outside the training target" in predictions
    assert "(predictions)" in html.split('id="distributions"')[1]  # its distribution figure
    assert "Predicted classes" not in html
    # the report without a profile: the task comes from the logged answers
    bare = build_report(url, None, since=START, until=START + 2 * HOUR, window=HOUR)
    assert "Predictions over time" in bare and 'data-chart="predictions"' in bare


def test_the_dashboard_of_a_regressor(tmp_path: Path, profile: dict[str, Any]) -> None:
    registry_url = url_for_sqlite(tmp_path / "registry.db")
    with Registry(registry_url) as registry:
        metadata = {"task": "regression", "target": TARGET, "target_range": profile["target_range"],
                    "drift_profile": profile, "metrics": {"test": {"rmse": 4.9, "mae": 3.9}},
                    "selection": {"metric": "rmse", "value": 4.9}}  # fmt: skip
        registry.register(f"{MODEL}:v1", metadata, bento_tag=f"{MODEL}:b1")
        registry.promote(f"{MODEL}:v1", actor="test", reason="first model")
    url = url_for_sqlite(tmp_path / "log.db")
    now = datetime.now(UTC)
    rows = houses(120, 8)
    wild = predict(rows)
    wild[:12] = 1e6
    write_log(url, tmp_path / "spool", entries(rows, now - 2 * HOUR, wild, span=HOUR))

    summary = build_summary(registry_url=registry_url, log_url=url, model_name=MODEL, now=now)
    assert summary["task"] == "regression" and summary["drift"]["source"] == "champion"
    period = summary["period"]
    assert period["prediction_out_of_range_share"] == pytest.approx(12 / 120)
    assert period["prediction_drift"]["n"] == 120
    assert period["target_range"] == profile["target_range"]

    app = create_app(registry_url=registry_url, log_url=url, model_name=MODEL)
    page, api = asyncio.run(_get(app, "/", "/api/summary"))
    assert page.status_code == 200 and api.status_code == 200
    body, data = page.text, api.json()
    assert 'id="predictions-section"' in body and "Prediction distribution" in body
    assert 'id="predictions"' in body and 'data-chart="predictions"' in body
    assert 'data-field="period.prediction_out_of_range_share"' in body
    assert 'id="mix-section"' not in body
    assert data["task"] == "regression"
    assert data["period"]["prediction_out_of_range_share"] == pytest.approx(0.1)


async def _get(app: Starlette, *paths: str) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        return [await client.get(path) for path in paths]
