"""The Ploomber seam (`nbship.pipeline.dag`) building a tiny throwaway two-notebook
project: what runs, what the stamp and Ploomber's own check skip, failures, status, plots
and exported scripts. Its pure logic is in tests/unit/test_pipeline_module.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from ploomber.exceptions import DAGBuildError, TaskBuildError

from nbship.pipeline import dag as pipeline
from tests.support import DAG_ENV_YAML as ENV_YAML
from tests.support import DAG_NOTEBOOK_A as NOTEBOOK_A
from tests.support import DAG_NOTEBOOK_B as NOTEBOOK_B
from tests.support import write_dag_project

pytestmark = pytest.mark.integration


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_dag_project(tmp_path / "proj")


@pytest.fixture
def built(project: Path) -> Path:
    result = pipeline.build(project)
    assert sorted(result.ran) == ["a", "b"]
    return project


def stamp(project: Path) -> Path:
    return project / "build" / pipeline.STAMP_FILE


def test_build_runs_every_task_then_is_skipped_by_the_stamp(project: Path):
    first = pipeline.build(project)
    assert first == pipeline.BuildResult(ran=first.ran, skipped_by_stamp=False)
    assert sorted(first.ran) == ["a", "b"]
    assert (project / "build" / "a.txt").read_text() == "hello from a"
    assert (project / "build" / "b.txt").read_text() == "HELLO FROM A"
    assert stamp(project).read_text() == pipeline.build_stamp(project)

    second = pipeline.build(project)
    assert second == pipeline.BuildResult(ran=[], skipped_by_stamp=True)


def test_without_the_stamp_ploombers_own_check_runs_nothing(built: Path):
    mtime = (built / "build" / "b.txt").stat().st_mtime_ns
    stamp(built).unlink()
    result = pipeline.build(built)
    assert result == pipeline.BuildResult(ran=[], skipped_by_stamp=False)
    assert (built / "build" / "b.txt").stat().st_mtime_ns == mtime
    assert stamp(built).exists()
    assert pipeline.build(built).skipped_by_stamp


def test_editing_a_downstream_notebook_reruns_only_it(built: Path):
    nb = built / "notebooks" / "b.py"
    nb.write_text(NOTEBOOK_B.replace("text.upper()", "text.upper() + '!'"))
    result = pipeline.build(built)
    assert result == pipeline.BuildResult(ran=["b"], skipped_by_stamp=False)
    assert (built / "build" / "b.txt").read_text() == "HELLO FROM A!"
    assert pipeline.build(built).skipped_by_stamp


def test_a_deleted_product_reruns_its_task_and_downstream(built: Path):
    (built / "build" / "a.txt").unlink()
    result = pipeline.build(built)
    assert result.skipped_by_stamp is False
    assert sorted(result.ran) == ["a", "b"]
    assert (built / "build" / "a.txt").read_text() == "hello from a"


def test_editing_env_yaml_invalidates_the_stamp(built: Path):
    env = built / "env.yaml"
    env.write_text(ENV_YAML + "# a comment\n")
    result = pipeline.build(built)
    assert result == pipeline.BuildResult(ran=[], skipped_by_stamp=False)


def test_force_runs_everything_despite_the_stamp(built: Path):
    result = pipeline.build(built, force=True)
    assert result.skipped_by_stamp is False
    assert sorted(result.ran) == ["a", "b"]


def test_a_failing_notebook_raises_and_leaves_no_stamp(built: Path):
    assert stamp(built).exists()
    nb = built / "notebooks" / "b.py"
    nb.write_text(NOTEBOOK_B + "\n# %%\nraise RuntimeError('boom in b')\n")
    with pytest.raises(pipeline.BuildFailed) as info:
        pipeline.build(built)
    # the task, the cell of its file that raised, the error, and the notebook as it ran
    assert info.value.task == "b"
    assert info.value.cell == "cell 3: raise RuntimeError('boom in b')"
    assert info.value.cause == "RuntimeError: boom in b"
    assert info.value.notebook == built / "build" / "b.ipynb"
    assert isinstance(info.value.__cause__, DAGBuildError | TaskBuildError)
    assert not stamp(built).exists()
    # still failing: the missing stamp means Ploomber is asked again, and fails again
    with pytest.raises(pipeline.BuildFailed):
        pipeline.build(built)
    assert not stamp(built).exists()
    # fixed: only the failed task runs, then the stamp is back
    nb.write_text(NOTEBOOK_B.replace("text.upper()", "text.lower()"))
    assert pipeline.build(built) == pipeline.BuildResult(ran=["b"], skipped_by_stamp=False)
    assert (built / "build" / "b.txt").read_text() == "hello from a"
    assert stamp(built).exists()


def test_a_build_tells_each_task_as_it_starts_and_ends(project: Path):
    events: list[tuple[str, str]] = []
    result = pipeline.build(project, progress=lambda e, task, s: events.append((e, task)))
    # Ploomber's own log of each task (tests the seam: it fails if that log changes)
    assert events == [("start", "a"), ("done", "a"), ("start", "b"), ("done", "b")]
    assert [(t.name, t.ran) for t in result.tasks] == [("a", True), ("b", True)]
    assert all(t.seconds > 0 for t in result.tasks)
    (project / "notebooks" / "b.py").write_text(NOTEBOOK_B + "\n# %%\nprint('edited')\n")
    events.clear()
    again = pipeline.build(project, progress=lambda e, task, s: events.append((e, task)))
    assert events == [("start", "b"), ("done", "b")]
    assert [(t.name, t.ran) for t in again.tasks] == [("a", False), ("b", True)]


def test_a_failing_first_build_writes_no_stamp(project: Path):
    (project / "notebooks" / "a.py").write_text(NOTEBOOK_A + "\n# %%\n1 / 0\n")
    with pytest.raises(pipeline.BuildFailed):
        pipeline.build(project)
    assert not stamp(project).exists()
    assert not (project / "build" / "b.txt").exists()


def test_status_reports_outdated_tasks(project: Path):
    assert {r["task"]: r["outdated"] for r in pipeline.status(project)} == {
        "a": True,
        "b": True,
    }
    pipeline.build(project)
    assert {r["task"]: r["outdated"] for r in pipeline.status(project)} == {
        "a": False,
        "b": False,
    }
    (project / "notebooks" / "b.py").write_text(NOTEBOOK_B + "\nprint('changed')\n")
    assert {r["task"]: r["outdated"] for r in pipeline.status(project)} == {
        "a": False,
        "b": True,
    }
    # status is read-only: it built nothing
    assert (project / "build" / "b.txt").read_text() == "HELLO FROM A"


def test_plot_writes_an_svg_naming_the_tasks(built: Path, tmp_path: Path):
    default = pipeline.plot(built)
    assert default == built / "build" / "pipeline.svg"
    out = pipeline.plot(built, tmp_path / "figs" / "dag.svg")
    assert out == tmp_path / "figs" / "dag.svg"
    for path in (default, out):
        svg = path.read_text()
        assert "<svg" in svg
        # matplotlib draws text as paths and keeps each string in a comment
        labels = set(re.findall(r"<!-- (.*?) -->", svg))
        assert {"a", "b"} <= labels


def test_export_scripts_in_dependency_order_reproduce_the_products(built: Path, tmp_path: Path):
    expected = {
        "a": (built / "build" / "a.txt").read_text(),
        "b": (built / "build" / "b.txt").read_text(),
    }
    scripts = pipeline.export_scripts(built, tmp_path / "scripts")
    assert [s.name for s in scripts] == ["00-a.py", "01-b.py"]
    a_text, b_text = (s.read_text() for s in scripts)
    # the injected parameters cell carries the resolved upstream and products
    assert "injected-parameters" in a_text
    a_data = str(built / "build" / "a.txt")
    b_data = str(built / "build" / "b.txt")
    assert f'"data": "{a_data}"' in a_text
    assert "upstream = {" in b_text
    assert f'"a": {{"nb": "{built / "build" / "a.ipynb"}", "data": "{a_data}"}}' in b_text
    assert f'"data": "{b_data}"' in b_text

    for name in ("a.txt", "b.txt"):
        (built / "build" / name).unlink()
    for script in scripts:
        subprocess.run(
            [sys.executable, str(script)], cwd=built, check=True, capture_output=True, timeout=60
        )
    assert (built / "build" / "a.txt").read_text() == expected["a"]
    assert (built / "build" / "b.txt").read_text() == expected["b"]
