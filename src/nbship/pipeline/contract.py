"""The data contract: a Great Expectations suite stored as JSON in `expectations/`.

One suite serves twice: the pipeline validates the raw table with GX, and the service
derives its request schema from the same JSON. Reading the JSON needs no GX, so serving
(and this module's import) never pays GX's multi-second import; only `validate_frame`
imports it. This is the only module that touches Great Expectations.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

if TYPE_CHECKING:
    import pandas as pd

Kind = Literal["number", "integer", "category", "boolean", "string"]
NUMBER_TYPES = {"float", "float64", "float32", "double"}
INTEGER_TYPES = {"int", "int64", "int32", "Int64", "Int32"}


def load_suite(path: str | Path) -> dict[str, Any]:
    """The suite as plain JSON: the form GX 1.x writes (`name`, `expectations`, `meta`)."""
    return json.loads(Path(path).read_text())


@dataclass(frozen=True)
class FieldSpec:
    """What the suite allows in one column: kind, inclusive bounds, categories, nulls.

    `nullable` is True when the suite lets the column be partly null (a not-null
    expectation with `mostly` < 1) or says nothing about nulls at all.
    """

    name: str
    kind: Kind
    minimum: float | None = None
    maximum: float | None = None
    categories: tuple[str, ...] = ()
    nullable: bool = True

    @property
    def rule(self) -> str:
        """The field's rule in words, as OpenAPI and error messages show it."""
        if self.kind == "category":
            text = "one of " + ", ".join(self.categories)
        else:
            text = {
                "number": "a number", "integer": "an integer", "boolean": "true or false",
                "string": "a string",
            }[self.kind]  # fmt: skip
            if self.minimum is not None and self.maximum is not None:
                text += f" between {self.minimum:g} and {self.maximum:g}"
            elif self.minimum is not None:
                text += f" >= {self.minimum:g}"
            elif self.maximum is not None:
                text += f" <= {self.maximum:g}"
        return text + (", may be null" if self.nullable else "")


@dataclass(frozen=True)
class Contract:
    """The suite's rules for the columns a consumer cares about, in that consumer's order."""

    suite_name: str
    fields: tuple[FieldSpec, ...]

    @classmethod
    def from_suite(cls, suite: dict[str, Any], columns: Sequence[str]) -> Contract:
        """The rules the suite states for `columns`, in that order (pure JSON parsing)."""
        by_column: dict[str, dict[str, Any]] = {}
        for exp in suite.get("expectations", []):
            column = exp.get("kwargs", {}).get("column")
            if column is not None:
                by_column.setdefault(column, {})[exp["type"]] = exp["kwargs"]
        specs = []
        for name in columns:
            if name not in by_column:
                raise ValueError(
                    f"column {name!r} has no expectations in suite {suite.get('name')!r}"
                )
            specs.append(_field_spec(name, by_column[name]))
        return cls(suite_name=str(suite.get("name")), fields=tuple(specs))

    def field(self, name: str) -> FieldSpec:
        """The spec of column `name`; KeyError when the contract does not keep it."""
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise KeyError(name)


def _field_spec(name: str, rules: dict[str, dict[str, Any]]) -> FieldSpec:
    declared = rules.get("expect_column_values_to_be_of_type", {}).get("type_", "str")
    between = rules.get("expect_column_values_to_be_between", {})
    in_set = rules.get("expect_column_values_to_be_in_set", {}).get("value_set")
    not_null = rules.get("expect_column_values_to_not_be_null")
    kind: Kind
    if in_set is not None and in_set and all(isinstance(v, bool) for v in in_set):
        kind = "boolean"  # a JSON true/false, not the texts "True"/"False"
    elif in_set is not None:
        kind = "category"
    elif declared in NUMBER_TYPES:
        kind = "number"
    elif declared in INTEGER_TYPES:
        kind = "integer"
    else:
        kind = "string"
    return FieldSpec(
        name=name,
        kind=kind,
        minimum=between.get("min_value"),
        maximum=between.get("max_value"),
        categories=() if kind == "boolean" else tuple(str(v) for v in in_set or ()),
        # a column the suite lets be partly null may be null in a request too
        nullable=not_null is None or float(not_null.get("mostly", 1.0)) < 1.0,
    )


def _annotation(spec: FieldSpec) -> Any:
    base: Any
    if spec.kind == "category":
        base = Literal[spec.categories]
    elif spec.kind == "number":
        # strict: "39.1" or true is not a number; an integer like 40 still is (a None bound
        # sets no constraint)
        base = Annotated[
            float, Field(strict=True, allow_inf_nan=False, ge=spec.minimum, le=spec.maximum)
        ]
    elif spec.kind == "integer":
        base = Annotated[int, Field(strict=True, ge=spec.minimum, le=spec.maximum)]
    elif spec.kind == "boolean":
        base = Annotated[bool, Field(strict=True)]
    else:
        base = Annotated[str, Field(strict=True)]
    return base | None if spec.nullable else base


def record_model(contract: Contract, name: str = "Record") -> type[BaseModel]:
    """A pydantic model of one record: every field required, unknown fields refused."""
    fields: dict[str, Any] = {
        spec.name: (_annotation(spec), Field(..., description=spec.rule))
        for spec in contract.fields
    }
    return create_model(
        name,
        __config__=ConfigDict(extra="forbid"),
        __doc__=f"One record, checked against the rules of suite {contract.suite_name!r}.",
        **fields,
    )


@dataclass(frozen=True)
class Failure:
    """One failed expectation: its type, its column (None for table-level ones), and what
    GX observed (unexpected count, share and sample values, or the exception it raised)."""

    expectation: str
    column: str | None
    detail: str

    def __str__(self) -> str:
        where = f" on {self.column}" if self.column else ""
        return f"- {self.expectation}{where}: {self.detail}"


class DataValidationError(Exception):
    """A table broke the suite; `failures` lists every failed expectation."""

    def __init__(self, failures: list[Failure]) -> None:
        self.failures = failures
        lines = [f"Data validation failed: {len(failures)} expectation(s) failed"]
        lines += [str(f) for f in failures]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class ValidationSummary:
    """The outcome of a suite run: `statistics` is GX's own (evaluated/successful counts)."""

    success: bool
    evaluated: int
    failures: list[Failure] = field(default_factory=list)
    statistics: dict[str, Any] = field(default_factory=dict)


def _raised(exception_info: dict[str, Any]) -> str | None:
    """GX's exception message, whether at the top level or (when a metric raised, e.g.
    on a missing column) nested under each metric's id."""
    infos = [exception_info, *(v for v in exception_info.values() if isinstance(v, dict))]
    for info in infos:
        if info.get("raised_exception"):
            message = str(info.get("exception_message") or "raised an exception")
            return message.splitlines()[0]
    return None


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _detail(result: dict[str, Any], exception_info: dict[str, Any]) -> str:
    if raised := _raised(exception_info):
        return raised
    if "unexpected_count" in result:
        # a not-null failure's samples are all NaN/None: "e.g. ['nan']" tells nobody anything
        sample = [v for v in result.get("partial_unexpected_list") or [] if not _missing(v)]
        text = f"{result['unexpected_count']} unexpected value(s)"
        if result.get("unexpected_percent") is not None:
            text += f" ({result['unexpected_percent']:.1f}%)"
        if sample:
            text += f", e.g. {sorted({str(v) for v in sample})[:5]}"
        return text
    if "observed_value" in result:
        return f"observed {result['observed_value']}"
    return "failed"


def validate_frame(
    df: pd.DataFrame, suite_path: str | Path, columns: Sequence[str] | None = None
) -> ValidationSummary:
    """Runs the suite on `df`; raises DataValidationError listing every failure.

    `columns`: only the suite's expectations on these columns run (no table-level ones),
    for a table that holds part of the data, e.g. labelled feedback records."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    raw = load_suite(suite_path)
    if columns is not None:
        keep = set(columns)
        raw = {
            **raw,
            "expectations": [
                e for e in raw.get("expectations", []) if e.get("kwargs", {}).get("column") in keep
            ],
        }
    suite = gx.ExpectationSuite(**{k: v for k, v in raw.items() if k != "id"})
    if len(suite.expectations) != len(raw.get("expectations", [])):
        # GX logs and drops an invalid expectation instead of failing: refuse instead
        raise ValueError(f"suite {suite_path} has expectations GX could not load")
    context = gx.get_context(mode="ephemeral")
    # GX 1.x draws a tqdm "Calculating Metrics" bar per validation unless told not to
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("nbship")
        .add_dataframe_asset("frame")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": df})
    )
    result = batch.validate(suite)
    failures = []
    for r in result.results:
        if r.success:
            continue
        expectation = r.expectation_config
        # typed Optional, but a suite run sets it on every result
        assert expectation is not None, "GX returned a result without its expectation"
        failures.append(
            Failure(
                expectation=expectation.type,
                column=expectation.kwargs.get("column"),
                detail=_detail(r.result or {}, r.exception_info or {}),
            )
        )
    summary = ValidationSummary(
        success=bool(result.success),
        evaluated=len(result.results),
        failures=failures,
        statistics=dict(result.statistics),
    )
    if not summary.success:
        raise DataValidationError(failures)
    return summary
