"""The reference for benchmarks/serve.py: the same model behind a bare BentoML 1.4
service (a list of dicts in, DataFrame, predict_proba or predict, lists out), no
validation."""

from __future__ import annotations

import os
from typing import Any

import bentoml
import joblib
import pandas as pd


@bentoml.service(name="bare_reference", workers=1)
class Bare:
    def __init__(self) -> None:
        self.model = joblib.load(os.environ["NBSHIP_BENCH_MODEL"])
        self.regression = os.environ.get("NBSHIP_BENCH_TASK") == "regression"
        self.classes = [] if self.regression else [str(c) for c in self.model.classes_]

    @bentoml.api(route="/predict")
    async def predict(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.regression:
            values = self.model.predict(pd.DataFrame(records))
            return [{"prediction": v} for v in values.tolist()]
        proba = self.model.predict_proba(pd.DataFrame(records))
        return [
            {
                "label": self.classes[row.argmax()],
                "probabilities": dict(zip(self.classes, row.tolist(), strict=True)),
            }
            for row in proba
        ]
