"""The model's own code: what a fitted object refers to is found, the project's modules are
staged for the bento, notebook code and unpinned packages are refused by name."""

from __future__ import annotations

import contextlib
import importlib.metadata
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from nbship.packaging import bento as package
from nbship.packaging.dependencies import (
    PackagingError,
    find_dependencies,
    referenced_globals,
    requirement_names,
    stage_project_code,
)

pytestmark = pytest.mark.unit

# what a scikit-learn model needs, as `uv export` of the serve group pins it (and more)
REQUIREMENTS = "\n".join(
    [
        "numpy==2.3.0",
        "pandas==3.1.1",
        "scikit-learn==1.9.1",
        "scipy==1.16.0",
        "joblib==1.6.0",
        "threadpoolctl==3.6.0",
        "psycopg[binary]==3.2.9 ; python_version >= '3.11'",
        "",
    ]
)
FEATURES = """\
from sklearn.base import BaseEstimator, TransformerMixin

from {pkg}.util import ratio


class Ratio(BaseEstimator, TransformerMixin):
    \"\"\"Adds x1 / (|x2| + 1): a project's own transformer.\"\"\"

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        X = X.copy()
        X["ratio"] = ratio(X["x1"], X["x2"])
        return X
"""
UTIL = """\
def ratio(a, b):
    return a / (b.abs() + 1)
"""


def write_project_package(project: Path, pkg: str) -> Path:
    """A project folder with `src/<pkg>/` (features.py using util.py) and an unrelated
    module; returns the src folder."""
    src = project / "src"
    (src / pkg / "sub").mkdir(parents=True)
    (src / pkg / "__init__.py").write_text("")
    (src / pkg / "features.py").write_text(textwrap.dedent(FEATURES.format(pkg=pkg)))
    (src / pkg / "util.py").write_text(UTIL)
    (src / pkg / "sub" / "__init__.py").write_text("")
    (src / pkg / "sub" / "more.py").write_text("X = 1\n")
    (src / pkg / "__pycache__").mkdir()
    (src / pkg / "__pycache__" / "junk.py").write_text("")
    return src


def frame(n: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    return pd.DataFrame(
        {
            "x1": x1,
            "x2": x2,
            "c": rng.choice(["a", "b", "c"], size=n),
            "y": np.where(x1 + 0.5 * rng.normal(size=n) > 0, "Yes", "No"),
        }
    )


def pipeline_with(transformer: Any, numeric: tuple[str, ...] = ("x1", "x2", "ratio")) -> Pipeline:
    columns = ColumnTransformer(
        [
            ("num", StandardScaler(), list(numeric)),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["c"]),
        ]
    )
    return Pipeline([("extra", transformer), ("columns", columns), ("clf", LogisticRegression())])


def carrying(func: Any) -> FunctionTransformer:
    """A step that passes the frame through and holds `func` (pickled by reference)."""
    return FunctionTransformer(inverse_func=func, check_inverse=False)


def fitted_with(transformer: Any, numeric: tuple[str, ...] = ("x1", "x2", "ratio")) -> Pipeline:
    data = frame()
    return pipeline_with(transformer, numeric).fit(data[["x1", "x2", "c"]], data["y"])


@contextlib.contextmanager
def importable_project(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A tiny project with its own package, importable here as an editable install makes
    it; the package's path and modules are forgotten afterwards."""
    pkg = f"proj_{tmp_path.name.replace('-', '_').lower()}"
    project = tmp_path / "project"
    src = str(write_project_package(project, pkg))
    sys.path.insert(0, src)
    try:
        yield project, pkg
    finally:
        sys.path.remove(src)
        for name in [m for m in sys.modules if m == pkg or m.startswith(f"{pkg}.")]:
            del sys.modules[name]


@pytest.fixture
def project_package(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    with importable_project(tmp_path) as found:
        yield found


def project_model(pkg: str) -> Pipeline:
    features = __import__(f"{pkg}.features", fromlist=["Ratio"])
    return fitted_with(features.Ratio())


class NotebookScaler(BaseEstimator, TransformerMixin):
    """Stands for a class written in a notebook cell (its module is __main__)."""

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        X = X.copy()
        X["ratio"] = X["x1"] * 2
        return X


def notebook_double(X):
    return X


@pytest.fixture
def notebook_code(monkeypatch: pytest.MonkeyPatch) -> tuple[type, Any]:
    """NotebookScaler and notebook_double as if defined in the notebook (`__main__`)."""
    main = sys.modules["__main__"]
    for obj in (NotebookScaler, notebook_double):
        monkeypatch.setattr(obj, "__module__", "__main__")
        monkeypatch.setattr(main, obj.__name__, obj, raising=False)
    return NotebookScaler, notebook_double


# --- what a model refers to ---------------------------------------------------------


def test_referenced_globals_name_the_classes_and_functions_of_a_model():
    model = fitted_with(carrying(np.log1p), numeric=("x1", "x2"))
    found = referenced_globals(model)
    assert ("sklearn.pipeline", "Pipeline") in found
    assert ("sklearn.linear_model._logistic", "LogisticRegression") in found
    assert found[("sklearn.pipeline", "Pipeline")] is Pipeline
    assert any(module.startswith("numpy") and name == "log1p" for module, name in found)


def test_requirement_names_are_canonical_and_skip_markers_extras_and_options():
    text = "Scikit_Learn==1.9.1\npsycopg[binary]==3.2 ; python_version>'3'\n# c\n-e .\nA.b==1\n"
    assert requirement_names(text) == {"scikit-learn", "psycopg", "a-b"}


def test_a_plain_scikit_learn_model_needs_only_pinned_packages(tmp_path: Path):
    model = fitted_with(carrying(np.log1p), numeric=("x1", "x2"))
    code = find_dependencies(model, project_dir=tmp_path, requirements=REQUIREMENTS)
    assert code.project_files == {} and code.project_packages == []
    assert {"sklearn", "numpy"} <= set(code.third_party)
    assert code.third_party["sklearn"] == ["scikit-learn"]
    assert "sklearn.pipeline" in code.modules
    assert "third-party:" in code.summary() and "project code shipped: none" in code.summary()


# --- the project's own modules ------------------------------------------------------


def test_a_transformer_of_the_project_is_found_and_its_package_staged(
    project_package: tuple[Path, str], tmp_path: Path
):
    project, pkg = project_package
    model = project_model(pkg)
    code = find_dependencies(model, project_dir=project, requirements=REQUIREMENTS)
    assert code.project_packages == [pkg]
    # the whole package: util.py is imported by features.py, not named by the pickle
    assert set(code.project_files) == {
        f"{pkg}/__init__.py",
        f"{pkg}/features.py",
        f"{pkg}/util.py",
        f"{pkg}/sub/__init__.py",
        f"{pkg}/sub/more.py",
    }
    assert code.project_files[f"{pkg}/util.py"] == project / "src" / pkg / "util.py"
    assert f"{pkg}.features" in code.modules
    staging = tmp_path / "ctx"
    assert stage_project_code(code.project_files, staging) == code.include
    assert (staging / pkg / "features.py").read_text() == (
        project / "src" / pkg / "features.py"
    ).read_text()


def test_a_project_module_outside_src_is_found_by_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A module of the project importable from the project folder itself (no src/)."""
    project = tmp_path / "flat"
    name = f"flatmod_{tmp_path.name.replace('-', '_').lower()}"
    project.mkdir()
    (project / f"{name}.py").write_text(
        "import numpy as np\n\ndef log1p(x):\n    return np.log1p(x)\n"
    )
    monkeypatch.syspath_prepend(str(project))
    module = __import__(name)
    try:
        model = fitted_with(carrying(module.log1p), numeric=("x1", "x2"))
        code = find_dependencies(model, project_dir=project, requirements=REQUIREMENTS)
    finally:
        del sys.modules[name]
    assert code.project_files == {f"{name}.py": project / f"{name}.py"}


def test_the_bento_stages_the_project_code_and_includes_it(
    project_package: tuple[Path, str], tmp_path: Path
):
    project, pkg = project_package
    code = find_dependencies(project_model(pkg), project_dir=project, requirements=REQUIREMENTS)
    staging = tmp_path / "ctx"
    suite = tmp_path / "suite.json"
    suite.write_text('{"name": "s", "expectations": []}')
    package.stage_build_context(
        staging, suite_path=suite, config={"bento_name": "m"}, requirements=REQUIREMENTS,
        model_tag="m:1", labels={}, project_files=code.project_files,
    )  # fmt: skip
    bentofile = yaml.safe_load((staging / "bentofile.yaml").read_text())
    assert f"{pkg}/features.py" in bentofile["include"]
    assert f"{pkg}/util.py" in bentofile["include"]
    assert (staging / pkg / "util.py").is_file()
    assert not (staging / pkg / "__pycache__").exists()


# --- refused: notebook code, unpinned packages ---------------------------------------


def test_classes_and_functions_of_the_notebook_are_refused_by_name(
    notebook_code: tuple[type, Any], tmp_path: Path
):
    scaler, func = notebook_code
    data = frame()
    model = Pipeline(
        [("own", scaler()), ("f", carrying(func)), ("m", pipeline_with("passthrough"))]
    ).fit(data[["x1", "x2", "c"]], data["y"])
    (tmp_path / "src" / "shop").mkdir(parents=True)
    (tmp_path / "src" / "shop" / "__init__.py").write_text("")
    with pytest.raises(PackagingError) as info:
        find_dependencies(model, project_dir=tmp_path, requirements=REQUIREMENTS)
    message = str(info.value)
    assert "NotebookScaler (class)" in message and "notebook_double (function)" in message
    assert "__main__" in message
    assert "src/shop/features.py" in message and "import it from there" in message


def test_a_third_party_package_missing_from_the_requirements_is_refused(tmp_path: Path):
    model = fitted_with(carrying(yaml.safe_dump), numeric=("x1", "x2"))
    with pytest.raises(PackagingError) as info:
        find_dependencies(model, project_dir=tmp_path, requirements=REQUIREMENTS)
    message = str(info.value)
    assert "'yaml'" in message and "PyYAML" in message
    assert "`serve` dependency group" in message
    # pinned, it ships
    code = find_dependencies(
        model, project_dir=tmp_path, requirements=REQUIREMENTS + "pyyaml==6.0.3\n"
    )
    assert code.third_party["yaml"] == ["PyYAML"]


def test_without_requirements_the_model_packages_are_listed_as_roots(tmp_path: Path):
    """Packaging pins what the model needs itself (packaging.requirements): unchecked here,
    each distribution is handed over."""
    model = fitted_with(carrying(yaml.safe_dump), numeric=("x1", "x2"))
    code = find_dependencies(model, project_dir=tmp_path)
    assert code.third_party["yaml"] == ["PyYAML"]
    assert {"PyYAML", "scikit-learn", "numpy"} <= set(code.distributions)
    assert code.distributions == sorted(set(code.distributions))


def test_a_namespace_package_names_the_distribution_that_holds_the_module(tmp_path: Path):
    from opentelemetry.util.http import redact_url

    assert len(set(importlib.metadata.packages_distributions()["opentelemetry"])) > 1
    code = find_dependencies(fitted_with(carrying(redact_url), numeric=("x1", "x2")),
                             project_dir=tmp_path)  # fmt: skip
    assert code.third_party["opentelemetry"] == ["opentelemetry-util-http"]


def test_every_problem_is_listed_at_once(notebook_code: tuple[type, Any], tmp_path: Path):
    scaler, _ = notebook_code
    data = frame()
    model = Pipeline([("own", scaler()), ("y", carrying(yaml.safe_dump))])
    model.fit(data[["x1", "x2"]])
    with pytest.raises(PackagingError) as info:
        find_dependencies(model, project_dir=tmp_path, requirements=REQUIREMENTS)
    assert "NotebookScaler" in str(info.value) and "'yaml'" in str(info.value)


def test_an_nbship_module_bentos_do_not_ship_is_refused(tmp_path: Path):
    model = FunctionTransformer(package.definition_hash)
    names = package.served_module_names()
    assert "nbship.serving.service" in names and "nbship" in names
    with pytest.raises(PackagingError, match=r"nbship\.packaging\.bento.*do not ship"):
        find_dependencies(
            model, project_dir=tmp_path, requirements=REQUIREMENTS, nbship_modules=names
        )


def test_a_lambda_cannot_ship_and_says_why(tmp_path: Path):
    with pytest.raises(PackagingError, match="lambda"):
        find_dependencies(
            FunctionTransformer(lambda x: x), project_dir=tmp_path, requirements=REQUIREMENTS
        )


def test_a_saved_model_with_notebook_code_is_refused_at_load_naming_it(
    notebook_code: tuple[type, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    scaler, _ = notebook_code
    path = tmp_path / "model.joblib"
    joblib.dump(scaler(), path)
    # the package task's own process has no such class in its __main__
    monkeypatch.delattr(sys.modules["__main__"], "NotebookScaler")
    with pytest.raises(PackagingError, match=r"NotebookScaler.*\(__main__\).*module of the"):
        package.load_model(path)
