"""Promotion gates: checks a challenger model must pass before it replaces the champion.

Each gate returns a `GateResult` with a one-line message a person reads and JSON-ready
evidence (numbers and lists only), so results can be stored in the registry and shown in
the model report as they are.

- metric: the challenger's test metric is not worse than the champion's by more than a
  tolerance, in the metric's own direction (`nbship.tasks.METRICS`).
- differential: on the golden set, few rows change label or move a class probability by
  more than a tolerance.
- benchmark: predict latency (p50, p99 over a fixed batch) and, when known, training time
  are not more than a factor slower than the champion's.
- invariance: behavioural checks, e.g. setting `sex` to each value changes at most a share
  of predicted labels.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pydantic import field_validator

from nbship.config import GateSettings, validate_section
from nbship.tasks import METRICS

# Differing rows listed in the differential gate's evidence (all are counted).
MAX_LISTED_ROWS = 50
# Float comparisons against a threshold allow this much rounding noise.
_EPS = 1e-12


@dataclass(frozen=True)
class GateResult:
    gate: str
    passed: bool
    message: str
    evidence: dict = field(default_factory=dict)


class GateConfig(GateSettings):
    """env.yaml's `gates:` (its defaults are nbship.config's) and the metric compared, the
    project's `selection_metric`."""

    metric: str = "f1_macro"

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in METRICS:
            raise ValueError(f"unknown gate metric {metric!r}: choose from {sorted(METRICS)}")
        return metric

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> GateConfig:
        """From env.yaml's `gates:` section (plus `metric`); ConfigError names the key."""
        return validate_section(cls, dict(values or {}), "gates")


def _plain(value: Any) -> Any:
    """numpy scalars to Python ones, so evidence goes through json.dumps as it is."""
    return value.item() if isinstance(value, np.generic) else value


def metric_gate(
    champion_metrics: Mapping[str, float],
    challenger_metrics: Mapping[str, float],
    config: GateConfig,
) -> GateResult:
    """The challenger is worse than the champion by at most `metric_tolerance`."""
    name = config.metric
    for who, metrics in (("champion", champion_metrics), ("challenger", challenger_metrics)):
        if name not in metrics:
            raise ValueError(f"{who} metrics have no {name!r} (have {sorted(metrics)})")
    old, new = float(champion_metrics[name]), float(challenger_metrics[name])
    higher_is_better = METRICS[name]
    # positive when the challenger is worse, in the metric's own direction
    worse_by = (old - new) if higher_is_better else (new - old)
    ok = worse_by <= config.metric_tolerance + _EPS
    direction = "higher" if higher_is_better else "lower"
    verdict = f"worse by {worse_by:.4f}" if worse_by > 0 else f"better or equal by {-worse_by:.4f}"
    message = (
        f"{name} ({direction} is better): challenger {new:.4f} vs champion {old:.4f}, "
        f"{verdict}; tolerance {config.metric_tolerance}"
    )
    return GateResult(
        gate="metric",
        passed=ok,
        message=message,
        evidence={
            "metric": name,
            "higher_is_better": higher_is_better,
            "champion": old,
            "challenger": new,
            "worse_by": worse_by,
            "tolerance": config.metric_tolerance,
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


def differential_gate(
    champion: Any,
    challenger: Any,
    golden: pd.DataFrame,
    columns: Sequence[str],
    config: GateConfig,
) -> GateResult:
    """Rows of the golden set where the label changes or a probability moves too much."""
    if len(golden) == 0:
        raise ValueError("the golden set is empty: the differential gate has nothing to compare")
    X = golden[list(columns)]
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


def _percentiles_ms(times: list[float]) -> dict[str, float]:
    return {
        "p50": float(np.percentile(times, 50)) * 1000,
        "p99": float(np.percentile(times, 99)) * 1000,
    }


def _ratio(new: float, old: float) -> float:
    return new / max(old, 1e-9)


def benchmark_gate(
    champion: Any,
    challenger: Any,
    batch: pd.DataFrame,
    config: GateConfig,
    champion_train_seconds: float | None = None,
    challenger_train_seconds: float | None = None,
) -> GateResult:
    """predict_proba latency of both on the same batch, in this process, interleaved.

    Each model is warmed up once; then every repeat times both, alternating which goes
    first, so drift in machine load hits both alike. The challenger fails when its p50 or
    p99 is more than `max_latency_factor` times the champion's, or (when both training
    times are given) it trained more than `max_train_factor` times as long.
    """
    if len(batch) == 0:
        raise ValueError("the benchmark batch is empty")
    models = {"champion": champion, "challenger": challenger}
    times: dict[str, list[float]] = {"champion": [], "challenger": []}
    for model in models.values():
        model.predict_proba(batch)
    for repeat in range(config.latency_repeats):
        order = ("champion", "challenger") if repeat % 2 == 0 else ("challenger", "champion")
        for who in order:
            started = time.perf_counter()
            models[who].predict_proba(batch)
            times[who].append(time.perf_counter() - started)
    old, new = _percentiles_ms(times["champion"]), _percentiles_ms(times["challenger"])
    ratios = {q: _ratio(new[q], old[q]) for q in ("p50", "p99")}
    failures = [q for q, r in ratios.items() if r > config.max_latency_factor + _EPS]
    evidence: dict[str, Any] = {
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
    }
    parts = [
        f"predict_proba on {len(batch)} rows x{config.latency_repeats}: "
        f"p50 {new['p50']:.2f} vs {old['p50']:.2f} ms (x{ratios['p50']:.2f}), "
        f"p99 {new['p99']:.2f} vs {old['p99']:.2f} ms (x{ratios['p99']:.2f}); "
        f"max x{config.max_latency_factor}"
    ]
    if champion_train_seconds is not None and challenger_train_seconds is not None:
        train_ratio = _ratio(challenger_train_seconds, champion_train_seconds)
        evidence["train_ratio"] = train_ratio
        if train_ratio > config.max_train_factor + _EPS:
            failures.append("train")
        parts.append(
            f"train {challenger_train_seconds:.3f} vs {champion_train_seconds:.3f} s "
            f"(x{train_ratio:.2f}); max x{config.max_train_factor}"
        )
    evidence["failed"] = failures
    message = "challenger vs champion: " + "; ".join(parts)
    if failures:
        message += f" -> too slow: {', '.join(failures)}"
    return GateResult(gate="benchmark", passed=not failures, message=message, evidence=evidence)


def invariance_gate(model: Any, frame: pd.DataFrame, config: GateConfig) -> GateResult:
    """Setting a column to each listed value changes at most a share of predicted labels.

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
    base = np.asarray(model.predict(frame))
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
            changed = np.asarray(model.predict(variant)) != base
            shares[str(value)] = float(changed.mean())
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
    message = f"labels changed on {len(frame)} rows when setting " + "; ".join(lines)
    return GateResult(
        gate="invariance",
        passed=all_ok,
        message=message,
        evidence={"n_rows": len(frame), "checks": checks},
    )


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
) -> list[GateResult]:
    """Every gate for a challenger; with no champion (first model) only invariance runs,
    next to a passing metric result that says so."""
    X = golden[list(columns)]
    if champion is None:
        value = challenger_metrics.get(config.metric)
        first = GateResult(
            gate="metric",
            passed=True,
            message="no champion: first model",
            evidence={
                "metric": config.metric,
                "champion": None,
                "challenger": None if value is None else float(value),
            },
        )
        return [first, invariance_gate(challenger, X, config)]
    if champion_metrics is None:
        raise ValueError("a champion needs its metrics for the metric gate")
    return [
        metric_gate(champion_metrics, challenger_metrics, config),
        differential_gate(champion, challenger, golden, columns, config),
        benchmark_gate(
            champion,
            challenger,
            X,
            config,
            champion_train_seconds=champion_train_seconds,
            challenger_train_seconds=challenger_train_seconds,
        ),
        invariance_gate(challenger, X, config),
    ]


def passed(results: Sequence[GateResult]) -> bool:
    """True when every gate passed (and vacuously for no gates)."""
    return all(r.passed for r in results)
