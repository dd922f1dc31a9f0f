"""`nbship init` and `nbship adopt` without a build: the files a new project gets, the
template's copies of the example's tasks, and what adopt reads in a notebook."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from nbship import config
from nbship.cli.main import main
from nbship.pipeline.contract import DataValidationError, validate_frame
from nbship.scaffold.adopt import _replace, find_reads
from nbship.scaffold.init import demo_table, project_name
from nbship.scaffold.notebook_run import inspect_namespace
from nbship.scaffold.templates import project_files
from tests.projects.tutorial.data import census_table
from tests.support import PROJECT

pytestmark = pytest.mark.unit

TEMPLATES = PROJECT / "src" / "nbship" / "templates"
GENERIC_TASKS = ("load", "validate", "feedback", "split", "evaluate", "choose", "package")


@pytest.mark.parametrize("name", [f"notebooks/{t}.py" for t in GENERIC_TASKS] + ["pipeline.yaml"])
def test_template_tasks_are_the_examples_own(name: str) -> None:
    """A new project runs the pipeline the worked example runs: the same files."""
    assert (TEMPLATES / "project" / name).read_bytes() == (PROJECT / name).read_bytes()


def test_every_placeholder_is_filled() -> None:
    with pytest.raises(KeyError):  # a missing value is an error, not a "$name" left behind
        project_files({})


def _init(tmp_path: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["init", *args])
    return result.exit_code, result.output


@pytest.fixture
def census_csv(tmp_path: Path) -> Path:
    path = tmp_path / "census.csv"
    census_table(200).to_csv(path, index=False)
    return path


def test_init_on_a_csv_writes_a_project_its_schema_accepts(tmp_path: Path, census_csv: Path):
    dest = tmp_path / "Income Model"
    code, output = _init(tmp_path, str(dest), "--data", str(census_csv), "--target", "class",
                         "--drop", "person_id")  # fmt: skip
    assert code == 0, output
    assert "task: classification (inferred" in output
    cfg = config.load(dest)
    assert cfg.target == "class" and cfg.data.drop == ["person_id"]
    assert cfg.data.source == "data/census.csv" and (dest / "data" / "census.csv").is_file()
    assert cfg.features.numeric == ["age", "hours_per_week"]
    assert cfg.features.categorical == ["education", "workclass"]
    assert cfg.bento.name == project_name(dest) == "income_model"
    for name in ("pipeline.yaml", "notebooks/train.py", ".gitignore", "tests/test_project.py",
                 "README.md", "pyproject.toml", "jupyter_server_config.py"):  # fmt: skip
        assert (dest / name).is_file(), name
    assert "LogisticRegression" in (dest / "notebooks" / "train.py").read_text()
    # the profiled contract holds for the data, and refuses a row outside it
    table = census_table(200).drop(columns=["person_id"])
    assert validate_frame(table, dest / cfg.suite).success
    bad = table.copy()
    bad.loc[0, "education"] = "Kindergarten"
    with pytest.raises(DataValidationError, match="education"):
        validate_frame(bad, dest / cfg.suite)
    readme = (dest / "README.md").read_text()
    assert '"education": ' in readme and "$" not in readme.replace("$ ", "")


def test_init_regression_writes_the_regression_notebook(tmp_path: Path):
    path = tmp_path / "houses.csv"
    table = census_table(200)
    table["price"] = table["age"] * 1000.5 + table["hours_per_week"].fillna(40) * 10
    table.drop(columns=["class"]).to_csv(path, index=False)
    code, output = _init(tmp_path, str(tmp_path / "p"), "--data", str(path), "--target", "price")
    assert code == 0, output
    assert config.load(tmp_path / "p").task == "regression"
    assert "Ridge" in (tmp_path / "p" / "notebooks" / "train.py").read_text()


def test_init_without_data_uses_the_demo_table(tmp_path: Path):
    code, output = _init(tmp_path, str(tmp_path / "demo"))
    assert code == 0, output
    cfg = config.load(tmp_path / "demo")
    written = pd.read_csv(tmp_path / "demo" / cfg.data.source)
    pd.testing.assert_frame_equal(written, demo_table(), check_dtype=False)
    assert set(written[cfg.target]) == {"setosa", "versicolor", "virginica"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "nope"], "'nope' is not a column"),
        (["--target", "class", "--drop", "ghost"], "--drop ['ghost']"),
        (["--target", "class", "--drop", "class"], "names the target"),
        (["--target", "class", "--task", "regression"], "regression needs a numeric target"),
        ([], "--data needs --target"),
    ],
)
def test_init_refusals_name_the_option_and_write_nothing(
    tmp_path: Path, census_csv: Path, args: list[str], message: str
):
    dest = tmp_path / "p"
    code, output = _init(tmp_path, str(dest), "--data", str(census_csv), *args)
    assert code == 1 and message in output, output
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["census.csv"]  # no staging left


def test_init_refuses_a_folder_with_files(tmp_path: Path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "mine.txt").write_text("keep me")
    code, output = _init(tmp_path, str(tmp_path / "p"))
    assert code == 1 and "not an empty folder" in output
    assert [p.name for p in (tmp_path / "p").iterdir()] == ["mine.txt"]


def test_find_reads_takes_literal_paths_and_skips_magics():
    cells = [
        "%matplotlib inline\nimport pandas as pd",
        'df = pd.read_csv("data/a.csv", sep=",")\nother = pandas.read_parquet("b.parquet")',
        "x = pd.read_csv(path)",  # not a literal: adopt cannot point it anywhere
        "def broken(:",
    ]
    reads = find_reads(cells)
    assert [(r.cell, r.path, r.module) for r in reads] == [
        (1, "data/a.csv", "pd"),
        (1, "b.parquet", "pandas"),
    ]
    replaced = _replace(cells[1], reads[0], 'pd.read_parquet(upstream["split"]["train"])')
    assert replaced.splitlines()[0] == 'df = pd.read_parquet(upstream["split"]["train"])'
    assert replaced.splitlines()[1] == cells[1].splitlines()[1]


def _xy() -> tuple[pd.DataFrame, pd.Series]:
    X = pd.DataFrame({"a": [0.0, 1, 2, 3, 4, 5], "b": [1.0, 0, 1, 0, 1, 0]})
    return X, pd.Series([0, 0, 0, 1, 1, 1], name="label")


def test_inspect_counts_a_pipelines_steps_as_part_of_it(tmp_path: Path):
    X, y = _xy()
    scaler = StandardScaler()
    model = make_pipeline(scaler, LogisticRegression()).fit(X, y)
    report = inspect_namespace(
        {"scaler": scaler, "model": model, "clf": model, "y_train": y, "raw": LinearRegression()},
        tmp_path,
    )
    assert [(e.name, e.also_named, e.features) for e in report.estimators] == [
        ("model", ["clf"], ["a", "b"])
    ]
    assert report.contained == ["scaler"] and report.unfitted == ["raw"]
    assert report.target_names == ["label"]


def test_inspect_a_search_holds_its_best_estimator(tmp_path: Path):
    X, y = _xy()
    search = GridSearchCV(LogisticRegression(), {"C": [0.1, 1.0]}, cv=2).fit(X, y)
    report = inspect_namespace({"search": search, "best": search.best_estimator_}, tmp_path)
    assert [e.name for e in report.estimators] == ["search"] and report.contained == ["best"]


def test_inspect_two_separate_models_are_two(tmp_path: Path):
    X, y = _xy()
    one = LogisticRegression().fit(X, y)
    two = make_pipeline(ColumnTransformer([("s", StandardScaler(), ["a"])]), LinearRegression())
    report = inspect_namespace({"one": one, "two": two.fit(X, y)}, tmp_path)
    assert sorted((e.name, e.task) for e in report.estimators) == [
        ("one", "classification"), ("two", "regression"),
    ]  # fmt: skip


def test_env_template_comments_survive_rendering(tmp_path: Path, census_csv: Path):
    code, _ = _init(tmp_path, str(tmp_path / "p"), "--data", str(census_csv), "--target", "class")
    assert code == 0
    text = (tmp_path / "p" / "env.yaml").read_text()
    assert "# The data contract" in text
    assert yaml.safe_load(text)["hyperparams"]["linear"] == {"C": 1.0, "max_iter": 1000}
    assert json.loads((tmp_path / "p" / "expectations" / "p.json").read_text())["expectations"]


def test_a_new_project_gets_the_examples_jupyterlab_defaults() -> None:
    # a double-click opens a task as a notebook; no news prompt (tests/e2e/test_jupyterlab.py)
    files = project_files(collections.defaultdict(lambda: "x"))  # any placeholder value
    overrides = ".jupyter/lab/settings/overrides.json"
    assert files[overrides] == (PROJECT / overrides).read_bytes()
