"""`nbship export argo`: the pipeline as Argo Workflows manifests. The manifests are
made in `nbship.deploy.argo`, the task graph read from pipeline.yaml by the Ploomber
seam (`nbship.pipeline.dag`)."""

from __future__ import annotations

from pathlib import Path

import click

from nbship.cli.common import PROJECT_OPTION, load_project


@click.group()
def export() -> None:
    """The project for other schedulers."""


@export.command()
@PROJECT_OPTION
@click.option("--image", required=True, help="The project's image: its files at /project, "
              "nbship and the pipeline's libraries installed.")  # fmt: skip
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the manifests (default: <root>/argo).")  # fmt: skip
@click.option("--retrain-schedule", default="0 4 * * *", show_default=True,
              help="Cron schedule of the CronWorkflow that runs `nbship retrain`.")  # fmt: skip
@click.option("--storage", default="2Gi", show_default=True, help="The shared volume's size.")
def argo(
    project: Path, image: str, output: Path | None, retrain_schedule: str, storage: str
) -> None:
    """A Workflow of the pipeline (one step per task, in dependency order, each running
    `nbship build --task NAME` in IMAGE on a shared volume) and a CronWorkflow running
    `nbship retrain`."""
    from nbship.deploy.argo import ArgoSettings, cron_workflow, workflow, write
    from nbship.pipeline.dag import task_graph

    loaded = load_project(project)
    settings = ArgoSettings(name=loaded.config.bento.name, image=image, storage=storage,
                            retrain_schedule=retrain_schedule)  # fmt: skip
    try:
        docs = {"workflow": workflow(settings, task_graph(loaded.path)),
                "cronworkflow": cron_workflow(settings)}  # fmt: skip
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    for path in write(docs, output or loaded.root / "argo"):
        click.echo(str(path))
