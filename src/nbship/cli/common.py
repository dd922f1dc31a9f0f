"""What every `nbship` command group shares: the project option, the project's checked
configuration, its registry, and plain-text tables. Errors become one-line messages
(exit 1), never tracebacks."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from nbship.project import Project
    from nbship.registry.versions import Registry

# a command function, as a click decorator takes and returns it
CommandT = TypeVar("CommandT", bound=Callable[..., Any])

PROJECT_OPTION = click.option(
    "--project",
    "-p",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=".",
    show_default=True,
    help="Folder holding pipeline.yaml and env.yaml.",
)


def load_project(path: Path) -> Project:
    """The project with its env.yaml checked, the alert rules included."""
    from nbship.config import ConfigError
    from nbship.operate.alert_rules import parse_config
    from nbship.project import Project

    try:
        project = Project.load(path)
        parse_config(project.config.monitoring)
    except ConfigError as exc:
        message = str(exc)
        raise click.ClickException(
            message if "env.yaml" in message else f"env.yaml: {message}"
        ) from None
    return project


def published_bento(project: Project) -> Path:
    bento = project.published_bento
    if not (bento / "bento.yaml").exists():
        raise click.ClickException(f"no bento at {bento}: run `nbship build` first")
    return bento


@contextmanager
def project_registry(project: Project) -> Iterator[Registry]:
    """The project's registry; its errors become one-line messages, not tracebacks."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from nbship.registry.model_store import MissingArtifactError, TamperedArtifactError
    from nbship.registry.versions import Registry, RegistryError, UnknownModelError

    url = ""
    try:
        url = project.registry_url()
        with Registry(url) as registry:
            yield registry
    except (UnknownModelError, RegistryError, TamperedArtifactError, MissingArtifactError) as exc:
        raise click.ClickException(str(exc)) from exc
    except SQLAlchemyError as exc:
        shown = make_url(url).render_as_string(hide_password=True) if url else "?"
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise click.ClickException(f"registry {shown}: {cause}") from exc


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain-text columns aligned on the widest cell; the last column is not padded."""
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
