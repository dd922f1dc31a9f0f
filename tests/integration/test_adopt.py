"""`nbship adopt` on tutorial-style notebooks, without a build: what it changes (shown as
a diff, the user's cells kept), and the refusals, each of which writes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import jupytext
import pytest
from click.testing import CliRunner

from nbship import config
from nbship.cli.main import main
from tests.projects.tutorial.data import census_table
from tests.support import PROJECT

pytestmark = pytest.mark.integration

TUTORIAL = PROJECT / "tests" / "projects" / "tutorial" / "census.py"


def tutorial(folder: Path, text: str | None = None, fmt: str = "py") -> Path:
    """The tutorial notebook and its CSV in `folder` (as .ipynb when fmt is "ipynb")."""
    folder.mkdir(parents=True, exist_ok=True)
    census_table(300).to_csv(folder / "census.csv", index=False)
    notebook = jupytext.reads(text or TUTORIAL.read_text(), fmt="py:percent")
    path = folder / f"census.{fmt}"
    jupytext.write(notebook, path, fmt="ipynb" if fmt == "ipynb" else "py:percent")
    return path


def adopt(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["adopt", *args])
    return result.exit_code, result.output


@pytest.mark.parametrize("fmt", ["py", "ipynb"])
def test_adopt_keeps_the_users_cells_and_shows_each_change(tmp_path: Path, fmt: str):
    notebook = tutorial(tmp_path / "work", fmt=fmt)
    dest = tmp_path / "income"
    code, output = adopt(str(notebook), "--project", str(dest))
    assert code == 0, output
    assert "model: model (the model is the one fitted scikit-learn estimator" in output
    assert '+adult_census = pd.read_parquet(upstream["split"]["train"])' in output
    assert '-adult_census = pd.read_csv("census.csv")' in output
    assert '+# %% tags=["parameters"]' in output
    cfg = config.load(dest)
    assert cfg.target == "class" and cfg.candidates == ["census"]
    assert cfg.features.numeric == ["age", "hours_per_week"]
    assert cfg.features.categorical == ["education", "workclass"]
    original = [c.source for c in jupytext.read(notebook).cells if c.cell_type == "code"]
    adopted = jupytext.read(dest / "notebooks" / "train.py")
    code_cells = [c.source for c in adopted.cells if c.cell_type == "code"]
    assert code_cells[0].startswith('upstream = ["split"]')  # the parameters cell
    assert code_cells[1].endswith("as_in_build(globals())")  # Run All by hand works
    changed = [i for i, (a, b) in enumerate(zip(original, code_cells[2:-1], strict=True)) if a != b]
    assert changed == [1]  # only the cell that read the CSV
    assert "save_candidate(\n    model," in code_cells[-1]


def _variant(tmp_path: Path, old: str, new: str | None) -> Path:
    """The tutorial with `old` replaced by `new` (None: cut from `old` on)."""
    text = TUTORIAL.read_text()
    assert old in text
    changed = text[: text.index(old)] if new is None else text.replace(old, new)
    return tutorial(tmp_path / "work", changed)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        # the notebook stops before fitting: cut at the fit
        ("model.fit(data_train, target_train)", None, "ends with no fitted scikit-learn"),
        (
            "model.fit(data_train, target_train)",
            "model.fit(data_train, target_train)\n"
            "other = HistGradientBoostingClassifier().fit(data_train[['age']], target_train)",
            "2 fitted estimators (model, other): name the one to serve with --model",
        ),
        ('target_name = "class"', 'target_name = "klass"', "fails in code cell 2: KeyError"),
        ('pd.read_csv("census.csv")', "pd.DataFrame()", "reads no table with pandas"),
    ],
    ids=["not-fitted", "two-models", "fails", "no-read"],
)
def test_adopt_refuses_and_writes_nothing(tmp_path: Path, old: str, new: str | None, message: str):
    notebook = _variant(tmp_path, old, new)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, output = adopt(str(notebook), "--project", str(tmp_path / "p"))
    assert code == 1 and message in output and "nothing was written" in output, output
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_adopt_takes_the_model_named(tmp_path: Path):
    notebook = _variant(
        tmp_path, "model.fit(data_train, target_train)",
        "model.fit(data_train, target_train)\n"
        "other = HistGradientBoostingClassifier().fit(data_train[['age']], target_train)",
    )  # fmt: skip
    code, output = adopt(str(notebook), "--project", str(tmp_path / "p"), "--model", "other")
    assert code == 0, output
    assert config.load(tmp_path / "p").features.numeric == ["age"]
    code, output = adopt(str(notebook), "--project", str(tmp_path / "q"), "--model", "nope")
    assert code == 1 and "no fitted estimator by that name" in output


def test_adopt_refuses_a_class_defined_in_the_notebook(tmp_path: Path):
    notebook = _variant(
        tmp_path, "model = make_pipeline(preprocessor,",
        "from sklearn.base import BaseEstimator, TransformerMixin\n\n\n"
        "class Same(TransformerMixin, BaseEstimator):\n"
        "    def fit(self, X, y=None):\n        return self\n\n"
        "    def transform(self, X):\n        return X\n\n\n"
        "model = make_pipeline(Same(), preprocessor,",
    )  # fmt: skip
    code, output = adopt(str(notebook), "--project", str(tmp_path / "p"))
    assert code == 1 and "Same (class)" in output and "move each of them" in output, output
    assert not (tmp_path / "p").exists()
    shutil.rmtree(tmp_path / "work")
