"""The only module that touches Ploomber (archived upstream: keep it behind this seam).

`build` adds one thing in front of Ploomber: a build stamp. Ploomber's own up-to-date
check needs its import and the rendered DAG (several seconds), so after a successful
build we record a hash of everything a build reads (definition files, package source,
products' sizes and mtimes). When nothing of that changed, there is nothing Ploomber
could re-run, and `build` returns at once. Any difference falls through to Ploomber,
which decides task by task as usual.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from nbship.config import DEFAULT_BENTOS, DEFAULT_ROOT, ENV_FILE, ProjectConfig, read_raw
from nbship.project import PIPELINE_FILE, STATE_DIR

STAMP_FILE = ".nbship-build-stamp"

# held while a build runs (outside the products, whose listing the stamp hashes)
LOCK_FILE = f"{STATE_DIR}/build.lock"
PLOT_FILE = "pipeline.svg"
# Files under the products folder that no task makes: they must not void the stamp.
NOT_PRODUCTS = {STAMP_FILE, PLOT_FILE}
# What a build reads, relative to the project folder.
INPUT_PATTERNS = (
    PIPELINE_FILE,
    ENV_FILE,
    "uv.lock",
    "notebooks/*.py",
    "expectations/*.json",
)


@dataclass(frozen=True)
class TaskRun:
    name: str
    ran: bool
    seconds: float


@dataclass(frozen=True)
class BuildResult:
    ran: list[str]
    skipped_by_stamp: bool
    # every task in pipeline order, with its time (not part of what a build "is")
    tasks: list[TaskRun] = field(default_factory=list, compare=False)


# what a build reports as it goes: ("start", task, None) and ("done", task, seconds)
Progress = Callable[[str, str, float | None], None]


class BuildFailed(RuntimeError):
    """A task failed: which one, where in its notebook, and the executed notebook that
    holds the full traceback (Ploomber's own error is the __cause__)."""

    def __init__(self, task: str | None, cause: str, notebook: Path | None, cell: str | None):
        super().__init__(cause)
        self.task, self.cause, self.notebook, self.cell = task, cause, notebook, cell


def _product_dirs(project_dir: Path) -> list[Path]:
    """Where the tasks' products go (env.yaml `root` and `bentos`). Read from the raw file:
    this seam runs any Ploomber project; nbship's own checks of env.yaml come first."""
    raw = read_raw(project_dir)
    return [
        project_dir / str(raw.get("root") or DEFAULT_ROOT),
        project_dir / str(raw.get("bentos") or DEFAULT_BENTOS),
    ]


def build_stamp(project_dir: Path) -> str:
    """Hash of the build's inputs and of its products' file listing."""
    digest = hashlib.sha256()
    inputs = [p for pattern in INPUT_PATTERNS for p in sorted(project_dir.glob(pattern))]
    inputs += sorted(Path(__file__).parents[1].rglob("*.py"))  # all of nbship
    for path in inputs:
        digest.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
    for folder in _product_dirs(project_dir):
        for path in sorted(_walk(folder)):
            if path.name in NOT_PRODUCTS:
                continue
            st = path.lstat()
            digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return digest.hexdigest()


def _walk(folder: Path) -> Iterator[Path]:
    if not folder.exists():
        return
    for dirpath, _, files in os.walk(folder, followlinks=True):
        for name in files:
            yield Path(dirpath) / name


def _stamp_path(project_dir: Path) -> Path:
    return _product_dirs(project_dir)[0] / STAMP_FILE


@contextlib.contextmanager
def _in(project_dir: Path) -> Iterator[None]:
    # Ploomber resolves relative products against the working directory.
    previous = Path.cwd()
    os.chdir(project_dir)
    try:
        yield
    finally:
        os.chdir(previous)


def load_dag(project_dir: Path) -> Any:
    """The Ploomber DAG of `pipeline.yaml` with `env.yaml` beside it, plus the defaults of
    the settings that a pipeline.yaml may name and env.yaml may leave out."""
    from ploomber.spec import DAGSpec

    pipeline_text = (project_dir / PIPELINE_FILE).read_text()
    defaults = placeholder_defaults(read_raw(project_dir), placeholders(pipeline_text))
    with _in(project_dir), warnings.catch_warnings():
        # env.yaml also holds nbship's own settings (container, kubernetes) that no task uses
        warnings.filterwarnings("ignore", message=".*declared in the environment but unused")
        return DAGSpec(str(project_dir / PIPELINE_FILE), env=defaults or None).to_dag()


_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][\w.]*)\s*\}\}")


def placeholders(pipeline_text: str) -> set[str]:
    """The `{{name}}` and `{{section.key}}` placeholders a pipeline.yaml names."""
    return set(_PLACEHOLDER.findall(pipeline_text))


def placeholder_defaults(raw: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """The defaults, from the one schema (`nbship.config`), of the settings env.yaml leaves
    out, for pipeline.yaml's placeholders (Ploomber knows only what env.yaml holds).

    A whole section env.yaml lacks gets its defaults; a section it has gets only the keys
    pipeline.yaml names by `{{section.key}}` (`data:` without `drop`). A section passed
    whole (`{{gates}}`) is left as env.yaml wrote it, so that a plain `ploomber build`
    renders the same parameters and agrees on what is up to date. Values are JSON-safe:
    Ploomber renders a tuple as the string '()'.
    """
    defaults: dict[str, Any] = {}
    for name, spec in ProjectConfig.model_fields.items():
        if name in raw:
            section = spec.annotation
            sub = raw[name]
            if not (isinstance(section, type) and issubclass(section, BaseModel)):
                continue
            if not isinstance(sub, dict):
                continue
            missing = {
                key: _default(field)
                for key, field in section.model_fields.items()
                if f"{name}.{key}" in names and key not in sub and not field.is_required()
            }
            if missing:
                defaults[name] = {**sub, **missing}
            continue
        if not spec.is_required() and (value := _default(spec)) is not None:
            defaults[name] = value
    return defaults


def _default(field: FieldInfo) -> Any:
    return to_jsonable_python(field.get_default(call_default_factory=True))


class BuildBusy(RuntimeError):
    """Another build (or retrain) of the same project is running."""


@contextlib.contextmanager
def build_lock(project_dir: Path, shared: bool = False) -> Iterator[None]:
    """Held for a whole build: two runs writing the same products would mix them. The
    kernel drops the lock with its process, so a killed build never blocks the next.
    `shared`: one task of an exported workflow (`build_task`); independent steps run at
    the same time, as Argo runs them, each writing only its own products, while a whole
    build still excludes them all."""
    path = project_dir / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise BuildBusy(f"another build of {project_dir} is running (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def build(
    project_dir: str | Path = ".", force: bool = False, progress: Progress | None = None
) -> BuildResult:
    """Runs what is outdated, telling `progress` as each task starts and ends; a failing
    task raises BuildFailed and leaves earlier products in place. Raises BuildBusy while
    another build of the project runs."""
    project_dir = Path(project_dir).resolve()
    with build_lock(project_dir):
        return _build(project_dir, force, progress)


def _build(project_dir: Path, force: bool, progress: Progress | None = None) -> BuildResult:
    stamp_path = _stamp_path(project_dir)
    if not force and stamp_path.exists() and stamp_path.read_text() == build_stamp(project_dir):
        return BuildResult(ran=[], skipped_by_stamp=True)
    stamp_path.unlink(missing_ok=True)
    from ploomber.executors import Serial

    events = _TaskEvents(progress)
    with _in(project_dir), events.listening():
        dag = load_dag(project_dir)
        # one process for all tasks: the libraries import once, not once per task
        dag.executor = Serial(build_in_subprocess=False)
        try:
            report = dag.build(force=force, show_progress=False)
        except Exception as exc:
            raise _failure(dag, events.current, exc) from exc
    columns = report.values  # column-oriented: {"name": [...], "Ran?": [...], ...}
    order = {name: i for i, name in enumerate(dag)}  # a DAG iterates in topological order
    tasks = sorted(
        (
            TaskRun(name, bool(did), float(seconds or 0.0))
            for name, did, seconds in zip(
                columns["name"], columns["Ran?"], columns["Elapsed (s)"], strict=True
            )
        ),
        key=lambda t: order.get(t.name, len(order)),
    )
    stamp_path.parent.mkdir(parents=True, exist_ok=True)
    stamp_path.write_text(build_stamp(project_dir))
    return BuildResult(ran=[t.name for t in tasks if t.ran], skipped_by_stamp=False, tasks=tasks)


# Ploomber 0.23.3 logs each task's start and end (Task._build, at INFO, on the logger of
# the task's class under ploomber.tasks.abc): the one place a running build says which
# task it is in. tests/integration/test_dag.py fails if that changes.
TASK_LOGGER = "ploomber.tasks.abc"
_STARTED = re.compile(r"^Starting execution: \w+: (?P<name>.+?) -> ")
_DONE = re.compile(r"^Done\. Operation took (?P<seconds>[\d.]+) seconds")


class _TaskEvents(logging.Handler):
    def __init__(self, progress: Progress | None) -> None:
        super().__init__(logging.INFO)
        self.progress = progress
        self.current: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if started := _STARTED.match(message):
            self.current = started["name"]
            if self.progress:
                self.progress("start", self.current, None)
        elif (done := _DONE.match(message)) and self.current and self.progress:
            self.progress("done", self.current, float(done["seconds"]))

    @contextlib.contextmanager
    def listening(self) -> Iterator[None]:
        logger = logging.getLogger(TASK_LOGGER)
        level, propagate = logger.level, logger.propagate
        # heard here only: not printed again by whatever handlers the root logger has
        logger.setLevel(logging.INFO)
        logger.propagate = False
        logger.addHandler(self)
        try:
            yield
        finally:
            logger.removeHandler(self)
            logger.setLevel(level)
            logger.propagate = propagate


def _failure(dag: Any, task: str | None, exc: Exception) -> BuildFailed:
    """The failing task, its error, and the notebook ploomber-engine stored as far as it
    ran (the task's `nb` product as .ipynb), with the cell that raised."""
    cause = failure_cause(str(exc)) or str(exc)
    notebook = cell = None
    if task is not None and task in dag:
        products = _paths(dag[task].product)
        report = products.get("nb")
        if report is not None and (executed := Path(report).with_suffix(".ipynb")).is_file():
            notebook = executed
            cell = _failing_cell(executed)
    return BuildFailed(task, cause, notebook, cell)


def _failing_cell(notebook: Path) -> str | None:
    """`cell N: <its first line>` of the cell that raised (the one with an error output),
    N counting the code cells of the task's own file (not the injected parameters)."""
    import nbformat

    cells = nbformat.read(notebook, as_version=4).cells
    own = [c for c in cells if c.cell_type == "code"
           and "injected-parameters" not in c.metadata.get("tags", [])]  # fmt: skip
    for number, cell in enumerate(own, 1):
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            first = next((line for line in cell.source.splitlines() if line.strip()), "")
            return f"cell {number}: {first.strip()}"
    return None


_EXCEPTION_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception)): (?P<message>.*)$")


def failure_cause(message: str) -> str | None:
    """The failing task's own exception (type and message, without stack) from the text
    of Ploomber's DAGBuildError, which carries the tracebacks only as text."""
    found: list[str] | None = None
    block: list[str] | None = None
    for line in message.splitlines():
        match = _EXCEPTION_LINE.match(line)
        if match and not match["type"].startswith("ploomber."):
            block = [f"{match['type'].rsplit('.', 1)[-1]}: {match['message']}"]
            found = block
        elif block is not None:
            if not line.strip() or line.startswith(("ploomber.", "Traceback", "=")):
                block = None
            else:
                block.append(line)
    return "\n".join(found) if found else None


def _will_run(task: Any) -> bool:
    """Whether the next build runs `task`, read from the DAG rendered (not forced) just
    before: Ploomber's public `Task.exec_status`, which render sets from the product's
    up-to-date check to WaitingExecution (outdated), WaitingUpstream (outdated, after an
    outdated upstream) or Skipped (up to date). The same answer as the private
    `Product._is_outdated()` that render caches it from (ploomber 0.23.3);
    tests/integration/test_compat_ploomber.py checks it against what a build runs."""
    from ploomber.constants import TaskStatus

    return task.exec_status in (TaskStatus.WaitingExecution, TaskStatus.WaitingUpstream)


def status(project_dir: str | Path = ".") -> list[dict[str, Any]]:
    """One row per task: its name and whether the next build would run it."""
    project_dir = Path(project_dir).resolve()
    with _in(project_dir):
        dag = load_dag(project_dir)
        dag.render(show_progress=False)
        return [{"task": name, "outdated": _will_run(task)} for name, task in dag.items()]


def plot(project_dir: str | Path = ".", output: str | Path | None = None) -> Path:
    """The DAG as an SVG drawn with networkx + matplotlib: works offline, unlike
    `ploomber plot`, whose HTML pulls its JavaScript from a CDN."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    project_dir = Path(project_dir).resolve()
    with _in(project_dir):
        dag = load_dag(project_dir)
        dag.render(show_progress=False)
        graph = nx.DiGraph()
        for name, task in dag.items():
            graph.add_node(name, outdated=_will_run(task))
            for up in task.upstream:
                graph.add_edge(up, name)
    for layer, nodes in enumerate(nx.topological_generations(graph)):
        for node in nodes:
            graph.nodes[node]["layer"] = layer
    pos = nx.multipartite_layout(graph, subset_key="layer")
    fig, ax = plt.subplots(
        figsize=(2.2 * (1 + max(nx.get_node_attributes(graph, "layer").values())), 4)
    )
    colors = ["#f4a261" if graph.nodes[n]["outdated"] else "#8ecae6" for n in graph.nodes]
    nx.draw_networkx(
        graph,
        pos,
        ax=ax,
        node_color=colors,
        node_shape="s",
        node_size=2600,
        font_size=8,
        arrowsize=14,
    )
    ax.set_title("nbship pipeline (orange: outdated, blue: up to date)")
    ax.axis("off")
    out = Path(output) if output else _product_dirs(project_dir)[0] / PLOT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


def task_graph(project_dir: str | Path = ".") -> list[tuple[str, list[str]]]:
    """Each task's name and the names of the tasks it needs, in an order that respects
    them (Ploomber's: a DAG iterates in topological order)."""
    project_dir = Path(project_dir).resolve()
    with _in(project_dir):
        dag = load_dag(project_dir)
        dag.render(force=True, show_progress=False)  # upstreams are known once rendered
        return [(name, sorted(dag[name].upstream)) for name in dag]


def build_task(project_dir: str | Path, name: str) -> None:
    """Runs the one task `name`, its upstream products being already there (a step of an
    exported workflow, each in a process of its own); it always runs. KeyError naming the
    tasks when there is no such task."""
    project_dir = Path(project_dir).resolve()
    from ploomber.executors import Serial

    with build_lock(project_dir, shared=True), _in(project_dir):
        dag = load_dag(project_dir)
        if name not in dag:
            raise KeyError(f"no task {name!r} in {PIPELINE_FILE} (tasks: {', '.join(dag)})")
        dag.executor = Serial(build_in_subprocess=False)
        dag.build_partially(name, force=True, show_progress=False, skip_upstream=True)
    # a later `nbship build` must not take the stamp of the last full build as current
    _stamp_path(project_dir).unlink(missing_ok=True)


def export_scripts(project_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Each task's notebook with its parameters injected, as a plain Python script, in
    an order that respects dependencies: the same code, without Ploomber."""
    import jupytext

    project_dir = Path(project_dir).resolve()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scripts = []
    with _in(project_dir):
        dag = load_dag(project_dir)
        dag.render(force=True, show_progress=False)
        for i, name in enumerate(dag):  # a DAG iterates in topological order
            task = dag[name]
            nb = task.source.nb_obj_rendered
            script = out_dir / f"{i:02d}-{task.name}.py"
            script.write_text(jupytext.writes(nb, fmt="py:percent"))
            scripts.append(script)
    return scripts


@dataclass(frozen=True)
class TaskCall:
    """What a build passes one task: its parameters, its products and its upstream
    tasks' products (paths as strings, as the injected cell has them)."""

    name: str
    params: dict[str, Any]
    product: dict[str, str]
    upstream: dict[str, dict[str, str]]


def task_calls(project_dir: str | Path, source: str | Path) -> list[TaskCall]:
    """What a build would pass each task whose notebook is `source` (a grid gives one per
    grid point), in pipeline order; [] when no task runs that file."""
    project_dir = Path(project_dir).resolve()
    source = Path(source).resolve()
    with _in(project_dir):
        dag = load_dag(project_dir)
        calls = []
        for name in dag:
            task = dag[name]
            if Path(str(task.source.loc)).resolve() != source:
                continue
            params = {k: v for k, v in task.params.to_dict().items()
                      if k not in ("product", "upstream")}  # fmt: skip
            upstream = {up: _paths(dag[up].product) for up in task.upstream}
            calls.append(TaskCall(name, params, _paths(task.product), upstream))
        return calls


def _paths(product: Any) -> dict[str, str]:
    serialised = product.to_json_serializable()
    return serialised if isinstance(serialised, dict) else {"product": serialised}
