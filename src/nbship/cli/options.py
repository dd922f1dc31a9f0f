"""Options every `nbship` command group shares."""

from __future__ import annotations

from pathlib import Path

import click

PROJECT_OPTION = click.option(
    "--project",
    "-p",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=".",
    show_default=True,
    help="Folder holding pipeline.yaml and env.yaml.",
)
