"""Live metrics and the request log on a regressor's answers: predicted values counted,
summed, checked against the training target's range and compared with the training
predictions, read from the raw answer bytes; neither task's body crashes the other's
metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from prometheus_client import REGISTRY
from pydantic_core import to_json

from nbship.drift import reference_profile
from nbship.prediction_log import LogEntry, RawJSON
from nbship.serving import live_metrics
from nbship.serving.live_metrics import LiveMetrics, _values
from nbship.serving.request_log import RECORD_KEYS, entry_for

pytestmark = pytest.mark.unit


def answer(tag: str, values: list[float]) -> bytes:
    """What the service answers for a regressor (service.ModelServer.answer)."""
    body = {"model": tag, "predictions": [{"prediction": v} for v in values]}
    return to_json(body, inf_nan_mode="null")


def logged(tag: str, values: list[float], inputs: list[dict] | None = None) -> LogEntry:
    rows = inputs or [{"x": float(i)} for i in range(len(values))]
    return entry_for(
        request_id="r", started=None,  # type: ignore[arg-type]
        latency_ms=1.0, kind="predict", status=200,
        request_body=json.dumps(rows).encode(), response_body=answer(tag, values),
        model_tag=None, record_key=RECORD_KEYS["regression"],
    )  # fmt: skip


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_regression_answer_is_logged_from_its_bytes_with_its_record_count():
    entry = logged("reg:v1", [1.5, -2.0, 3e6])
    assert entry.status == "ok" and entry.model_tag == "reg:v1" and entry.n_records == 3
    assert isinstance(entry.outputs, RawJSON)
    assert json.loads(entry.outputs) == [{"prediction": 1.5}, {"prediction": -2.0},
                                         {"prediction": 3e6}]  # fmt: skip
    # the classification key (the default) still counts a classifier's records
    classified = b'{"model":"c:1","predictions":[{"label":"a","probabilities":{"a":1.0}}]}'
    entry = entry_for(
        request_id="r", started=None, latency_ms=1.0, kind="predict", status=200,  # type: ignore[arg-type]
        request_body=b"{}", response_body=classified, model_tag=None,
    )  # fmt: skip
    assert entry.n_records == 1


def test_values_from_raw_answers_equal_the_decoded_ones():
    values = [1.25, -3.0, 1e-7, 12345678.9, float("nan")]
    raw = json.loads(answer("t", values))["predictions"]
    outputs = to_json(raw, inf_nan_mode="null")
    assert _values(outputs) == _values(raw) == [1.25, -3.0, 1e-7, 12345678.9]
    assert _values(b'[{"label":"a","probabilities":{"a":1.0}}]') == []
    assert _values(None) == [] and _values([{"label": "a"}]) == []


def test_regression_metrics_count_sum_and_range():
    tag = "regression-metrics:v1"
    metrics = LiveMetrics(None, ["x"], task="regression", target_range=[0.0, 10.0])
    metrics.observe(logged(tag, [1.0, 2.0, 12.0, -1.0]))
    metrics.observe(logged(tag, [3.0]))
    assert sample("nbship_predicted_values_total", model_tag=tag) == 5
    assert sample("nbship_predicted_value_sum", model_tag=tag) == pytest.approx(17.0)
    assert sample("nbship_predicted_value_squares", model_tag=tag) == pytest.approx(159.0)
    assert sample("nbship_predictions_out_of_range_total", model_tag=tag, side="above") == 1
    assert sample("nbship_predictions_out_of_range_total", model_tag=tag, side="below") == 1
    # a regressor counts no labels
    assert not [
        s for m in REGISTRY.collect() if m.name == "nbship_predictions"
        for s in m.samples if s.labels.get("model_tag") == tag
    ]  # fmt: skip


def test_neither_task_crashes_on_the_others_answer():
    tag = "crossed:v1"
    regression = LiveMetrics(None, ["x"], task="regression")
    classified = b'{"model":"crossed:v1","predictions":[{"label":"a","probabilities":{"a":1.0}}]}'
    entry = entry_for(
        request_id="r", started=None, latency_ms=1.0, kind="predict", status=200,  # type: ignore[arg-type]
        request_body=b'[{"x":1}]', response_body=classified, model_tag=None,
    )  # fmt: skip
    regression.observe(entry)
    assert sample("nbship_predicted_values_total", model_tag=tag) == 0
    LiveMetrics(None, ["x"]).observe(logged(tag, [1.0, 2.0]))  # a classifier's metrics
    assert sample("nbship_predictions_total", model_tag=tag, label="") == 0


def test_prediction_drift_is_measured_against_the_training_predictions(monkeypatch):
    rng = np.random.default_rng(0)
    train = {"x": rng.normal(0, 1, 2000).tolist()}
    profile = reference_profile(train, ["x"], [])
    profile["predictions"] = reference_profile({"p": rng.normal(100, 10, 2000).tolist()},
                                               ["p"], [])["features"]["p"]  # fmt: skip
    profile["target_range"] = [50.0, 150.0]
    monkeypatch.setattr(live_metrics, "MIN_SECONDS", 0.0)
    metrics = LiveMetrics(profile, ["x"], task="regression")
    assert metrics.target_range == (50.0, 150.0)  # from the profile when not given
    inputs = [{"x": v} for v in rng.normal(0, 1, 200).tolist()]
    metrics.observe(logged("drift:v1", rng.normal(300, 10, 200).tolist(), inputs))
    psi = REGISTRY.get_sample_value("nbship_prediction_drift_psi", {})
    assert psi is not None and psi > 1 and math.isfinite(psi)
    assert REGISTRY.get_sample_value("nbship_prediction_drifted", {}) == 1
    assert sample("nbship_predictions_out_of_range_total", model_tag="drift:v1", side="above")
    # the features are still compared as before
    assert REGISTRY.get_sample_value("nbship_feature_drift_psi", {"feature": "x"}) is not None
