"""The data contract: one GX suite (expectations/penguins.json) read two ways, as a request
schema (pure JSON + pydantic) and as a GX validation of a whole table."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import palmerpenguins
import pandas as pd
import pytest
from pydantic import BaseModel, ValidationError

from nbship.pipeline.contract import (
    Contract,
    DataValidationError,
    FieldSpec,
    ValidationSummary,
    load_suite,
    record_model,
    validate_frame,
)
from tests.support import PROJECT

pytestmark = pytest.mark.unit

SUITE = PROJECT / "expectations" / "penguins.json"
COLUMNS = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "island", "sex"]


@pytest.fixture(scope="module")
def suite() -> dict:
    return load_suite(SUITE)


@pytest.fixture(scope="module")
def contract(suite: dict) -> Contract:
    return Contract.from_suite(suite, COLUMNS)


@pytest.fixture(scope="module")
def record(contract: Contract) -> type[BaseModel]:
    return record_model(contract)


@pytest.fixture(scope="module")
def penguins() -> pd.DataFrame:
    return palmerpenguins.load_penguins()


@pytest.fixture(scope="module")
def good_row(penguins: pd.DataFrame) -> dict:
    row = penguins.dropna().iloc[0].to_dict()
    return {name: row[name] for name in COLUMNS}


def errors_of(model: type[BaseModel], payload: dict) -> list[dict]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(payload)
    return info.value.errors(include_url=False)


# --- Contract.from_suite / FieldSpec -------------------------------------------------


def test_from_suite_reads_field_specs(contract: Contract):
    assert contract.suite_name == "penguins"
    assert contract.field("island") == FieldSpec(
        name="island",
        kind="category",
        categories=("Biscoe", "Dream", "Torgersen"),
        nullable=False,
    )
    assert contract.field("bill_length_mm") == FieldSpec(
        name="bill_length_mm", kind="number", minimum=25.0, maximum=70.0, nullable=True
    )
    assert contract.field("sex") == FieldSpec(
        name="sex", kind="category", categories=("female", "male"), nullable=True
    )
    with pytest.raises(KeyError):
        contract.field("species_not_requested")


def test_from_suite_keeps_the_requested_column_order(suite: dict):
    order = ["sex", "island", "body_mass_g"]
    assert [f.name for f in Contract.from_suite(suite, order).fields] == order
    reversed_order = list(reversed(COLUMNS))
    assert [f.name for f in Contract.from_suite(suite, reversed_order).fields] == reversed_order


def test_from_suite_refuses_an_unknown_column(suite: dict):
    with pytest.raises(ValueError, match="wingspan_cm"):
        Contract.from_suite(suite, ["island", "wingspan_cm"])


def test_from_suite_integer_and_string_kinds(suite: dict):
    c = Contract.from_suite(suite, ["year", "species"])
    # species has a value set, so it is a category; year is declared int64
    assert c.field("year").kind == "integer"
    assert (c.field("year").minimum, c.field("year").maximum) == (2007.0, 2009.0)
    assert c.field("year").nullable is False
    assert c.field("species").kind == "category"


def test_field_spec_rule_text(contract: Contract):
    assert contract.field("island").rule == "one of Biscoe, Dream, Torgersen"
    assert contract.field("bill_length_mm").rule == "a number between 25 and 70, may be null"
    assert contract.field("sex").rule == "one of female, male, may be null"
    assert FieldSpec("n", "integer", minimum=1).rule == "an integer >= 1, may be null"
    assert FieldSpec("n", "number", maximum=2.5, nullable=False).rule == "a number <= 2.5"
    assert FieldSpec("s", "string", nullable=False).rule == "a string"


# --- record_model ---------------------------------------------------------------------


def test_record_accepts_a_real_penguins_row(record: type[BaseModel], good_row: dict):
    assert all(isinstance(good_row[n], float) for n in COLUMNS[:4])
    parsed = record.model_validate(good_row)
    assert parsed.model_dump() == good_row


def test_record_accepts_an_int_for_a_float_field(record: type[BaseModel], good_row: dict):
    parsed = record.model_validate({**good_row, "flipper_length_mm": 181})
    assert parsed.flipper_length_mm == 181


def test_record_accepts_every_row_of_the_real_dataset(record: type[BaseModel], penguins):
    # the raw table has NaN for missing values; a request carries null instead
    rows = penguins[COLUMNS].astype(object).where(penguins[COLUMNS].notna(), None)
    for row in rows.to_dict(orient="records"):
        record.model_validate(row)


@pytest.mark.parametrize(
    ("field", "value", "msg_part"),
    [
        ("bill_length_mm", "abc", "valid number"),
        ("bill_length_mm", "39.1", "valid number"),
        ("bill_length_mm", True, "valid number"),
        ("body_mass_g", [3750.0], "valid number"),
        ("bill_length_mm", math.nan, "finite number"),
        ("bill_length_mm", math.inf, "finite number"),
        ("bill_length_mm", -math.inf, "finite number"),
        ("bill_length_mm", 24.99, "greater than or equal to 25"),
        ("bill_length_mm", 70.01, "less than or equal to 70"),
        ("body_mass_g", 2499, "greater than or equal to 2500"),
        ("island", "Atlantis", "'Biscoe', 'Dream' or 'Torgersen'"),
        ("island", "biscoe", "'Biscoe', 'Dream' or 'Torgersen'"),
        ("island", None, "'Biscoe', 'Dream' or 'Torgersen'"),
        ("island", 1, "'Biscoe', 'Dream' or 'Torgersen'"),
        ("sex", "unknown", "'female' or 'male'"),
    ],
)
def test_record_rejects_a_bad_value_naming_field_and_rule(
    record: type[BaseModel], good_row: dict, field: str, value, msg_part: str
):
    errors = errors_of(record, {**good_row, field: value})
    assert len(errors) == 1, errors
    assert errors[0]["loc"] == (field,)
    assert msg_part in errors[0]["msg"]


@pytest.mark.parametrize("value", [25, 25.0, 70, 70.0])
def test_record_bounds_are_inclusive(record: type[BaseModel], good_row: dict, value):
    assert record.model_validate({**good_row, "bill_length_mm": value}).bill_length_mm == value


@pytest.mark.parametrize("field", ["island", "sex", "bill_length_mm"])
def test_record_requires_every_field_even_nullable_ones(
    record: type[BaseModel], good_row: dict, field: str
):
    payload = {k: v for k, v in good_row.items() if k != field}
    errors = errors_of(record, payload)
    assert [(e["loc"], e["type"]) for e in errors] == [((field,), "missing")]
    assert "required" in errors[0]["msg"]


def test_record_refuses_an_unknown_field(record: type[BaseModel], good_row: dict):
    errors = errors_of(record, {**good_row, "species": "Adelie"})
    assert [(e["loc"], e["type"]) for e in errors] == [(("species",), "extra_forbidden")]
    assert "not permitted" in errors[0]["msg"]


def test_record_reports_every_broken_field(record: type[BaseModel], good_row: dict):
    errors = errors_of(record, {**good_row, "island": "Atlantis", "bill_depth_mm": 99.0})
    assert {e["loc"] for e in errors} == {("island",), ("bill_depth_mm",)}


def test_record_nullable_fields_accept_none(record: type[BaseModel], good_row: dict):
    nullable = [n for n in COLUMNS if n != "island"]
    parsed = record.model_validate({**good_row, **dict.fromkeys(nullable)})
    assert all(getattr(parsed, n) is None for n in nullable)
    assert parsed.island == good_row["island"]


@pytest.mark.parametrize(
    ("raw", "field", "msg_part"),
    [
        ('"39.1"', "bill_length_mm", "valid number"),
        ("true", "bill_length_mm", "valid number"),
        ("NaN", "bill_length_mm", "finite number"),
        ("Infinity", "bill_length_mm", "finite number"),
        ("1e400", "bill_length_mm", "finite number"),
        ("5", "island", "'Biscoe', 'Dream' or 'Torgersen'"),
    ],
)
def test_record_rejects_bad_json_like_the_service_sees_it(
    record: type[BaseModel], good_row: dict, raw: str, field: str, msg_part: str
):
    # requests arrive as JSON text: strict mode and allow_inf_nan must hold on that path too
    body = json.dumps({**good_row, field: "__RAW__"}).replace('"__RAW__"', raw)
    with pytest.raises(ValidationError) as info:
        record.model_validate_json(body)
    errors = info.value.errors(include_url=False)
    assert [e["loc"] for e in errors] == [(field,)]
    assert msg_part in errors[0]["msg"]


def test_record_accepts_json_ints_and_nulls(record: type[BaseModel], good_row: dict):
    body = json.dumps({**good_row, "flipper_length_mm": 181, "sex": None})
    parsed = record.model_validate_json(body)
    assert (parsed.flipper_length_mm, parsed.sex) == (181.0, None)


def test_record_json_schema_shows_the_rules(record: type[BaseModel], contract: Contract):
    schema = record.model_json_schema()
    assert sorted(schema["required"]) == sorted(COLUMNS)
    assert schema["additionalProperties"] is False
    island = schema["properties"]["island"]
    assert island["enum"] == ["Biscoe", "Dream", "Torgersen"]
    assert island["description"] == contract.field("island").rule
    bill = schema["properties"]["bill_length_mm"]
    number = next(s for s in bill["anyOf"] if s.get("type") == "number")
    assert (number["minimum"], number["maximum"]) == (25.0, 70.0)
    assert {"type": "null"} in bill["anyOf"]
    assert bill["description"] == "a number between 25 and 70, may be null"


def test_importing_contract_does_not_import_great_expectations():
    code = textwrap.dedent(
        """
        import sys
        import nbship.pipeline.contract
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "great_expectations")
        print(len(loaded))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "0", out.stdout + out.stderr


# --- the suite as GX reads it -----------------------------------------------------------


def test_suite_round_trips_through_gx(suite: dict):
    import great_expectations as gx

    def without_ids(d: dict) -> dict:
        return {k: v for k, v in d.items() if k not in ("id", "rendered_content")}

    out = gx.ExpectationSuite(**suite).to_json_dict()
    assert without_ids(out) | {"expectations": None} == suite | {"expectations": None}
    assert [without_ids(e) for e in out["expectations"]] == suite["expectations"]


def test_pandas3_string_columns_are_type_str_not_object(penguins: pd.DataFrame):
    # why the suite says type_="str": pandas 3 strings are StringDtype, which GX reports as
    # "str"; the pandas 2 habit of "object" fails on the same column
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    batch = (
        context.data_sources.add_pandas("p")
        .add_dataframe_asset("a")
        .add_batch_definition_whole_dataframe("w")
        .get_batch(batch_parameters={"dataframe": penguins})
    )
    expect = gx.expectations.ExpectColumnValuesToBeOfType
    assert batch.validate(expect(column="island", type_="str")).success is True
    assert batch.validate(expect(column="island", type_="object")).success is False


# --- validate_frame (GX) --------------------------------------------------------------


@dataclass
class GxRuns:
    good: ValidationSummary
    bad: DataValidationError
    null_islands: DataValidationError


def _raises(df: pd.DataFrame) -> DataValidationError:
    with pytest.raises(DataValidationError) as info:
        validate_frame(df, SUITE)
    return info.value


@pytest.fixture(scope="module")
def gx_runs(penguins: pd.DataFrame) -> GxRuns:
    """All GX runs at once: the GX import is the slow part (several seconds)."""
    good = validate_frame(penguins, SUITE)

    bad = penguins.copy()
    rows = bad.index[bad["bill_length_mm"].notna()][:5]
    bad.loc[rows, "bill_length_mm"] = bad.loc[rows, "bill_length_mm"] * 10
    bad.loc[7, "island"] = "Atlantis"
    bad.loc[[10, 11, 12], "island"] = None
    bad = bad.drop(columns="year")

    null_islands = penguins.copy()
    null_islands.loc[[1, 2, 3], "island"] = None
    return GxRuns(good=good, bad=_raises(bad), null_islands=_raises(null_islands))


def test_validate_frame_passes_on_the_real_dataset(gx_runs: GxRuns):
    n_expectations = len(json.loads(SUITE.read_text())["expectations"])
    assert gx_runs.good.success is True
    assert gx_runs.good.evaluated == n_expectations
    assert gx_runs.good.failures == []
    assert gx_runs.good.statistics["successful_expectations"] == n_expectations


def test_validate_frame_names_every_failing_expectation_and_column(gx_runs: GxRuns):
    err = gx_runs.bad
    found = {(f.expectation, f.column) for f in err.failures}
    expected = {
        ("expect_column_values_to_be_between", "bill_length_mm"),
        ("expect_column_values_to_be_in_set", "island"),
        ("expect_column_values_to_not_be_null", "island"),
        ("expect_table_columns_to_match_set", None),
        ("expect_column_values_to_be_of_type", "year"),
        ("expect_column_values_to_not_be_null", "year"),
        ("expect_column_values_to_be_between", "year"),
    }
    assert found == expected
    text = str(err)
    assert text.startswith(f"Data validation failed: {len(expected)} expectation(s) failed")
    for expectation, column in expected:
        where = f" on {column}" if column else ":"
        assert f"- {expectation}{where}" in text
    between = next(f for f in err.failures if f.column == "bill_length_mm")
    assert between.detail.startswith("5 unexpected value(s)")
    atlantis = next(f for f in err.failures if f.expectation.endswith("in_set"))
    assert "Atlantis" in atlantis.detail


def test_validate_frame_nulls_in_a_non_nullable_column(gx_runs: GxRuns):
    failures = gx_runs.null_islands.failures
    assert [(f.expectation, f.column) for f in failures] == [
        ("expect_column_values_to_not_be_null", "island")
    ]
    assert failures[0].detail == "3 unexpected value(s) (0.9%)"


def test_validate_frame_explains_a_failure_on_a_missing_column(gx_runs: GxRuns):
    year = next(
        f
        for f in gx_runs.bad.failures
        if f.expectation == "expect_column_values_to_not_be_null" and f.column == "year"
    )
    assert year.detail != "failed"
    assert "year" in year.detail


@pytest.mark.parametrize(
    "broken",
    [
        {"type": "expect_column_values_to_be_purple", "kwargs": {"column": "island"}},
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "bill_length_mm", "min_value": 25.0, "bogus": 1},
        },
    ],
)
def test_validate_frame_refuses_a_suite_gx_cannot_load(
    penguins: pd.DataFrame, tmp_path: Path, broken: dict
):
    raw = load_suite(SUITE)
    raw["expectations"].append(broken)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError):
        validate_frame(penguins, path)


def test_validate_frame_draws_no_progress_bars(
    penguins: pd.DataFrame, capfd: pytest.CaptureFixture[str]
):
    summary = validate_frame(penguins.dropna().head(20), SUITE)
    assert summary.success is True
    out, err = capfd.readouterr()
    assert "Calculating Metrics" not in out + err
