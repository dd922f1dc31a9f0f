"""The parity check, without a bento build: a saved model loaded in a fresh `python -I -S`
process that imports only a given source folder and site-packages, compared row by row."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

from nbship import tasks
from nbship.packaging.dependencies import PackagingError, find_dependencies, stage_project_code
from nbship.packaging.parity import check_parity, differences, site_packages
from tests.unit.test_packaging_dependencies import (
    REQUIREMENTS,
    frame,
    importable_project,
    project_model,
)

pytestmark = pytest.mark.unit

X = ["x1", "x2", "c"]


@pytest.fixture
def project_package(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    with importable_project(tmp_path) as found:
        yield found


def test_site_packages_are_the_environment_s_not_its_pth_paths():
    dirs = site_packages()
    assert dirs and all(Path(d).is_dir() and "site-packages" in d for d in dirs)


def test_parity_holds_for_the_project_model_with_its_code_staged(
    project_package: tuple[Path, str], tmp_path: Path
):
    project, pkg = project_package
    model = project_model(pkg)
    code = find_dependencies(model, project_dir=project, requirements=REQUIREMENTS)
    src = tmp_path / "bento-src"
    stage_project_code(code.project_files, src)
    joblib.dump(model, tmp_path / "saved_model.pkl")
    golden = frame(12, seed=3)[X]
    result = check_parity(
        model=model, rows=golden, task=tasks.CLASSIFICATION, src_dir=src,
        model_file=tmp_path / "saved_model.pkl",
    )  # fmt: skip
    assert result == {"passed": True, "rows": 12, "task": "classification"}

    # the same model, its project module not staged: the fresh process cannot import it
    # although this one can (through sys.path here, as an editable install's .pth would)
    empty = tmp_path / "no-project-code"
    empty.mkdir()
    with pytest.raises(PackagingError) as info:
        check_parity(
            model=model, rows=golden, task=tasks.CLASSIFICATION, src_dir=empty,
            model_file=tmp_path / "saved_model.pkl",
        )  # fmt: skip
    message = str(info.value)
    assert "does not load" in message
    assert f"No module named '{pkg}'" in message


def test_parity_lists_the_rows_that_differ_for_a_regressor(tmp_path: Path):
    data = frame(60)
    rows = data[["x1", "x2"]]
    target = data["x1"] * 3 + data["x2"]
    model = LinearRegression().fit(rows, target)
    joblib.dump(model, tmp_path / "same.pkl")
    assert check_parity(
        model=model, rows=rows.head(8), task=tasks.REGRESSION, src_dir=tmp_path,
        model_file=tmp_path / "same.pkl",
    )["passed"]  # fmt: skip
    other = LinearRegression().fit(rows, target + np.where(rows["x1"] > 0, 1.0, 0.0))
    joblib.dump(other, tmp_path / "other.pkl")
    with pytest.raises(PackagingError) as info:
        check_parity(
            model=model, rows=rows.head(8), task=tasks.REGRESSION, src_dir=tmp_path,
            model_file=tmp_path / "other.pkl",
        )  # fmt: skip
    message = str(info.value)
    assert "of 8 golden row(s) differently" in message
    assert "- row 0: expected " in message and ", got " in message


def test_differences_of_classifications_compare_labels_and_probabilities():
    task = tasks.CLASSIFICATION
    expected = {"classes": ["No", "Yes"], "labels": ["No", "Yes"],
                "probabilities": [[0.6, 0.4], [0.1, 0.9]]}  # fmt: skip
    same = {**expected, "probabilities": [[0.6 + 1e-12, 0.4 - 1e-12], [0.1, 0.9]]}
    assert differences(expected, same, task) == []
    drifted = {**expected, "probabilities": [[0.6, 0.4], [0.1 + 1e-6, 0.9 - 1e-6]]}
    assert [d["row"] for d in differences(expected, drifted, task)] == [1]
    flipped = {**expected, "labels": ["Yes", "Yes"], "probabilities": [[0.4, 0.6], [0.1, 0.9]]}
    (row,) = differences(expected, flipped, task)
    assert row["row"] == 0 and row["expected"]["label"] == "No" and row["got"]["label"] == "Yes"
    other_classes = {**expected, "classes": ["A", "B"]}
    assert differences(expected, other_classes, task)[0]["row"] == "classes"


def test_parity_of_a_classifier_compares_with_the_fitted_model(tmp_path: Path):
    data = frame(80)
    model = LogisticRegression().fit(data[["x1", "x2"]], data["y"])
    joblib.dump(model, tmp_path / "m.pkl")
    flipped = LogisticRegression(C=1e-4).fit(data[["x1", "x2"]], data["y"])
    joblib.dump(flipped, tmp_path / "weak.pkl")
    with pytest.raises(PackagingError, match=r"row \d+: expected \{'label'"):
        check_parity(
            model=model, rows=data[["x1", "x2"]].head(10), task=tasks.CLASSIFICATION,
            src_dir=tmp_path, model_file=tmp_path / "weak.pkl",
        )  # fmt: skip
