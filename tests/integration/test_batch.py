"""`nbship predict` on the session's built project: a file of the project's own rows with
bad rows mixed in is scored by the command with the published champion, and every row's
outcome equals what the built bento's service answers on /predict for it (the service
built in process from the bento's `src/`, over BentoML's ASGI app)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from bentoml.exceptions import BentoMLException

from nbship.project import LOG_URL_ENV, REGISTRY_URL_ENV
from nbship.serving import service
from tests.conftest import Project
from tests.unit.test_serving_regression import bentoml_request_metrics, serve

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:The `__get_pydantic_core_schema__` method"),
]
__all__ = ["bentoml_request_metrics"]  # the fixture, imported to be used here too

# what breaks each rule of the penguins suite, one field per bad row
BREAKS = [
    ("bill_length_mm", 700.0),
    ("island", "Atlantis"),
    ("sex", "unknown"),
    ("body_mass_g", "heavy"),
    ("island", None),
    ("flipper_length_mm", float("inf")),
]


def rows_with_bad_ones(project: Project, n: int = 60) -> pd.DataFrame:
    """The project's raw rows (species and year are carried through), a bad cell in
    every 7th row; object columns, so that a text can sit in a numeric one."""
    raw = pd.read_parquet(project.root / "data" / "raw.parquet").head(n).astype(object)
    raw = raw.where(raw.notna(), None)
    for k, i in enumerate(range(3, n, 7)):
        column, value = BREAKS[k % len(BREAKS)]
        raw.at[i, column] = value
    return raw


def to_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Text cells, an empty cell for None; inf as `inf`."""
    frame.map(lambda v: "" if v is None else str(v)).to_csv(path, index=False)
    return path


def record(row: dict[str, Any], columns: list[str]) -> dict[str, Any]:
    """The row as a JSON record of /predict (a float cell whose text is a float)."""
    return {c: row[c] for c in columns}


@pytest.fixture
def in_process(built_project: Project, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The built bento's service in this process: its model imported into this
    process's BentoML store from the project's shared model store."""
    tag = built_project.summary["model_tag"]
    name, version = tag.split(":")
    archive = built_project.path / "model-store" / name / f"{version}.bentomodel"
    with contextlib.suppress(BentoMLException):  # imported by an earlier test
        bentoml.models.import_model(str(archive))
    monkeypatch.setenv(LOG_URL_ENV, "off")
    monkeypatch.delenv(REGISTRY_URL_ENV, raising=False)
    monkeypatch.delenv(service.RELOAD_ENV, raising=False)
    monkeypatch.setattr(service, "freeze_startup_heap", lambda: None)
    return service.create_service(built_project.bento / "src")


def test_nbship_predict_answers_what_the_bento_answers(
    built_project: Project, in_process: Any, tmp_path: Path
):
    frame = rows_with_bad_ones(built_project)
    data = to_csv(frame, tmp_path / "rows.csv")
    out = tmp_path / "scores.parquet"
    ran = built_project.run("predict", str(data), "-o", str(out), "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    summary = json.loads(ran.stdout)

    config = json.loads((built_project.bento / "src" / "serving.json").read_text())
    columns = config["columns"]
    records = [record(r, columns) for r in frame.to_dict(orient="records")]
    # one request per row; JSON has no inf: 1e999 is how a client's JSON overflows to it
    bodies = [json.dumps(r, allow_nan=True).replace("Infinity", "1e999").encode()
              for r in records]  # fmt: skip
    answers = serve(in_process, [("POST", "/predict", b) for b in bodies])
    ok = [i for i, a in enumerate(answers) if a.status_code == 200]
    refused = {i: a.json()["detail"] for i, a in enumerate(answers) if a.status_code == 400}
    assert len(ok) + len(refused) == len(frame) and len(refused) == len(range(3, 60, 7))
    assert summary["model_tag"] == built_project.summary["model_tag"]
    assert (summary["rows"], summary["scored"]) == (len(frame), len(ok))

    scores = pq.read_table(out).to_pandas()
    assert list(scores["row"]) == ok
    assert list(scores["species"]) == list(frame["species"].iloc[ok])  # carried through
    expected = [answers[i].json()["predictions"][0] for i in ok]
    assert list(scores["label"]) == [e["label"] for e in expected]
    for name in expected[0]["probabilities"]:
        np.testing.assert_allclose(scores[f"proba_{name}"],
                                   [e["probabilities"][name] for e in expected],
                                   rtol=0, atol=1e-12)  # fmt: skip

    rejects = pq.read_table(tmp_path / "scores.rejects.parquet").to_pylist()
    assert [(r["row"], r["field"], r["rule"]) for r in rejects] == [
        (i, e["loc"][-1], e["msg"]) for i, detail in refused.items() for e in detail
    ]
    assert {r["field"] for r in rejects} == {field for field, _ in BREAKS}
