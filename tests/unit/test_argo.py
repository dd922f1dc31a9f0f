"""`nbship export argo`: the pipeline as an Argo Workflow (one step per task, in
dependency order) and a CronWorkflow running `nbship retrain`, checked against Argo's
schema as hera's models state it. Running the steps one by one is
tests/integration/test_argo_steps.py."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hera.workflows.models import CronWorkflow, Workflow

from nbship.cli.main import main
from nbship.deploy import argo
from nbship.pipeline.dag import task_graph
from tests.support import PROJECT

pytestmark = pytest.mark.unit

SETTINGS = argo.ArgoSettings(name="penguins_classifier", image="registry.example.com/p:1")


def conforms(model: Any, doc: dict) -> None:
    """`doc` is a valid `model`, strictly: hera's models ignore unknown fields, so the
    document must also survive the round trip unchanged (a misspelt key would not)."""
    parsed = model.model_validate(doc)
    assert parsed.model_dump(by_alias=True, exclude_unset=True, mode="json") == doc


@pytest.fixture(scope="module")
def graph() -> list[tuple[str, list[str]]]:
    return task_graph(PROJECT)


def test_the_workflow_has_a_step_per_task_in_dependency_order(graph):
    doc = argo.workflow(SETTINGS, graph)
    conforms(Workflow, doc)
    dag = {t["name"]: t for t in doc["spec"]["templates"][0]["dag"]["tasks"]}
    tasks = [name for name, _ in graph]
    assert {"load", "split", "train-logreg", "evaluate", "package"} <= set(tasks)
    assert list(dag) == ["prepare", *tasks]
    position = {name: i for i, name in enumerate(dag)}
    for name, upstream in graph:
        step = dag[argo.step_name(name)]
        assert step["dependencies"] == (upstream or ["prepare"])
        assert all(position[u] < position[name] for u in step["dependencies"])
        assert step["arguments"]["parameters"] == [{"name": "task", "value": name}]
    assert set(dag["evaluate"]["dependencies"]) >= {"train-logreg", "train-forest"}
    task = doc["spec"]["templates"][2]
    assert task["container"]["command"] == ["nbship", "build", "--task",
                                            "{{inputs.parameters.task}}"]  # fmt: skip
    assert task["container"]["image"] == SETTINGS.image
    # products on one shared volume, the BentoML store with them
    assert task["container"]["volumeMounts"] == [{"name": "work", "mountPath": "/work"}]
    assert {"name": "BENTOML_HOME", "value": "/work/bentoml"} in task["container"]["env"]


def test_the_cron_workflow_retrains_on_a_schedule():
    doc = argo.cron_workflow(SETTINGS)
    conforms(CronWorkflow, doc)
    assert doc["spec"]["schedules"] == ["0 4 * * *"]
    (template,) = doc["spec"]["workflowSpec"]["templates"]
    assert template["container"]["command"] == ["nbship", "retrain", "--wait"]
    (volume,) = doc["spec"]["workflowSpec"]["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == "penguins-classifier-project"


def test_the_schema_check_catches_a_misspelt_field(graph):
    doc = argo.workflow(SETTINGS, graph)
    broken = copy.deepcopy(doc)
    step = broken["spec"]["templates"][0]["dag"]["tasks"][1]
    step["dependancies"] = step.pop("dependencies")
    with pytest.raises(AssertionError):
        conforms(Workflow, broken)
    wrong_type = copy.deepcopy(doc)
    wrong_type["spec"]["templates"][0]["dag"]["tasks"] = "load"
    with pytest.raises(ValueError):
        Workflow.model_validate(wrong_type)


def test_task_names_become_argo_step_names():
    assert argo.step_name("train-[logreg]") == "train--logreg"
    assert argo.step_name("Train_KNN") == "train-knn"
    with pytest.raises(ValueError, match="same Argo step name"):
        argo.workflow(SETTINGS, [("a_b", []), ("a-b", [])])


def test_nbship_export_argo_writes_both(tmp_path: Path):
    for name in ("env.yaml", "pipeline.yaml"):
        shutil.copy2(PROJECT / name, tmp_path / name)
    for name in ("notebooks", "expectations"):
        shutil.copytree(PROJECT / name, tmp_path / name)
    result = CliRunner().invoke(main, ["export", "argo", "-p", str(tmp_path), "--image", "i:1",
                                       "--retrain-schedule", "@daily"])  # fmt: skip
    assert result.exit_code == 0, result.output
    paths = [Path(p) for p in result.stdout.split()]
    assert [p.name for p in paths] == ["workflow.yaml", "cronworkflow.yaml"]
    conforms(Workflow, yaml.safe_load(paths[0].read_text()))
    cron = yaml.safe_load(paths[1].read_text())
    conforms(CronWorkflow, cron)
    assert cron["spec"]["schedules"] == ["@daily"]
