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


ROOT = Path(__file__).resolve().parents[2]


def _clean_env(**extra: str) -> dict[str, str]:
    # nothing of this checkout's environment: not its venv, not its source on sys.path
    env = {k: v for k, v in os.environ.items()
           if k not in {"VIRTUAL_ENV", "PYTHONPATH", "UV_PROJECT_ENVIRONMENT"}}  # fmt: skip
    return {**env, **extra}


@pytest.fixture(scope="module")
def installed_nbship(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """nbship as a user gets it: the wheel built from this checkout, installed with its
    runtime dependencies only (at uv.lock's versions, which the cache holds) into a fresh
    environment outside the repo, plus pytest for the new project's own tests. Returns
    that environment's bin folder."""
    work = tmp_path_factory.mktemp("installed")
    uv = str(Path(sys.executable).with_name("uv"))
    env = _clean_env()
    _run([uv, "build", "--wheel", "--out-dir", str(work / "dist"), str(ROOT)], work, env)
    _run([uv, "export", "--locked", "--no-hashes", "--no-emit-project", "--all-groups",
          "--format", "requirements-txt", "-o", str(work / "constraints.txt")],
         ROOT, env)  # fmt: skip
    _run([uv, "venv", "--quiet", "--python", sys.executable, str(work / "venv")], work, env)
    (wheel,) = (work / "dist").glob("nbship-*.whl")
    python = work / "venv" / "bin" / "python"
    _run([uv, "pip", "install", "--quiet", "--python", str(python), str(wheel), "pytest",
          "-c", str(work / "constraints.txt")], work, env)  # fmt: skip
    return python.parent


def test_the_installed_wheel_is_nbship_alone(installed_nbship: Path):
    """What the wheel brings: the nbship command, and none of the dev or example tools."""
    python = str(installed_nbship / "python")
    where = _run([python, "-c", "import nbship; print(nbship.__file__)"], installed_nbship.parent,
                 _clean_env())  # fmt: skip
    assert str(installed_nbship.parent) in where.stdout, where.stdout
    for absent in ("palmerpenguins", "selenium", "kubernetes_validate", "ruff"):
        probe = subprocess.run([python, "-c", f"import {absent}"], capture_output=True,
                               env=_clean_env(), cwd=installed_nbship.parent)  # fmt: skip
        assert probe.returncode != 0, f"{absent} is installed with nbship"


def test_init_builds_serves_and_passes_its_own_tests(tmp_path: Path, installed_nbship: Path):
    """From an environment where nbship is installed from its wheel: init, build, serve,
    the project's tests: no other step."""
    bin_dir = installed_nbship
    env = _clean_env(BENTOML_HOME=str(tmp_path / "bentoml"), VIRTUAL_ENV=str(bin_dir.parent))
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    table = census_table(400)
    table["union"] = table["age"] % 3 == 0  # a boolean column: a strict bool in the contract
    table.to_csv(tmp_path / "census.csv", index=False)
    nbship = bin_dir / "nbship"
    _run([str(nbship), "init", "income", "--data", "census.csv", "--target", "class",
          "--drop", "person_id"], tmp_path, env)  # fmt: skip
    project = tmp_path / "income"
    built = _run([str(nbship), "build"], project, env)
    assert "package" in built.stdout
    proc, url = _serve(nbship, project, env, tmp_path / "serve.log")
    try:
        row = {"age": 52, "hours_per_week": 60.0, "education": "Doctorate", "workclass": None,
               "union": True}  # fmt: skip
        answer = httpx.post(f"{url}/predict", json=[row, {**row, "age": 19}], timeout=10)
        assert answer.status_code == 200, answer.text
        labels = [p["label"] for p in answer.json()["predictions"]]
        assert set(labels) <= {">50K", "<=50K"} and len(labels) == 2
        bad = httpx.post(f"{url}/predict", json={**row, "education": "Kindergarten"}, timeout=10)
        assert bad.status_code == 400 and "education" in bad.text
        word = httpx.post(f"{url}/predict", json={**row, "union": "yes"}, timeout=10)
        assert word.status_code == 400 and "union" in word.text and "boolean" in word.text
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
