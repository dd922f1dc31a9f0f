"""The model a batch run scores with, and one chunk scored.

The model is chosen and loaded by the service's own code (`nbship.serving.following`): the
registry's champion when it can be loaded and verified, else the bento's own model, or a
registered version by tag; its compiled plan is attached when packaging verified it. A
chunk is predicted the way `ModelServer.proba` / `.values` predict a request: the plan on
columns, else the scikit-learn pipeline on a frame built as the service builds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel

from nbship.batch.screen import REJECT_SCHEMA, screen
from nbship.pipeline.contract import Contract, load_suite, record_model
from nbship.serving.following import ServedModel, config_task, load_champion, resolve_model
from nbship.serving.predicting import Predictor
from nbship.serving.service import load_config
from nbship.tasks import Task

ROW_COLUMN = "row"  # the row's index in the input, in the output as in the rejects
LABEL_COLUMN = "label"
VALUE_COLUMN = "prediction"
PROBA_PREFIX = "proba_"


class BatchError(RuntimeError):
    """A run that cannot start or go on: no such model, a column the contract needs is
    missing from the input, an unreadable file. Nothing is written."""


@dataclass(frozen=True)
class Scored:
    """One chunk's outcome: the output rows (the input's other columns, the row index,
    the predictions) and the rejects (REJECT_SCHEMA)."""

    output: pa.Table
    rejects: pa.Table
    rows: int  # rows read

    @property
    def rejected_rows(self) -> int:
        return self.rows - self.output.num_rows


@dataclass
class Scorer:
    """A served model with the contract of its bento. It is pickled to Dask workers: the
    record model (a class made at run time, which does not pickle) is rebuilt there."""

    served: ServedModel
    task: Task
    contract: Contract
    _record: type[BaseModel] | None = field(default=None, repr=False)

    @classmethod
    def from_bento(
        cls, bento: Path, registry_url: str | None = None, model_tag: str | None = None
    ) -> Scorer:
        """The bento's model as its server would pick it (the registry's champion, else its
        own), or the registered version `model_tag`; `registry_url` replaces the one the
        bento was built with (the project's, with its environment override)."""
        from nbship.registry.versions import Registry, UnknownModelError

        src = Path(bento) / "src"
        if not (src / "serving.json").is_file():
            raise BatchError(f"no bento at {bento}: run `nbship build` first")
        config = load_config(src)
        if registry_url:
            config = {**config, "registry_url": registry_url}
        if model_tag is None:
            served = resolve_model(config)
        else:
            if not config.get("registry_url"):
                raise BatchError(f"--model {model_tag}: the bento names no registry")
            try:
                with Registry(config["registry_url"], create=False) as registry:
                    version = registry.get(model_tag)
            except UnknownModelError as exc:
                raise BatchError(str(exc)) from None
            served = load_champion(version, config)  # any version: checked like a champion
        contract = Contract.from_suite(load_suite(src / config["suite"]), config["columns"])
        return cls(served=served, task=config_task(config), contract=contract)

    @property
    def columns(self) -> list[str]:
        return [spec.name for spec in self.contract.fields]

    @property
    def record(self) -> type[BaseModel]:
        if self._record is None:
            self._record = record_model(self.contract, name="Record")
        return self._record

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_record": None}

    def output_columns(self) -> list[str]:
        if self.task.is_classification:
            return [LABEL_COLUMN, *(PROBA_PREFIX + c for c in self.served.classes)]
        return [VALUE_COLUMN]

    def check_columns(self, names: list[str]) -> None:
        missing = [c for c in self.columns if c not in names]
        if missing:
            raise BatchError(
                f"the input lacks column(s) {missing} of the model's contract"
                f" (suite {self.contract.suite_name!r}); it has {names}"
            )
        clash = [c for c in (ROW_COLUMN, *self.output_columns()) if c in names]
        if clash:
            raise BatchError(f"the input has column(s) {clash}, which the output adds")

    def predict(self, columns: Mapping[str, Any]) -> np.ndarray:
        """Class probabilities (n, classes) or one value per row, as the service computes
        them for a request of the same records."""
        predictor = Predictor.of(self.contract, self.task.is_classification)  # as the service's
        return predictor.outputs(self.served, columns)

    def score(self, chunk: pa.Table, first_row: int = 0) -> Scored:
        """`chunk` checked against the contract and its valid rows predicted."""
        checked = screen(chunk, self.contract, self.record, first_row)
        keep = pa.array(checked.valid)
        kept = chunk.drop_columns(self.columns).filter(keep)
        rows = np.arange(first_row, first_row + chunk.num_rows, dtype=np.int64)[checked.valid]
        valid_columns = {c: v[checked.valid] for c, v in checked.columns.items()}
        output = self.predict(valid_columns) if rows.size else None
        kept = kept.append_column(ROW_COLUMN, pa.array(rows, type=pa.int64()))
        for name, values in self.prediction_columns(output, rows.size).items():
            kept = kept.append_column(name, values)
        rejects = pa.Table.from_pylist(checked.rejects, schema=REJECT_SCHEMA)
        return Scored(output=kept, rejects=rejects, rows=chunk.num_rows)

    def prediction_columns(self, output: np.ndarray | None, n: int) -> dict[str, pa.Array]:
        """The answer's fields as columns: the label (the most probable class, as /predict's
        `label`) and each class's probability, or the predicted value."""
        if not self.task.is_classification:
            values = output if output is not None else np.empty(0)
            return {VALUE_COLUMN: pa.array(values, type=pa.float64())}
        classes = self.served.classes
        proba = output if output is not None else np.empty((0, len(classes)))
        labels = np.asarray(classes, dtype=object)[np.argmax(proba, axis=1)] if n else []
        out = {LABEL_COLUMN: pa.array(labels, type=pa.string())}
        for j, name in enumerate(classes):
            out[PROBA_PREFIX + name] = pa.array(proba[:, j], type=pa.float64())
        return out
