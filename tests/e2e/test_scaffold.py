"""A second project, started or adopted, built and served for real: `nbship init` on a
CSV with nbship installed from its wheel into a fresh environment, and `nbship adopt` of a
tutorial notebook whose served answers are its own fitted model's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import joblib
import pytest
import yaml

from tests.integration.test_adopt import tutorial
from tests.projects.tutorial.data import census_table
from tests.support import free_port, start, stop, wait_http

pytestmark = pytest.mark.e2e


def _serve(nbship: Path, project: Path, env: dict[str, str], log: Path):
    port = free_port()
    proc = start([str(nbship), "serve", "--port", str(port)], log, env=env, cwd=project)
    wait_http(f"http://127.0.0.1:{port}/readyz", proc, timeout=120)
    return proc, f"http://127.0.0.1:{port}"


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_init_builds_serves_and_passes_its_own_tests(tmp_path: Path):
    """From an environment where nbship is installed: init, build, serve, the project's
    tests: no other step."""
    bin_dir = Path(sys.executable).parent
    census_table(400).to_csv(tmp_path / "census.csv", index=False)
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "PYTHONPATH": ""}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    nbship = bin_dir / "nbship"
    _run([str(nbship), "init", "income", "--data", "census.csv", "--target", "class",
          "--drop", "person_id"], tmp_path, env)  # fmt: skip
    project = tmp_path / "income"
    built = _run([str(nbship), "build"], project, env)
    assert "package" in built.stdout
    proc, url = _serve(nbship, project, env, tmp_path / "serve.log")
    try:
        row = {"age": 52, "hours_per_week": 60.0, "education": "Doctorate", "workclass": None}
        answer = httpx.post(f"{url}/predict", json=[row, {**row, "age": 19}], timeout=10)
        assert answer.status_code == 200, answer.text
        labels = [p["label"] for p in answer.json()["predictions"]]
        assert set(labels) <= {">50K", "<=50K"} and len(labels) == 2
        bad = httpx.post(f"{url}/predict", json={**row, "education": "Kindergarten"}, timeout=10)
        assert bad.status_code == 400 and "education" in bad.text
    finally:
        stop(proc)
    tests = _run([str(bin_dir / "python"), "-m", "pytest", "-q", "-p",
                  "no:cacheprovider"], project, env)  # fmt: skip
    assert "3 passed" in tests.stdout, tests.stdout


def test_adopted_notebook_serves_its_own_fitted_model(tmp_path: Path, bentoml_home: Path):
    from tests.conftest import NBSHIP

    notebook = tutorial(tmp_path / "work", fmt="ipynb")
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home)}
    project = tmp_path / "income"
    _run([NBSHIP, "adopt", str(notebook), "--project", str(project)], tmp_path, env)
    _run([NBSHIP, "build"], project, env)
    cfg = yaml.safe_load((project / "env.yaml").read_text())
    columns = cfg["features"]["numeric"] + cfg["features"]["categorical"]
    # the object the adopted notebook fitted in the build, in the column order it was fitted on
    (model_file,) = (project / "build" / "candidates").glob("census*.joblib")
    model = joblib.load(model_file)
    rows = census_table(40, seed=7)[list(model.feature_names_in_)]
    expected = list(model.predict(rows))
    proc, url = _serve(Path(NBSHIP), project, env, tmp_path / "serve.log")
    try:
        records = json.loads(rows[columns].to_json(orient="records"))  # NaN as null
        answer = httpx.post(f"{url}/predict", json=records, timeout=10)
        assert answer.status_code == 200, answer.text
        assert [p["label"] for p in answer.json()["predictions"]] == expected
    finally:
        stop(proc)
