"""Batch scoring on a schedule: the CronJob `nbship k8s` writes when env.yaml sets
`batch.schedule`, checked against the Kubernetes schemas like the Deployment, and the
entry point it runs in the bento's image (`python -m nbship.batch`)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from nbship import config as config_module
from nbship.batch import __main__ as entry
from nbship.config import BatchSettings, ConfigError
from nbship.deploy import k8s
from nbship.deploy.k8s import DeploymentSettings
from tests.unit.test_batch import bento, classifier, mixed_rows, write_csv
from tests.unit.test_k8s import _k8s, published, settings

pytestmark = [
    pytest.mark.unit,
    pytest.mark.filterwarnings("ignore:The `__get_pydantic_core_schema__` method"),
]
__all__ = ["bento", "classifier", "published", "settings"]  # fixtures used here

JOB = BatchSettings(schedule="0 3 * * *", input="s3://scores/in/rows.parquet",
                    output="s3://scores/out/scores.parquet", chunk_rows=50_000)  # fmt: skip


def cronjob(docs: list[dict]) -> dict:
    (found,) = [d for d in docs if d["kind"] == "CronJob"]
    return found


def test_the_cronjob_validates_and_runs_batch_scoring_from_the_same_image(
    settings: DeploymentSettings,
):
    docs = k8s.manifests(settings, JOB)
    assert [d["kind"] for d in docs] == ["Deployment", "Service", "HorizontalPodAutoscaler",
                                         "CronJob"]  # fmt: skip
    k8s.validate(docs)
    job = cronjob(docs)
    assert job["apiVersion"] == "batch/v1" and job["spec"]["schedule"] == "0 3 * * *"
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (server,) = docs[0]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == server["image"] == settings.image
    assert container["resources"] == server["resources"]
    assert container["command"] == [
        "python", "-m", "nbship.batch", "/home/bento/bento", "s3://scores/in/rows.parquet",
        "--output", "s3://scores/out/scores.parquet", "--chunk-rows", "50000",
    ]  # fmt: skip
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["BENTOML_HOME"] == "/home/bento/bento"  # the bento's own model store
    assert env["PYTHONPATH"] == "/home/bento/bento/src"
    assert pod["restartPolicy"] == "Never" and "ports" not in container
    assert job["metadata"]["name"] == "penguins-classifier-batch"


def test_a_misspelt_cronjob_field_fails_the_schema(settings: DeploymentSettings):
    docs = k8s.manifests(settings, JOB)
    broken = copy.deepcopy(docs)
    spec = cronjob(broken)["spec"]
    spec["schedul"] = spec.pop("schedule")
    with pytest.raises(ValueError, match=r"CronJob/penguins-classifier-batch"):
        k8s.validate(broken)


@pytest.mark.parametrize("schedule", ["0 3 * *", "every day", "0 3 * * * *"])
def test_a_schedule_that_is_no_cron_is_refused_naming_the_key(schedule: str):
    section = {"schedule": schedule, "input": "a.csv", "output": "b.csv"}
    with pytest.raises(ConfigError, match=r"batch\.schedule.*not a cron schedule"):
        config_module.validate_section(BatchSettings, section, "batch")
    assert BatchSettings(schedule="@daily", input="a.csv", output="b.csv").scheduled


def test_a_schedule_needs_input_and_output_in_env_yaml():
    with pytest.raises(ConfigError, match="a schedule needs `input` and `output`"):
        config_module.validate_section(BatchSettings, {"schedule": "@daily", "input": "x.csv"})
    assert k8s.batch_job(BatchSettings()) is None
    section = BatchSettings(schedule="@hourly", input="s3://a.csv", output="s3://b.parquet",
                            dask="tcp://sched:8786")  # fmt: skip
    job = k8s.batch_job(section)
    assert job is not None and k8s.batch_command(job)[-2:] == ["--dask", "tcp://sched:8786"]


def test_nbship_k8s_writes_the_cronjob_when_batch_has_a_schedule(published: Path):
    env = published / "env.yaml"
    raw = yaml.safe_load(env.read_text())
    code, out, err, target = _k8s(published)
    assert code == 0, out + err
    assert "CronJob" not in [d["kind"] for d in yaml.safe_load_all(target.read_text())]
    raw["batch"] = {"schedule": "30 2 * * *", "input": "s3://b/in.csv",
                    "output": "s3://b/out.parquet"}  # fmt: skip
    env.write_text(yaml.safe_dump(raw, sort_keys=False))
    target.unlink()
    # the published bento was packaged before the schedule: its image cannot score batches
    code, out, err, target = _k8s(published)
    assert code != 0 and "packaged without batch scoring" in out + err, out + err
    assert not target.exists()
    serving_json = published / "bentos" / "penguins_classifier" / "src" / "serving.json"
    serving_json.write_text(json.dumps({**json.loads(serving_json.read_text()), "batch": True}))
    code, out, err, target = _k8s(published)
    assert code == 0, out + err
    job = cronjob(list(yaml.safe_load_all(target.read_text())))
    assert job["spec"]["schedule"] == "30 2 * * *"


def test_the_entry_point_the_cronjob_runs_scores_a_file(bento: Path, tmp_path: Path, capsys):
    _, lines = mixed_rows()
    data = write_csv(tmp_path / "in.csv", lines)
    out = tmp_path / "scores.parquet"
    assert entry.main([str(bento), data, "-o", str(out), "--chunk-rows", "5"]) == 0
    assert '"rows": 23' in capsys.readouterr().out
    assert pq.read_table(out).num_rows + len({r["row"] for r in pq.read_table(
        tmp_path / "scores.rejects.parquet").to_pylist()}) == 23  # fmt: skip
    assert entry.main([str(bento), str(tmp_path / "missing.csv"), "-o", str(out)]) == 1
    assert "no such file" in capsys.readouterr().err
