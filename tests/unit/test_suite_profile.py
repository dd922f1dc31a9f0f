"""`nbship suite`: a table profiled into a GX suite that validates the data it came from,
refuses rows outside it, and gives the served request schema."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from nbship.cli.main import main
from nbship.pipeline.contract import Contract, DataValidationError, record_model, validate_frame
from nbship.pipeline.profile import profile_table, write_suite

pytestmark = pytest.mark.unit


def table(rows: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    partly = rng.normal(10, 2, rows)
    partly[::10] = np.nan
    return pd.DataFrame(
        {
            "id": np.arange(rows),
            "count": rng.integers(0, 50, rows),
            "measure": partly,
            "colour": rng.choice(["red", "green", "blue"], rows),
            "flag": rng.random(rows) > 0.5,
            "when": pd.date_range("2026-01-01", periods=rows, freq="D"),
            "empty": [None] * rows,
            "note": [f"free text {i}" for i in range(rows)],
            "label": rng.choice(["yes", "no"], rows),
        }
    )


@pytest.fixture
def suite_file(tmp_path: Path) -> Path:
    return write_suite(profile_table(table(), "label", drop=["id"]).suite, tmp_path / "s.json")


def test_features_follow_the_column_types():
    profile = profile_table(table(), "label", drop=["id"])
    assert profile.features.numeric == ["count", "measure"]
    assert profile.features.categorical == ["colour", "flag"]
    noted = " ".join(profile.notes)
    for column in ("when", "empty", "note"):
        assert column in noted
    columns = profile.suite["expectations"][0]["kwargs"]["column_set"]
    assert "id" not in columns and "label" in columns


def test_the_suite_validates_its_own_data(suite_file: Path):
    assert validate_frame(table().drop(columns=["id"]), suite_file).success


@pytest.mark.parametrize(
    ("column", "value"),
    [("count", 500), ("colour", "purple"), ("label", "maybe"), ("colour", None)],
)
def test_the_suite_refuses_a_row_outside_it(suite_file: Path, column: str, value: object):
    bad = table().drop(columns=["id"])
    bad[column] = bad[column].astype(object)
    bad.loc[3, column] = value
    with pytest.raises(DataValidationError, match=column):
        validate_frame(bad, suite_file)


def test_ranges_have_a_margin_and_stay_non_negative():
    profile = profile_table(table(), "label")
    between = {
        e["kwargs"]["column"]: e["kwargs"]
        for e in profile.suite["expectations"]
        if e["type"] == "expect_column_values_to_be_between"
    }
    assert between["count"]["min_value"] == 0 and between["count"]["max_value"] > 49
    nulls = {
        e["kwargs"]["column"]: e["kwargs"].get("mostly", 1.0)
        for e in profile.suite["expectations"]
        if e["type"] == "expect_column_values_to_not_be_null"
    }
    assert nulls["count"] == 1.0 and nulls["measure"] == 0.85  # 10% null, less 5 points


def test_the_request_schema_takes_a_data_row_and_refuses_a_bad_one(suite_file: Path):
    suite = json.loads(suite_file.read_text())
    columns = ["count", "measure", "colour", "flag"]
    Record = record_model(Contract.from_suite(suite, columns))
    row = {"count": 3, "measure": None, "colour": "red", "flag": True}
    assert Record.model_validate(row).flag is True
    for field, value in [("flag", "True"), ("colour", "purple"), ("count", 1000)]:
        with pytest.raises(ValidationError, match=field):
            Record.model_validate({**row, field: value})


def test_refusals_name_the_column():
    with pytest.raises(ValueError, match="'nope' is not a column"):
        profile_table(table(), "nope")
    with pytest.raises(ValueError, match=r"\['ghost'\]"):
        profile_table(table(), "label", drop=["ghost"])


def test_the_command_writes_and_keeps_an_existing_suite(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    table().to_csv("things.csv", index=False)
    runner = CliRunner()
    first = runner.invoke(main, ["suite", "things.csv", "--target", "label", "--drop", "id"])
    assert first.exit_code == 0, first.output
    assert "expectations/things.json" in first.output and "colour" in first.output
    again = runner.invoke(main, ["suite", "things.csv", "--target", "label"])
    assert again.exit_code == 1 and "--force" in again.output
    missing = runner.invoke(main, ["suite", "things.csv", "--target", "nope", "--force"])
    assert missing.exit_code == 1 and "'nope' is not a column" in missing.output
