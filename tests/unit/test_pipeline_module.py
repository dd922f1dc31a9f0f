"""The Ploomber seam (`nbship.pipeline.dag`) without a build: scripts exported from a
tiny two-notebook project, and the failure text. What builds is in
tests/integration/test_dag.py."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from nbship.pipeline import dag as pipeline
from tests.support import write_dag_project

pytestmark = pytest.mark.unit


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_dag_project(tmp_path / "proj")


def test_export_scripts_runs_nothing(project: Path, tmp_path: Path):
    scripts = pipeline.export_scripts(project, tmp_path / "scripts")
    assert len(scripts) == 2
    assert not (project / "build" / "a.txt").exists()
    body = textwrap.dedent(scripts[0].read_text())
    assert 'write_text("hello from a")' in body


def test_failure_cause_is_the_task_error_not_ploombers_stack():
    text = (
        'Traceback (most recent call last):\n  File "x.py", line 1\n'
        "nbship.pipeline.contract.DataValidationError: "
        "Data validation failed: 1 expectation(s) failed\n"
        "- expect_column_values_to_be_in_set on island: 1 unexpected value(s)\n\n"
        "ploomber.exceptions.TaskBuildError: Error when executing task 'validate'.\n"
        'ploomber.exceptions.TaskBuildError: Error building task "validate"\n'
    )
    assert pipeline.failure_cause(text) == (
        "DataValidationError: Data validation failed: 1 expectation(s) failed\n"
        "- expect_column_values_to_be_in_set on island: 1 unexpected value(s)"
    )
    assert pipeline.failure_cause("ploomber.exceptions.DAGBuildError: boom") is None


def test_placeholders_are_read_from_the_pipeline_text():
    text = 'params:\n  a: "{{data.drop}}"\n  b: "{{ gates }}"\n  c: "[[candidate]]"\n'
    assert pipeline.placeholders(text) == {"data.drop", "gates"}


def test_a_section_gets_only_the_keys_the_pipeline_names():
    raw = {"data": {"source": "x.csv"}, "gates": {"metric_tolerance": 0.02}}
    defaults = pipeline.placeholder_defaults(raw, {"data.drop", "gates"})
    # data.drop is named: filled; gates is passed whole: left as env.yaml wrote it, so
    # plain `ploomber build` renders the same parameter
    assert defaults["data"] == {"source": "x.csv", "drop": []}
    assert "gates" not in defaults


def test_a_missing_section_gets_json_safe_defaults():
    defaults = pipeline.placeholder_defaults({"data": {"source": "x.csv"}}, {"gates"})
    # a tuple default would reach the notebook as the string '()'
    assert defaults["gates"]["invariance"] == []
    assert "data" not in defaults
