"""A task's notebook run by hand (JupyterLab's Run All, a plain kernel): the values a build
would pass it, without changing the file.

In a build Ploomber injects a cell after the parameters cell, so `product` is a dict of
paths. Run by hand nothing is injected: `upstream` is still the list of task names and
`product` is None. `as_in_build(globals())`, one line of the notebook, then fills in
what `nbship build` would pass, in the folder a build runs it in: the task's parameters
from env.yaml and pipeline.yaml, its upstream tasks' real products, and its own products
under `.nbship/hand-run/` (a hand run never overwrites a build's products unless asked).
In a build it does nothing.
The file on disk keeps only that line: no injected cell, no absolute path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

from nbship.pipeline.dag import TaskCall, task_calls
from nbship.project import PIPELINE_FILE, STATE_DIR

SCRATCH = f"{STATE_DIR}/hand-run"
# which notebook the kernel runs: ipykernel's `__session__` (from Jupyter's
# JPY_SESSION_NAME), VS Code's own name for it, or this variable
TASK_FILE_ENV = "NBSHIP_TASK_FILE"


class HandRunError(RuntimeError):
    """The notebook cannot be run by hand yet; the message says what to do."""


def as_in_build(namespace: MutableMapping[str, Any], *, write_products: bool = False) -> None:
    """Sets `upstream`, `product` and the task's parameters in `namespace` (the notebook's
    `globals()`) to what a build passes; nothing when a build already injected them.

    Products go under `<project>/.nbship/hand-run/` unless `write_products=True`. Raises
    HandRunError naming the task to build first when an upstream product is missing.
    """
    if isinstance(namespace.get("product"), Mapping):
        return  # injected by the build
    notebook = _notebook_file(namespace)
    project = _project_of(notebook)
    calls = task_calls(project, notebook)
    if not calls:
        raise HandRunError(f"no task of {project / PIPELINE_FILE} runs {notebook.name}")
    call = _matching(calls, namespace)
    missing = {
        task: path
        for task, products in call.upstream.items()
        for path in products.values()
        if not Path(path).exists()
    }
    if missing:
        first = next(iter(missing))
        raise HandRunError(
            f"task {call.name!r} reads what {', '.join(sorted(missing))} "
            f"{'makes' if len(missing) == 1 else 'make'}, which is not built yet "
            f"({missing[first]} is missing). Build it first: `nbship build` in {project} "
            f"(from JupyterLab: File > New > Terminal), then run this notebook again."
        )
    product = call.product if write_products else _scratch(call.product, project)
    for path in product.values():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # a build runs every task in the project folder (env.yaml's paths are relative to
    # it); a kernel starts in the notebook's
    os.chdir(project)
    namespace.update(call.params)
    namespace["upstream"] = call.upstream
    namespace["product"] = product
    where = "the build's own products" if write_products else f"{project / SCRATCH}"
    print(f"run by hand as task {call.name!r}: parameters from env.yaml; products to {where}")


def _notebook_file(namespace: Mapping[str, Any]) -> Path:
    for candidate in (
        os.environ.get(TASK_FILE_ENV),
        namespace.get("__session__"),
        namespace.get("__vsc_ipynb_file__"),
    ):
        if candidate:
            return Path(str(candidate)).resolve()
    raise HandRunError(
        "cannot tell which notebook this kernel runs (no Jupyter session name): "
        f"set {TASK_FILE_ENV}=notebooks/<task>.py"
    )


def _project_of(notebook: Path) -> Path:
    for folder in notebook.parents:
        if (folder / PIPELINE_FILE).is_file():
            return folder
    raise HandRunError(f"{notebook} is in no project: no {PIPELINE_FILE} above it")


def _matching(calls: list[TaskCall], namespace: Mapping[str, Any]) -> TaskCall:
    """Of a grid's tasks, the one whose grid values the parameters cell holds (the train
    notebook's `candidate = "logreg"` runs as train-logreg); else the first."""
    for call in calls:
        varying = {k for k in call.params if any(c.params.get(k) != call.params[k] for c in calls)}
        if varying and all(namespace.get(k) == call.params[k] for k in varying):
            return call
    return calls[0]


def _scratch(product: Mapping[str, str], project: Path) -> dict[str, str]:
    scratch = project / SCRATCH
    moved = {}
    for key, path in product.items():
        target = Path(path)
        relative = (
            target.relative_to(project) if target.is_relative_to(project) else Path(target.name)
        )
        moved[key] = str(scratch / relative)
    return moved
