"""`nbship` command line. Heavy libraries are imported inside each command."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from nbship.cli.common import PROJECT_OPTION, CommandT, load_project, published_bento

if TYPE_CHECKING:
    from nbship.deploy.container import ContainerSettings


def output_option(default_help: str) -> Callable[[CommandT], CommandT]:  # a click decorator
    return click.option(
        "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
        help=f"Where to write it (default: {default_help}).",
    )  # fmt: skip


@click.group()
def main() -> None:
    """nbship: notebooks to a served, operated model."""


@main.command()
@PROJECT_OPTION
@click.option("--force", is_flag=True, help="Re-run every task, even up-to-date ones.")
@click.option("--task", "task", default=None, help="Run only this task, on the upstream "
              "products already there (a step of `nbship export argo`).")  # fmt: skip
def build(project: Path, force: bool, task: str | None) -> None:
    """Run the pipeline: only tasks whose source, params or upstream changed."""
    from nbship.config import ConfigError
    from nbship.pipeline.checks import build_project
    from nbship.pipeline.dag import BuildFailed, build_task, failure_cause

    load_project(project)  # env.yaml (alert rules included) is checked before any task
    try:
        if task is not None:
            build_task(project, task)
            click.echo(f"Ran 1 task(s): {task}")
            return
        result = build_project(project, force=force, progress=_show_progress)
    except ConfigError as exc:  # a setting that does not fit the data or the files
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # the failing task's own error, without Ploomber's stack
        click.echo(f"build failed: {failure_cause(str(exc)) or exc}", err=True)
        if isinstance(exc, BuildFailed) and exc.task:
            click.echo(f"  in task {exc.task!r}" + (f", {exc.cell}" if exc.cell else ""), err=True)
        if isinstance(exc, BuildFailed) and exc.notebook:
            where = _relative(exc.notebook, project)
            click.echo(f"  the executed notebook, with the full traceback: {where}", err=True)
        click.echo("Earlier products, and the published bento, are unchanged.", err=True)
        sys.exit(1)
    if result.skipped_by_stamp:
        click.echo("Nothing to build: no input changed since the last build (build stamp).")
    elif not result.ran:
        click.echo("Nothing to build: every task is up to date.")
    else:
        width = max(len(t.name) for t in result.tasks)
        click.echo(f"\n{'task':<{width}}  {'status':<7}  seconds")
        for t in result.tasks:
            seconds = f"{t.seconds:7.1f}" if t.ran else f"{'-':>7}"
            click.echo(f"{t.name:<{width}}  {'ran' if t.ran else 'skipped':<7}  {seconds}")
        click.echo(f"Ran {len(result.ran)} task(s): {', '.join(result.ran)}")


def _show_progress(event: str, task: str, seconds: float | None) -> None:
    # one line per event, never redrawn: the same on a terminal and in a CI log
    if event == "start":
        click.echo(f"-> {task}")
    else:
        click.echo(f"   {task} done in {seconds:.1f} s")


def _relative(path: Path, project: Path) -> str:
    try:
        return str(path.resolve().relative_to(project.resolve()))
    except ValueError:
        return str(path)


@main.command()
@PROJECT_OPTION
def status(project: Path) -> None:
    """Which tasks the next build would run."""
    from nbship.pipeline.dag import status as dag_status

    for row in dag_status(project):
        click.echo(f"{row['task']:<20} {'outdated' if row['outdated'] else 'up to date'}")


@main.command()
@PROJECT_OPTION
@output_option("<root>/pipeline.svg")
def plot(project: Path, output: Path | None) -> None:
    """Draw the pipeline as an SVG (offline; replaces `ploomber plot`)."""
    from nbship.pipeline.dag import plot as dag_plot

    click.echo(str(dag_plot(project, output)))


@main.command()
@PROJECT_OPTION
@click.option("--port", default=3000, show_default=True, help="Port on 127.0.0.1.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
def serve(project: Path, port: int, host: str) -> None:
    """Serve the published bento with `bentoml serve` (replaces this process)."""
    bento = published_bento(load_project(project))
    bentoml = Path(sys.executable).with_name("bentoml")
    os.execv(bentoml, [str(bentoml), "serve", str(bento), "--host", host, "--port", str(port)])


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@PROJECT_OPTION
@click.pass_context
def lab(ctx: click.Context, project: Path) -> None:
    """JupyterLab on 127.0.0.1 with the project's Jupyter config (see docs/jupyterlab.md).

    Extra arguments go to `jupyter lab`. Jupyter no longer reads config from the current
    folder, so the file that turns off Ploomber's broken server extension is named here.
    """
    config = project.resolve() / "jupyter_server_config.py"
    jupyter = Path(sys.executable).with_name("jupyter")
    args = list(ctx.args)
    if os.geteuid() == 0 and "--allow-root" not in args:
        # Jupyter refuses to start as root (usual in a container) with no hint; the
        # project's config binds 127.0.0.1 only and keeps the token, so allow it and say so
        click.echo("Running as root (a container?): passing --allow-root to JupyterLab, "
                   "which listens on 127.0.0.1 only.", err=True)  # fmt: skip
        args.append("--allow-root")
    os.chdir(project)
    os.execv(jupyter, [str(jupyter), "lab", f"--config={config}", *args])


@main.command()
@PROJECT_OPTION
@click.option("--port", default=8001, show_default=True, help="Port on 127.0.0.1.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--window-minutes", type=float, default=5.0, show_default=True, help="Window.")
@click.option("--period-hours", type=float, default=24.0, show_default=True, help="Period shown.")
@click.option("--refresh-seconds", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True, help="How often the page re-reads its numbers.")  # fmt: skip
@click.option("--profile", "profile_file", type=click.Path(dir_okay=False, exists=True,
              path_type=Path), default=None, help="The drift reference, a JSON file of "
              "drift.reference_profile (default: the champion's stored one).")  # fmt: skip
@click.option("--alert-url", default=None, help="The alert store's SQLAlchemy URL (default: "
              "the prediction log's database, where `nbship monitor` records).")  # fmt: skip
@click.option("--min-rows", type=click.IntRange(min=1), default=None, help="Fewest rows for "
              "a rate, quantile or drift (default: env.yaml's monitoring.min_rows).")  # fmt: skip
def dashboard(
    project: Path, port: int, host: str, window_minutes: float, period_hours: float,
    refresh_seconds: float, profile_file: Path | None, alert_url: str | None,
    min_rows: int | None,
) -> None:  # fmt: skip
    """Live dashboard of the served model: versions, traffic, latency, errors, drift."""
    import json
    from datetime import timedelta

    from nbship.operate.alert_rules import parse_config
    from nbship.operate.dashboard import LOCAL_HOSTS, create_app, serve_dashboard

    loaded = load_project(project)
    monitoring = parse_config(loaded.config.monitoring)
    profile = None  # the champion's stored profile
    if profile_file is not None:
        try:
            profile = json.loads(profile_file.read_text())
        except (OSError, ValueError) as exc:
            raise click.BadParameter(str(exc), param_hint="--profile") from None
    try:
        app = create_app(
            registry_url=loaded.registry_url(), log_url=loaded.log_url(),
            model_name=loaded.config.bento.name, profile=profile, alert_url=alert_url,
            window=timedelta(minutes=window_minutes), period=timedelta(hours=period_hours),
            refresh_seconds=refresh_seconds, min_rows=min_rows or monitoring.min_rows,
            psi_threshold=monitoring.psi_threshold,
            pvalue_threshold=monitoring.pvalue_threshold,
            allowed_hosts=LOCAL_HOSTS if host in LOCAL_HOSTS else ["*"],
        )  # fmt: skip
    except ValueError as exc:  # a bad window/period, or a profile that is not one
        raise click.UsageError(str(exc)) from None
    serve_dashboard(app, host=host, port=port)


def _container_settings(project: Path) -> ContainerSettings:
    from nbship.deploy.container import ContainerSettings

    loaded = load_project(project)
    return ContainerSettings.from_config(loaded.path, loaded.config.container)


@main.group()
def container() -> None:
    """OCI image of the published bento (rootful podman, no Docker daemon)."""


@container.command("build")
@PROJECT_OPTION
def container_build(project: Path) -> None:
    """Build the image of the published bento; the base image is made once and cached.
    Installs podman, runc and debootstrap (Debian packages) first when they are missing."""
    from nbship.deploy.container import ContainerError, build_image, check_tools, install_tools

    try:
        check_tools()
    except ContainerError:
        click.echo("installing podman, runc and debootstrap (apt-get)", err=True)
        try:
            install_tools()
        except ContainerError as exc:
            raise click.ClickException(str(exc)) from None
    try:
        result = build_image(published_bento(load_project(project)), _container_settings(project))
    except ContainerError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(result.image)


@container.command("run")
@PROJECT_OPTION
@click.option("--port", default=3000, show_default=True, help="Port on 127.0.0.1.")
def container_run(project: Path, port: int) -> None:
    """Run the published bento's image detached on 127.0.0.1; prints the container id."""
    from nbship.deploy.container import ContainerError, image_name, run_container

    image, _ = image_name(published_bento(load_project(project)))
    try:
        click.echo(run_container(image, port, _container_settings(project)))
    except ContainerError as exc:
        raise click.ClickException(str(exc)) from None


@container.command("stop")
@PROJECT_OPTION
@click.argument("container_id")
@click.option("--timeout", default=30, show_default=True, help="Seconds for in-flight requests.")
def container_stop(project: Path, container_id: str, timeout: int) -> None:
    """Stop a container (SIGTERM, then up to --timeout seconds) and remove it."""
    from nbship.deploy.container import ContainerError, stop_container

    try:
        stop_container(container_id, _container_settings(project), timeout=timeout)
    except ContainerError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@PROJECT_OPTION
@output_option("<root>/k8s/<bento name>.yaml")
def k8s(project: Path, output: Path | None) -> None:
    """Kubernetes manifests (Deployment, Service, HPA; a batch-scoring CronJob when env.yaml
    sets batch.schedule) for the published bento's image, validated against the Kubernetes
    schemas when kubernetes-validate is installed (pip install 'nbship[k8s]')."""
    from nbship.deploy.container import image_name
    from nbship.deploy.k8s import DeploymentSettings, batch_job, write

    loaded = load_project(project)
    image, config = image_name(published_bento(loaded))
    out = output or loaded.root / "k8s" / f"{config['bento_name']}.yaml"
    job = batch_job(loaded.config.batch)
    if job is not None and not config.get("batch"):
        # its CronJob would start a pod that cannot import nbship.batch
        raise click.ClickException(
            f"batch.schedule is set, but the published bento ({config['model_tag']}) was"
            " packaged without batch scoring: run `nbship build` to package it again"
        )
    try:
        settings = DeploymentSettings(
            name=config["bento_name"], image=image, model_tag=config["model_tag"],
            git_commit=config["metadata"].get("git_commit"),
            **loaded.config.kubernetes.model_dump(),
        )  # fmt: skip
        written = write(settings, out, job)
    except ValueError as exc:  # settings that make no valid manifest: nothing is written
        raise click.ClickException(str(exc)) from None
    click.echo(str(written.path))
    if written.not_validated:
        click.echo(f"warning: {written.not_validated}", err=True)


def _register_groups() -> None:
    from nbship.cli.export import export
    from nbship.cli.log import log, monitor
    from nbship.cli.models import models
    from nbship.cli.predict import predict
    from nbship.cli.release import release
    from nbship.cli.retrain import retrain
    from nbship.cli.scaffold import adopt, init
    from nbship.cli.suite import suite

    main.add_command(init)
    main.add_command(adopt)
    main.add_command(suite)
    main.add_command(models)
    main.add_command(release)
    main.add_command(retrain)
    main.add_command(log)
    main.add_command(monitor)
    main.add_command(predict)
    main.add_command(export)


_register_groups()
