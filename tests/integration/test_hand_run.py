"""A task's notebook run by hand in a real Jupyter kernel, as JupyterLab's Run All runs it
(the session name Jupyter gives the kernel, the kernel started in the notebook's folder,
nothing injected): it gets what a build passes, writes to the scratch folder, and leaves
the file and the build's products as they were."""

from __future__ import annotations

import os
from pathlib import Path

import jupytext
import nbclient
import numpy as np
import pandas as pd
import pytest
from nbclient.exceptions import CellExecutionError

from nbship.common.artifacts import read_model
from nbship.pipeline.hand_run import SCRATCH
from tests.conftest import Project, copy_project

pytestmark = pytest.mark.integration


def run_by_hand(notebook: Path, env: dict[str, str]) -> None:
    """Run All in a fresh kernel, the way JupyterLab starts one for `notebook`."""
    nb = jupytext.read(notebook)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": notebook.parent}}
    )
    saved = dict(os.environ)
    # what jupyter_server's session manager puts in a kernel's environment
    os.environ.update({**env, "JPY_SESSION_NAME": str(notebook)})
    try:
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_run_all_by_hand_fits_the_builds_model_into_scratch(tmp_path, built_project: Project):
    project = built_project.copy_to(tmp_path / "project")
    notebook = project.path / "notebooks" / "train.py"
    original = notebook.read_text()
    built = sorted((project.root / "candidates").glob("logreg*.joblib"))
    assert len(built) == 1
    before = built[0].stat().st_mtime_ns

    run_by_hand(notebook, project.env)

    assert notebook.read_text() == original  # no injected cell, no path, no output
    assert built[0].stat().st_mtime_ns == before  # the build's products are untouched
    scratch = project.path / SCRATCH / built[0].relative_to(project.path)
    assert scratch.exists(), sorted(p.name for p in (project.path / SCRATCH).rglob("*"))
    # the parameters cell says logreg: the hand run is the train-logreg task, on the real
    # training split, with env.yaml's hyperparameters: the same model as the build's
    test = pd.read_parquet(project.root / "data" / "test.parquet")
    by_hand, by_build = read_model(scratch), read_model(built[0])
    columns = list(by_build.feature_names_in_)
    np.testing.assert_allclose(
        by_hand.predict_proba(test[columns]), by_build.predict_proba(test[columns])
    )


def test_a_hand_run_before_any_build_names_the_task_to_build(tmp_path, bentoml_home: Path):
    project = copy_project(tmp_path / "fresh", bentoml_home)
    notebook = project.path / "notebooks" / "split.py"
    with pytest.raises(CellExecutionError) as failed:
        run_by_hand(notebook, project.env)
    message = str(failed.value)
    assert "HandRunError" in message
    assert "task 'split' reads what feedback, load, validate make" in message
    assert "nbship build" in message
    assert not (project.path / SCRATCH).exists()
