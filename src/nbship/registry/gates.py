"""Promotion gates: checks a challenger model must pass before it replaces the champion.

Each gate returns a `GateResult` with a one-line message a person reads and JSON-ready
evidence (numbers and lists only), so results can be stored in the registry and shown in
the model report as they are.

Every gate works for a classifier and for a regressor. The task is the one given
(`task=`: a `nbship.tasks.Task` or its name, e.g. a version's metadata["task"]), else the
one the models do (`nbship.tasks.of_model`).

- metric: the challenger's test metric is not worse than the champion's by more than a
  tolerance, in the metric's own direction (`nbship.tasks.METRICS`). The tolerance is
  absolute for classification metrics and r2, relative to the champion's value for the
  regression error metrics (rmse, mae, median_ae), whose scale is the target's.
- differential: on the golden set, few rows change: a classifier's label changes or a class
  probability moves more than `prob_tolerance`; a regressor's prediction moves more than
  `value_abs_tolerance + value_rel_tolerance * |old|`.
- benchmark: predict latency (`predict_proba` of a classifier, `predict` of a regressor;
  p50, p99 over a fixed batch) and, when known, training time are not more than a factor
  slower than the champion's.
- invariance: behavioural checks, e.g. setting a column such as `region` to each of its
  values changes at most a share of predictions (a classifier's label; a regressor's
  value beyond the differential gate's tolerance).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pydantic import field_validator

from nbship import tasks
from nbship.config import GateSettings, validate_section
from nbship.tasks import METRICS, Task

# Differing rows listed in the differential gate's evidence (all are counted).
MAX_LISTED_ROWS = 50
# Float comparisons against a threshold allow this much rounding noise.
_EPS = 1e-12
# GateConfig.metric's value for "the task's default metric" (nbship.tasks.Task.check_metric)
AUTO = "auto"


@dataclass(frozen=True)
class GateResult:
    gate: str
    passed: bool
    message: str
    evidence: dict = field(default_factory=dict)


class GateConfig(GateSettings):
    """env.yaml's `gates:` (its defaults are nbship.config's) and the metric compared, the
    project's `selection_metric`: a metric of either task, or "auto" for the task's default
    (f1_macro for classification, rmse for regression)."""

    metric: str = AUTO

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric != AUTO and metric not in METRICS:
            raise ValueError(
                f"unknown gate metric {metric!r}: choose {AUTO!r} or one of {sorted(METRICS)}"
            )
        return metric

    def metric_for(self, task: Task) -> str:
        """The metric compared for `task`: "auto" resolved; ValueError for another task's."""
        return task.check_metric(self.metric)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> GateConfig:
        """From env.yaml's `gates:` section (plus `metric`); ConfigError names the key."""
        return validate_section(cls, dict(values or {}), "gates")


def _plain(value: Any) -> Any:
    """numpy scalars to Python ones, so evidence goes through json.dumps as it is."""
    return value.item() if isinstance(value, np.generic) else value


def _finite(value: Any) -> float | None:
    """A float for the evidence; None for NaN or infinity (the evidence is strict JSON)."""
    number = float(value)
    return number if np.isfinite(number) else None


def _task_of(task: Task | str | None, *models: Any) -> Task:
    """The task given (a Task or its name), else the one the models do; ValueError when the
    models do different ones, since then there is nothing to compare."""
    if isinstance(task, Task):
        return task
    if task:
        return tasks.get(str(task))
    kinds = {tasks.of_model(m).kind for m in models if m is not None}
    if len(kinds) != 1:
        raise ValueError(
            f"the champion and the challenger do different tasks ({', '.join(sorted(kinds))}): "
            "their predictions cannot be compared"
            if kinds
            else "no model to tell the task from: pass task="
        )
    return tasks.get(kinds.pop())


def _task_of_metrics(*metric_sets: Mapping[str, Any]) -> Task:
    """The one task whose metrics the sets name (for an "auto" metric without a task)."""
    kinds = {tasks.of_metric(n).kind for m in metric_sets for n in m if n in METRICS}
    if len(kinds) != 1:
        raise ValueError(
            f"metric {AUTO!r} needs the task, and the metrics name "
            f"{'no known metric' if not kinds else ' and '.join(sorted(kinds))}: pass task="
        )
    return tasks.get(kinds.pop())


def relative_tolerance(task: Task, metric: str) -> bool:
    """True when the metric gate's tolerance is a share of the champion's value: the
    regression error metrics (rmse, mae, median_ae), which are in the target's units, so an
    absolute 0.01 means nothing for a price and everything for a probability. Classification
    metrics and r2 are unit-free: their tolerance is absolute."""
    return not task.is_classification and not task.higher_is_better(metric)


def _num(value: float, task: Task, metric: str) -> str:
    """Unit-free metrics to 4 decimals; error metrics in the target's units to 6 figures."""
    return f"{value:.6g}" if relative_tolerance(task, metric) else f"{value:.4f}"


def metric_gate(
    champion_metrics: Mapping[str, float],
    challenger_metrics: Mapping[str, float],
    config: GateConfig,
    task: Task | str | None = None,
) -> GateResult:
    """The challenger is worse than the champion by at most `metric_tolerance`, in the
    metric's own direction (rmse: lower is better).

    The tolerance is absolute for classification metrics and r2 (0.01: one point of
    f1_macro), and relative to the champion's value for the regression error metrics rmse,
    mae and median_ae (0.01: 1% of the champion's rmse), whose scale is the target's; the
    message and the evidence ("tolerance_kind", "allowed") say which. A champion with an
    error of 0 thus allows the challenger none. `task` resolves an "auto" metric; without
    it the task is the one the metric (or, for "auto", the metrics given) belong to.
    """
    if task is None:
        task = (
            _task_of_metrics(challenger_metrics, champion_metrics)
            if config.metric == AUTO
            else tasks.of_metric(config.metric)
        )
    resolved = _task_of(task)
    name = config.metric_for(resolved)
    for who, metrics in (("champion", champion_metrics), ("challenger", challenger_metrics)):
        if name not in metrics:
            raise ValueError(f"{who} metrics have no {name!r} (have {sorted(metrics)})")
    old, new = float(champion_metrics[name]), float(challenger_metrics[name])
    higher_is_better = resolved.higher_is_better(name)
    relative = relative_tolerance(resolved, name)
    allowed = config.metric_tolerance * abs(old) if relative else config.metric_tolerance
    # positive when the challenger is worse, in the metric's own direction
    worse_by = (old - new) if higher_is_better else (new - old)
    ok = worse_by <= allowed + _EPS
    direction = "higher" if higher_is_better else "lower"

    def num(value: float) -> str:
        return _num(value, resolved, name)

    verdict = (
        f"worse by {num(worse_by)}" if worse_by > 0 else f"better or equal by {num(-worse_by)}"
    )
    tolerance = (
        f"tolerance {config.metric_tolerance} relative to the champion's {name} "
        f"(allows {num(allowed)})"
        if relative
        else f"tolerance {config.metric_tolerance}"
    )
    message = (
        f"{name} ({direction} is better): challenger {num(new)} vs champion {num(old)}, "
        f"{verdict}; {tolerance}"
    )
    return GateResult(
        gate="metric",
        passed=ok,
        message=message,
        evidence={
            "metric": name,
            "task": resolved.kind,
            "higher_is_better": higher_is_better,
            "champion": old,
            "challenger": new,
            "worse_by": worse_by,
            "tolerance": config.metric_tolerance,
            "tolerance_kind": "relative" if relative else "absolute",
            "allowed": allowed,
        },
    )


def _aligned_proba(model: Any, X: pd.DataFrame, classes: list[Any]) -> np.ndarray:
    """predict_proba with columns in the order of `classes` (0 for a class it lacks)."""
    proba = np.asarray(model.predict_proba(X), dtype=float)
    out = np.zeros((len(X), len(classes)))
    index = {c: i for i, c in enumerate(classes)}
    for j, c in enumerate(model.classes_):
        out[:, index[_plain(c)]] = proba[:, j]
    return out


def _values(model: Any, X: pd.DataFrame) -> np.ndarray:
    """A regressor's predictions as one float per row."""
    return np.asarray(model.predict(X), dtype=float).reshape(len(X))


def value_changed(old: np.ndarray, new: np.ndarray, config: GateSettings) -> np.ndarray:
    """Per row, True when a regressor's prediction moved more than
    `value_abs_tolerance + value_rel_tolerance * |old|` (NaN against a number is a change;
    NaN against NaN is not)."""
    allowed = config.value_abs_tolerance + config.value_rel_tolerance * np.abs(old)
    with np.errstate(invalid="ignore"):
        same = (np.abs(new - old) <= allowed + _EPS) | (old == new)
    return ~(same | (np.isnan(old) & np.isnan(new)))


def _tolerance_text(config: GateSettings) -> str:
    return f"|new - old| > {config.value_abs_tolerance} + {config.value_rel_tolerance} x |old|"


def differential_gate(
    champion: Any,
    challenger: Any,
    golden: pd.DataFrame,
    columns: Sequence[str],
    config: GateConfig,
    task: Task | str | None = None,
) -> GateResult:
    """Rows of the golden set where the prediction changes too much: a classifier's label
    changes or a class probability moves more than `prob_tolerance`; a regressor's value
    moves more than `value_abs_tolerance + value_rel_tolerance * |old|`. Fails when the
    share of such rows is more than `max_diff_share`; lists the first MAX_LISTED_ROWS as
    (row, old, new)."""
    if len(golden) == 0:
        raise ValueError("the golden set is empty: the differential gate has nothing to compare")
    X = golden[list(columns)]
    resolved = _task_of(task, champion, challenger)
    if not resolved.is_classification:
        return _differential_values(champion, challenger, X, config)
    classes = sorted({_plain(c) for m in (champion, challenger) for c in m.classes_}, key=str)
    old_p = _aligned_proba(champion, X, classes)
    new_p = _aligned_proba(challenger, X, classes)
    old_labels = [classes[i] for i in old_p.argmax(axis=1)]
    new_labels = [classes[i] for i in new_p.argmax(axis=1)]
    deltas = np.abs(old_p - new_p).max(axis=1)
    differs = [
        i
        for i in range(len(X))
        if old_labels[i] != new_labels[i] or deltas[i] > config.prob_tolerance + _EPS
    ]
    label_changes = sum(o != n for o, n in zip(old_labels, new_labels, strict=True))
    share = len(differs) / len(X)
    ok = share <= config.max_diff_share + _EPS
    rows = [
        {
            "row": i,
            "old": old_labels[i],
            "new": new_labels[i],
            "max_prob_delta": float(deltas[i]),
        }
        for i in differs[:MAX_LISTED_ROWS]
    ]
    message = (
        f"golden set: {len(differs)}/{len(X)} rows differ (share {share:.3f}, "
        f"{label_changes} label changes, probability tolerance {config.prob_tolerance}); "
        f"max share {config.max_diff_share}"
    )
    return GateResult(
        gate="differential",
        passed=ok,
        message=message,
        evidence={
            "n_rows": len(X),
            "n_differing": len(differs),
            "share": share,
            "label_changes": label_changes,
            "max_prob_delta": float(deltas.max()),
            "prob_tolerance": config.prob_tolerance,
            "max_diff_share": config.max_diff_share,
            "rows": rows,
            "rows_listed": len(rows),
        },
    )


def _differential_values(
    champion: Any, challenger: Any, X: pd.DataFrame, config: GateConfig
) -> GateResult:
    """The differential gate of two regressors."""
    old, new = _values(champion, X), _values(challenger, X)
    changed = value_changed(old, new, config)
    with np.errstate(invalid="ignore"):
        deltas = np.abs(new - old)
    differs = np.flatnonzero(changed).tolist()
    share = len(differs) / len(X)
    ok = share <= config.max_diff_share + _EPS
    rows = [
        {"row": i, "old": _finite(old[i]), "new": _finite(new[i]), "abs_delta": _finite(deltas[i])}
        for i in differs[:MAX_LISTED_ROWS]
    ]
    finite = deltas[np.isfinite(deltas)]
    largest = float(finite.max()) if finite.size else None
    message = (
        f"golden set: {len(differs)}/{len(X)} predictions differ (share {share:.3f}, "
        f"{_tolerance_text(config)}; largest |new - old| "
        f"{'n/a' if largest is None else f'{largest:.6g}'}); max share {config.max_diff_share}"
    )
    return GateResult(
        gate="differential",
        passed=ok,
        message=message,
        evidence={
            "task": "regression",
            "n_rows": len(X),
            "n_differing": len(differs),
            "share": share,
            "max_abs_delta": largest,
            "value_abs_tolerance": config.value_abs_tolerance,
            "value_rel_tolerance": config.value_rel_tolerance,
            "max_diff_share": config.max_diff_share,
            "rows": rows,
            "rows_listed": len(rows),
        },
    )


def _percentiles_ms(times: list[float]) -> dict[str, float]:
    return {
        "p50": float(np.percentile(times, 50)) * 1000,
        "p99": float(np.percentile(times, 99)) * 1000,
    }


def _ratio(new: float, old: float) -> float:
    return new / max(old, 1e-9)


def benchmark_method(task: Task, *models: Any) -> str:
    """What serving calls and the benchmark times: a classifier's `predict_proba` (its
    `predict` when it has none), a regressor's `predict`."""
    if task.is_classification and all(hasattr(m, "predict_proba") for m in models):
        return "predict_proba"
    return "predict"


def benchmark_gate(
    champion: Any,
    challenger: Any,
    batch: pd.DataFrame,
    config: GateConfig,
    champion_train_seconds: float | None = None,
    challenger_train_seconds: float | None = None,
    task: Task | str | None = None,
) -> GateResult:
    """Prediction latency of both on the same batch, in this process, interleaved:
    `predict_proba` for classifiers, `predict` for regressors (`benchmark_method`).

    Each model is warmed up once; then every repeat times both, alternating which goes
    first, so drift in machine load hits both alike. The challenger fails when its p50 or
    p99 is more than `max_latency_factor` times the champion's, or (when both training
    times are given) it trained more than `max_train_factor` times as long, unless it
    trained in under `min_train_seconds`.
    """
    if len(batch) == 0:
        raise ValueError("the benchmark batch is empty")
    method = benchmark_method(_task_of(task, champion, challenger), champion, challenger)
    calls = {"champion": getattr(champion, method), "challenger": getattr(challenger, method)}
    times: dict[str, list[float]] = {"champion": [], "challenger": []}
    for call in calls.values():
        call(batch)
    for repeat in range(config.latency_repeats):
        order = ("champion", "challenger") if repeat % 2 == 0 else ("challenger", "champion")
        for who in order:
            started = time.perf_counter()
            calls[who](batch)
            times[who].append(time.perf_counter() - started)
    old, new = _percentiles_ms(times["champion"]), _percentiles_ms(times["challenger"])
    ratios = {q: _ratio(new[q], old[q]) for q in ("p50", "p99")}
    failures = [q for q, r in ratios.items() if r > config.max_latency_factor + _EPS]
    evidence: dict[str, Any] = {
        "method": method,
        "batch_rows": len(batch),
        "repeats": config.latency_repeats,
        "champion_ms": old,
        "challenger_ms": new,
        "latency_ratio": ratios,
        "max_latency_factor": config.max_latency_factor,
        "champion_train_seconds": champion_train_seconds,
        "challenger_train_seconds": challenger_train_seconds,
        "train_ratio": None,
        "max_train_factor": config.max_train_factor,
        "min_train_seconds": config.min_train_seconds,
    }
    parts = [
        f"{method} on {len(batch)} rows x{config.latency_repeats}: "
        f"p50 {new['p50']:.2f} vs {old['p50']:.2f} ms (x{ratios['p50']:.2f}), "
        f"p99 {new['p99']:.2f} vs {old['p99']:.2f} ms (x{ratios['p99']:.2f}); "
        f"max x{config.max_latency_factor}"
    ]
    if champion_train_seconds is not None and challenger_train_seconds is not None:
        train_ratio = _ratio(challenger_train_seconds, champion_train_seconds)
        evidence["train_ratio"] = train_ratio
        quick = challenger_train_seconds < config.min_train_seconds
        if train_ratio > config.max_train_factor + _EPS and not quick:
            failures.append("train")
        parts.append(
            f"train {challenger_train_seconds:.3f} vs {champion_train_seconds:.3f} s "
            f"(x{train_ratio:.2f}); max x{config.max_train_factor}"
            + (f" (not applied under {config.min_train_seconds:g} s)" if quick else "")
        )
    evidence["failed"] = failures
    message = "challenger vs champion: " + "; ".join(parts)
    if failures:
        message += f" -> too slow: {', '.join(failures)}"
    return GateResult(gate="benchmark", passed=not failures, message=message, evidence=evidence)


def invariance_gate(
    model: Any, frame: pd.DataFrame, config: GateConfig, task: Task | str | None = None
) -> GateResult:
    """Setting a column to each listed value changes at most a share of predictions: a
    classifier's predicted label, a regressor's value beyond the differential gate's
    tolerance (`value_abs_tolerance + value_rel_tolerance * |old|`).

    Each variant (the whole column set to one value) is compared with the predictions on
    the unmodified frame; a check fails when any value changes more than its share.
    """
    if not config.invariance:
        return GateResult(
            gate="invariance",
            passed=True,
            message="no invariance checks configured",
            evidence={"checks": []},
        )
    if len(frame) == 0:
        raise ValueError("the invariance frame is empty")
    classification = _task_of(task, model).is_classification

    def predict(rows: pd.DataFrame) -> np.ndarray:
        return np.asarray(model.predict(rows)) if classification else _values(model, rows)

    base = predict(frame)
    checks = []
    lines = []
    for check in config.invariance:
        column, limit = check.column, check.max_changed_share
        if column not in frame.columns:
            raise ValueError(f"invariance check column {column!r} is not in the frame")
        shares: dict[str, float] = {}
        for value in check.values:
            variant = frame.copy()
            variant[column] = value
            predicted = predict(variant)
            changed = (
                predicted != base if classification else value_changed(base, predicted, config)
            )
            shares[str(value)] = float(np.mean(changed))
        worst = max(shares.values())
        ok = worst <= limit + _EPS
        checks.append(
            {
                "column": column,
                "values": [_plain(v) for v in check.values],
                "changed_share": shares,
                "max_changed_share": limit,
                "passed": ok,
            }
        )
        per_value = ", ".join(f"{v}: {s:.3f}" for v, s in shares.items())
        lines.append(f"{column} ({per_value}; max {limit}){'' if ok else ' FAILED'}")
    all_ok = all(c["passed"] for c in checks)
    what = (
        "labels changed" if classification else f"predictions changed ({_tolerance_text(config)})"
    )
    message = f"{what} on {len(frame)} rows when setting " + "; ".join(lines)
    evidence: dict[str, Any] = {"n_rows": len(frame), "checks": checks}
    if not classification:
        evidence = {
            "task": "regression",
            **evidence,
            "value_abs_tolerance": config.value_abs_tolerance,
            "value_rel_tolerance": config.value_rel_tolerance,
        }
    return GateResult(gate="invariance", passed=all_ok, message=message, evidence=evidence)


def run_gates(
    *,
    champion: Any | None,
    challenger: Any,
    champion_metrics: Mapping[str, float] | None,
    challenger_metrics: Mapping[str, float],
    golden: pd.DataFrame,
    columns: Sequence[str],
    config: GateConfig,
    champion_train_seconds: float | None = None,
    challenger_train_seconds: float | None = None,
    task: Task | str | None = None,
) -> list[GateResult]:
    """Every gate for a challenger; with no champion (first model) only invariance runs,
    next to a passing metric result that says so.

    `task` (a Task or its name, e.g. the version's metadata["task"]) defaults to the one
    the challenger does (nbship.tasks.of_model). A champion doing another task cannot be
    compared with: the metric gate fails saying so (a promotion by hand can force it), and
    only invariance runs next to it."""
    X = golden[list(columns)]
    resolved = _task_of(task, challenger)
    metric = config.metric_for(resolved)
    if champion is None:
        value = challenger_metrics.get(metric)
        first = GateResult(
            gate="metric",
            passed=True,
            message="no champion: first model",
            evidence={
                "metric": metric,
                "task": resolved.kind,
                "champion": None,
                "challenger": None if value is None else float(value),
            },
        )
        return [first, invariance_gate(challenger, X, config, resolved)]
    if champion_metrics is None:
        raise ValueError("a champion needs its metrics for the metric gate")
    champion_task = tasks.of_model(champion)
    if champion_task.kind != resolved.kind:
        other = GateResult(
            gate="metric",
            passed=False,
            message=(
                f"the champion is a {champion_task.kind} model and the challenger a "
                f"{resolved.kind} model: nothing to compare (promote by hand with --force "
                "to replace it anyway)"
            ),
            evidence={
                "metric": metric,
                "task": resolved.kind,
                "champion_task": champion_task.kind,
                "champion": None,
                "challenger": _finite(challenger_metrics[metric])
                if metric in challenger_metrics
                else None,
            },
        )
        return [other, invariance_gate(challenger, X, config, resolved)]
    return [
        metric_gate(champion_metrics, challenger_metrics, config, resolved),
        differential_gate(champion, challenger, golden, columns, config, resolved),
        benchmark_gate(
            champion,
            challenger,
            X,
            config,
            champion_train_seconds=champion_train_seconds,
            challenger_train_seconds=challenger_train_seconds,
            task=resolved,
        ),
        invariance_gate(challenger, X, config, resolved),
    ]


def passed(results: Sequence[GateResult]) -> bool:
    """True when every gate passed (and vacuously for no gates)."""
    return all(r.passed for r in results)
