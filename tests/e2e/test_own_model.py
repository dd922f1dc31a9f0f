"""Projects other than the worked example, as a user brings them: a regression target
(tests/projects/diabetes) and a Yes/No classifier whose model uses a class of the
project's own package (tests/projects/adelie). Built by the real pipeline, served by a
real `bentoml serve` on 127.0.0.1, called over HTTP."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from nbship.common.artifacts import read_json, read_model
from nbship.prediction_log import (
    FEEDBACK_KIND,
    LogEntry,
    PredictionLog,
    new_request_id,
    url_for_sqlite,
)
from tests.conftest import Project
from tests.support import free_port, start, stop, wait_http

pytestmark = pytest.mark.e2e

BENTOML = str(Path(sys.executable).with_name("bentoml"))


def serve(project: Project, tmp: Path) -> Iterator[str]:
    """The project's published bento served from an empty BentoML home (as a fresh
    machine would), logging to a SQLite file of its own."""
    port = free_port()
    env = {
        "BENTOML_HOME": str(tmp / "home"),
        "NBSHIP_LOG_URL": url_for_sqlite(tmp / "log.db"),
        "NBSHIP_LOG_SPOOL": str(tmp / "spool"),
        "PYTHONPATH": "",  # only what the bento ships: not the project's src/
    }
    log = tmp / "serve.log"
    cmd = [BENTOML, "serve", str(project.bento), "--host", "127.0.0.1", "--port", str(port)]
    proc = start(cmd, log, env=env, cwd=tmp)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc, timeout=90)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)
        assert "Traceback" not in log.read_text(), log.read_text()[-4000:]


def winner_model(project: Project):
    """The winner's fitted object as its train notebook saved it (Ploomber names a grid
    task's products `<value>-<index>`)."""
    winner = read_json(project.root / "winner.json")["winner"]
    (path,) = (project.root / "candidates").glob(f"{winner}-*.joblib")
    return read_model(path)


def records(frame: pd.DataFrame, columns: list[str]) -> list[dict]:
    return json.loads(frame[columns].to_json(orient="records"))


# --- regression -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def regression_server(
    regression_project: Project, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    yield from serve(regression_project, tmp_path_factory.mktemp("serve-regression"))


def test_the_build_infers_regression_and_chooses_by_rmse(regression_project: Project):
    split = read_json(regression_project.root / "data" / "split.json")
    assert split["task"] == "regression"
    report = (regression_project.root / "reports" / "split.html").read_text()
    assert "task: regression (inferred: target &#x27;target&#x27; is float64" in report or (
        "task: regression (inferred: target 'target' is float64" in report
    )
    winner = read_json(regression_project.root / "winner.json")
    assert winner["metric"] == "rmse"
    values = [v for _, v in winner["ranking"]]
    assert values == sorted(values)  # lower is better
    summary = regression_project.summary
    assert summary["task"] == "regression" and summary["promoted"]
    assert summary["parity"]["passed"]


def test_served_predictions_equal_the_notebooks_model_row_by_row(
    regression_project: Project, regression_server: str
):
    test = pd.read_parquet(regression_project.root / "data" / "test.parquet")
    columns = regression_project.config["features"]["numeric"]
    body = records(test, columns)
    expected = winner_model(regression_project).predict(test[columns])

    one = httpx.post(f"{regression_server}/predict", json=body[0], timeout=30)
    assert one.status_code == 200, one.text
    assert one.json()["model"] == regression_project.summary["model_tag"]
    (answer,) = one.json()["predictions"]
    assert set(answer) == {"prediction"}
    assert answer["prediction"] == pytest.approx(expected[0], rel=1e-9)

    batch = httpx.post(f"{regression_server}/predict", json=body, timeout=30)
    assert batch.status_code == 200, batch.text
    served = np.array([row["prediction"] for row in batch.json()["predictions"]])
    np.testing.assert_allclose(served, expected, rtol=1e-9)


def test_the_openapi_answer_of_a_regressor_is_a_number(regression_server: str):
    spec = httpx.get(f"{regression_server}/docs.json", timeout=30).json()
    text = json.dumps(spec)
    assert '"prediction"' in text
    assert '"probabilities"' not in text


@pytest.mark.parametrize(
    ("change", "field"),
    [({"bmi": "heavy"}, "bmi"), ({"bp": 99.0}, "bp"), ({"age": None}, "age")],
)
def test_bad_input_is_a_400_naming_the_field(
    regression_project: Project, regression_server: str, change: dict, field: str
):
    test = pd.read_parquet(regression_project.root / "data" / "test.parquet")
    record = {**records(test.head(1), regression_project.config["features"]["numeric"])[0]}
    response = httpx.post(f"{regression_server}/predict", json={**record, **change}, timeout=30)
    assert response.status_code == 400, response.text
    assert field in response.text and "Traceback" not in response.text


def test_numeric_feedback_is_taken_and_a_word_refused(
    regression_project: Project, regression_server: str
):
    test = pd.read_parquet(regression_project.root / "data" / "test.parquet")
    record = records(test.head(1), regression_project.config["features"]["numeric"])[0]
    predicted = httpx.post(f"{regression_server}/predict", json=record, timeout=30)
    rid = predicted.headers["x-request-id"]
    ok = httpx.post(
        f"{regression_server}/feedback",
        json={"items": [{"request_id": rid, "label": 151.0}, {"record": record, "label": 80}]},
        timeout=30,
    )
    assert ok.status_code == 200, ok.text
    bad = httpx.post(
        f"{regression_server}/feedback",
        json={"items": [{"request_id": rid, "label": "a lot"}]},
        timeout=30,
    )
    assert bad.status_code == 400 and "label" in bad.text, bad.text


def test_retraining_on_numeric_feedback_runs_the_same_dag(
    regression_project: Project, tmp_path: Path
):
    """Labelled rows in the project's prediction log reach the split as numbers, and a new
    version is trained, gated and registered."""
    project = regression_project.copy_to(tmp_path / "p")
    test = pd.read_parquet(project.root / "data" / "test.parquet")
    columns = project.config["features"]["numeric"]
    rows = records(test.head(30), columns)
    items = [
        {"record": r, "label": float(y), "request_id": None, "row": None}
        for r, y in zip(rows, test["target"].head(30), strict=True)
    ]
    # what POST /feedback spools, written by the service's own log writer
    entry = LogEntry(
        request_id=new_request_id(),
        ts=datetime.now(UTC),
        kind=FEEDBACK_KIND,
        model_tag=project.summary["model_tag"],
        inputs=items,
        outputs=None,
        latency_ms=0.0,
        status="ok",
        http_status=200,
        n_records=len(items),
    )
    with PredictionLog(
        url_for_sqlite(project.path / "prediction_log.db"), tmp_path / "spool"
    ) as log:
        assert log.record(entry) and log.flush()
    result = project.run("retrain", "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    split = read_json(project.root / "data" / "split.json")
    assert split["feedback"]["split"]["train"] + split["feedback"]["split"]["test"] == 30
    train = pd.read_parquet(project.root / "data" / "train.parquet")
    assert pd.api.types.is_float_dtype(train["target"])
    assert project.summary["model_tag"] != regression_project.summary["model_tag"]


# --- own code, Yes/No labels ------------------------------------------------------------


def test_the_projects_own_module_ships_and_serves_yes_no(
    own_code_project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    summary = own_code_project.summary
    assert summary["task"] == "classification" and summary["promoted"]
    assert "penguin_extras/features.py" in summary["project_code"]
    assert summary["parity"]["passed"]
    assert Path(summary["card"]).is_file()  # the model card of a Yes/No model renders
    assert (own_code_project.bento / "src" / "penguin_extras" / "features.py").is_file()

    test = pd.read_parquet(own_code_project.root / "data" / "test.parquet")
    monkeypatch.syspath_prepend(own_code_project.path / "src")  # to unpickle it here
    cfg = own_code_project.config["features"]
    columns = [*cfg["numeric"], *cfg["categorical"]]
    body = records(test.dropna(subset=columns), columns)
    expected = winner_model(own_code_project).predict_proba(test.dropna(subset=columns)[columns])
    for url in serve(own_code_project, tmp_path):
        response = httpx.post(f"{url}/predict", json=body, timeout=30)
        assert response.status_code == 200, response.text
        answers = response.json()["predictions"]
        assert {a["label"] for a in answers} <= {"Yes", "No"}
        got = np.array([[a["probabilities"]["No"], a["probabilities"]["Yes"]] for a in answers])
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_the_same_project_without_its_module_in_the_bento_fails_at_packaging(
    own_code_project: Project, tmp_path: Path
):
    """The model's class is importable while the notebooks run but not where the bento
    serves: packaging refuses it, and the published bento and champion stay."""
    project = own_code_project.copy_to(tmp_path / "p")
    before = project.bento.resolve()
    package = project.path / "src" / "penguin_extras"
    moved = tmp_path / "elsewhere" / "penguin_extras"
    moved.parent.mkdir()
    package.rename(moved)  # importable from outside the project only
    project.env["PYTHONPATH"] = str(moved.parent)
    (project.path / "notebooks" / "train.py").write_text(
        (project.path / "notebooks" / "train.py").read_text() + "\n# changed\n"
    )
    result = project.run("build")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "penguin_extras" in output, output[-3000:]
    assert "Traceback" not in output
    assert project.bento.resolve() == before


def test_a_class_written_in_the_notebook_is_refused_by_name_at_the_train_task(
    own_code_project: Project, tmp_path: Path
):
    project = own_code_project.copy_to(tmp_path / "p")
    before = project.bento.resolve()
    train = project.path / "notebooks" / "train.py"
    source = train.read_text().replace("from penguin_extras.features import BillShape\n", "")
    source = source.replace(
        "# %%\nnumbers = ",
        "# %%\nfrom penguin_extras.features import BillShape as Shipped\n\n\n"
        "class BillShape(Shipped):\n    pass\n\n\nnumbers = ",
    )
    train.write_text(source)
    result = project.run("build")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "code defined in the notebook itself (__main__): BillShape (class)" in output
    assert "src/penguin_extras/features.py" in output and "Traceback" not in output
    assert project.bento.resolve() == before
