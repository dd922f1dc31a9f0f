"""Live traffic in windows of time: the windows, and the numbers of each.

`window_bounds` cuts a period into windows aligned to UTC (hourly windows start on the
hour), so every run over overlapping periods sees the same windows and an alert is
recorded once. `window_metrics` turns the prediction log's rows of one window into
numbers (request count, error rate, validation failures per field, latency quantiles,
what the model answered, feature drift against the training reference, data-quality
failures of the expectations suite), the numbers the alert rules (`alert_rules.METRICS`)
name; `window_row` is the part of them the pages chart, one row per window.

What the model answered depends on its task (`served_task`): a classifier's prediction
mix (the share of each predicted class, against the training class shares), or a
regressor's prediction distribution (its PSI against the predictions on the training
rows, and the share of predictions outside the training target's range).
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nbship.common.timeutil import EPOCH, utc
from nbship.drift import (
    DEFAULT_MIN_ROWS,
    DEFAULT_PSI_THRESHOLD,
    DEFAULT_PVALUE_THRESHOLD,
    check_profile,
    feature_drift,
    prediction_drift,
    profile_task,
)

if TYPE_CHECKING:
    import pandas as pd

MAX_WINDOWS = 2000  # beyond this a page is unreadable and slow: use longer windows
PREDICT_KIND = "predict"  # the log's other kinds (feedback, ...) are not traffic
UNKNOWN_FIELD = "(unknown)"


def window_bounds(
    since: datetime, until: datetime, window: timedelta
) -> list[tuple[datetime, datetime]]:
    """The windows [start, end) covering [since, until), aligned to multiples of `window`
    since the Unix epoch (UTC): the same windows whatever the period."""
    if window <= timedelta(0):
        raise ValueError("the window must be positive")
    since, until = utc(since), utc(until)
    if until <= since:
        raise ValueError(f"until ({until.isoformat()}) must be after since ({since.isoformat()})")
    start = EPOCH + window * math.floor((since - EPOCH) / window)
    count = math.ceil((until - start) / window)
    if count > MAX_WINDOWS:
        raise ValueError(f"{count} windows of {window} in the period: at most {MAX_WINDOWS}")
    return [(start + window * i, start + window * (i + 1)) for i in range(count)]


# the metrics of a window --------------------------------------------------------------------

# "0.age", "body", "[0, 'age']": the last part of an error location that is a name
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_COUNT_HEADER = re.compile(r"^\d+ validation errors? for ")


def _loc_field(loc: Any) -> str | None:
    parts = loc if isinstance(loc, list | tuple) else re.split(r"[.\[\]'\", ]+", str(loc))
    names = [str(p) for p in parts if isinstance(p, str) and _NAME.fullmatch(str(p))]
    return names[-1] if names else None


def _text_fields(text: str) -> list[str]:
    """Locations in pydantic's text form, or `field: message` lines."""
    found = []
    for line in text.splitlines():
        if not line.strip() or line[:1].isspace() or _COUNT_HEADER.match(line):
            continue
        head = (line.split(": ", 1)[0] if ": " in line else line).strip()
        if " " in head:  # prose, not a location
            continue
        if name := _loc_field(head):
            found.append(name)
    return found


def _json_fields(value: Any, locs: list[str], texts: list[str]) -> None:
    """Walks decoded JSON: the fields of pydantic's error locations into `locs`, the
    error strings (under "error", "msg", "message", "detail") into `texts`."""
    if isinstance(value, list):
        for item in value:
            _json_fields(item, locs, texts)
    elif isinstance(value, Mapping):
        if "loc" in value and (name := _loc_field(value["loc"])):
            locs.append(name)
        for key, item in value.items():
            if isinstance(item, str) and key in ("error", "msg", "message", "detail"):
                texts.append(item)
            elif isinstance(item, list | Mapping):
                _json_fields(item, locs, texts)


def failed_fields(message: str | None, known: Iterable[str] = ()) -> list[str]:
    """The fields a validation error message names, each once, in order.

    Tolerant of what the service may log: BentoML's JSON answer to an invalid request
    (`{"error": "...", "detail": [{"loc": [0, "age"], ...}]}`) or any JSON holding
    pydantic's error list, pydantic's text (`N validation errors for X` then one
    unindented location line per error), or `field: message` lines. When none of these
    give a field, the `known` field names found in the text; else `UNKNOWN_FIELD`.
    """
    if not message:
        return [UNKNOWN_FIELD]
    try:
        parsed: Any = json.loads(message)
    except ValueError:
        parsed = message
    found: list[str] = []
    if isinstance(parsed, str):
        found = _text_fields(parsed)
    else:
        texts: list[str] = []
        _json_fields(parsed, found, texts)
        if not found:
            found = [name for text in texts for name in _text_fields(text)]
    if not found:
        found = [k for k in known if re.search(rf"\b{re.escape(k)}\b", message)]
    return list(dict.fromkeys(found)) or [UNKNOWN_FIELD]


def _records(value: Any) -> list[dict[str, Any]]:
    """The input records a log row holds: one record, or a list of them."""
    if isinstance(value, Mapping):
        return [dict(value)]
    if isinstance(value, list):
        return [dict(v) for v in value if isinstance(v, Mapping)]
    return []


def _answers(value: Any) -> list[Mapping[str, Any]]:
    """The answers a log row's outputs hold, one per record: a list of them, one alone,
    or the whole response ({"predictions": [...]})."""
    if isinstance(value, Mapping):
        value = value.get("predictions", [value])
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, Mapping)]


def _labels(value: Any) -> list[str]:
    """The predicted labels of a classifier's outputs ({label, probabilities} each)."""
    return [str(v["label"]) for v in _answers(value) if "label" in v]


def _values(value: Any) -> list[float]:
    """The predicted numbers of a regressor's outputs ({prediction: number} each); an
    answer that is no finite number is left out."""
    found = []
    for answer in _answers(value):
        number = answer.get("prediction")
        if isinstance(number, bool) or not isinstance(number, int | float):
            continue
        if math.isfinite(number):
            found.append(float(number))
    return found


def served_task(
    profile: Mapping[str, Any] | None,
    metadata: Mapping[str, Any] | None = None,
    outputs: Iterable[Any] = (),
) -> str:
    """The task of the model whose traffic is read: the model metadata's `task`, else
    the profile's (`drift.profile_task`), else what its logged outputs look like
    ({"prediction": number} answers are a regressor's), else "classification"."""
    kind = (metadata or {}).get("task")
    if kind in ("classification", "regression"):
        return str(kind)
    if profile:
        found = profile_task(profile, default="")
        if found:
            return found
    for value in outputs:
        answers = _answers(value)
        if any("label" in a for a in answers):
            return "classification"
        if any("prediction" in a for a in answers):
            return "regression"
    return "classification"


def _quantile(values: Sequence[float], q: float) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.quantile(finite, q)) if finite else None


def live_frame(records: Sequence[Mapping[str, Any]], profile: Mapping[str, Any]) -> pd.DataFrame:
    """The input records as a DataFrame of the profiled features, with the training
    table's types (numeric float64, categorical str), so the suite checks them as it
    checked the training data."""
    import pandas as pd

    features = profile["features"]
    frame = pd.DataFrame.from_records(list(records), columns=list(features))
    for name, feature in features.items():
        if feature["kind"] == "numeric":
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
        else:
            frame[name] = frame[name].astype("str")
    return frame


def _suite_for(suite_path: str | Path, columns: Sequence[str], folder: Path) -> Path:
    """The suite cut to the expectations on `columns`: live inputs hold the features only
    (no target, no other columns), so table-level and other columns' expectations go."""
    from nbship.pipeline.contract import load_suite

    suite = load_suite(suite_path)
    kept = [
        e for e in suite.get("expectations", []) if e.get("kwargs", {}).get("column") in columns
    ]
    path = folder / "window-suite.json"
    path.write_text(json.dumps({**suite, "expectations": kept}))
    return path


def data_quality(
    frame: pd.DataFrame, suite_path: str | Path, columns: Sequence[str] | None = None
) -> dict[str, Any]:
    """The suite's expectations on `columns` (default: the frame's) run on `frame` with
    Great Expectations (contract.validate_frame): {"success", "evaluated", "failures":
    [{"expectation", "column", "detail"}]}."""
    from nbship.pipeline.contract import DataValidationError, validate_frame

    wanted = list(columns if columns is not None else frame.columns)
    with tempfile.TemporaryDirectory(prefix="nbship-dq-") as folder:
        path = _suite_for(suite_path, wanted, Path(folder))
        evaluated = len(json.loads(path.read_text())["expectations"])
        try:
            summary = validate_frame(frame, path)
            failures: list[Any] = list(summary.failures)
            evaluated = summary.evaluated
        except DataValidationError as exc:
            failures = exc.failures
    return {
        "success": not failures,
        "evaluated": evaluated,
        "failures": [
            {"expectation": f.expectation, "column": f.column, "detail": f.detail} for f in failures
        ],
    }


def window_metrics(
    log_df: pd.DataFrame,
    profile: Mapping[str, Any] | None,
    *,
    window_start: datetime | None = None,
    window_end: datetime | None = None,
    suite_path: str | Path | None = None,
    min_rows: int = DEFAULT_MIN_ROWS,
    psi_threshold: float = DEFAULT_PSI_THRESHOLD,
    pvalue_threshold: float = DEFAULT_PVALUE_THRESHOLD,
    task: str | None = None,
) -> dict[str, Any]:
    """The metrics of one window of the prediction log (`read_log`'s frame).

    Only rows of kind "predict" count, and with `window_start`/`window_end` only those
    with start <= ts < end. Scalar metrics are flat keys, the names rules use (see
    alert_rules.METRICS and PREFIXED_METRICS); a rate, quantile or share is None when its
    denominator has fewer than `min_rows`, and so is drift (per feature, on the live
    rows). Details for the pages: `task`, `models` {tag: requests}, `predictions`
    {label: count} (a classifier's; empty for a regressor), `prediction_quantiles`
    (a regressor's: {p10, p50, p90} of the window's predictions, None under `min_rows`),
    `prediction_drift` (a regressor's: `drift.prediction_drift`'s result; None for a
    classifier or without a profile),
    `validation_fields` {field: requests}, `drift` (feature_drift's result), `dq`
    (data_quality's result, when `suite_path` is given and there are `min_rows` records;
    else None). The inputs of successful requests are what drift and the suite see; the
    rejected ones are counted per field instead. `task` ("classification" /
    "regression"): the served model's, default `served_task(profile, outputs=...)`.
    """
    frame = log_df
    if "kind" in frame.columns:
        frame = frame[frame["kind"] == PREDICT_KIND]
    if window_start is not None:
        frame = frame[frame["ts"] >= utc(window_start)]
    if window_end is not None:
        frame = frame[frame["ts"] < utc(window_end)]
    features = list((profile or {}).get("features", {}))
    ok = frame[frame["status"] == "ok"]
    failed = frame[frame["status"] != "ok"]
    requests, errors = len(frame), len(failed)
    server = int((failed["http_status"] >= 500).sum())
    rejected = failed[(failed["http_status"] >= 400) & (failed["http_status"] < 500)]

    fields: dict[str, int] = {}
    for message in rejected["error_message"]:
        for name in failed_fields(message, features):
            fields[name] = fields.get(name, 0) + 1
    models: dict[str, int] = {}
    for tag in frame["model_tag"]:
        key = str(tag) if tag is not None and tag == tag else "(none)"
        models[key] = models.get(key, 0) + 1
    task = task or served_task(profile, outputs=ok["outputs"])
    regression = task == "regression"
    predictions: dict[str, int] = {}
    values: list[float] = []
    for outputs in ok["outputs"]:
        if regression:
            values.extend(_values(outputs))
            continue
        for label in _labels(outputs):
            predictions[label] = predictions.get(label, 0) + 1
    n_predicted = len(values) if regression else sum(predictions.values())
    records = [r for inputs in ok["inputs"] for r in _records(inputs)]

    enough_requests = requests >= min_rows
    metrics: dict[str, Any] = {
        "window_start": None if window_start is None else utc(window_start),
        "window_end": None if window_end is None else utc(window_end),
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if enough_requests else None,
        "server_errors": server,
        "server_error_rate": server / requests if enough_requests else None,
        "validation_failures": len(rejected),
        "records": len(records),
        "latency_p50_ms": None,
        "latency_p99_ms": None,
        "task": task,
        "models": models,
        "predictions": predictions,
        "prediction_drift": None,
        "validation_fields": fields,
        "drift": {},
        "drift_psi_max": None,
        "drifted_features": None,
        "dq": None,
        "dq_failures": None,
    }
    if len(ok) >= min_rows:
        latencies = [float(v) for v in ok["latency_ms"]]
        metrics["latency_p50_ms"] = _quantile(latencies, 0.5)
        metrics["latency_p99_ms"] = _quantile(latencies, 0.99)
    for name in [*features, *fields]:
        metrics[f"validation_failures:{name}"] = fields.get(name, 0)
    if regression:
        enough = len(values) >= min_rows
        metrics["prediction_quantiles"] = {
            f"p{round(100 * q)}": _quantile(values, q) if enough else None for q in (0.1, 0.5, 0.9)
        }
        metrics["prediction_psi"] = None
        metrics["prediction_out_of_range_share"] = None
    else:
        classes = [*(profile or {}).get("classes", {}), *predictions]
        for label in dict.fromkeys(classes):
            share = predictions.get(label, 0) / n_predicted if n_predicted >= min_rows else None
            metrics[f"prediction_share:{label}"] = share

    if profile is not None:
        check_profile(profile)
        if regression:
            _prediction_metrics(metrics, profile, values, min_rows, psi_threshold, pvalue_threshold)
        live = live_frame(records, profile)
        drift = feature_drift(
            profile,
            live,
            psi_threshold=psi_threshold,
            pvalue_threshold=pvalue_threshold,
            min_rows=min_rows,
        )
        metrics["drift"] = drift
        # a PSI the test does not call significant is one sampling noise alone can give
        # (PSI is inflated on small windows): for the rules it counts as no drift
        gated: list[float] = []
        for name, result in drift.items():
            value = _gated_psi(result, pvalue_threshold)
            if value is not None:
                gated.append(value)
            metrics[f"drift_psi:{name}"] = value
        if gated:
            metrics["drift_psi_max"] = max(gated)
            metrics["drifted_features"] = sum(r["drifted"] for r in drift.values())
        if suite_path is not None and len(records) >= min_rows:
            metrics["dq"] = data_quality(live, suite_path, features)
            metrics["dq_failures"] = len(metrics["dq"]["failures"])
    return metrics


def _gated_psi(result: Mapping[str, Any], pvalue_threshold: float) -> float | None:
    """A PSI for the rules: None under min_rows, 0.0 unless the test calls the change
    significant (PSI is inflated on small windows: sampling noise alone gives some)."""
    if not result["enough_rows"] or result["psi"] is None:
        return None
    p = result["pvalue"]
    return float(result["psi"]) if p is not None and p < pvalue_threshold else 0.0


def _prediction_metrics(
    metrics: dict[str, Any],
    profile: Mapping[str, Any],
    values: Sequence[float],
    min_rows: int,
    psi_threshold: float,
    pvalue_threshold: float,
) -> None:
    """A regressor's window: its predictions against the training predictions."""
    result = prediction_drift(
        profile,
        values,
        psi_threshold=psi_threshold,
        pvalue_threshold=pvalue_threshold,
        min_rows=min_rows,
    )
    if result is None:
        return
    metrics["prediction_drift"] = result
    metrics["prediction_psi"] = _gated_psi(result, pvalue_threshold)
    metrics["prediction_out_of_range_share"] = result["out_of_range_share"]


def window_row(metrics: Mapping[str, Any], start: datetime, end: datetime) -> dict[str, Any]:
    """What the pages chart of one window (`metrics`: its `window_metrics`, or {} for a
    window that was not computed): counts, rates, latency, the prediction mix (a
    classifier's) or the predictions' quantiles, PSI and out-of-range share (a
    regressor's), and each feature's PSI, None where the window has too few rows to
    tell drift from noise."""
    drift = metrics.get("drift") or {}
    predicted = metrics.get("prediction_drift") or {}
    quantiles = metrics.get("prediction_quantiles") or {}
    return {
        "start": start,
        "end": end,
        "requests": metrics.get("requests", 0),
        "errors": metrics.get("errors", 0),
        "error_rate": metrics.get("error_rate"),
        "server_error_rate": metrics.get("server_error_rate"),
        "latency_p50_ms": metrics.get("latency_p50_ms"),
        "latency_p99_ms": metrics.get("latency_p99_ms"),
        "predictions": dict(metrics.get("predictions") or {}),
        "prediction_p10": quantiles.get("p10"),
        "prediction_p50": quantiles.get("p50"),
        "prediction_p90": quantiles.get("p90"),
        "prediction_psi": predicted.get("psi") if predicted.get("enough_rows") else None,
        "prediction_out_of_range_share": predicted.get("out_of_range_share"),
        "drift_psi": {name: r["psi"] if r["enough_rows"] else None for name, r in drift.items()},
    }
