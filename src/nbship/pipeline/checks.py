"""What is checked before any task of a build runs: env.yaml's schema (nbship.config), the
files it names, and the settings that name columns against the data itself, so a wrong
setting fails at once, naming the setting, instead of deep inside a task."""

from __future__ import annotations

from pathlib import Path

from nbship.config import ENV_FILE, ConfigError
from nbship.pipeline.dag import BuildResult, Progress, build
from nbship.pipeline.data import source_columns
from nbship.project import Project


def check_project(project: Project) -> None:
    """Raises ConfigError naming the setting that does not fit the project's files."""
    config = project.config
    suite = project.path / config.suite
    if not suite.is_file():
        raise ConfigError(f"{ENV_FILE}: suite: no such file {suite}")
    try:
        columns = source_columns(config.data.source, project.path)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"{ENV_FILE}: data.source: {exc}") from None
    config.check_columns(columns, where=f"data source {config.data.source!r}")


def build_project(
    project_dir: Path, force: bool = False, progress: Progress | None = None
) -> BuildResult:
    """`nbship build`: the project's checks, then the DAG (ConfigError before any task)."""
    project = Project.load(project_dir)
    check_project(project)
    return build(project.path, force=force, progress=progress)
