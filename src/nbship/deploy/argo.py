"""Argo Workflows manifests of a project's pipeline: a Workflow with one step per task of
pipeline.yaml, in dependency order, and a CronWorkflow that runs `nbship retrain`.

Every step runs in the project's image (the project's files, nbship and the pipeline's
libraries: not the bento's image, which holds only what serving needs). The project
lives on one shared volume: a first step copies it there from the image, then each task
runs `nbship build --task NAME` in it, reading its upstream products and writing its
own there; the BentoML store is on the volume too, as the package task saves the model
there and builds the bento from it. Steps are separate pods, so the volume must be
mountable by each in turn (ReadWriteOnce suffices when they run one at a time on one
node; give `access_mode` ReadWriteMany for parallel steps on several nodes).

The manifests are plain data; the tests check them against Argo's schema as hera's
models of it state (unknown fields included).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from nbship.deploy.k8s import dns_label

API_VERSION = "argoproj.io/v1alpha1"
WORK = "/work"  # the shared volume's mount point
PROJECT_DIR = f"{WORK}/project"
IMAGE_PROJECT_DIR = "/project"  # where the project's image holds the project
TASK_TEMPLATE = "task"
PREPARE = "prepare"
_NAME_BAD = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class ArgoSettings:
    name: str  # the bento name: resources are named after it
    image: str  # the project's image
    storage: str = "2Gi"
    access_mode: str = "ReadWriteOnce"
    retrain_schedule: str = "0 4 * * *"
    # the PersistentVolumeClaim that keeps the project between retrains (registry,
    # model store, published bento); the retrain workflow mounts it
    project_claim: str | None = None
    image_pull_policy: str = "IfNotPresent"


def step_name(task: str) -> str:
    """A DAG task name Argo accepts (letters, digits, '-'), from a Ploomber task name."""
    return _NAME_BAD.sub("-", task.lower()).strip("-") or "task"


def _env() -> list[dict[str, str]]:
    return [
        {"name": "BENTOML_HOME", "value": f"{WORK}/bentoml"},
        {"name": "BENTOML_DO_NOT_TRACK", "value": "true"},
        {"name": "PLOOMBER_STATS_ENABLED", "value": "false"},
    ]


def _container(settings: ArgoSettings, command: list[str]) -> dict:
    return {
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command,
        "workingDir": PROJECT_DIR,
        "env": _env(),
        "volumeMounts": [{"name": "work", "mountPath": WORK}],
    }


def workflow(settings: ArgoSettings, graph: list[tuple[str, list[str]]]) -> dict:
    """The pipeline as a Workflow: `graph` is each task with the tasks it needs, in an
    order that respects them (`nbship.pipeline.dag.task_graph`)."""
    names = {task: step_name(task) for task, _ in graph}
    if len(set(names.values())) != len(names):
        raise ValueError(f"two tasks make the same Argo step name: {sorted(names)}")
    tasks: list[dict[str, object]] = [{"name": PREPARE, "template": PREPARE}]
    for task, upstream in graph:
        tasks.append({
            "name": names[task],
            "template": TASK_TEMPLATE,
            # a task without upstream tasks still needs the project on the volume
            "dependencies": [names[u] for u in upstream] or [PREPARE],
            "arguments": {"parameters": [{"name": "task", "value": task}]},
        })  # fmt: skip
    prepare = _container(settings, ["sh", "-c", f"cp -a {IMAGE_PROJECT_DIR}/. {PROJECT_DIR}/"])
    prepare["workingDir"] = WORK
    return {
        "apiVersion": API_VERSION,
        "kind": "Workflow",
        "metadata": {
            "generateName": f"{dns_label(settings.name)}-build-",
            "labels": _labels(settings),
        },
        "spec": {
            "entrypoint": "pipeline",
            "volumeClaimTemplates": [{
                "metadata": {"name": "work"},
                "spec": {"accessModes": [settings.access_mode],
                         "resources": {"requests": {"storage": settings.storage}}},
            }],
            "templates": [
                {"name": "pipeline", "dag": {"tasks": tasks}},
                {"name": PREPARE, "container": prepare},
                {
                    "name": TASK_TEMPLATE,
                    "inputs": {"parameters": [{"name": "task"}]},
                    "container": _container(
                        settings, ["nbship", "build", "--task", "{{inputs.parameters.task}}"]
                    ),
                },
            ],
        },
    }  # fmt: skip


def _labels(settings: ArgoSettings) -> dict[str, str]:
    return {"app.kubernetes.io/name": dns_label(settings.name),
            "app.kubernetes.io/managed-by": "nbship"}  # fmt: skip


def cron_workflow(settings: ArgoSettings) -> dict:
    """`nbship retrain --wait` on a schedule, on the claim that keeps the project (its
    registry, model store and published bento) from one run to the next."""
    claim = settings.project_claim or f"{dns_label(settings.name)}-project"
    container = _container(settings, ["nbship", "retrain", "--wait"])
    return {
        "apiVersion": API_VERSION,
        "kind": "CronWorkflow",
        "metadata": {
            "name": f"{dns_label(settings.name)}-retrain",
            "labels": _labels(settings),
        },
        "spec": {
            "schedules": [settings.retrain_schedule],
            # a retrain still going when the next is due: skip (one per project at a time)
            "concurrencyPolicy": "Forbid",
            "workflowSpec": {
                "entrypoint": "retrain",
                "volumes": [{"name": "work",
                             "persistentVolumeClaim": {"claimName": claim}}],
                "templates": [{"name": "retrain", "container": container}],
            },
        },
    }  # fmt: skip


def write(docs: dict[str, dict], folder: str | Path) -> list[Path]:
    """Each manifest to `<folder>/<name>.yaml`; the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, doc in docs.items():
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        written.append(path)
    return written
