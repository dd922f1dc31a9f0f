"""The reference for benchmarks/serve.py: the same model behind a bare BentoML 1.4
service (a list of dicts in, DataFrame, predict_proba, lists out), no validation."""

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
        self.classes = [str(c) for c in self.model.classes_]

    @bentoml.api(route="/predict")
    async def predict(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        proba = self.model.predict_proba(pd.DataFrame(records))
        return [
            {
                "label": self.classes[row.argmax()],
                "probabilities": dict(zip(self.classes, row.tolist(), strict=True)),
            }
            for row in proba
        ]
