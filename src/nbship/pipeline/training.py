"""Candidate models, fitting, scoring and choosing the winner.

Every candidate is one scikit-learn Pipeline that starts from the raw feature
columns, so the served model needs no feature code of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, log_loss
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from nbship.tasks import METRICS

ESTIMATORS: dict[str, Callable[..., ClassifierMixin]] = {
    # predicts the class priors: the floor any real candidate must beat
    "baseline": DummyClassifier,
    "logreg": LogisticRegression,
    "forest": RandomForestClassifier,
    "knn": KNeighborsClassifier,
    "hist_gb": HistGradientBoostingClassifier,
}


@dataclass(frozen=True)
class Features:
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]

    @classmethod
    def from_params(cls, features: Mapping[str, Sequence[str]]) -> Features:
        return cls(tuple(features["numeric"]), tuple(features["categorical"]))

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]


def build_candidate(
    estimator: str, features: Features, hyperparams: Mapping[str, Any] | None = None
) -> Pipeline:
    """An unfitted Pipeline: imputation, scaling, one-hot encoding, then the estimator."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}: choose from {sorted(ESTIMATORS)}")
    preprocess = ColumnTransformer(
        [
            (
                "numeric",
                Pipeline(
                    [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
                ),
                list(features.numeric),
            ),
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="most_frequent")),
                        ("onehot", OneHotEncoder(handle_unknown="ignore")),
                    ]
                ),
                list(features.categorical),
            ),
        ]
    )
    return Pipeline(
        [("preprocess", preprocess), ("model", ESTIMATORS[estimator](**(hyperparams or {})))]
    )


def fit(model: Pipeline, frame: pd.DataFrame, features: Features, target: str) -> float:
    """Fit in place; returns the training time in seconds."""
    started = time.perf_counter()
    model.fit(frame[features.columns], frame[target])
    return time.perf_counter() - started


def score(
    model: Pipeline, frame: pd.DataFrame, features: Features | Sequence[str], target: str
) -> dict[str, float]:
    """Every metric in METRICS on one labelled frame."""
    columns = features.columns if isinstance(features, Features) else list(features)
    X, y = frame[columns], frame[target]
    proba = model.predict_proba(X)
    predicted = model.classes_[np.argmax(proba, axis=1)]
    return {
        "accuracy": float(accuracy_score(y, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(y, predicted)),
        "f1_macro": float(f1_score(y, predicted, average="macro")),
        "log_loss": float(log_loss(y, proba, labels=model.classes_)),
    }


def predict_latency_ms(model: Pipeline, rows: pd.DataFrame, repeats: int = 20) -> dict[str, float]:
    """Median and worst one-row predict_proba time over the given rows, in milliseconds."""
    times = []
    for _ in range(repeats):
        for i in range(len(rows)):
            started = time.perf_counter()
            model.predict_proba(rows.iloc[i : i + 1])
            times.append((time.perf_counter() - started) * 1000)
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99))}


@dataclass(frozen=True)
class Choice:
    winner: str
    metric: str
    value: float
    ranking: list[tuple[str, float]]


def choose_winner(
    metrics: Mapping[str, Mapping[str, float]], metric: str, tie_break: str = "log_loss"
) -> Choice:
    """The candidate with the best test value of `metric`.

    Small test sets often tie on a thresholded metric (every candidate at f1 = 1.0), so
    ties are broken by `tie_break` (default log loss: a proper scoring rule, which still
    tells confident from lucky), then by name, so the choice is deterministic.
    """
    for name in (metric, tie_break):
        if name not in METRICS:
            raise ValueError(f"unknown selection metric {name!r}: choose from {sorted(METRICS)}")
    if not metrics:
        raise ValueError("no candidates to choose from")

    def key(item: tuple[str, Mapping[str, float]]) -> tuple[float, float, str]:
        name, m = item
        primary = -m[metric] if METRICS[metric] else m[metric]
        secondary = -m.get(tie_break, 0.0) if METRICS[tie_break] else m.get(tie_break, 0.0)
        return (primary, secondary, name)

    ranked = sorted(metrics.items(), key=key)
    ranking = [(name, float(m[metric])) for name, m in ranked]
    name, value = ranking[0]
    return Choice(winner=name, metric=metric, value=value, ranking=ranking)
