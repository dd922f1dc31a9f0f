"""What differs between kinds of learning task: how the data is split, which metrics a
model is scored, chosen and gated on (and their direction), and what a model outputs.

Two tasks: classification (binary or multiclass; the model has `predict_proba` and
`classes_`) and single-target regression (`predict` gives one number per row). Every stage
asks its `Task` instead of testing for `predict_proba` itself. scikit-learn is imported
inside the functions that need it, so serving imports this module for nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

TaskKind = Literal["classification", "regression"]
# the setting's values: a task, or "auto" to infer it from the target column
TASK_SETTINGS = ("auto", "classification", "regression")
# an integer target with at most this many distinct values is read as classes
MAX_INFERRED_CLASSES = 20

CLASSIFICATION_METRICS: dict[str, bool] = {  # name -> True when a larger value is better
    "accuracy": True,
    "balanced_accuracy": True,
    "f1_macro": True,
    "log_loss": False,
}
REGRESSION_METRICS: dict[str, bool] = {
    "rmse": False,
    "mae": False,
    "r2": True,
    "median_ae": False,
}
# every metric of either task: names do not overlap, so a metric names its task
METRICS: dict[str, bool] = {**CLASSIFICATION_METRICS, **REGRESSION_METRICS}


@dataclass(frozen=True)
class Task:
    kind: TaskKind
    metrics: Mapping[str, bool]
    default_metric: str
    # breaks ties of the selection metric: a finer-grained one (small test sets tie on
    # thresholded metrics)
    tie_break: str

    @property
    def is_classification(self) -> bool:
        return self.kind == "classification"

    def check_metric(self, metric: str) -> str:
        """`metric` itself, or "auto" resolved to the task's default; ValueError naming the
        metrics of this task otherwise."""
        if metric in ("auto", "", None):
            return self.default_metric
        if metric not in self.metrics:
            raise ValueError(
                f"unknown {self.kind} metric {metric!r}: choose from {sorted(self.metrics)}"
            )
        return metric

    def higher_is_better(self, metric: str) -> bool:
        return self.metrics[self.check_metric(metric)]

    def stratify(self, y: pd.Series) -> pd.Series | None:
        """What a split stratifies on: the classes, or nothing for a numeric target."""
        return y if self.is_classification else None

    def predict(self, model: Any, X: Any) -> np.ndarray:
        """Predicted labels (the most probable class) or predicted numbers."""
        import numpy as np

        if self.is_classification and hasattr(model, "predict_proba"):
            return np.asarray(model.classes_)[np.argmax(model.predict_proba(X), axis=1)]
        return np.asarray(model.predict(X))

    def score(self, model: Any, X: Any, y: Any) -> dict[str, float]:
        """Every metric of the task, on one labelled set."""
        import numpy as np
        from sklearn import metrics as m

        if self.is_classification:
            proba = model.predict_proba(X)
            predicted = np.asarray(model.classes_)[np.argmax(proba, axis=1)]
            return {
                "accuracy": float(m.accuracy_score(y, predicted)),
                "balanced_accuracy": float(m.balanced_accuracy_score(y, predicted)),
                "f1_macro": float(m.f1_score(y, predicted, average="macro")),
                "log_loss": float(m.log_loss(y, proba, labels=model.classes_)),
            }
        predicted = np.asarray(model.predict(X), dtype=float)
        return {
            "rmse": float(m.root_mean_squared_error(y, predicted)),
            "mae": float(m.mean_absolute_error(y, predicted)),
            "r2": float(m.r2_score(y, predicted)),
            "median_ae": float(m.median_absolute_error(y, predicted)),
        }


CLASSIFICATION = Task("classification", CLASSIFICATION_METRICS, "f1_macro", "log_loss")
REGRESSION = Task("regression", REGRESSION_METRICS, "rmse", "mae")
TASKS: dict[str, Task] = {t.kind: t for t in (CLASSIFICATION, REGRESSION)}


def get(kind: str) -> Task:
    """The task named `kind`; ValueError naming the known ones otherwise."""
    if kind not in TASKS:
        raise ValueError(f"unknown task {kind!r}: choose from {sorted(TASKS)}")
    return TASKS[kind]


def recorded(kind: str | None) -> Task:
    """The task a model's metadata records; a model built before regression existed
    records none, and was a classifier."""
    return get(kind) if kind else CLASSIFICATION


def infer(y: pd.Series) -> tuple[Task, str]:
    """The task a target column implies, and why: text, categories and booleans are
    classes; floats are numbers; integers are classes when few, numbers otherwise."""
    import pandas as pd

    values = y.dropna()
    distinct = int(values.nunique())
    what = f"target {y.name!r} is {y.dtype} with {distinct} distinct values"
    if pd.api.types.is_bool_dtype(y) or not pd.api.types.is_numeric_dtype(y):
        return CLASSIFICATION, what
    if pd.api.types.is_integer_dtype(y) and distinct <= MAX_INFERRED_CLASSES:
        return CLASSIFICATION, f"{what} (at most {MAX_INFERRED_CLASSES}: read as classes)"
    return REGRESSION, what


def resolve(setting: str | None, y: pd.Series) -> tuple[Task, str]:
    """The task to run: the configured one, or the inferred one when the setting is "auto"
    (or absent); with a line for the build's output that says which and why."""
    if setting not in (None, "", "auto"):
        task = get(str(setting))
        if not task.is_classification:
            import pandas as pd

            if not pd.api.types.is_numeric_dtype(y) or pd.api.types.is_bool_dtype(y):
                raise ValueError(
                    f"task: regression needs a numeric target, but {y.name!r} is {y.dtype}"
                )
        return task, f"task: {task.kind} (set in env.yaml)"
    task, why = infer(y)
    return task, f"task: {task.kind} (inferred: {why}; set `task:` in env.yaml to choose)"


def of_model(model: Any) -> Task:
    """The task a fitted estimator does: scikit-learn's own tags, else `predict_proba`."""
    from sklearn.base import is_classifier, is_regressor

    if is_classifier(model):
        return CLASSIFICATION
    if is_regressor(model):
        return REGRESSION
    return CLASSIFICATION if hasattr(model, "predict_proba") else REGRESSION


def of_metric(metric: str) -> Task:
    """The task whose metric `metric` is."""
    for task in TASKS.values():
        if metric in task.metrics:
            return task
    raise ValueError(f"unknown metric {metric!r}: choose from {sorted(METRICS)}")
