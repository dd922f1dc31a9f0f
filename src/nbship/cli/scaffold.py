"""`nbship init` and `nbship adopt`: start a project, or bring a notebook into one."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--data", default=None, help="The table: a .csv/.parquet file (copied into "
              "data/), or `module:function` returning one. Default: a demo (iris).")  # fmt: skip
@click.option("--target", default=None, help="The column the model predicts.")
@click.option("--task", type=click.Choice(["auto", "classification", "regression"]),
              default="auto", show_default=True,
              help="auto: inferred from the target.")  # fmt: skip
@click.option("--drop", multiple=True, help="A column that is not a feature (an id, a leak "
              "of the target); repeat for several.")  # fmt: skip
@click.option("--no-copy", is_flag=True, help="Read the data file where it is, not a copy.")
def init(
    dest: Path, data: str | None, target: str | None, task: str, drop: tuple[str, ...],
    no_copy: bool,
) -> None:  # fmt: skip
    """Start a project in DEST: env.yaml, pipeline.yaml, notebooks (your model goes in
    notebooks/train.py), a data contract profiled from the data, tests, README."""
    from nbship.scaffold.init import InitError, init_project

    try:
        result = init_project(dest, data, target, task=task, drop=drop, copy_data=not no_copy)
    except InitError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Wrote {result.path} ({len(result.files)} files): data {result.source}, "
               f"target {result.target!r}")  # fmt: skip
    click.echo(f"  {result.task_reason}")
    click.echo(f"  numeric features: {', '.join(result.numeric) or '-'}")
    click.echo(f"  categorical features: {', '.join(result.categorical) or '-'}")
    for note in result.notes:
        click.echo(f"  note: {note}")
    click.echo("Review the contract in expectations/ and write your model in "
               "notebooks/train.py, then:")  # fmt: skip
    click.echo(f"  cd {dest} && nbship build && nbship serve")


@click.command()
@click.argument("notebook", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--project", "dest", type=click.Path(path_type=Path), default=None,
              help="The new project's folder (default: <notebook name>-project beside "
              "it).")  # fmt: skip
@click.option("--model", default=None, help="The variable holding the fitted model "
              "(default: the one fitted estimator no other one holds).")  # fmt: skip
@click.option("--target", default=None, help="The column the model predicts (default: the "
              "name of the notebook's y / target Series).")  # fmt: skip
@click.option("--data", default=None, help="The table the notebook reads, when it reads "
              "several (default: the one it reads).")  # fmt: skip
@click.option("--drop", multiple=True, help="A column of the data that is not a feature.")
def adopt(
    notebook: Path, dest: Path | None, model: str | None, target: str | None,
    data: str | None, drop: tuple[str, ...],
) -> None:  # fmt: skip
    """Make NOTEBOOK (.ipynb or percent .py) the train task of a new project, keeping its
    code: it gets a parameters cell, reads the pipeline's training split and hands its
    fitted model to nbship. Runs it once first; prints every change as a diff."""
    from nbship.scaffold.adopt import AdoptError, adopt_notebook

    dest = dest or notebook.resolve().parent / f"{notebook.stem}-project"
    click.echo(f"Running {notebook.name} once to find its model ...")
    try:
        result = adopt_notebook(notebook, dest, model=model, target=target, data=data, drop=drop)
    except AdoptError as exc:
        raise click.ClickException(f"{exc} (nothing was written)") from None
    click.echo(result.diff, nl=False)
    project = result.project
    click.echo(f"Wrote {project.path}: notebooks/train.py is {notebook.name} adopted")
    click.echo(f"  model: {result.model} ({result.rule})")
    click.echo(f"  data {project.source}, target {project.target!r}; {project.task_reason}")
    click.echo(f"  request fields: {', '.join(project.numeric + project.categorical)}")
    for note in project.notes:
        click.echo(f"  note: {note}")
    click.echo(f"Next: cd {project.path} && nbship build && nbship serve")
