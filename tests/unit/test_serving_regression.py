"""A regressor served by the service built in process from a staged folder whose
serving.json says `task: regression`: over BentoML's own ASGI app (real validation, real
OpenAPI document, the request-log middleware), with the compiled plan and with
scikit-learn. What `bentoml serve` serves over a socket is the e2e tests' part."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from nbship.prediction_log import read_log, url_for_sqlite
from nbship.project import LOG_SPOOL_ENV, LOG_URL_ENV, REGISTRY_URL_ENV
from nbship.serving import following, predicting, service
from nbship.serving.compiled import compile_and_verify
from nbship.tasks import REGRESSION
from tests.unit.test_service import CONFIG, RECORD, bento_src

pytestmark = [
    pytest.mark.unit,
    # BentoML 1.4.39's io models, once per model built; left visible in test_compat_bentoml
    pytest.mark.filterwarnings("ignore:The `__get_pydantic_core_schema__` method"),
    # BentoML 1.4.39 calling an API with named parameters (/feedback)
    pytest.mark.filterwarnings("ignore:Accessing the 'model_fields' attribute on the instance"),
]

COLUMNS = ["bill_length_mm", "island"]
ISLANDS = {"Biscoe": 500.0, "Dream": 0.0, "Torgersen": -300.0}
# what the package step writes for a regressor: a task, no classes, the target's range
REGRESSION_CONFIG = {
    "bento_name": "penguins_regressor",
    "model_tag": "penguins_regressor:abc123",
    "target": "body_mass_g",
    "task": "regression",
    "metadata": {"candidate": "ridge", "task": "regression", "target_range": [2500.0, 6500.0]},
}


@pytest.fixture(scope="module")
def train() -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(0)
    n = 300
    X = pd.DataFrame(
        {
            "bill_length_mm": rng.uniform(35, 55, n),
            "island": pd.Series(rng.choice(list(ISLANDS), n), dtype=object),
        }
    )
    X.loc[::17, "bill_length_mm"] = np.nan  # imputed, as in training
    y = 80 * X["bill_length_mm"].fillna(45) + X["island"].map(ISLANDS) + rng.normal(0, 50, n)
    return X, y.rename("body_mass_g")


@pytest.fixture(scope="module")
def regressor(train: tuple[pd.DataFrame, pd.Series]) -> Pipeline:
    preprocess = ColumnTransformer(
        [
            (
                "numeric",
                Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())]),
                ["bill_length_mm"],
            ),
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="most_frequent")),
                        ("onehot", OneHotEncoder(handle_unknown="ignore")),
                    ]
                ),
                ["island"],
            ),
        ]
    )
    return Pipeline([("preprocess", preprocess), ("model", Ridge(alpha=1.0))]).fit(*train)


def staged(folder: Path, regressor: Pipeline, train: Any, inference: str) -> Path:
    """The staged folder; `compiled` is packaging's report (a verified plan, or none)."""
    compiled = None
    if inference == "numpy":
        plan, compiled = compile_and_verify(regressor, COLUMNS, [train[0]])
        assert plan is not None, compiled
    return bento_src(folder, **REGRESSION_CONFIG, compiled=compiled)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, regressor: Pipeline) -> str:
    """The bento's own model is the fitted regressor (with the plan when serving.json
    says it was verified); the prediction log is a SQLite file. Returns its URL."""
    monkeypatch.delenv(service.RELOAD_ENV, raising=False)
    monkeypatch.delenv(REGISTRY_URL_ENV, raising=False)
    url = url_for_sqlite(tmp_path / "log.db")
    monkeypatch.setenv(LOG_URL_ENV, url)
    monkeypatch.setenv(LOG_SPOOL_ENV, str(tmp_path / "spool"))

    def own(config: dict[str, Any]) -> service.ServedModel:
        served = service.ServedModel(
            config["model_tag"], regressor, "bento", "test", config["metadata"]
        )
        return following.with_plan(
            served, config.get("compiled"), config["columns"], service.config_task(config)
        )

    monkeypatch.setattr(service, "resolve_model", own)
    monkeypatch.setattr(service, "freeze_startup_heap", lambda: None)
    return url


@pytest.fixture(autouse=True)
def bentoml_request_metrics() -> Any:
    """BentoML registers its request metrics in Prometheus's registry once per app it
    builds, and refuses a second app in one process: any app's (this file's, or one an
    earlier test built) are dropped before and after each test (the registry's collector
    map is private; nbship's own metrics, registered at import, stay)."""

    def drop() -> None:
        for collector, names in list(REGISTRY._collector_to_names.items()):
            if any(name.startswith("bentoml_") for name in names):
                REGISTRY.unregister(collector)

    drop()
    yield
    drop()


def serve(svc: Any, requests: list[tuple[str, str, Any]]) -> list[httpx.Response]:
    """Each (method, path, JSON body or raw bytes) against the service's ASGI app, in
    one start-up and shut-down."""

    async def calls() -> list[httpx.Response]:
        app = svc.to_asgi()
        answers = []
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
                for method, path, body in requests:
                    if isinstance(body, bytes):
                        headers = {"content-type": "application/json"}
                        answers.append(
                            await client.request(method, path, content=body, headers=headers)
                        )
                    else:
                        answers.append(await client.request(method, path, json=body))
        return answers

    return asyncio.run(calls())


def frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "bill_length_mm": [np.nan if r["bill_length_mm"] is None else r["bill_length_mm"]
                               for r in records],
            "island": pd.Series([r["island"] for r in records], dtype=object),
        }
    )  # fmt: skip


BATCH = [RECORD, {**RECORD, "bill_length_mm": None}, {"bill_length_mm": 38.0, "island": "Dream"}]


@pytest.mark.parametrize("inference", ["numpy", "scikit-learn"])
def test_a_regressor_answers_a_number_per_record_and_logs_it(
    tmp_path: Path, regressor: Pipeline, train: Any, offline: str, inference: str
):
    svc = service.create_service(staged(tmp_path / "src", regressor, train, inference))
    one, batch, info = serve(
        svc, [("POST", "/predict", RECORD), ("POST", "/predict", BATCH), ("GET", "/info", None)]
    )
    assert one.status_code == 200, one.text
    assert one.json()["model"] == "penguins_regressor:abc123"
    (answer,) = one.json()["predictions"]
    assert set(answer) == {"prediction"} and isinstance(answer["prediction"], float)
    assert answer["prediction"] == pytest.approx(regressor.predict(frame([RECORD]))[0], abs=1e-9)

    assert batch.status_code == 200, batch.text
    got = [p["prediction"] for p in batch.json()["predictions"]]
    np.testing.assert_allclose(got, regressor.predict(frame(BATCH)), rtol=0, atol=1e-9)

    described = info.json()
    assert described["task"] == "regression"
    assert described["inference"].startswith("numpy plan" if inference == "numpy" else "scikit")
    assert "classes" not in described["metadata"]

    logged = read_log(offline).sort_values("ts")
    assert list(logged["n_records"]) == [1, 3]
    assert list(logged["outputs"]) == [one.json()["predictions"], batch.json()["predictions"]]
    assert list(logged["request_id"]) == [one.headers["x-request-id"],
                                          batch.headers["x-request-id"]]  # fmt: skip


def test_a_regressor_rejects_a_bad_record_naming_the_field(
    tmp_path: Path, regressor: Pipeline, train: Any, offline: str
):
    svc = service.create_service(staged(tmp_path / "src", regressor, train, "numpy"))
    (bad,) = serve(svc, [("POST", "/predict", [RECORD, {**RECORD, "bill_length_mm": "long"}])])
    assert bad.status_code == 400
    assert [e["loc"] for e in bad.json()["detail"]] == [[1, "bill_length_mm"]]


def test_the_openapi_answer_of_a_regressor_is_a_number(
    tmp_path: Path, regressor: Pipeline, train: Any, offline: str
):
    svc = service.create_service(staged(tmp_path / "src", regressor, train, "numpy"))
    (docs,) = serve(svc, [("GET", "/docs.json", None)])
    spec = docs.json()
    schemas = spec["components"]["schemas"]
    answer = spec["paths"]["/predict"]["post"]["responses"]["200"]["content"]
    items = answer["application/json"]["schema"]["properties"]["predictions"]["items"]
    prediction = schemas[items["$ref"].rsplit("/", 1)[1]]
    assert prediction["required"] == ["prediction"]
    assert prediction["properties"]["prediction"]["type"] == "number"
    assert "label" not in json.dumps(prediction)
    assert schemas["FeedbackItem"]["properties"]["label"]["type"] == "number"


def test_the_openapi_answer_of_a_classifier_is_its_labels(tmp_path: Path):
    svc = service.create_service(bento_src(tmp_path / "src"))
    schema = svc.inner.parts.response.model_json_schema()
    prediction = schema["$defs"]["Prediction"]
    assert prediction["properties"]["label"]["enum"] == CONFIG["metadata"]["classes"]
    assert svc.inner.parts.task.kind == "classification"  # serving.json has no task


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"items": [{"label": "abc", "request_id": "r1"}]}', "float_type"),
        (b'{"items": [{"label": "4200.5", "request_id": "r1"}]}', "float_type"),
        (b'{"items": [{"label": true, "request_id": "r1"}]}', "float_type"),
        (b'{"items": [{"label": null, "request_id": "r1"}]}', "float_type"),
        (b'{"items": [{"label": NaN, "request_id": "r1"}]}', "finite_number"),
        (b'{"items": [{"label": Infinity, "request_id": "r1"}]}', "finite_number"),
        (b'{"items": [{"label": 1e999, "request_id": "r1"}]}', "finite_number"),
    ],
    ids=["text", "numeric-text", "boolean", "null", "nan", "infinity", "overflow"],
)
def test_regression_feedback_rejects_a_label_that_is_not_a_finite_number(
    tmp_path: Path, regressor: Pipeline, train: Any, offline: str, body: bytes, error: str
):
    svc = service.create_service(staged(tmp_path / "src", regressor, train, "scikit-learn"))
    (rejected,) = serve(svc, [("POST", "/feedback", body)])
    assert rejected.status_code == 400, rejected.text
    (detail,) = rejected.json()["detail"]
    assert detail["loc"][-1] == "label" and detail["type"] == error, detail


def test_regression_feedback_takes_numeric_labels_into_the_log(
    tmp_path: Path, regressor: Pipeline, train: Any, offline: str
):
    svc = service.create_service(staged(tmp_path / "src", regressor, train, "numpy"))
    items = [
        {"label": 4200.5, "request_id": "r1"},
        {"label": 3900, "request_id": "r1", "row": 1},  # an integer is a number
        {"label": -1.5e3, "record": RECORD},
    ]
    (accepted,) = serve(svc, [("POST", "/feedback", {"items": items})])
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["accepted"] == 3
    (kept,) = read_log(offline)["inputs"]
    assert [i["label"] for i in kept] == [4200.5, 3900.0, -1500.0]
    assert all(isinstance(i["label"], float) for i in kept)


def test_the_regression_parts_read_no_classes(tmp_path: Path):
    parts = service.create_service(bento_src(tmp_path / "src", **REGRESSION_CONFIG)).inner.parts
    assert parts.task is REGRESSION and parts.label is float
    item = parts.feedback_item
    assert item.model_validate({"label": 2.5, "request_id": "r1"}).label == 2.5
    for label in ("2.5", True, float("nan"), float("inf")):
        with pytest.raises(ValidationError) as rejected:
            item.model_validate({"label": label, "request_id": "r1"})
        assert rejected.value.errors()[0]["loc"] == ("label",)
    with pytest.raises(ValidationError, match="exactly one"):
        item.model_validate({"label": 2.5})


def test_a_plan_of_another_task_is_not_attached(regressor: Pipeline, train: Any):
    _, report = compile_and_verify(regressor, COLUMNS, [train[0]])
    served = service.ServedModel("m:1", regressor, "bento", "test", {})
    wrong = following.with_plan(served, report, COLUMNS, service.config_task({}))
    assert wrong.plan is None
    assert wrong.inference == (
        "scikit-learn (the plan does regression, the bento serves classification)"
    )
    right = following.with_plan(served, report, COLUMNS, REGRESSION)
    assert right.plan is not None and right.inference.startswith("numpy plan")


def test_the_task_comes_from_serving_json_then_metadata_then_classification():
    assert service.config_task({"task": "regression", "metadata": {}}) is REGRESSION
    assert service.config_task({"metadata": {"task": "regression"}}) is REGRESSION
    assert service.config_task({"metadata": {"classes": ["a"]}}).kind == "classification"
    with pytest.raises(ValueError, match="unknown task"):
        service.config_task({"task": "ranking"})


def test_one_value_per_row_takes_a_column_and_refuses_several_targets():
    np.testing.assert_array_equal(predicting.one_per_row(np.array([[1.0], [2.0]]), 2), [1.0, 2.0])
    with pytest.raises(ValueError, match="one value each"):
        predicting.one_per_row(np.ones((2, 2)), 2)
