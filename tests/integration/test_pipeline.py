import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from nbship.pipeline import dag as pipeline
from tests.conftest import Project

pytestmark = pytest.mark.integration

TASKS = [
    "load",
    "validate",
    "feedback",
    "split",
    "train-logreg",
    "train-forest",
    "train-knn",
    "evaluate",
    "choose",
    "package",
]


def test_build_produces_every_report_and_a_bento(built_project: Project):
    reports = built_project.root / "reports"
    for task in TASKS:
        # Ploomber's grid appends the grid index to product names: train-logreg-0.html
        (report,) = list(reports.glob(f"{task}.html")) or list(reports.glob(f"{task}-[0-9]*.html"))
        assert "<html" in report.read_text()[:2000].lower()
    summary = json.loads((built_project.root / "package.json").read_text())
    assert summary["model_tag"].startswith("penguins_classifier:")
    assert (built_project.bento / "bento.yaml").exists()
    assert built_project.bento.is_symlink()


def test_winner_is_the_best_candidate_by_the_configured_metric(built_project: Project):
    evaluation = json.loads((built_project.root / "evaluation.json").read_text())
    winner = json.loads((built_project.root / "winner.json").read_text())
    metric = built_project.config["selection_metric"]
    top = max(r["test"][metric] for r in evaluation.values())
    tied = [name for name, r in evaluation.items() if r["test"][metric] == top]
    # ties on the selection metric go to the lowest log loss
    best = min(tied, key=lambda name: (evaluation[name]["test"]["log_loss"], name))
    assert winner["winner"] == best
    assert winner["value"] == pytest.approx(top)


def test_noop_rebuild_runs_no_task(built_project: Project):
    # answered by the build stamp, without loading Ploomber (how fast that is:
    # benchmarks/pipeline.py)
    result = built_project.run("build", check=True)
    assert "Nothing to build: no input changed since the last build (build stamp)." in (
        result.stdout
    )
    # and without the stamp, Ploomber's own check agrees
    (built_project.root / pipeline.STAMP_FILE).unlink()
    result = built_project.run("build", check=True)
    assert "Nothing to build: every task is up to date." in result.stdout, (
        result.stdout + result.stderr
    )


def test_plain_ploomber_build_agrees_nothing_is_outdated(built_project: Project):
    ploomber = str(Path(sys.executable).with_name("ploomber"))
    result = subprocess.run(
        [ploomber, "build"], cwd=built_project.path, env=built_project.env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.split()[:1] in
            ([t] for t in TASKS)]  # fmt: skip
    assert sorted(row[0] for row in rows) == sorted(TASKS)
    assert {row[1] for row in rows} == {"False"}


def test_editing_one_task_reruns_it_and_what_depends_on_it(tmp_path, built_project: Project):
    project = _copy_built(built_project, tmp_path)
    notebook = project.path / "notebooks" / "choose.py"
    notebook.write_text(notebook.read_text() + "\n# %%\nprint('edited')\n")
    result = project.run("build", check=True)
    lines = result.stdout.strip().splitlines()
    ran = lines[-1].split(": ", 1)[1].split(", ")
    assert sorted(ran) == ["choose", "package"]
    # each task as it starts and ends, then every task's status and time, one line each
    # (captured, as in CI: nothing is redrawn)
    assert lines[:4] == ["-> choose", lines[1], "-> package", lines[3]]
    assert re.fullmatch(r"   choose done in \d+\.\d s", lines[1])
    table = {line.split()[0]: line.split()[1:] for line in lines[5:-1]}
    assert table["load"] == ["skipped", "-"] and table["choose"][0] == "ran"
    assert "\r" not in result.stdout


def test_dropping_the_batch_schedule_repackages_a_serving_only_bento(
    tmp_path, built_project: Project
):
    """The schedule is a parameter of the package task: without it the next build runs
    packaging alone, and the bento ships neither nbship.batch nor pyarrow (the image of a
    project that scores no batches stays the serving-only one)."""
    project = _copy_built(built_project, tmp_path)
    assert json.loads((project.bento / "src" / "serving.json").read_text())["batch"] is True
    cfg = project.config
    del cfg["batch"]
    project.write_config(cfg)
    result = project.run("build", check=True)
    assert result.stdout.strip().splitlines()[-1].split(": ", 1)[1] == "package"
    assert project.summary["promoted"], project.summary
    bento = project.bento
    assert json.loads((bento / "src" / "serving.json").read_text())["batch"] is False
    assert not (bento / "src" / "nbship" / "batch").exists()
    pins = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "pyarrow" not in pins and "bentoml==" in pins


def test_a_failing_task_is_named_with_its_cell_and_executed_notebook(
    tmp_path, built_project: Project
):
    project = _copy_built(built_project, tmp_path)
    notebook = project.path / "notebooks" / "choose.py"
    notebook.write_text(notebook.read_text() + "\n# %%\nraise ValueError('no winner today')\n")
    result = project.run("build")
    assert result.returncode == 1
    err = result.stderr.splitlines()
    assert err[0] == "build failed: ValueError: no winner today"
    assert re.fullmatch(r"  in task 'choose', cell \d+: raise ValueError\('no winner today'\)",
                        err[1]), err  # fmt: skip
    executed = "build/reports/choose.ipynb"
    assert err[2] == f"  the executed notebook, with the full traceback: {executed}"
    assert "Traceback" in (project.path / executed).read_text()
    assert "Traceback" not in result.stderr


def _copy_built(built: Project, dest_parent) -> Project:
    dest = dest_parent / "copy"
    shutil.copytree(built.path, dest, symlinks=True)
    return Project(path=dest, env=built.env)


def _tree_digest(folder) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_corrupted_data_fails_validation_and_keeps_the_earlier_bento(
    tmp_path, built_project: Project
):
    project = _copy_built(built_project, tmp_path)
    published = project.bento.resolve()
    before = _tree_digest(published)
    raw = pd.read_parquet(project.root / "data" / "raw.parquet")
    raw.loc[0:4, "bill_length_mm"] = 999.0
    raw.loc[5, "island"] = "Atlantis"
    raw = raw.drop(columns=["year"])
    raw.to_csv(project.path / "corrupted.csv", index=False)
    cfg = project.config
    cfg["data"]["source"] = "corrupted.csv"
    cfg["data"]["sample_rows"] = None
    project.write_config(cfg)

    result = project.run("build")

    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "Data validation failed" in output
    assert "Traceback" not in output  # the cause, not Ploomber's stack
    for expectation, column in [
        ("expect_column_values_to_be_between", "bill_length_mm"),
        ("expect_column_values_to_be_in_set", "island"),
    ]:
        assert any(expectation in line and column in line for line in output.splitlines()), (
            expectation,
            column,
            output[-3000:],
        )
    assert "expect_table_columns_to_match_set" in output
    # nothing downstream ran and the published bento is the same one, byte for byte
    assert project.bento.resolve() == published
    assert _tree_digest(published) == before
    assert not list(project.bento.parent.glob(".*.tmp*"))
