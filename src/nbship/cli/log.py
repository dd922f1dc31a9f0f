"""`nbship log ...`: query, export and prune the prediction log.

The database is env.yaml's `prediction_log.url` (relative SQLite paths from the project
folder); `NBSHIP_LOG_URL` overrides it, as it does for the server.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from nbship.cli.common import PROJECT_OPTION, CommandT, load_project, project_registry, table

TIME = click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"])


def log_url(project: Path) -> str:
    return load_project(project).log_url()


def _filters(since: datetime | None, until: datetime | None, model: str | None,
             status: str | None) -> dict[str, Any]:  # fmt: skip
    # times on the command line are UTC, like the log's
    return {
        "since": since.replace(tzinfo=UTC) if since else None,
        "until": until.replace(tzinfo=UTC) if until else None,
        "model_tag": model,
        "status": status,
    }


FILTERS = [
    click.option("--since", type=TIME, default=None, help="From this UTC time (inclusive)."),
    click.option("--until", type=TIME, default=None, help="Up to this UTC time (exclusive)."),
    click.option("--model", default=None, help="Only requests answered by this model tag."),
    click.option("--status", type=click.Choice(["ok", "error"]), default=None, help="Only these."),
]


def with_filters(func: CommandT) -> CommandT:  # a click decorator
    for option in reversed(FILTERS):
        func = option(func)
    return func


@click.group()
def log() -> None:
    """The prediction log: every request the service answered or refused."""


@log.command()
@PROJECT_OPTION
@with_filters
@click.option("--last", "-n", default=20, show_default=True, help="How many, newest first.")
def show(project: Path, since: datetime | None, until: datetime | None, model: str | None,
         status: str | None, last: int) -> None:  # fmt: skip
    """The latest logged requests as a table."""
    from nbship.prediction_log import read_log

    frame = read_log(log_url(project), **_filters(since, until, model, status))
    if frame.empty:
        click.echo("No logged requests.")
        return
    frame = frame.sort_values("ts", ascending=False).head(last)
    rows = [
        [r.ts.strftime("%Y-%m-%d %H:%M:%S"), r.request_id, r.model_tag or "-", r.status,
         r.http_status, r.n_records, f"{r.latency_ms:.1f}",
         (r.error_message or json.dumps(r.outputs))[:60]]
        for r in frame.itertuples()
    ]  # fmt: skip
    headers = ["TIME (UTC)", "REQUEST ID", "MODEL", "STATUS", "HTTP", "ROWS", "MS", "ANSWER"]
    click.echo(table(headers, rows))


@log.command()
@PROJECT_OPTION
@with_filters
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
    help="A .csv or .parquet file (written whole or not at all).",
)  # fmt: skip
def export(project: Path, since: datetime | None, until: datetime | None, model: str | None,
           status: str | None, output: Path) -> None:  # fmt: skip
    """Write the logged requests to CSV or Parquet."""
    from nbship.prediction_log import export_log

    try:
        n = export_log(log_url(project), output, **_filters(since, until, model, status))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{n} request(s) written to {output}")


@log.command()
@PROJECT_OPTION
@click.option("--older-than-days", type=click.FloatRange(min=0), required=True,
              help="Delete requests logged more than this many days ago.")  # fmt: skip
def purge(project: Path, older_than_days: float) -> None:
    """Delete old requests (the server also applies `retention_days` hourly)."""
    from nbship.prediction_log import purge as purge_log

    n = purge_log(log_url(project), timedelta(days=older_than_days))
    click.echo(f"{n} request(s) deleted")


@click.command()
@PROJECT_OPTION
@click.option("--hours", type=click.FloatRange(min=0, min_open=True), default=24.0,
              show_default=True, help="The period: this many hours up to now.")  # fmt: skip
@click.option("--model", default=None, help="Whose training data is the reference "
              "(default: the champion).")  # fmt: skip
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The HTML report (default: <root>/monitor.html).")  # fmt: skip
def monitor(project: Path, hours: float, model: str | None, output: Path | None) -> None:
    """Drift, data quality, prediction mix, latency and errors of the logged traffic:
    an HTML report, and the alert rules of env.yaml's `monitoring` checked and sent."""
    from nbship.operate.alert_rules import parse_config
    from nbship.operate.monitor import run_monitor

    loaded = load_project(project)  # the alert rules are checked there
    config = parse_config(loaded.config.monitoring)
    with project_registry(loaded) as registry:
        name = loaded.config.bento.name
        version = registry.get(model) if model else registry.alias(name, "champion")
        if version is None:
            raise click.ClickException(f"no champion for {name!r}: run `nbship build` first")
    profile = version.extra.get("drift_profile")
    if not profile:
        raise click.ClickException(f"{version.tag} has no training reference (drift profile)")
    until = datetime.now(UTC)
    result = run_monitor(
        loaded.log_url(), profile, config, until - timedelta(hours=hours), until,
        output or loaded.root / "monitor.html", suite_path=loaded.path / loaded.config.suite,
    )  # fmt: skip
    requests = sum(w.get("requests") or 0 for w in result.windows)
    click.echo(f"{requests} request(s) in {len(result.windows)} window(s) against {version.tag}")
    for alert in result.alerts:
        click.echo(f"ALERT {alert.message}")
    click.echo(str(result.report_path))
