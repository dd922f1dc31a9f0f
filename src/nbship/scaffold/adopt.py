"""`nbship adopt`: an exploration notebook becomes the train task of a new project,
keeping the user's code.

What changes, each shown in the diff it prints:
- a parameters cell at the top (`upstream`, `product` and the values pipeline.yaml
  passes), so Ploomber can run it;
- the one `read_csv`/`read_parquet` call that loads the table now reads the pipeline's
  training split (the test split is held out for nbship's evaluation; the notebook's own
  split, if any, now splits the training split);
- a last cell hands the fitted model to the pipeline with `save_candidate`.

The notebook is run once as it is, in its own folder and process, before anything is
written: that tells which variable holds the fitted model (`--model`, or the rule in
MODEL_RULE), the columns it was fitted on (the served request's fields) and whether it
uses code the server could not import. Any refusal writes nothing.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbship.scaffold.init import InitError, InitResult, init_project, project_name

READERS = ("read_csv", "read_parquet")
MODEL_RULE = (
    "the model is the one fitted scikit-learn estimator left in the notebook's variables"
    " that no other one holds (a Pipeline's steps and a search's best_estimator_ are part"
    " of it)"
)
PARAMETERS = (
    'upstream = ["split"]\n'
    "product = None\n"
    'candidate = "{name}"\n'
    "hyperparams = {{}}\n"
    'features = {{"numeric": [], "categorical": []}}\n'
    'target = "{target}"'
)
EXPORT = (
    "# added by nbship adopt: the fitted model, scored on the training split, goes to the\n"
    "# pipeline (columns and target are spelt out: the notebook may use those names itself)\n"
    "import pandas\n"
    "\n"
    "from nbship.pipeline.training import save_candidate\n"
    "\n"
    '_nbship_train = pandas.read_parquet(upstream["split"]["train"])\n'
    "save_candidate(\n"
    "    {model},\n"
    "    product,\n"
    "    _nbship_train[{columns}],\n"
    "    _nbship_train[{target}],\n"
    '    name="{name}",\n'
    ")"
)
# a hand run (JupyterLab's Run All) gets what a build passes; in a build it does nothing
HAND_RUN = (
    "# Run by hand (JupyterLab's Run All): the values `nbship build` passes; in a build, nothing.\n"
    "from nbship.pipeline.hand_run import as_in_build\n"
    "\n"
    "as_in_build(globals())"
)
RUN_TIMEOUT_S = 900


class AdoptError(ValueError):
    """The notebook cannot be adopted as it is; the message says why and what to do."""


@dataclass(frozen=True)
class DataRead:
    cell: int  # index among the code cells
    path: str
    start: tuple[int, int]  # (line, col) of the call, 1-based lines as ast gives them
    end: tuple[int, int]
    module: str  # the text before `.read_csv`, e.g. "pd"


@dataclass(frozen=True)
class AdoptResult:
    project: InitResult
    model: str
    rule: str
    diff: str


def _code_cells(notebook: Any) -> list[Any]:
    return [c for c in notebook.cells if c.cell_type == "code"]


def _parse(source: str) -> ast.Module | None:
    """The cell as Python, magics (`%...`, `!...`) blanked; None when it is not Python."""
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.split("\n")]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def find_reads(cells: Sequence[str]) -> list[DataRead]:
    """Every `<module>.read_csv("file")` / `read_parquet("file")` with a literal path."""
    reads = []
    for index, source in enumerate(cells):
        tree = _parse(source)
        for node in ast.walk(tree) if tree else ():
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in READERS
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                assert node.end_lineno is not None and node.end_col_offset is not None
                reads.append(
                    DataRead(
                        cell=index,
                        path=node.args[0].value,
                        start=(node.lineno, node.col_offset),
                        end=(node.end_lineno, node.end_col_offset),
                        module=ast.get_source_segment(source, node.func.value) or "pd",
                    )
                )
    return reads


def _replace(source: str, read: DataRead, text: str) -> str:
    lines = source.split("\n")
    (l1, c1), (l2, c2) = read.start, read.end
    before, after = lines[l1 - 1][:c1], lines[l2 - 1][c2:]
    return "\n".join([*lines[: l1 - 1], before + text + after, *lines[l2:]])


def _run(notebook_path: Path, cells: Sequence[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="nbship-adopt-") as tmp:
        cells_file, report_file = Path(tmp) / "cells.json", Path(tmp) / "report.json"
        cells_file.write_text(json.dumps(list(cells)))
        env = {**os.environ, "MPLBACKEND": "Agg"}
        try:
            done = subprocess.run(
                [sys.executable, "-m", "nbship.scaffold.notebook_run", str(cells_file),
                 str(report_file)],
                cwd=notebook_path.parent, env=env, capture_output=True, text=True,
                timeout=RUN_TIMEOUT_S,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise AdoptError(
                f"{notebook_path.name} ran for more than {RUN_TIMEOUT_S} s: adopt runs it once"
                " to find the model; make it quicker (a sample of the data) first"
            ) from None
        if done.returncode != 0 or not report_file.exists():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise AdoptError(f"running {notebook_path.name} failed: {last}")
        report: dict[str, Any] = json.loads(report_file.read_text())
        return report


def _choose_model(
    report: dict[str, Any], wanted: str | None, name: str
) -> tuple[dict[str, Any], str]:
    found = {e["name"]: e for e in report["estimators"]}
    for e in report["estimators"]:
        found.update({alias: e for alias in e["also_named"]})
    if wanted is not None:
        if wanted in found:
            return found[wanted], f"--model {wanted}"
        if wanted in report["contained"]:
            raise AdoptError(
                f"--model {wanted}: it is part of another fitted estimator; name the outer one"
            )
        if wanted in report["unfitted"]:
            raise AdoptError(f"--model {wanted}: it is not fitted when the notebook ends")
        known = sorted(found) or ["none"]
        raise AdoptError(f"--model {wanted}: no fitted estimator by that name (found: {known})")
    estimators = report["estimators"]
    if not estimators:
        unfitted = f" ({', '.join(report['unfitted'])} is not fitted)" if report["unfitted"] else ""
        raise AdoptError(
            f"{name} ends with no fitted scikit-learn estimator{unfitted}: fit the model in"
            " the notebook (model.fit(X, y)), then adopt it"
        )
    if len(estimators) > 1:
        names = ", ".join(e["name"] for e in estimators)
        raise AdoptError(
            f"{name} ends with {len(estimators)} fitted estimators ({names}): name the one to"
            " serve with --model"
        )
    return estimators[0], MODEL_RULE


def _target(report: dict[str, Any], given: str | None, columns: Sequence[str]) -> str:
    if given is not None:
        return given
    found = sorted({t for t in report["target_names"] if t in columns})
    if len(found) == 1:
        return found[0]
    seen = f" (candidates: {', '.join(found)})" if found else ""
    raise AdoptError(f"cannot tell the target column{seen}: name it with --target")


def _percent(notebook: Any) -> str:
    import jupytext

    text: str = jupytext.writes(notebook, fmt="py:percent")
    return text


def adopt_notebook(
    notebook_path: Path,
    dest: Path,
    *,
    model: str | None = None,
    target: str | None = None,
    data: str | None = None,
    drop: Sequence[str] = (),
) -> AdoptResult:
    """Writes a project at `dest` whose train task is `notebook_path`, adopted."""
    import jupytext
    import pandas as pd
    from nbformat.v4 import new_code_cell, new_markdown_cell

    from nbship.pipeline import data as data_module

    notebook_path = Path(notebook_path).resolve()
    if not notebook_path.is_file():
        raise AdoptError(f"{notebook_path}: no such notebook")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise AdoptError(f"{dest} exists and is not an empty folder: choose a new one")
    try:
        notebook = jupytext.read(notebook_path)
    except Exception as exc:  # jupytext raises many kinds for a file it cannot read
        raise AdoptError(f"{notebook_path.name} cannot be read as a notebook: {exc}") from None
    cells = [c.source for c in _code_cells(notebook)]

    before = _percent(notebook)
    adopted = jupytext.reads(before, fmt="py:percent")
    # a plain percent file reads back with every cell's metadata filtered out; the
    # parameters cell's tag must be written (and no jupytext header)
    adopted.metadata["jupytext"] = {
        "cell_metadata_filter": "tags,-all",
        "notebook_metadata_filter": "-all",
    }
    code = _code_cells(adopted)
    reads = find_reads([c.source for c in code])
    paths = sorted({r.path for r in reads})
    if not paths:
        raise AdoptError(
            f"{notebook_path.name} reads no table with pandas (read_csv/read_parquet of a file"
            " name): adopt points that read at the pipeline's training split, so it needs one"
        )
    if data is not None:
        paths = [p for p in paths if Path(p).name == Path(data).name] or paths
    if len(paths) > 1:
        raise AdoptError(
            f"{notebook_path.name} reads several tables ({', '.join(paths)}): adopt takes"
            " one; pass the one to train on with --data"
        )
    source = data or str((notebook_path.parent / paths[0]).resolve())

    report = _run(notebook_path, cells)
    if not report["ok"]:
        raise AdoptError(
            f"{notebook_path.name} fails in code cell {report['failed_cell'] + 1}:"
            f" {report['error'].rstrip('.')}. Adopt runs the notebook as it is: make it run first"
        )
    chosen, rule = _choose_model(report, model, notebook_path.name)
    if chosen["notebook_code"]:
        raise AdoptError(chosen["notebook_code"])
    if not chosen["features"]:
        raise AdoptError(
            f"{chosen['name']} was fitted on an array, not a table: fit it on a DataFrame of"
            " the data's columns, so that the served API knows its fields"
        )
    try:
        table = data_module.load_source(source)
    except (OSError, ValueError) as exc:
        raise AdoptError(f"the data {source}: {exc}") from None
    target = _target(report, target, list(table.columns))
    missing = [c for c in chosen["features"] if c not in table.columns]
    if missing:
        raise AdoptError(
            f"{chosen['name']} was fitted on columns the data does not have ({missing}): nbship"
            " serves the model on the table's own columns; compute them inside the model"
            " (a FunctionTransformer or a transformer class in a module of the project)"
        )
    numeric = [
        c for c in chosen["features"]
        if pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c])
    ]  # fmt: skip
    categorical = [c for c in chosen["features"] if c not in numeric]

    name = project_name(Path(notebook_path.stem))
    # from the last read back, so that a replacement does not move the next one
    for read in sorted((r for r in reads if r.path == paths[0]), key=lambda r: (r.cell, r.start),
                       reverse=True):  # fmt: skip
        code[read.cell].source = _replace(
            code[read.cell].source, read, f'{read.module}.read_parquet(upstream["split"]["train"])'
        )
    parameters = new_code_cell(
        PARAMETERS.format(name=name, target=target), metadata={"tags": ["parameters"]}
    )
    first = 1 if adopted.cells and adopted.cells[0].cell_type == "markdown" else 0
    adopted.cells.insert(first, parameters)
    adopted.cells.insert(first + 1, new_code_cell(HAND_RUN))
    adopted.cells.append(
        new_markdown_cell(
            "The hand-off (added by `nbship adopt`): the fitted model goes to the pipeline,\n"
            "which evaluates it on its held-out test split and packages it if it wins."
        )
    )
    export = EXPORT.format(
        model=chosen["name"],
        name=name,
        columns=json.dumps(chosen["features"]),
        target=json.dumps(target),
    )
    adopted.cells.append(new_code_cell(export))
    after = _percent(adopted)
    diff = "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True), after.splitlines(keepends=True),
            f"{notebook_path.name} (as percent text)", "notebooks/train.py",
        )
    )  # fmt: skip
    try:
        result = init_project(
            dest, source, target, drop=drop, features=(numeric, categorical),
            candidates=[name], train_notebook=after.encode(),
        )  # fmt: skip
    except InitError as exc:
        raise AdoptError(str(exc)) from None
    return AdoptResult(project=result, model=chosen["name"], rule=rule, diff=diff)
