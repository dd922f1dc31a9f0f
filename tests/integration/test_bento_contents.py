"""Opens the built bento and checks what ships: exact pins, explicit model tag, the suite."""

import importlib.metadata
import json

import pytest
import yaml

from nbship.packaging.bento import served_modules
from tests.conftest import Project
from tests.support import PROJECT

SRC = PROJECT / "src" / "nbship"

pytestmark = pytest.mark.integration

NOT_FOR_SERVING = (
    "jupyterlab",
    "notebook",
    "ploomber",
    "papermill",
    "great-expectations",
    "nbconvert",
    "ipykernel",
    "matplotlib",
)


def _requirements(bento) -> dict[str, str]:
    pins = {}
    for line in (bento / "env" / "python" / "requirements.txt").read_text().splitlines():
        line = line.split(";")[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        assert "==" in line, f"unpinned requirement: {line}"
        name, version = line.split("==")
        pins[name.strip().lower()] = version.strip()
    return pins


def test_every_requirement_is_an_exact_pin_matching_the_lock(built_project: Project):
    pins = _requirements(built_project.bento)
    for name in ("bentoml", "scikit-learn", "pandas", "numpy", "pydantic"):
        assert pins[name] == importlib.metadata.version(name), name
    assert not set(NOT_FOR_SERVING) & set(pins)


def test_model_tag_is_explicit_everywhere(built_project: Project):
    summary = json.loads((built_project.root / "package.json").read_text())
    tag = summary["model_tag"]
    name, version = tag.split(":")
    assert version and version != "latest"
    bento_yaml = yaml.safe_load((built_project.bento / "bento.yaml").read_text())
    assert [m["tag"] for m in bento_yaml["models"]] == [tag]
    serving = json.loads((built_project.bento / "src" / "serving.json").read_text())
    assert serving["model_tag"] == tag
    assert (built_project.bento / "models" / name / version / "model.yaml").exists()
    assert ":latest" not in (built_project.bento / "src" / "bentofile.yaml").read_text()


def test_the_suite_ships_and_only_serving_code(built_project: Project):
    src = built_project.bento / "src"
    suite = json.loads((src / "expectations" / "penguins.json").read_text())
    assert suite == json.loads((PROJECT / "expectations" / "penguins.json").read_text())
    shipped = sorted(p.relative_to(src / "nbship") for p in (src / "nbship").rglob("*.py"))
    # the sample config schedules batch scoring (SAMPLE_BATCH): nbship.batch ships too
    assert json.loads((src / "serving.json").read_text())["batch"] is True
    assert shipped == sorted(served_modules(batch=True))
    # the stages serving needs, each whole; nothing of the CLI, the build or operating tools
    assert {p.parts[0] for p in shipped if len(p.parts) > 1} == {
        "common", "compat", "pipeline", "registry", "prediction_log", "serving", "batch",
    }  # fmt: skip
    for module in shipped:
        assert (src / "nbship" / module).read_bytes() == (SRC / module).read_bytes(), module


def test_model_metadata_is_complete(built_project: Project):
    meta = json.loads((built_project.bento / "src" / "serving.json").read_text())["metadata"]
    for key in (
        "params",
        "metrics",
        "data_fingerprint",
        "definition_hash",
        "versions",
        "trained_at",
        "train_seconds",
        "predict_ms",
        "reports",
        "task",
        "classes",
    ):
        assert key in meta, key
    assert meta["versions"]["bentoml"] == importlib.metadata.version("bentoml")
    assert meta["task"] == "classification" and "target_range" not in meta


def test_the_task_is_recorded_and_the_bento_passed_its_parity_check(built_project: Project):
    serving = json.loads((built_project.bento / "src" / "serving.json").read_text())
    assert serving["task"] == serving["metadata"]["task"] == "classification"
    summary = built_project.summary
    assert summary["task"] == "classification"
    assert summary["parity"]["passed"] and summary["parity"]["rows"] > 0
    # the example's model is scikit-learn's own classes only: no project code ships
    assert summary["project_code"] == []
    model_yaml = next((built_project.bento / "models").rglob("model.yaml"))
    signatures = yaml.safe_load(model_yaml.read_text())["signatures"]
    assert set(signatures) == {"predict", "predict_proba"}
