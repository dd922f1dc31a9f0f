"""Candidate models: the train task's hand-off, scoring and choosing the winner.

A train task is the data scientist's notebook: it builds any scikit-learn-compatible
estimator (their Pipeline, their ColumnTransformer, their own transformer classes) that
starts from the raw feature columns, and hands it over with `save_candidate`. The
built-in candidates (`build_candidate`) are a convenience for a first run, not the route.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.exceptions import NotFittedError
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.utils.validation import check_is_fitted

from nbship import tasks
from nbship.common.artifacts import write_json, write_model
from nbship.common.pickled import check_no_notebook_code
from nbship.tasks import CLASSIFICATION, Task

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


def is_fitted(model: Any) -> bool:
    try:
        check_is_fitted(model)
    except NotFittedError:
        return False
    return True


def save_candidate(
    model: Any,
    product: Mapping[str, Any],
    X: pd.DataFrame,
    y: pd.Series,
    *,
    params: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """The train task's one call: hands the notebook's model to the pipeline.

    Fits `model` on (X, y) unless it is fitted already (then it is kept as it is: what
    serves is the notebook's own fitted object, and the fit time is not known), scores it
    on those rows and writes the fitted model and its summary to the task's `model` and
    `summary` products. Returns the summary.
    """
    if not hasattr(model, "predict"):
        raise TypeError(f"{type(model).__name__} has no predict(): not an estimator")
    seconds = None
    if not is_fitted(model):
        started = time.perf_counter()
        model.fit(X, y)
        seconds = time.perf_counter() - started
    # a class of the notebook's own cannot be loaded by any other task or server
    check_no_notebook_code(model, Path.cwd())
    task = tasks.of_model(model)
    # the columns the model was fitted on, in that order: what a request must hold
    columns = [str(c) for c in getattr(model, "feature_names_in_", X.columns)]
    summary = {
        "candidate": name or Path(str(product["model"])).stem,
        "task": task.kind,
        "estimator": type(model).__name__,
        "params": dict(params or {}),
        "features": columns,
        "train_seconds": seconds,
        "train_metrics": task.score(model, X[columns], y),
    }
    write_model(model, product["model"])
    write_json(summary, product["summary"])
    return summary


def score(
    model: Any,
    frame: pd.DataFrame,
    features: Features | Sequence[str],
    target: str,
    task: Task | None = None,
) -> dict[str, float]:
    """Every metric of the model's task (`tasks.of_model` unless given) on a labelled frame."""
    columns = features.columns if isinstance(features, Features) else list(features)
    return (task or tasks.of_model(model)).score(model, frame[columns], frame[target])


def predict_latency_ms(model: Any, rows: pd.DataFrame, repeats: int = 20) -> dict[str, float]:
    """Median and worst one-row prediction time (predict_proba for a classifier, predict
    for a regressor) over the given rows, in milliseconds."""
    classifier = tasks.of_model(model).is_classification and hasattr(model, "predict_proba")
    predict = model.predict_proba if classifier else model.predict
    times = []
    for _ in range(repeats):
        for i in range(len(rows)):
            started = time.perf_counter()
            predict(rows.iloc[i : i + 1])
            times.append((time.perf_counter() - started) * 1000)
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99))}


@dataclass(frozen=True)
class Choice:
    winner: str
    metric: str
    value: float
    ranking: list[tuple[str, float]]


def choose_winner(
    metrics: Mapping[str, Mapping[str, float]],
    metric: str,
    tie_break: str | None = None,
    task: Task = CLASSIFICATION,
) -> Choice:
    """The candidate with the best test value of `metric` ("auto": the task's default).

    Small test sets often tie on a thresholded metric (every candidate at f1 = 1.0), so
    ties are broken by `tie_break` (default: the task's, log loss for classification, a
    proper scoring rule that still tells confident from lucky; MAE for regression), then
    by name, so the choice is deterministic.
    """
    for name in (metric, tie_break):
        if name not in (None, "auto", *task.metrics):
            raise ValueError(
                f"unknown selection metric {name!r} for {task.kind}: choose from "
                f"{sorted(task.metrics)}"
            )
    metric, tie_break = task.check_metric(metric), task.check_metric(tie_break or task.tie_break)
    if not metrics:
        raise ValueError("no candidates to choose from")
    up, tie_up = task.higher_is_better(metric), task.higher_is_better(tie_break)

    def key(item: tuple[str, Mapping[str, float]]) -> tuple[float, float, str]:
        name, m = item
        primary = -m[metric] if up else m[metric]
        secondary = -m.get(tie_break, 0.0) if tie_up else m.get(tie_break, 0.0)
        return (primary, secondary, name)

    ranked = sorted(metrics.items(), key=key)
    ranking = [(name, float(m[metric])) for name, m in ranked]
    name, value = ranking[0]
    return Choice(winner=name, metric=metric, value=value, ranking=ranking)
