"""The scikit-learn fallback: a bento whose plan was not verified serves through the
pipeline itself, with the same answers, and says so in /info."""

from __future__ import annotations

import json
import shutil
import sys
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


def test_an_unverified_plan_falls_back_to_scikit_learn(built_project: Project, tmp_path: Path):
    bento = tmp_path / "bento"
    shutil.copytree(built_project.bento.resolve(), bento)
    config_path = bento / "src" / "serving.json"
    config = json.loads(config_path.read_text())
    config["compiled"] = {"compiled": False, "reason": "verification failed: test"}
    config_path.write_text(json.dumps(config))
    name, version = config["model_tag"].split(":")
    model = joblib.load(bento / "models" / name / version / "saved_model.pkl")
    test = pd.read_parquet(built_project.root / "data" / "test.parquet")
    records = json.loads(test[config["columns"]].to_json(orient="records"))

    port = free_port()
    log = tmp_path / "serve.log"
    env = {"BENTOML_HOME": str(tmp_path / "home"), "NBSHIP_REGISTRY_URL": ""}
    proc = start([BENTOML, "serve", str(bento), "--host", "127.0.0.1", "--port", str(port)],
                 log, env=env)  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc, timeout=90)
        info = httpx.get(f"http://127.0.0.1:{port}/info", timeout=10).json()
        served = httpx.post(f"http://127.0.0.1:{port}/predict", json=records, timeout=30)
    finally:
        stop(proc)
    assert info["inference"] == "scikit-learn (verification failed: test)"
    expected = model.predict_proba(test[config["columns"]])
    got = [
        [p["probabilities"][str(c)] for c in model.classes_] for p in served.json()["predictions"]
    ]
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert "inference: scikit-learn" in log.read_text()
