"""Alert rules: the `monitoring` section of env.yaml, and the alerts its rules fire.

`parse_config` checks the section into a MonitorConfig (window length, the row minimum
below which no rate, quantile, share or drift is computed, the drift thresholds, the
rules and the sinks) and raises ConfigError naming the key that is wrong. `evaluate`
checks the rules against one window's metrics (`windows.window_metrics`) and returns
an `Alert` per rule that fires. The section::

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
        - {name: mix, metric: "prediction_share:churned", op: ">", threshold: 0.6}
        # a regressor: its predictions against those on the training rows
        # - {name: predictions, metric: prediction_psi, op: ">", threshold: 0.2}
        # - {name: range, metric: prediction_out_of_range_share, op: ">", threshold: 0.05}
      sinks:
        - {type: log}
        - {type: webhook, url: "http://127.0.0.1:9999/hook", timeout_s: 2}

Where alerts go next: `alert_store` records each once per rule and window,
`alert_sinks` sends the new ones.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeGuard
from urllib.parse import urlsplit

from nbship.common.timeutil import utc
from nbship.config import ConfigError
from nbship.drift import DEFAULT_MIN_ROWS, DEFAULT_PSI_THRESHOLD, DEFAULT_PVALUE_THRESHOLD

DEFAULT_WINDOW_MINUTES = 60
DEFAULT_TIMEOUT_S = 5.0

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
    "prediction_psi": "a regressor's predictions: PSI against its predictions on the "
    "training rows, 0 unless the change is significant",
    "prediction_out_of_range_share": "a regressor's predictions: share outside the "
    "training target's [min, max]",
}
PREFIXED_METRICS: dict[str, str] = {
    "prediction_share": "a classifier's share of predictions of a class (prediction_share:<class>)",
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


def _is_number(value: Any) -> TypeGuard[float]:
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


# the alerts rules fire ----------------------------------------------------------------------


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
    return None if value is None else utc(value).isoformat()


def evaluate(rules: Iterable[Rule], metrics: Mapping[str, Any]) -> list[Alert]:
    """The alerts of the rules that fire on `metrics` (one window's, from
    `window_metrics`); a metric that is missing or None fires nothing."""
    alerts = []
    for rule in rules:
        value = metrics.get(rule.metric)
        if _is_number(value) and rule.check(float(value)):
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
