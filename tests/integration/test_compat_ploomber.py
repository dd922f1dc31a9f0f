"""The Ploomber behaviour `nbship.pipeline.dag` relies on for "outdated" (in `status` and
`plot`) is still what it was: after a render, a task's public `exec_status` says whether
the next build runs it, and that agrees with what a build then runs. Each failure names
the installed Ploomber version and the version checked.

Integration, not unit: it builds a tiny two-notebook DAG (a -> b) in a temp folder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import ploomber
import pytest

from nbship.pipeline import dag as pipeline

pytestmark = pytest.mark.integration

CHECKED_VERSION = "0.23.3"

PIPELINE_YAML = """\
tasks:
  - source: notebooks/a.py
    name: a
    executor: ploomber-engine
    executor_params: {progress_bar: false}
    product:
      nb: "{{root}}/a.ipynb"
      data: "{{root}}/a.txt"
  - source: notebooks/b.py
    name: b
    executor: ploomber-engine
    executor_params: {progress_bar: false}
    product:
      nb: "{{root}}/b.ipynb"
      data: "{{root}}/b.txt"
"""

ENV_YAML = """\
root: build
bentos: bentos
bento: {name: x}
"""

NOTEBOOK_A = """\
# %% tags=["parameters"]
upstream = None
product = None

# %%
from pathlib import Path

Path(product["data"]).write_text("a")
"""

NOTEBOOK_B = """\
# %% tags=["parameters"]
upstream = ["a"]
product = None

# %%
from pathlib import Path

Path(product["data"]).write_text(Path(upstream["a"]["data"]).read_text() + "b")
"""


def broken(what: str) -> str:
    return (
        f"checked against ploomber {CHECKED_VERSION}, found {ploomber.__version__}: {what}."
        " Adapt nbship.pipeline.dag._will_run (and this test) to this version."
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "notebooks").mkdir(parents=True)
    (root / "pipeline.yaml").write_text(PIPELINE_YAML)
    (root / "env.yaml").write_text(ENV_YAML)
    (root / "notebooks" / "a.py").write_text(NOTEBOOK_A)
    (root / "notebooks" / "b.py").write_text(NOTEBOOK_B)
    return root


def rendered_statuses(project: Path) -> dict[str, str]:
    """Each task's exec_status name after a plain (not forced) render, as status() does."""
    with contextlib.chdir(project):  # Ploomber resolves products against the cwd
        dag = pipeline.load_dag(project)
        dag.render(show_progress=False)
        return {name: task.exec_status.name for name, task in dag.items()}


def outdated(project: Path) -> dict[str, bool]:
    return {row["task"]: row["outdated"] for row in pipeline.status(project)}


def ran(project: Path) -> dict[str, bool]:
    """What Ploomber itself runs: the stamp is removed so that it decides every task."""
    (project / "build" / pipeline.STAMP_FILE).unlink(missing_ok=True)
    done = set(pipeline.build(project).ran)
    return {name: name in done for name in ("a", "b")}


def test_the_statuses_relied_on_are_still_there():
    from ploomber.constants import TaskStatus

    names = {status.name for status in TaskStatus}
    assert {"WaitingExecution", "WaitingUpstream", "Skipped"} <= names, broken(
        f"ploomber.constants.TaskStatus is {sorted(names)}"
    )


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_rendered_exec_status_says_what_the_next_build_runs(project: Path):
    notebooks, products = project / "notebooks", project / "build"
    steps: list[tuple[str, Callable[[], object], dict[str, str], dict[str, bool]]] = [
        # (state, how to get there, exec_status after a render, outdated: what runs next)
        (
            "nothing built",
            lambda: None,
            {"a": "WaitingExecution", "b": "WaitingUpstream"},
            {"a": True, "b": True},
        ),
        ("all built", lambda: None, {"a": "Skipped", "b": "Skipped"}, {"a": False, "b": False}),
        (
            "b's notebook edited",
            lambda: append(notebooks / "b.py", "\nprint('b')\n"),
            {"a": "Skipped", "b": "WaitingExecution"},
            {"a": False, "b": True},
        ),
        (
            "a's notebook edited",
            lambda: append(notebooks / "a.py", "\nprint('a')\n"),
            {"a": "WaitingExecution", "b": "WaitingUpstream"},
            {"a": True, "b": True},
        ),
        (
            "a's products deleted",
            lambda: [(products / name).unlink() for name in ("a.txt", "a.ipynb")],
            {"a": "WaitingExecution", "b": "WaitingUpstream"},
            {"a": True, "b": True},
        ),
    ]
    for state, change, statuses, expected in steps:
        change()
        found = rendered_statuses(project)
        assert found == statuses, broken(f"{state}: rendered exec_status {found}, not {statuses}")
        said = outdated(project)
        assert said == expected, broken(f"{state}: status() says outdated {said}, not {expected}")
        # and Ploomber agrees: the build runs exactly the outdated tasks
        did = ran(project)
        assert did == expected, broken(f"{state}: the build ran {did}, status said {expected}")
    assert (products / "b.txt").read_text() == "ab"
