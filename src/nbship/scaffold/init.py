"""`nbship init`: a new project, ready to build on the user's data (or on a demo table).

The project is written in a temporary folder beside its destination and moved into place
only once every file is written and its env.yaml passes the config schema, so a refusal
or a failure leaves nothing half-written.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from nbship import config as config_module
from nbship import tasks
from nbship.scaffold import templates

if TYPE_CHECKING:
    import pandas as pd

DATA_DIR = "data"
SUITES_DIR = "expectations"
# at most this many pinned golden rows, and never more than a quarter of the table
GOLDEN_ROWS = 60
CANDIDATES = ("linear", "forest")
HYPERPARAMS = {
    "classification": {
        "linear": {"C": 1.0, "max_iter": 1000},
        "forest": {"n_estimators": 100, "max_depth": 8, "random_state": 0},
        "hist_gb": {"max_iter": 100, "random_state": 0},
    },
    "regression": {
        "linear": {"alpha": 1.0},
        "forest": {"n_estimators": 100, "max_depth": 8, "random_state": 0},
        "hist_gb": {"max_iter": 100, "random_state": 0},
    },
}
DEMO_DATA = "iris.csv"
DEMO_TARGET = "flower"


class InitError(ValueError):
    """The project cannot be written as asked; the message says why and what to do."""


@dataclass(frozen=True)
class InitResult:
    path: Path
    task: str
    task_reason: str
    source: str
    target: str
    numeric: list[str]
    categorical: list[str]
    files: list[str]
    notes: list[str] = field(default_factory=list)


def demo_table() -> pd.DataFrame:
    """scikit-learn's bundled iris table with readable names and the flowers named: the
    data of a project started without `--data` (nothing is downloaded)."""
    from sklearn.datasets import load_iris

    bunch = load_iris(as_frame=True)
    frame = bunch.frame.rename(
        columns=lambda c: re.sub(r"\W+", "_", c.replace(" (cm)", "_cm")).strip("_")
    )
    frame[DEMO_TARGET] = [bunch.target_names[i] for i in frame.pop("target")]
    return frame


def project_name(dest: Path) -> str:
    """The folder's name as a BentoML name (lowercase letters, digits, `_.-`)."""
    name = re.sub(r"[^a-z0-9_.-]+", "_", dest.resolve().name.lower()).strip("_.-")
    if not name or not name[0].isalnum():
        name = f"model_{name}".rstrip("_")
    return name


def _check_destination(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InitError(f"{dest} exists and is not an empty folder: choose a new one")


def _record(row: pd.Series) -> dict[str, Any]:
    """One row as the API takes it (a missing value as null)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        item = value.item() if hasattr(value, "item") else value
        out[str(key)] = None if isinstance(item, float) and math.isnan(item) else item
    return out


def _flow(value: Any) -> str:
    """A value as YAML flow text on one line (lists, strings)."""
    return (
        yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...")
    )


def _hyperparams(task: str, candidates: Sequence[str]) -> str:
    """The template's hyperparameters, when the candidates are the template's."""
    known = HYPERPARAMS[task] if set(candidates) <= set(HYPERPARAMS[task]) else {}
    lines = [f"  {name}: {_flow(params)}" for name, params in known.items()]
    return "\n".join(lines) or "  {}"


def init_project(
    dest: Path,
    data: str | None = None,
    target: str | None = None,
    *,
    task: str = "auto",
    drop: Sequence[str] = (),
    copy_data: bool = True,
    features: tuple[list[str], list[str]] | None = None,
    candidates: Sequence[str] = CANDIDATES,
    train_notebook: bytes | None = None,
) -> InitResult:
    """Writes a project at `dest` for `data` (a .csv/.parquet file, or `module:function`)
    and its `target` column; with no data, for the demo iris table.

    `nbship adopt` passes the adopted notebook as `train_notebook`, its model's columns as
    `features` (numeric, categorical) and its one candidate; by default the features are
    the profiled columns and the train notebook the template of the task."""
    from nbship.pipeline import data as data_module
    from nbship.pipeline.profile import profile_table

    dest = Path(dest)
    _check_destination(dest)
    if data is None and target is not None:
        raise InitError("--target needs --data: the column of which table?")
    if data is not None and target is None:
        raise InitError("--data needs --target: which column should the model predict?")
    source_file: Path | None = None
    demo = data is None
    if demo:
        table = demo_table()
        target = DEMO_TARGET
        source = f"{DATA_DIR}/{DEMO_DATA}"
    else:
        assert data is not None and target is not None
        is_file = Path(data).suffix in (".csv", ".parquet")
        if is_file:
            source_file = Path(data).resolve()
            if not source_file.is_file():
                raise InitError(f"--data {data}: no such file")
            source = f"{DATA_DIR}/{source_file.name}" if copy_data else str(source_file)
        else:
            source = data
        try:
            table = data_module.load_source(str(source_file or data))
        except (OSError, ValueError) as exc:
            raise InitError(f"--data {data}: {exc}") from None
    assert target is not None
    if target not in table.columns:
        raise InitError(
            f"--target {target!r} is not a column of the data; its columns: {list(table.columns)}"
        )
    unknown = sorted(set(drop) - set(table.columns))
    if unknown:
        raise InitError(f"--drop {unknown}: not columns of the data")
    if target in drop:
        raise InitError(f"--drop names the target {target!r}")
    table = table.drop(columns=list(drop))
    try:
        chosen, reason = tasks.resolve(task, table[target])
    except ValueError as exc:
        raise InitError(f"--task: {exc}") from None
    profile = profile_table(table, target)
    numeric, categorical = features or (profile.features.numeric, profile.features.categorical)
    if not numeric and not categorical:
        raise InitError("the data has no column usable as a feature besides the target")

    name = project_name(dest)
    suite_path = f"{SUITES_DIR}/{name}.json"
    values = {
        "project": name,
        "package": name.replace("-", "_").replace(".", "_"),
        "source": _flow(source),
        "source_name": Path(source).name if source_file or demo else source,
        "drop": _flow(list(drop)),
        "suite": suite_path,
        "target": _flow(target),
        # written out as decided, so the user sees it and can change it
        "task": chosen.kind,
        "task_kind": chosen.kind,
        "task_reason": reason.removeprefix(f"task: {chosen.kind} "),
        "default_metric": chosen.default_metric,
        "numeric": _flow(numeric),
        "categorical": _flow(categorical),
        "golden_size": str(max(1, min(GOLDEN_ROWS, len(table) // 4))),
        "candidates": _flow(list(candidates)),
        "hyperparams": _hyperparams(chosen.kind, candidates),
        "bento_name": name,
        "nbship_version": importlib.metadata.version("nbship"),
        "example_record": json.dumps(_record(table[numeric + categorical].iloc[0])),
    }
    files = templates.project_files(values)
    files["notebooks/train.py"] = train_notebook or templates.train_notebook(chosen.kind)
    files[suite_path] = (json.dumps(profile.suite, indent=2) + "\n").encode()
    # the rendered env.yaml must be one the schema accepts: fail here, not at build
    try:
        config_module.validate(yaml.safe_load(files["env.yaml"]), source="the new env.yaml")
    except config_module.ConfigError as exc:
        raise InitError(f"nbship init wrote an env.yaml it cannot read: {exc}") from None

    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for relative, content in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        if demo:
            (staging / DATA_DIR).mkdir(exist_ok=True)
            table.to_csv(staging / source, index=False)
        elif source_file is not None and copy_data:
            (staging / DATA_DIR).mkdir(exist_ok=True)
            shutil.copy2(source_file, staging / source)
        if dest.exists():
            dest.rmdir()  # empty, checked above
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    written = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    return InitResult(
        path=dest,
        task=chosen.kind,
        task_reason=reason,
        source=source,
        target=target,
        numeric=numeric,
        categorical=categorical,
        files=written,
        notes=list(profile.notes),
    )
