"""Models that misbehave on purpose, for release tests: a server unpickles them from
here (the test puts the repository on its PYTHONPATH), as it would a project's own code.
BentoML saves only scikit-learn estimators, hence the base classes."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


class Broken(ClassifierMixin, BaseEstimator):
    """A classifier whose every prediction raises: a canary that has started failing."""

    def __init__(self, classes: list[str]) -> None:
        self.classes_ = np.array(classes)

    def predict_proba(self, frame: Any) -> np.ndarray:
        raise RuntimeError("this model fails on purpose")

    def predict(self, frame: Any) -> np.ndarray:
        raise RuntimeError("this model fails on purpose")


class Sleepy(ClassifierMixin, BaseEstimator):
    """A fitted classifier that takes `seconds` longer for every call: a slow shadow."""

    def __init__(self, model: Any, seconds: float) -> None:
        self.model = model
        self.seconds = seconds
        self.classes_ = model.classes_

    def predict_proba(self, frame: Any) -> np.ndarray:
        time.sleep(self.seconds)
        return self.model.predict_proba(frame)

    def predict(self, frame: Any) -> np.ndarray:
        time.sleep(self.seconds)
        return self.model.predict(frame)


class Busy(ClassifierMixin, BaseEstimator):
    """A fitted classifier that computes in Python for `seconds` every call, holding the
    GIL all that time: a shadow with a user's own pure-Python step."""

    def __init__(self, model: Any, seconds: float) -> None:
        self.model = model
        self.seconds = seconds
        self.classes_ = model.classes_

    def _busy(self) -> None:
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            sum(range(1000))

    def predict_proba(self, frame: Any) -> np.ndarray:
        self._busy()
        return self.model.predict_proba(frame)

    def predict(self, frame: Any) -> np.ndarray:
        self._busy()
        return self.model.predict(frame)
