"""A chunk of rows checked against the data contract, with /predict's error messages.

/predict validates each record with the suite's pydantic record model
(`nbship.pipeline.contract.record_model`). Doing that row by row over millions of rows
costs more than the model does, so a chunk is first screened column by column (Arrow and
numpy) against the same `FieldSpec` rules, and only the rows the screen doubts go through
the record model, which decides them and words their errors exactly as /predict does. The
screen is conservative: a row it passes is one the record model accepts (a unit test
checks the two agree cell by cell); anything else the record model decides.

A file is not JSON, so three things are read the way a file means them: the null texts
of `NULL_TOKENS` (and Arrow/pandas nulls) are null, a numeric text ("45.2", "+5", "1e3")
is a number, and "true"/"false" in a boolean column are booleans.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ValidationError

from nbship.pipeline.contract import Contract, FieldSpec

# the texts a CSV cell may hold for "no value": what pandas and Arrow both read as null
NULL_TOKENS = ["", "NA", "N/A", "NaN", "nan", "null", "NULL", "#N/A"]
# a decimal number as it appears in a file; Arrow also casts "inf" or "nan", which JSON
# does not have: such a cell is doubted, and the record model says what it is
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_BOOLEANS = {"true": True, "false": False}
REJECT_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),  # the row's index in the input, from 0 (header not counted)
        ("field", pa.string()),
        ("rule", pa.string()),  # the record model's message, as /predict's `msg`
        ("type", pa.string()),  # pydantic's error type, as /predict's `type`
        ("value", pa.string()),  # the cell as read, for a reader of the rejects file
    ]
)


@dataclass
class Column:
    """One contract column of a chunk, screened."""

    values: np.ndarray  # float64 (NaN: null) for numbers, object (None: null) otherwise
    passed: np.ndarray  # bool: the cell surely meets the field's rule
    raw: pa.Array  # the cell as read: what the record model is given when it is not parsed
    parsed: np.ndarray  # bool: `values` holds the cell (a number or boolean read from text)


@dataclass
class Screened:
    """A chunk's contract columns ready to predict on, and the rows that broke the rules."""

    columns: dict[str, np.ndarray]  # what the model takes: the `values` of each column
    valid: np.ndarray  # bool per row
    rejects: list[dict[str, Any]]  # REJECT_SCHEMA rows, `row` relative to the chunk


def _numbers(raw: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values with NaN for null and for cells that are no number, parsed)."""
    kind = raw.type
    n = len(raw)
    if pa.types.is_boolean(kind):  # a boolean is no number to the record model either
        return np.full(n, np.nan), np.asarray(raw.is_null())
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        values = pc.cast(raw, pa.float64()).to_numpy(zero_copy_only=False)
        return np.asarray(values, dtype=float), np.ones(n, dtype=bool)
    if not (pa.types.is_string(raw.type) or pa.types.is_large_string(raw.type)):
        return np.full(n, np.nan), np.asarray(raw.is_null())
    try:  # Arrow's parser rounds correctly, as json.loads does for /predict
        floats = pc.cast(raw, pa.float64())
    except pa.ArrowInvalid:  # some cell is no number: cast only those that are
        is_number = pc.match_substring_regex(raw, _NUMBER)
        floats = pc.cast(pc.if_else(is_number, raw, pa.scalar(None, raw.type)), pa.float64())
    values = np.asarray(floats.to_numpy(zero_copy_only=False), dtype=float)
    # a text Arrow read as NaN ("NAN") is not the file's null: the record model decides it
    parsed = ~(np.isnan(values) & ~np.asarray(raw.is_null()))
    return values, parsed


def _objects(raw: pa.Array) -> np.ndarray:
    """The cells as Python objects, None for null (what a JSON request holds)."""
    return np.asarray(raw.to_numpy(zero_copy_only=False), dtype=object)


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def screen_column(spec: FieldSpec, raw: pa.Array) -> Column:
    """The cells of one column checked against its field's rule, vectorised."""
    if pa.types.is_dictionary(raw.type):  # parquet's categorical columns
        raw = raw.dictionary_decode()
    null = np.asarray(raw.is_null())
    null_ok = null & spec.nullable
    if spec.kind in ("number", "integer"):
        values, parsed = _numbers(raw)
        passed = np.isfinite(values)
        if spec.minimum is not None:
            passed &= values >= spec.minimum
        if spec.maximum is not None:
            passed &= values <= spec.maximum
        if spec.kind == "integer":
            with np.errstate(invalid="ignore"):
                passed &= values == np.floor(values)
        return Column(values, passed | null_ok, raw, parsed & ~null)
    if spec.kind == "category":
        if not _is_text(raw.type):  # a number where a category is due: the model words it
            return Column(_objects(raw), null_ok, raw, np.zeros(len(raw), dtype=bool))
        member = pc.is_in(raw, value_set=pa.array(spec.categories, type=pa.string()))
        passed = np.asarray(member.fill_null(False)) | null_ok
        return Column(_objects(raw), passed, raw, np.zeros(len(raw), dtype=bool))
    if spec.kind == "boolean":
        if pa.types.is_boolean(raw.type):
            return Column(_objects(raw), ~null | null_ok, raw, np.zeros(len(raw), dtype=bool))
        if _is_text(raw.type):
            lowered = [None if v is None else _BOOLEANS.get(v.lower()) for v in _objects(raw)]
            values = np.asarray(lowered, dtype=object)
            parsed = np.asarray([v is not None for v in lowered])
            return Column(values, parsed | null_ok, raw, parsed)
        return Column(_objects(raw), null_ok, raw, np.zeros(len(raw), dtype=bool))
    # a string field
    passed = (~null if _is_text(raw.type) else np.zeros(len(raw), dtype=bool)) | null_ok
    return Column(_objects(raw), passed, raw, np.zeros(len(raw), dtype=bool))


def record_input(spec: FieldSpec, column: Column, i: int) -> Any:
    """The cell as /predict would have received it in JSON: the parsed number or boolean
    when the text was one, else the cell itself."""
    if column.parsed[i]:
        value = column.values[i]
        if spec.kind == "boolean":
            return value
        number = float(value)
        # a whole number for an integer field, as JSON's 40 (and not 40.0) would be
        return int(number) if spec.kind == "integer" and number.is_integer() else number
    return column.raw[i].as_py()


def _shown(value: Any) -> str:
    return "null" if value is None else str(value)


def screen(
    chunk: pa.Table, contract: Contract, record: type[BaseModel], first_row: int = 0
) -> Screened:
    """The contract columns of `chunk` checked, the doubted rows by the record model.
    `first_row` is the chunk's first row's index in the input (for the rejects)."""
    specs = contract.fields
    columns = {spec.name: screen_column(spec, chunk.column(spec.name).combine_chunks())
               for spec in specs}  # fmt: skip
    valid = np.ones(chunk.num_rows, dtype=bool)
    for column in columns.values():
        valid &= column.passed
    rejects: list[dict[str, Any]] = []
    for i in np.flatnonzero(~valid).tolist():
        cells = {spec.name: record_input(spec, columns[spec.name], i) for spec in specs}
        try:
            accepted = record.model_validate(cells)
        except ValidationError as exc:
            read = {spec.name: columns[spec.name].raw[i].as_py() for spec in specs}
            rejects += _reject_rows(exc.errors(include_url=False), first_row + i, read)
            continue
        # the screen doubted a row the model accepts (e.g. "true" in a boolean column):
        # predict on what the model made of it
        valid[i] = True
        for spec in specs:
            value = getattr(accepted, spec.name)
            numeric = spec.kind in ("number", "integer")
            columns[spec.name].values[i] = (
                (np.nan if value is None else value) if numeric else value
            )
    values = {name: column.values for name, column in columns.items()}
    return Screened(columns=values, valid=valid, rejects=rejects)


def _reject_rows(errors: Iterable[Any], row: int, read: dict[str, Any]) -> list[dict[str, Any]]:
    """One reject per error; `read` holds the row's cells as the file had them."""
    out = []
    for err in errors:
        loc = tuple(err["loc"])
        field = str(loc[0]) if loc else "body"
        out.append({"row": row, "field": field, "rule": err["msg"], "type": err["type"],
                    "value": _shown(read.get(field))})  # fmt: skip
    return out
