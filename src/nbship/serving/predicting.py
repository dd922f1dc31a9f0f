"""A served model's answers to records: the model's output (class probabilities, or one
number per record) and the answers made of it. The request path and the shadow's own
process (nbship.serving.shadow) predict through the same code, so a shadow's logged
answers are the ones it would have given; it takes columns, which cross a process
boundary as plain lists where the request's pydantic records cannot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from nbship.pipeline.contract import Contract
    from nbship.serving.following import ServedModel

Columns = Mapping[str, Sequence[Any]]


@dataclass(frozen=True)
class Predictor:
    """What a bento predicts from: its feature `columns`, the `numeric` ones among
    them, and whether it classifies (else it regresses)."""

    columns: tuple[str, ...]
    numeric: frozenset[str]
    classification: bool

    @classmethod
    def of(cls, contract: Contract, classification: bool) -> Predictor:
        """The contract's columns, in its order; the numbers among them by its kinds."""
        return cls(
            tuple(f.name for f in contract.fields),
            frozenset(f.name for f in contract.fields if f.kind in ("number", "integer")),
            classification,
        )

    def columns_of(self, records: Sequence[Any]) -> dict[str, list[Any]]:
        """The records' values, one list per feature column."""
        return {c: [getattr(r, c) for r in records] for c in self.columns}

    def outputs(self, served: ServedModel, columns: Columns) -> np.ndarray:
        """`served`'s class probabilities (a classifier) or one number per record (a
        regressor): the compiled plan on columns when it was verified, else the
        scikit-learn pipeline on a DataFrame."""
        if served.plan is not None:
            if self.classification:
                return served.plan.predict_proba(columns)
            return served.plan.predict_values(columns)
        frame = self.frame(columns)
        if self.classification:
            return np.asarray(served.model.predict_proba(frame))
        return one_per_row(served.model.predict(frame), len(frame))

    def frame(self, columns: Columns) -> pd.DataFrame:
        """Nulls are NaN, as in training: an all-None column would otherwise be an object
        column of Nones, which the imputers do not count as missing."""
        return pd.DataFrame(
            {
                c: np.array(columns[c], dtype=float)
                if c in self.numeric
                else [np.nan if v is None else v for v in columns[c]]
                for c in self.columns
            }
        )

    def predictions(self, served: ServedModel, output: np.ndarray) -> list[dict[str, Any]]:
        """One answer per record: its label and class probabilities, or its value."""
        if not self.classification:
            return [{"prediction": v} for v in output.tolist()]
        classes = served.classes
        return [
            {"label": classes[i], "probabilities": dict(zip(classes, row, strict=True))}
            for i, row in zip(np.argmax(output, axis=1).tolist(), output.tolist(), strict=True)
        ]


def one_per_row(predicted: Any, n: int) -> np.ndarray:
    """A regressor's predictions as n floats: some give a (n, 1) column for one target."""
    values = np.asarray(predicted, dtype=float)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.shape != (n,):
        raise ValueError(
            f"the model predicted shape {values.shape} for {n} records, not one value each"
        )
    return values
