"""Runs a notebook's code cells as they are, in a process of their own, and reports what
they left behind: the fitted scikit-learn estimators and the target-like Series.

`nbship adopt` needs the notebook's objects (which variable holds the fitted model, the
columns it was fitted on, what it refers to), and only running the notebook tells.
IPython runs the cells, so magics (`%matplotlib inline`) work as in Jupyter; the cells
run in the notebook's own folder, so its relative paths resolve. The parent process
reads the report from a JSON file; the notebook's own output goes to its stdout.

    python -m nbship.scaffold.notebook_run CELLS.json REPORT.json
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# variables read as the target when --target is not given
TARGET_NAMES = re.compile(r"^(y|y_\w+|target|labels?)$")


@dataclass
class Estimator:
    name: str
    also_named: list[str]
    cls: str
    task: str
    features: list[str] | None
    notebook_code: str | None  # the refusal message when it uses the notebook's classes


@dataclass
class Report:
    ok: bool
    failed_cell: int | None = None
    error: str | None = None
    estimators: list[Estimator] = field(default_factory=list)
    contained: list[str] = field(default_factory=list)  # fitted, but part of another
    unfitted: list[str] = field(default_factory=list)
    target_names: list[str] = field(default_factory=list)


def _reachable(obj: Any, seen: set[int]) -> None:
    """Adds the id of every estimator held inside `obj` (steps, a search's best model,
    an ensemble's fitted members) to `seen`."""
    from sklearn.base import BaseEstimator

    children: list[Any] = []
    if isinstance(obj, BaseEstimator):
        children += list(obj.get_params(deep=False).values())
        children += [v for k, v in vars(obj).items() if k.endswith("_") and not k.startswith("_")]
    elif isinstance(obj, list | tuple):
        children += list(obj)
    elif isinstance(obj, dict):
        children += list(obj.values())
    for child in children:
        if isinstance(child, BaseEstimator | list | tuple | dict) and id(child) not in seen:
            if isinstance(child, BaseEstimator):
                seen.add(id(child))
            _reachable(child, seen)


def inspect_namespace(namespace: dict[str, Any], project: Path) -> Report:
    """The fitted estimators among `namespace`'s variables, those held inside another one
    set apart (a Pipeline's steps, a search's `best_estimator_`)."""
    import pandas as pd
    from sklearn.base import BaseEstimator

    from nbship import tasks
    from nbship.common.pickled import ModelCodeError, check_no_notebook_code
    from nbship.pipeline.training import is_fitted

    report = Report(ok=True)
    by_id: dict[int, list[str]] = {}
    objects: dict[int, Any] = {}
    for name, value in namespace.items():
        if name.startswith("_") or not isinstance(value, BaseEstimator) or isinstance(value, type):
            if TARGET_NAMES.match(name) and isinstance(value, pd.Series) and value.name:
                report.target_names.append(str(value.name))
            continue
        if not is_fitted(value):
            report.unfitted.append(name)
            continue
        by_id.setdefault(id(value), []).append(name)
        objects[id(value)] = value
    inside: set[int] = set()
    for value in objects.values():
        _reachable(value, inside)
    for key, names in by_id.items():
        if key in inside:
            report.contained += names
            continue
        model = objects[key]
        try:
            check_no_notebook_code(model, project)
            problem = None
        except ModelCodeError as exc:
            problem = str(exc)
        features = getattr(model, "feature_names_in_", None)
        report.estimators.append(
            Estimator(
                name=names[0],
                also_named=names[1:],
                cls=type(model).__name__,
                task=tasks.of_model(model).kind,
                features=[str(c) for c in features] if features is not None else None,
                notebook_code=problem,
            )
        )
    return report


def run(cells: list[str], project: Path) -> Report:
    """Runs `cells` in order in one IPython namespace; stops at the first failing one."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    for index, code in enumerate(cells):
        result = shell.run_cell(code, silent=True)
        error = result.error_before_exec or result.error_in_exec
        if error is not None:
            return Report(ok=False, failed_cell=index, error=f"{type(error).__name__}: {error}")
    return inspect_namespace(shell.user_ns, project)


def main(argv: list[str]) -> int:
    cells_file, report_file = argv
    os.environ.setdefault("MPLBACKEND", "Agg")  # no window for a plot cell
    report = run(json.loads(Path(cells_file).read_text()), Path.cwd())
    Path(report_file).write_text(json.dumps(asdict(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
