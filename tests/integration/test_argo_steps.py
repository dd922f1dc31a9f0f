"""What `nbship export argo` runs, run here: each step of the exported Workflow, in its
order, as its own process running the step's command (`nbship build --task NAME`), on a
fresh copy of the project (the shared volume). The bento it ends with serves the same
model as the session's `nbship build` of the same sources: the same winner, metrics,
model-tag inputs and serving config, and the same answers to `nbship predict` on the
same rows.

Each command is a process forked from one that has only imported the libraries
(`tests.forked_cli`): a fresh interpreter spends ~13 s importing Ploomber and co. per
step, where the step itself takes ~2 s. Nothing passes from one step to the next but
the files on the volume, as between Argo's pods."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from nbship.deploy import argo
from tests.conftest import Project, copy_project, sample_config
from tests.forked_cli import CliForks

pytestmark = pytest.mark.integration

# what the steps import, once, before the forks: most of a step's time in a fresh process
PRELOAD = (
    "ploomber.spec", "ploomber.executors", "ploomber_engine", "great_expectations",
    "pyarrow.parquet", "sklearn.compose", "sklearn.dummy", "sklearn.ensemble",
    "sklearn.impute", "sklearn.linear_model", "sklearn.metrics", "sklearn.neighbors",
    "sklearn.pipeline", "sklearn.preprocessing",
)  # fmt: skip
PARAMETER = "{{inputs.parameters.task}}"


def test_the_exported_steps_one_by_one_give_the_bento_of_nbship_build(
    built_project: Project, bentoml_home: Path, tmp_path: Path
):
    steps = copy_project(tmp_path / "volume" / "project", bentoml_home)
    sample_config(steps)
    with CliForks(steps.env, PRELOAD, tmp_path / "runs") as cli:
        (exported,) = cli.run((steps.path, ["export", "argo", "--image", "project:1",
                                            "-o", str(tmp_path / "argo")]))  # fmt: skip
        assert exported.returncode == 0, exported.stdout + exported.stderr
        doc = yaml.safe_load((tmp_path / "argo" / "workflow.yaml").read_text())
        templates = {t["name"]: t for t in doc["spec"]["templates"]}
        dag = templates["pipeline"]["dag"]["tasks"]
        command = templates[argo.TASK_TEMPLATE]["container"]["command"]
        assert command[0] == "nbship" and PARAMETER in command, command
        done: set[str] = {argo.PREPARE}  # the copy above is what `prepare` does
        pending = dag[1:]
        assert {s["template"] for s in pending} == {argo.TASK_TEMPLATE}
        # as Argo runs them: every step whose upstream steps are done, at the same time
        # (the train steps of the grid together), each its own process on the shared volume
        while pending:
            ready = [s for s in pending if set(s["dependencies"]) <= done]
            assert ready, f"no step can run: {pending}"
            tasks = [next(p["value"] for p in s["arguments"]["parameters"]) for s in ready]
            argvs = [[a.replace(PARAMETER, task) for a in command[1:]] for task in tasks]
            for task, ran in zip(tasks, cli.run(*((steps.path, a) for a in argvs)), strict=True):
                assert ran.returncode == 0, f"{task}: {ran.stdout}{ran.stderr}"
            done |= {s["name"] for s in ready}
            pending = [s for s in pending if s not in ready]

        # both bentos' answers, from two `nbship predict` processes at once
        rows = built_project.root / "data" / "test.parquet"
        outs = {name: tmp_path / f"{name}.parquet" for name in ("steps", "build")}
        predicted = cli.run(
            (steps.path, ["predict", str(rows), "-o", str(outs["steps"])]),
            (built_project.path, ["predict", str(rows), "-o", str(outs["build"])]),
        )
    for ran in predicted:
        assert ran.returncode == 0, ran.stdout + ran.stderr

    ours, theirs = steps.summary, built_project.summary
    for key in ("promoted", "compiled", "task"):
        assert ours[key] == theirs[key], key
    served = [json.loads((p.bento / "src" / "serving.json").read_text())
              for p in (steps, built_project)]  # fmt: skip
    for key in ("columns", "task", "compiled", "max_batch"):
        assert served[0][key] == served[1][key], key
    for key in ("candidate", "params", "metrics", "data_fingerprint", "definition_hash"):
        assert served[0]["metadata"][key] == served[1]["metadata"][key], key
    assert served[0]["model_tag"] != served[1]["model_tag"]  # two builds, two versions

    a, b = pq.read_table(outs["steps"]), pq.read_table(outs["build"])
    assert a.num_rows > 0 and a.equals(b)
