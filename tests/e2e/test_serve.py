"""The built bento served for real on 127.0.0.1 and called over HTTP: by `bentoml serve`,
and by its OCI image in podman (marker `container`), with the same requests and answers."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest

from tests.conftest import Project
from tests.support import free_port, start, stop, wait_http

pytestmark = pytest.mark.e2e

BENTOML = str(Path(sys.executable).with_name("bentoml"))

RECORD = {
    "island": "Biscoe",
    "bill_length_mm": 45.2,
    "bill_depth_mm": 15.1,
    "flipper_length_mm": 215,
    "body_mass_g": 5200,
    "sex": "male",
}


@pytest.fixture(
    scope="module", params=["bentoml", pytest.param("container", marks=pytest.mark.container)]
)
def server(
    request: pytest.FixtureRequest, built_project: Project, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "container":
        yield from _container_server(
            request.getfixturevalue("container_image").image,
            request.getfixturevalue("container_settings"),
        )
        return
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "bentoml.log"
    cmd = [BENTOML, "serve", str(built_project.bento), "--host", "127.0.0.1", "--port", str(port)]
    proc = start(cmd, log, env={"BENTOML_HOME": str(tmp_path_factory.mktemp("empty-home"))})
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc, timeout=90)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)
        assert "Traceback" not in log.read_text(), log.read_text()[-4000:]


def _container_server(image: str, settings) -> Iterator[str]:
    from nbship.deploy.container import logs, run_container, stop_container

    port = free_port()
    container_id = run_container(image, port, settings)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=90)
        yield f"http://127.0.0.1:{port}"
    finally:
        output = logs(container_id, settings)
        stop_container(container_id, settings)
        assert "Traceback" not in output, output[-4000:]


def post(url: str, body: object) -> httpx.Response:
    return httpx.post(f"{url}/predict", json=body, timeout=30)


def test_single_record(server: str, built_project: Project):
    response = post(server, RECORD)
    assert response.status_code == 200
    body = response.json()
    tag = json.loads((built_project.root / "package.json").read_text())["model_tag"]
    assert body["model"] == tag
    (prediction,) = body["predictions"]
    assert prediction["label"] in {"Adelie", "Chinstrap", "Gentoo"}
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0)
    assert prediction["label"] == max(
        prediction["probabilities"], key=prediction["probabilities"].get
    )


def test_batch_with_nulls(server: str):
    records = [RECORD, {**RECORD, "island": "Dream", "sex": None, "bill_length_mm": None}]
    response = post(server, records)
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 2


def test_single_record_with_every_nullable_field_null(server: str):
    nulls = {k: None for k in RECORD if k != "island"}
    response = post(server, {"island": "Dream", **nulls})
    assert response.status_code == 200, response.text
    assert sum(response.json()["predictions"][0]["probabilities"].values()) == pytest.approx(1)


def test_a_null_answers_the_same_alone_and_in_a_batch(server: str):
    # a column that is null in every row of a request must still be imputed as missing
    record = {**RECORD, "sex": None}
    alone = post(server, record).json()["predictions"][0]["probabilities"]
    batched = post(server, [RECORD, record]).json()["predictions"][1]["probabilities"]
    assert alone == pytest.approx(batched, abs=1e-9)


def _errors(response: httpx.Response) -> list[dict]:
    assert "Traceback" not in response.text
    return response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [
        ({**RECORD, "bill_length_mm": "long"}, "bill_length_mm", "number"),
        ({k: v for k, v in RECORD.items() if k != "island"}, "island", "required"),
        ({**RECORD, "island": "Atlantis"}, "island", "Biscoe"),
        ({**RECORD, "body_mass_g": 90000}, "body_mass_g", "less than or equal"),
        ({**RECORD, "beak_colour": "red"}, "beak_colour", "not permitted"),
        ([RECORD, {**RECORD, "sex": 3}], "sex", "male"),
    ],
    ids=[
        "wrong-type",
        "missing-field",
        "unknown-category",
        "out-of-range",
        "unknown-field",
        "bad-row-in-batch",
    ],
)
def test_bad_input_is_a_400_naming_field_and_rule(server: str, body, field, rule):
    response = post(server, body)
    assert response.status_code == 400
    errors = _errors(response)
    assert any(field in map(str, e["loc"]) and rule.lower() in e["msg"].lower() for e in errors), (
        errors
    )


def test_batch_error_names_the_row(server: str):
    errors = _errors(post(server, [RECORD, RECORD, {**RECORD, "island": "Atlantis"}]))
    assert errors[0]["loc"][:2] == [2, "island"]


def test_empty_and_oversized_batches_are_400(server: str, built_project: Project):
    empty = post(server, [])
    assert empty.status_code == 400
    assert "at least 1" in _errors(empty)[0]["msg"]
    limit = built_project.config["bento"]["max_batch"]
    big = post(server, [RECORD] * (limit + 1))
    assert big.status_code == 400
    assert f"at most {limit}" in _errors(big)[0]["msg"]


def test_malformed_json_is_400(server: str):
    response = httpx.post(
        f"{server}/predict",
        content=b'{"island": "Biscoe"',
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400
    errors = _errors(response)
    assert errors[0]["loc"] == ["body"] and "json" in errors[0]["msg"].lower()


def test_info_describes_the_model(server: str, built_project: Project):
    info = httpx.get(f"{server}/info", timeout=10).json()
    summary = json.loads((built_project.root / "package.json").read_text())
    assert info["model_tag"] == summary["model_tag"]
    meta = info["metadata"]
    assert meta["data_fingerprint"].startswith("sha256:")
    assert set(meta["metrics"]["test"]) >= {"accuracy", "f1_macro"}
    assert meta["versions"]["scikit-learn"]
    assert meta["definition_hash"].startswith("sha256:")
    # the sample winner's preprocessing compiles: the verified numpy plan serves
    assert info["inference"].startswith("numpy plan"), info["inference"]
    assert summary["compiled"] is True


def test_concurrent_distinct_records_each_get_their_own_answer(server: str, built_project: Project):
    test = pd.read_parquet(built_project.root / "data" / "test.parquet")
    records = json.loads(test[list(RECORD)].to_json(orient="records"))[:40]
    alone = [post(server, r).json()["predictions"][0] for r in records]
    before = httpx.get(f"{server}/info", timeout=10).json()["batching"]

    async def concurrently() -> list[dict]:
        async with httpx.AsyncClient(base_url=server, timeout=30) as client:
            responses = await asyncio.gather(*(client.post("/predict", json=r) for r in records))
        return [r.json()["predictions"][0] for r in responses]

    together = asyncio.run(concurrently())
    after = httpx.get(f"{server}/info", timeout=10).json()["batching"]
    for row, (a, b) in enumerate(zip(alone, together, strict=True)):
        assert a["label"] == b["label"], row
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-9), row
    assert after["requests"] - before["requests"] == len(records)
    assert after["model_calls"] - before["model_calls"] <= len(records)


def test_the_batcher_knows_the_callers_on_kept_alive_connections(server: str):
    """Each caller's connection reaches the batcher through BentoML's stack: four
    clients, each on its own kept-alive connection sending one request after another, are
    the four callers a batch may wait for (a model call's worth at most)."""

    async def caller() -> None:
        async with httpx.AsyncClient(base_url=server, timeout=30) as client:
            for _ in range(10):
                assert (await client.post("/predict", json=RECORD)).status_code == 200

    async def four() -> None:
        await asyncio.gather(*(caller() for _ in range(4)))

    asyncio.run(four())
    batching = httpx.get(f"{server}/info", timeout=10).json()["batching"]
    assert batching["callers"] >= 4, batching  # (another test's within the last second too)


def test_metrics_count_classes_fields_model_and_drift(server: str, built_project: Project):
    test = pd.read_parquet(built_project.root / "data" / "test.parquet")
    records = json.loads(test[list(RECORD)].to_json(orient="records"))
    answers = post(server, (records * 3)[:150]).json()["predictions"]  # >= 100: drift updates
    post(server, {**RECORD, "island": "Atlantis"})
    text = httpx.get(f"{server}/metrics", timeout=10).text
    tag = json.loads((built_project.root / "package.json").read_text())["model_tag"]
    label = answers[0]["label"]
    assert f'nbship_predictions_total{{label="{label}",model_tag="{tag}"}}' in text
    assert 'nbship_validation_failures_total{field="island"}' in text
    assert f'model_tag="{tag}"' in text and "nbship_model_info{" in text
    # gauges carry a pid label too (BentoML's multiprocess mode)
    assert 'nbship_feature_drift_psi{feature="body_mass_g",' in text


def test_openapi_shows_every_field_with_type_and_rule(server: str):
    spec = httpx.get(f"{server}/docs.json", timeout=10).json()
    text = json.dumps(spec)
    record = spec["components"]["schemas"]["Record"]
    assert set(record["required"]) == set(RECORD)
    assert "Torgersen" in json.dumps(record["properties"]["island"])
    assert "70" in json.dumps(record["properties"]["bill_length_mm"])
    assert "/predict" in text


def test_served_predictions_equal_in_process_ones_row_by_row(server: str, built_project: Project):
    # the model file inside the bento, loaded without BentoML: what was shipped
    name, version = json.loads((built_project.root / "package.json").read_text())[
        "model_tag"
    ].split(":")
    model = joblib.load(built_project.bento / "models" / name / version / "saved_model.pkl")
    test = pd.read_parquet(built_project.root / "data" / "test.parquet")
    columns = list(RECORD)
    records = json.loads(test[columns].to_json(orient="records"))
    served = post(server, records).json()["predictions"]
    expected = model.predict_proba(test[columns])
    assert len(served) == len(test)
    for row, (got, want) in enumerate(zip(served, expected, strict=True)):
        assert got["label"] == model.classes_[np.argmax(want)], row
        # the compiled plan is verified to 1e-5 at packaging; here it matches far closer
        assert [got["probabilities"][c] for c in model.classes_] == pytest.approx(want, abs=1e-7)


def test_nbship_serve_command_serves_the_published_bento(built_project: Project, tmp_path: Path):
    port = free_port()
    nbship = str(Path(sys.executable).with_name("nbship"))
    proc = start([nbship, "serve", "-p", str(built_project.path), "--port", str(port)],
                 tmp_path / "serve.log", env=built_project.env)  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc, timeout=90)
        assert post(f"http://127.0.0.1:{port}", RECORD).status_code == 200
    finally:
        stop(proc)
