"""What `nbship export argo` runs, run here: each step of the exported Workflow, in its
order, as its own `nbship build --task NAME` process, on a fresh copy of the project
(the shared volume). The bento it ends with serves the same model as the session's
`nbship build` of the same sources: the same winner, metrics and serving config, and
the same answers to `nbship predict` on the same rows."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from nbship.deploy import argo
from tests.conftest import Project, copy_project, sample_config

pytestmark = pytest.mark.integration


def test_the_exported_steps_one_by_one_give_the_bento_of_nbship_build(
    built_project: Project, bentoml_home: Path, tmp_path: Path
):
    steps = copy_project(tmp_path / "volume" / "project", bentoml_home)
    sample_config(steps)
    exported = steps.run("export", "argo", "--image", "project:1", "-o", str(tmp_path / "argo"))
    assert exported.returncode == 0, exported.stdout + exported.stderr
    doc = yaml.safe_load((tmp_path / "argo" / "workflow.yaml").read_text())
    dag = doc["spec"]["templates"][0]["dag"]["tasks"]
    done: set[str] = {argo.PREPARE}  # the copy above is what `prepare` does
    pending = dag[1:]
    # as Argo runs them: every step whose upstream steps are done, at the same time
    # (the train steps of the grid together), each its own process on the shared volume
    with ThreadPoolExecutor(max_workers=4) as pool:
        while pending:
            ready = [s for s in pending if set(s["dependencies"]) <= done]
            assert ready, f"no step can run: {pending}"
            tasks = [next(p["value"] for p in s["arguments"]["parameters"]) for s in ready]
            for task, ran in zip(tasks, pool.map(lambda t: steps.run("build", "--task", t), tasks),
                                 strict=True):  # fmt: skip
                assert ran.returncode == 0, f"{task}: {ran.stdout}{ran.stderr}"
            done |= {s["name"] for s in ready}
            pending = [s for s in pending if s not in ready]

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

    rows = built_project.root / "data" / "test.parquet"
    for project, name in ((steps, "steps"), (built_project, "build")):
        out = tmp_path / f"{name}.parquet"
        ran = project.run("predict", str(rows), "-o", str(out))
        assert ran.returncode == 0, ran.stdout + ran.stderr
    a = pq.read_table(tmp_path / "steps.parquet")
    b = pq.read_table(tmp_path / "build.parquet")
    assert a.num_rows > 0 and a.equals(b)
