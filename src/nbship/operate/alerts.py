"""Alert rules on windows of live traffic: metrics, rules, a store, and sinks.

`window_metrics` turns the prediction log's rows of one time window into numbers (request
count, error rate, validation failures per field, latency quantiles, prediction mix,
feature drift against the training reference, data-quality failures of the expectations
suite). `evaluate` checks the configured rules against them; `AlertStore` records each
alert once per rule and window; `send` hands new alerts to the configured sinks (a log
line, a webhook), and a sink that fails is logged and skipped, never raised.

The configuration is the `monitoring` section of env.yaml::

    monitoring:
      window_minutes: 60      # the length of a window (windows are aligned to UTC)
      min_rows: 30            # below this many requests/rows a rate, quantile, share or
                              # drift metric is not computed (None): no alert from noise
      psi_threshold: 0.2      # a feature drifts when its PSI reaches this ...
      pvalue_threshold: 0.01  # ... and its KS / chi-squared p-value is below this
      alerts:
        - {name: feature-drift, metric: drift_psi_max, op: ">", threshold: 0.2}
        - {name: errors, metric: error_rate, op: ">", threshold: 0.05}
        - {name: slow, metric: latency_p99_ms, op: ">", threshold: 200}
        - {name: mix, metric: "prediction_share:Gentoo", op: ">", threshold: 0.6}
      sinks:
        - {type: log}
        - {type: webhook, url: "http://127.0.0.1:9999/hook", timeout_s: 2}
"""

from __future__ import annotations

import json
import logging
import math
import operator
import re
import tempfile
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    insert,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from nbship.common.sqlite import sqlite_engine
from nbship.config import ConfigError
from nbship.drift import (
    DEFAULT_MIN_ROWS,
    DEFAULT_PSI_THRESHOLD,
    DEFAULT_PVALUE_THRESHOLD,
    check_profile,
    feature_drift,
)

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger("nbship.operate.alerts")

DEFAULT_WINDOW_MINUTES = 60
DEFAULT_TIMEOUT_S = 5.0
PREDICT_KIND = "predict"  # the log's other kinds (feedback, ...) are not traffic
UNKNOWN_FIELD = "(unknown)"

# metrics a rule can name; the prefixed ones take a class / feature / field after ":"
METRICS: dict[str, str] = {
    "requests": "predict requests in the window",
    "errors": "requests that failed (any status)",
    "error_rate": "errors / requests",
    "server_errors": "requests answered 5xx",
    "server_error_rate": "server errors / requests",
    "validation_failures": "requests rejected as invalid (4xx)",
    "records": "records predicted (successful requests)",
    "latency_p50_ms": "median latency of successful requests, ms",
    "latency_p99_ms": "99th percentile latency of successful requests, ms",
    "drift_psi_max": "largest PSI among features whose change is significant",
    "drifted_features": "how many features are flagged as drifted",
    "dq_failures": "failed expectations of the suite on the window's inputs",
}
PREFIXED_METRICS: dict[str, str] = {
    "prediction_share": "share of predictions of a class (prediction_share:<class>)",
    "drift_psi": "a feature's PSI, 0 unless its change is significant (drift_psi:<feature>)",
    "validation_failures": "rejected requests naming a field (validation_failures:<field>)",
}
OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
SINK_TYPES = ("log", "webhook")


# configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """Fire when `metric <op> threshold` in a window (a metric that is None, too few
    rows, never fires)."""

    name: str
    metric: str
    op: str
    threshold: float

    def check(self, value: float) -> bool:
        return OPS[self.op](value, self.threshold)


@dataclass(frozen=True)
class Sink:
    """Where alerts go: `type` "log" (a WARNING on logger nbship.operate.alerts) or "webhook"
    (a JSON POST to `url`, waiting at most `timeout_s`)."""

    type: str
    url: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    def describe(self) -> str:
        """The sink for log lines: a webhook as scheme://host:port only (its path or
        query may hold a token)."""
        if self.type != "webhook" or not self.url:
            return self.type
        parts = urlsplit(self.url)
        return f"webhook {parts.scheme}://{parts.netloc.rpartition('@')[2]}"


@dataclass(frozen=True)
class MonitorConfig:
    window: timedelta = timedelta(minutes=DEFAULT_WINDOW_MINUTES)
    min_rows: int = DEFAULT_MIN_ROWS
    psi_threshold: float = DEFAULT_PSI_THRESHOLD
    pvalue_threshold: float = DEFAULT_PVALUE_THRESHOLD
    rules: tuple[Rule, ...] = ()
    sinks: tuple[Sink, ...] = (Sink("log"),)


_CONFIG_KEYS = {"window_minutes", "min_rows", "psi_threshold", "pvalue_threshold", "alerts"}
_CONFIG_KEYS |= {"sinks"}
_RULE_KEYS = {"name", "metric", "op", "threshold"}
_SINK_KEYS = {"log": {"type"}, "webhook": {"type", "url", "timeout_s"}}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _unknown_keys(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(str(k) for k in raw if k not in allowed)
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {extra} (allowed: {sorted(allowed)})")


def _mapping(raw: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    return raw


def _sequence(raw: Any, where: str) -> Sequence[Any]:
    if raw is None:
        return ()
    if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
        raise ConfigError(f"{where}: expected a list, got {type(raw).__name__}")
    return raw


def known_metric(metric: str) -> bool:
    """Whether a rule may name `metric` (see METRICS and PREFIXED_METRICS)."""
    if metric in METRICS:
        return True
    prefix, sep, rest = metric.partition(":")
    return bool(sep and rest and prefix in PREFIXED_METRICS)


def _rule(raw: Any, where: str) -> Rule:
    raw = _mapping(raw, where)
    _unknown_keys(raw, _RULE_KEYS, where)
    for key in ("name", "metric", "op", "threshold"):
        if key not in raw or raw[key] is None:
            raise ConfigError(f"{where}.{key}: missing")
    name, metric, op, threshold = raw["name"], raw["metric"], raw["op"], raw["threshold"]
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}.name: must be a non-empty string")
    if not isinstance(metric, str) or not known_metric(metric):
        known = sorted(METRICS) + [f"{p}:<name>" for p in sorted(PREFIXED_METRICS)]
        raise ConfigError(f"{where}.metric: unknown metric {metric!r} (known: {known})")
    if op not in OPS:
        raise ConfigError(f"{where}.op: unknown operator {op!r} (one of {list(OPS)})")
    if not _is_number(threshold):
        raise ConfigError(f"{where}.threshold: must be a finite number, got {threshold!r}")
    return Rule(name=name.strip(), metric=metric, op=op, threshold=float(threshold))


def _sink(raw: Any, where: str) -> Sink:
    raw = _mapping(raw, where)
    kind = raw.get("type")
    if kind not in SINK_TYPES:
        raise ConfigError(f"{where}.type: unknown sink type {kind!r} (one of {list(SINK_TYPES)})")
    _unknown_keys(raw, _SINK_KEYS[kind], where)
    if kind == "log":
        return Sink("log")
    url = raw.get("url")
    if not isinstance(url, str) or not url:
        raise ConfigError(f"{where}.url: missing (a webhook needs an http(s) URL)")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{where}.url: not an http(s) URL: {url!r}")
    timeout = raw.get("timeout_s", DEFAULT_TIMEOUT_S)
    if not _is_number(timeout) or timeout <= 0:
        raise ConfigError(f"{where}.timeout_s: must be a positive number, got {timeout!r}")
    return Sink("webhook", url=url, timeout_s=float(timeout))


def parse_config(raw: Mapping[str, Any] | None, where: str = "monitoring") -> MonitorConfig:
    """The `monitoring` section of env.yaml as a MonitorConfig (None: the defaults, no
    rules, a log sink). Raises ConfigError naming the key that is wrong."""
    if raw is None:
        return MonitorConfig()
    raw = _mapping(raw, where)
    _unknown_keys(raw, _CONFIG_KEYS, where)
    minutes = raw.get("window_minutes", DEFAULT_WINDOW_MINUTES)
    if not _is_number(minutes) or minutes <= 0:
        raise ConfigError(f"{where}.window_minutes: must be a positive number, got {minutes!r}")
    min_rows = raw.get("min_rows", DEFAULT_MIN_ROWS)
    if not isinstance(min_rows, int) or isinstance(min_rows, bool) or min_rows < 1:
        raise ConfigError(f"{where}.min_rows: must be a positive integer, got {min_rows!r}")
    psi_threshold = raw.get("psi_threshold", DEFAULT_PSI_THRESHOLD)
    if not _is_number(psi_threshold) or psi_threshold <= 0:
        raise ConfigError(f"{where}.psi_threshold: must be a positive number")
    pvalue = raw.get("pvalue_threshold", DEFAULT_PVALUE_THRESHOLD)
    if not _is_number(pvalue) or not 0 < pvalue <= 1:
        raise ConfigError(f"{where}.pvalue_threshold: must be a number in (0, 1]")
    rules = tuple(
        _rule(r, f"{where}.alerts[{i}]")
        for i, r in enumerate(_sequence(raw.get("alerts"), f"{where}.alerts"))
    )
    seen: set[str] = set()
    for i, rule in enumerate(rules):
        if rule.name in seen:
            raise ConfigError(f"{where}.alerts[{i}].name: duplicate rule name {rule.name!r}")
        seen.add(rule.name)
    sinks = (
        tuple(
            _sink(s, f"{where}.sinks[{i}]")
            for i, s in enumerate(_sequence(raw.get("sinks"), f"{where}.sinks"))
        )
        if "sinks" in raw
        else (Sink("log"),)
    )
    return MonitorConfig(
        window=timedelta(minutes=float(minutes)),
        min_rows=min_rows,
        psi_threshold=float(psi_threshold),
        pvalue_threshold=float(pvalue),
        rules=rules,
        sinks=sinks,
    )


# window metrics -----------------------------------------------------------------------------

# "0.island", "body", "[0, 'island']": the last part of an error location that is a name
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
    (`{"error": "...", "detail": [{"loc": [0, "island"], ...}]}`) or any JSON holding
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


def _labels(value: Any) -> list[str]:
    """The predicted labels a log row's outputs hold: a list of {label, probabilities},
    one such dict, or the whole response ({"predictions": [...]})."""
    if isinstance(value, Mapping):
        value = value.get("predictions", [value])
    if not isinstance(value, list):
        return []
    return [str(v["label"]) for v in value if isinstance(v, Mapping) and "label" in v]


def _quantile(values: Sequence[float], q: float) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.quantile(finite, q)) if finite else None


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


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
) -> dict[str, Any]:
    """The metrics of one window of the prediction log (`read_log`'s frame).

    Only rows of kind "predict" count, and with `window_start`/`window_end` only those
    with start <= ts < end. Scalar metrics are flat keys, the names rules use (see
    METRICS, PREFIXED_METRICS); a rate, quantile or share is None when its denominator
    has fewer than `min_rows`, and so is drift (per feature, on the live rows). Details
    for the report: `models` {tag: requests}, `predictions` {label: count},
    `validation_fields` {field: requests}, `drift` (feature_drift's result), `dq`
    (data_quality's result, when `suite_path` is given and there are `min_rows` records;
    else None). The inputs of successful requests are what drift and the suite see; the
    rejected ones are counted per field instead.
    """
    frame = log_df
    if "kind" in frame.columns:
        frame = frame[frame["kind"] == PREDICT_KIND]
    if window_start is not None:
        frame = frame[frame["ts"] >= _utc(window_start)]
    if window_end is not None:
        frame = frame[frame["ts"] < _utc(window_end)]
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
    predictions: dict[str, int] = {}
    for outputs in ok["outputs"]:
        for label in _labels(outputs):
            predictions[label] = predictions.get(label, 0) + 1
    n_predicted = sum(predictions.values())
    records = [r for inputs in ok["inputs"] for r in _records(inputs)]

    enough_requests = requests >= min_rows
    metrics: dict[str, Any] = {
        "window_start": None if window_start is None else _utc(window_start),
        "window_end": None if window_end is None else _utc(window_end),
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if enough_requests else None,
        "server_errors": server,
        "server_error_rate": server / requests if enough_requests else None,
        "validation_failures": len(rejected),
        "records": len(records),
        "latency_p50_ms": None,
        "latency_p99_ms": None,
        "models": models,
        "predictions": predictions,
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
    classes = [*(profile or {}).get("classes", {}), *predictions]
    for label in dict.fromkeys(classes):
        share = predictions.get(label, 0) / n_predicted if n_predicted >= min_rows else None
        metrics[f"prediction_share:{label}"] = share

    if profile is not None:
        check_profile(profile)
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
            value = None
            if result["enough_rows"] and result["psi"] is not None:
                p = result["pvalue"]
                value = result["psi"] if p is not None and p < pvalue_threshold else 0.0
                gated.append(value)
            metrics[f"drift_psi:{name}"] = value
        if gated:
            metrics["drift_psi_max"] = max(gated)
            metrics["drifted_features"] = sum(r["drifted"] for r in drift.values())
        if suite_path is not None and len(records) >= min_rows:
            metrics["dq"] = data_quality(live, suite_path, features)
            metrics["dq_failures"] = len(metrics["dq"]["failures"])
    return metrics


# rules and alerts ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    """A rule that fired in a window: the metric's value against the rule's threshold."""

    rule: str
    metric: str
    op: str
    value: float
    threshold: float
    window_start: datetime | None
    window_end: datetime | None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def message(self) -> str:
        window = (
            f" in window {_iso(self.window_start)} to {_iso(self.window_end)}"
            if self.window_start is not None or self.window_end is not None
            else ""
        )
        return f"{self.rule}: {self.metric} = {self.value:.4g} {self.op} {self.threshold:g}{window}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: times as ISO 8601 UTC."""
        return {
            "rule": self.rule,
            "metric": self.metric,
            "op": self.op,
            "value": self.value,
            "threshold": self.threshold,
            "window_start": _iso(self.window_start),
            "window_end": _iso(self.window_end),
            "created_at": _iso(self.created_at),
            "message": self.message,
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else _utc(value).isoformat()


def evaluate(rules: Iterable[Rule], metrics: Mapping[str, Any]) -> list[Alert]:
    """The alerts of the rules that fire on `metrics` (one window's, from
    `window_metrics`); a metric that is missing or None fires nothing."""
    alerts = []
    for rule in rules:
        value = metrics.get(rule.metric)
        if not _is_number(value):
            continue
        if rule.check(float(value)):
            alerts.append(
                Alert(
                    rule=rule.name,
                    metric=rule.metric,
                    op=rule.op,
                    value=float(value),
                    threshold=rule.threshold,
                    window_start=metrics.get("window_start"),
                    window_end=metrics.get("window_end"),
                )
            )
    return alerts


# the store ----------------------------------------------------------------------------------

ALERTS_TABLE = "alerts"
# an alert with no window is keyed on this instead (NULLs never collide in a unique key)
_NO_TIME = datetime(1970, 1, 1, tzinfo=UTC)

_metadata = MetaData()
alerts_table = Table(
    ALERTS_TABLE,
    _metadata,
    Column("id", Integer, primary_key=True),
    Column("rule", String(255), nullable=False),
    Column("metric", String(255), nullable=False),
    Column("op", String(4), nullable=False),
    Column("value", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("window_start", DateTime(timezone=True), nullable=False),
    Column("window_end", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("message", Text),
    UniqueConstraint("rule", "window_start", "window_end", name="uq_alerts_rule_window"),
)


def _store_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    return sqlite_engine(url)


def _insert_ignoring_duplicates(engine: Engine) -> Callable[[], Any]:
    backend = engine.dialect.name
    if backend == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    elif backend == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert  # type: ignore[assignment]
    else:
        return lambda: insert(alerts_table)
    return lambda: dialect_insert(alerts_table).on_conflict_do_nothing()


class AlertStore:
    """The alerts recorded so far, in the table `alerts` of a SQL database (SQLite file
    by default; the prediction log's database is fine). Each rule is recorded at most
    once per window: recording it again is a no-op."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine = _store_engine(url)
        _metadata.create_all(self._engine)
        self._insert = _insert_ignoring_duplicates(self._engine)

    def __enter__(self) -> AlertStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._engine.dispose()

    def record(self, alerts: Iterable[Alert]) -> list[Alert]:
        """Stores the alerts not stored yet (same rule, same window) and returns them:
        the ones to send."""
        new = []
        for alert in alerts:
            row = {
                "rule": alert.rule,
                "metric": alert.metric,
                "op": alert.op,
                "value": alert.value,
                "threshold": alert.threshold,
                "window_start": _utc(alert.window_start or _NO_TIME),
                "window_end": _utc(alert.window_end or _NO_TIME),
                "created_at": _utc(alert.created_at),
                "message": alert.message,
            }
            try:
                with self._engine.begin() as conn:
                    inserted = conn.execute(self._insert().values(**row)).rowcount
            except IntegrityError:  # a database without insert-or-ignore: a duplicate
                inserted = 0
            if inserted:
                new.append(alert)
        return new

    def alerts(self, since: datetime | None = None, until: datetime | None = None) -> list[Alert]:
        """The recorded alerts whose window overlaps [since, until), oldest window first."""
        c = alerts_table.c
        query = select(alerts_table).order_by(c.window_start, c.rule, c.id)
        if since is not None:
            query = query.where(c.window_end > _utc(since))
        if until is not None:
            query = query.where(c.window_start < _utc(until))
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()

        def when(value: datetime) -> datetime | None:
            value = _utc(value)
            return None if value == _NO_TIME else value

        return [
            Alert(
                rule=r["rule"],
                metric=r["metric"],
                op=r["op"],
                value=float(r["value"]),
                threshold=float(r["threshold"]),
                window_start=when(r["window_start"]),
                window_end=when(r["window_end"]),
                created_at=_utc(r["created_at"]),
            )
            for r in rows
        ]


# sinks --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """What became of the alerts at one sink."""

    sink: str
    ok: bool
    error: str | None = None


def _log_sink(alerts: Sequence[Alert]) -> None:
    for alert in alerts:
        logger.warning("ALERT %s", alert.message)


def _webhook_sink(alerts: Sequence[Alert], sink: Sink) -> None:
    body = json.dumps(
        {"source": "nbship", "alerts": [a.to_dict() for a in alerts]}, allow_nan=False
    ).encode()
    request = urllib.request.Request(
        str(sink.url),
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "nbship-alerts"},
    )
    with urllib.request.urlopen(request, timeout=sink.timeout_s) as response:
        response.read()  # urlopen raises HTTPError on a 4xx/5xx answer


def send(alerts: Sequence[Alert], sinks: Iterable[Sink]) -> list[Delivery]:
    """Hands `alerts` to every sink (a webhook gets one POST with all of them as JSON:
    {"source": "nbship", "alerts": [Alert.to_dict(), ...]}). A sink that fails is
    logged and reported in the result; it never raises and never stops the others."""
    if not alerts:
        return []
    deliveries = []
    for sink in sinks:
        name = sink.describe()
        try:
            if sink.type == "log":
                _log_sink(alerts)
            elif sink.type == "webhook":
                _webhook_sink(alerts, sink)
            else:
                raise ValueError(f"unknown sink type {sink.type!r}")
        except Exception as exc:  # a sink must never take the monitor down
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            logger.error("alert sink %s failed for %d alert(s): %s", name, len(alerts), error)
            deliveries.append(Delivery(name, False, error))
        else:
            deliveries.append(Delivery(name, True))
    return deliveries
