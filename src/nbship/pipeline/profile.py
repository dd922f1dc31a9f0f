"""A table profiled into a Great Expectations suite (GX 1.x has no profiler of its own).

Per column: its type, whether it may be null (the observed share of values, less a
margin), the allowed values of a categorical column, the range of a numeric one widened
by a margin; and the table's column set. The suite is the plain JSON that
`nbship.pipeline.contract` reads, for the user to review and edit: the build validates the
data with it and the served API's request schema comes from it.

Which columns are features follows from the same look at the data: numbers are numeric
features, few distinct texts (or booleans) categorical ones; dates, free text and
all-null columns are not features unless the user says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

# at most this many distinct values make a text column categorical
MAX_CATEGORIES = 20
# ranges are widened by this share of their span on each side
RANGE_MARGIN = 0.1
# a partly null column may have this many more points of nulls than observed
NULL_MARGIN = 0.05


@dataclass(frozen=True)
class FeatureSplit:
    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Profile:
    suite: dict[str, Any]
    features: FeatureSplit
    notes: tuple[str, ...]
    rules: dict[str, str]  # column -> its rules in words, for the command's table


def _expectation(kind: str, **kwargs: Any) -> dict[str, Any]:
    return {"type": f"expect_{kind}", "kwargs": kwargs, "meta": {}, "severity": "critical"}


def _bounds(values: pd.Series, integer: bool) -> tuple[float, float]:
    low, high = float(values.min()), float(values.max())
    span = (high - low) or abs(high) or 1.0
    lo, hi = low - RANGE_MARGIN * span, high + RANGE_MARGIN * span
    if low >= 0:
        lo = max(lo, 0.0)  # a count or a measure stays non-negative
    if integer:
        return float(math.floor(lo)), float(math.ceil(hi))
    return round(lo, 6), round(hi, 6)


def _column(name: str, series: pd.Series) -> tuple[list[dict[str, Any]], str, str]:
    """(expectations, role, rule in words); role is numeric, categorical or a reason the
    column is not a feature."""
    values = series.dropna()
    rows, present = len(series), len(values)
    out: list[dict[str, Any]] = []
    if present == 0:
        return out, "all null", "all null"
    null_share = 1 - present / rows
    if null_share == 0:
        out.append(_expectation("column_values_to_not_be_null", column=name))
        nulls = "never null"
    else:
        mostly = math.floor((1 - null_share - NULL_MARGIN) * 100) / 100
        if mostly > 0:
            out.append(_expectation("column_values_to_not_be_null", column=name, mostly=mostly))
        nulls = f"null in {null_share:.0%} of rows"
    distinct = values.unique()
    if pd.api.types.is_bool_dtype(series) or (
        series.dtype == object and all(isinstance(v, bool) for v in distinct)
    ):
        out.append(_expectation("column_values_to_be_in_set", column=name,
                                value_set=[False, True]))  # fmt: skip
        return out, "categorical", f"true or false, {nulls}"
    if pd.api.types.is_datetime64_any_dtype(series):
        out.insert(0, _expectation("column_values_to_be_of_type", column=name,
                                   type_=str(series.dtype)))  # fmt: skip
        return out, "a date", f"a date, {nulls}"
    if pd.api.types.is_numeric_dtype(series):
        integer = pd.api.types.is_integer_dtype(series)
        type_ = "int64" if integer and series.dtype == "int64" else str(series.dtype)
        low, high = _bounds(values, integer)
        if integer:
            low, high = int(low), int(high)
        out.insert(0, _expectation("column_values_to_be_of_type", column=name, type_=type_))
        out.append(_expectation("column_values_to_be_between", column=name,
                                min_value=low, max_value=high))  # fmt: skip
        return out, "numeric", f"{type_} between {low:g} and {high:g}, {nulls}"
    out.insert(0, _expectation("column_values_to_be_of_type", column=name, type_="str"))
    if len(distinct) <= MAX_CATEGORIES:
        allowed = sorted(str(v) for v in distinct)
        out.append(_expectation("column_values_to_be_in_set", column=name, value_set=allowed))
        return out, "categorical", f"one of {len(allowed)} values, {nulls}"
    return out, f"free text ({len(distinct)} distinct values)", f"text, {nulls}"


def profile_table(
    df: pd.DataFrame, target: str, drop: Sequence[str] = (), *, name: str = "suite",
    source: str | None = None,
) -> Profile:  # fmt: skip
    """The suite `df` implies (without the `drop` columns), and its feature split."""
    if target not in df.columns:
        raise ValueError(f"target {target!r} is not a column; columns: {list(df.columns)}")
    unknown = sorted(set(drop) - set(map(str, df.columns)))
    if unknown:
        raise ValueError(f"columns to drop are not in the data: {unknown}")
    if target in drop:
        raise ValueError(f"the target {target!r} cannot be dropped")
    table = df.drop(columns=list(drop))
    columns = [str(c) for c in table.columns]
    expectations = [_expectation("table_columns_to_match_set", column_set=columns)]
    features = FeatureSplit()
    notes: list[str] = []
    rules: dict[str, str] = {}
    for column in columns:
        found, role, rule = _column(column, table[column])
        expectations += found
        rules[column] = rule
        if column == target:
            continue
        if role == "numeric":
            features.numeric.append(column)
        elif role == "categorical":
            features.categorical.append(column)
        else:
            notes.append(f"{column}: {role}, not a feature (drop it, or encode it in the model)")
    suite = {
        "name": name,
        "expectations": expectations,
        "meta": {
            "generated_by": "nbship suite: review these rules, they are a first guess",
            "source": source,
            "rows": len(table),
            "date": datetime.now(UTC).date().isoformat(),
        },
    }
    return Profile(suite=suite, features=features, notes=tuple(notes), rules=rules)


def write_suite(suite: dict[str, Any], path: Path, *, force: bool = False) -> Path:
    """Writes the suite as indented JSON; an existing file is kept unless `force`."""
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists: pass --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(suite, indent=2) + "\n")
    return path
