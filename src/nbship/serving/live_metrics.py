"""Prometheus metrics of the served model, beyond BentoML's request metrics: predictions
per class (classification) or the count, sum, sum of squares and out-of-range count of
the predicted values (regression), validation failures per field, which model serves,
and drift per feature (and, for a regressor, of its predictions) over the most recent
records. Fed from the prediction log's entries (`observe`), so they count exactly what
the log records. Shipped in the bento; exposed on BentoML's /metrics.
"""

from __future__ import annotations

import collections
import json
import math
import re
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import Counter, Gauge

from nbship.drift import feature_drift
from nbship.prediction_log import LogEntry

# drift is recomputed over the last WINDOW records, after EVERY new records and at most
# once per MIN_SECONDS: a recomputation costs a few ms of the request loop
WINDOW = 500
EVERY = 100
MIN_SECONDS = 5.0

PREDICTIONS = Counter(
    name="nbship_predictions",
    documentation="Records answered, by model tag and predicted class",
    labelnames=["model_tag", "label"],
)
VALIDATION_FAILURES = Counter(
    name="nbship_validation_failures",
    documentation="Rejected input records, by the field that broke a rule",
    labelnames=["field"],
)
MODEL_INFO = Gauge(
    name="nbship_model_info",
    documentation="1 for the model serving now (tag, where it came from, inference path)",
    labelnames=["model_tag", "source", "inference"],
)
DRIFT_PSI = Gauge(
    name="nbship_feature_drift_psi",
    documentation=f"PSI of each feature over the last {WINDOW} records vs the training data",
    labelnames=["feature"],
)
DRIFTED = Gauge(
    name="nbship_feature_drifted",
    documentation="1 when the feature's drift is also significant (see nbship.drift)",
    labelnames=["feature"],
)
# regression: mean and spread of the predictions are rate(sum) / rate(count) and
# rate(squares) / rate(count) - mean^2 in PromQL
PREDICTED_VALUES = Counter(
    name="nbship_predicted_values",
    documentation="Records answered with a predicted value (regression), by model tag",
    labelnames=["model_tag"],
)
PREDICTED_SUM = Gauge(
    name="nbship_predicted_value_sum",
    documentation="Sum of the predicted values (regression), by model tag",
    labelnames=["model_tag"],
    multiprocess_mode="sum",
)
PREDICTED_SQUARES = Gauge(
    name="nbship_predicted_value_squares",
    documentation="Sum of the squared predicted values (regression), by model tag",
    labelnames=["model_tag"],
    multiprocess_mode="sum",
)
OUT_OF_RANGE = Counter(
    name="nbship_predictions_out_of_range",
    documentation="Predicted values below or above the training target's range (regression)",
    labelnames=["model_tag", "side"],
)
PREDICTION_DRIFT_PSI = Gauge(
    name="nbship_prediction_drift_psi",
    documentation=(
        f"PSI of the last {WINDOW} predicted values vs the model's predictions on the training"
        " data (regression)"
    ),
)
PREDICTION_DRIFTED = Gauge(
    name="nbship_prediction_drifted",
    documentation="1 when the predictions' drift is also significant (regression)",
)


def failed_fields(error_message: str | None) -> list[str]:
    """The fields named by a 400's `detail[].loc` (the last name in each location)."""
    try:
        detail = json.loads(error_message or "").get("detail") or []
    except (ValueError, AttributeError):
        return []
    fields = []
    for error in detail if isinstance(detail, list) else []:
        names = [p for p in (error.get("loc") or []) if isinstance(p, str)]
        fields.append(names[-1] if names else "body")
    return fields


_LABEL = re.compile(rb'"label":"((?:[^"\\]|\\.)*)"')
_PLAIN_LABEL = re.compile(rb'"label":"([^"\\]*)"')  # no escapes: twice as fast


def _labels(outputs: Any) -> list[str]:
    """The predicted labels of an answer: parsed data, or the service's raw JSON (read
    with a regex: decoding a 1,000-row answer per request costs more than predicting)."""
    if isinstance(outputs, bytes):
        # a JSON string without escapes is its own text: decode only the rare others
        return [
            json.loads(b'"' + m + b'"') if b"\\" in m else m.decode()
            for m in _LABEL.findall(outputs)
        ]
    return [p["label"] for p in outputs or []]


_VALUE = re.compile(rb'"prediction":([^,}\]]*)')


def _values(outputs: Any) -> list[float]:
    """The predicted values of a regressor's answer, parsed data or the service's raw
    JSON (read with a regex, as labels are); a null (a non-finite prediction) or
    anything not a number is left out."""
    if isinstance(outputs, bytes):
        found: list[Any] = _VALUE.findall(outputs)
    else:
        found = [p.get("prediction") for p in outputs or [] if isinstance(p, dict)]
    values = []
    for v in found:
        try:
            number = float(v)
        except (TypeError, ValueError):  # null, or not a number at all
            continue
        if math.isfinite(number):
            values.append(number)
    return values


def _records(inputs: Any) -> list[Mapping[str, Any]]:
    if isinstance(inputs, bytes):
        inputs = json.loads(inputs)
    records = inputs if isinstance(inputs, list) else [inputs]
    return [r for r in records if isinstance(r, dict)]


def _label_counts(outputs: Any) -> collections.Counter[str]:
    """How many records of an answer got each label: counted on the raw bytes, then only
    the few distinct labels decoded (1,000 records: ~0.2 ms rather than ~0.6)."""
    if isinstance(outputs, bytes) and b"\\" not in outputs:
        counts = collections.Counter(_PLAIN_LABEL.findall(outputs))
        return collections.Counter({label.decode(): n for label, n in counts.items()})
    return collections.Counter(_labels(outputs))


class LiveMetrics:
    """The metrics of one service. `task` is "classification" (predictions counted per
    label) or "regression" (counted, summed, checked against `target_range` [min, max],
    else the profile's, and their drift against the profile's "predictions")."""

    def __init__(
        self,
        profile: Mapping[str, Any] | None,
        columns: Sequence[str],
        *,
        task: str = "classification",
        target_range: Sequence[float] | None = None,
    ) -> None:
        self.profile = profile
        self.columns = list(columns)
        self.regression = task == "regression"
        bounds = target_range or (profile or {}).get("target_range")
        self.target_range = (float(bounds[0]), float(bounds[1])) if bounds else None
        # request inputs as they came (raw JSON or parsed); decoded only for a drift update
        self.recent: deque[tuple[int, Any]] = deque()
        # a regressor's recent predicted values, one list per answer (parsed once)
        self.recent_values: deque[list[float]] = deque()
        self.recent_rows = 0
        self.since_drift = 0
        self.last_drift = float("-inf")

    def serving(self, tag: str, source: str, inference: str) -> None:
        MODEL_INFO.clear()
        MODEL_INFO.labels(model_tag=tag, source=source, inference=inference[:80]).set(1)

    def observe(self, entry: LogEntry) -> None:
        if entry.status != "ok":
            for field in failed_fields(entry.error_message):
                VALIDATION_FAILURES.labels(field=field).inc()
            return
        if self.regression:
            self.observe_values(entry.model_tag or "", _values(entry.outputs))
        else:
            for label, n in _label_counts(entry.outputs).items():
                PREDICTIONS.labels(model_tag=entry.model_tag or "", label=label).inc(n)
        self.recent.append((entry.n_records, entry.inputs))
        self.recent_rows += entry.n_records
        while self.recent and self.recent_rows - self.recent[0][0] >= WINDOW:
            self.recent_rows -= self.recent.popleft()[0]
            if self.recent_values:
                self.recent_values.popleft()
        self.since_drift += entry.n_records
        now = time.monotonic()
        if self.profile and self.since_drift >= EVERY and now - self.last_drift >= MIN_SECONDS:
            self.since_drift, self.last_drift = 0, now
            self.update_drift()

    def observe_values(self, tag: str, values: list[float]) -> None:
        """A regressor's answer: its values counted, summed and checked against the range."""
        self.recent_values.append(values)  # kept beside its entry's inputs in `recent`
        if not values:
            return
        PREDICTED_VALUES.labels(model_tag=tag).inc(len(values))
        PREDICTED_SUM.labels(model_tag=tag).inc(math.fsum(values))
        PREDICTED_SQUARES.labels(model_tag=tag).inc(math.fsum(v * v for v in values))
        if self.target_range is not None:
            low, high = self.target_range
            below = sum(1 for v in values if v < low)
            above = sum(1 for v in values if v > high)
            if below:
                OUT_OF_RANGE.labels(model_tag=tag, side="below").inc(below)
            if above:
                OUT_OF_RANGE.labels(model_tag=tag, side="above").inc(above)

    def update_drift(self) -> None:
        if not self.profile:  # observe() only calls this with a profile to compare against
            return
        rows = [r for _, inputs in self.recent for r in _records(inputs)][-WINDOW:]
        live = {c: [r.get(c) for r in rows] for c in self.columns}
        for feature, result in feature_drift(self.profile, live).items():
            if result.get("psi") is not None:
                DRIFT_PSI.labels(feature=feature).set(result["psi"])
            DRIFTED.labels(feature=feature).set(1 if result.get("drifted") else 0)
        reference = self.profile.get("predictions") if self.regression else None
        if isinstance(reference, Mapping) and reference.get("kind") == "numeric":
            values = [v for answer in self.recent_values for v in answer][-WINDOW:]
            profile = {"version": self.profile.get("version"), "features": {"p": reference}}
            result = feature_drift(profile, {"p": values})["p"]
            if result.get("psi") is not None:
                PREDICTION_DRIFT_PSI.set(result["psi"])
            PREDICTION_DRIFTED.set(1 if result.get("drifted") else 0)
