"""`nbship retrain ...`: retrain on labelled feedback, see what runs did, or watch the
triggers. The work itself is in `retrain.py`."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import click

from nbship.cli.common import PROJECT_OPTION, load_project


@click.group(invoke_without_command=True)
@PROJECT_OPTION
@click.option("--wait", is_flag=True, help="Wait for the run to finish and report it.")
@click.pass_context
def retrain(ctx: click.Context, project: Path, wait: bool) -> None:
    """Retrain on the source data + labelled feedback, in a background process: the same
    pipeline, then the gates; the new model is promoted only when they pass, and predict
    servers switch to it by themselves."""
    if ctx.invoked_subcommand is not None:
        return
    from nbship.operate.retrain import start

    load_project(project)  # a wrong env.yaml fails here, not in the background run
    state = start(project, wait=wait)
    if not wait:
        click.echo(f"retrain {state['run_id']} started (pid {state['pid']}); log: {state['log']}")
        click.echo("`nbship retrain status` shows how it ends.")
        return
    click.echo(_describe(state))
    if state["state"] != "succeeded":
        raise SystemExit(1)


def _describe(state: dict) -> str:
    line = f"{state['run_id']}  {state['state']:<9}  trigger: {state.get('trigger', '?')}"
    if state["state"] == "succeeded":
        promoted = "promoted to champion" if state.get("promoted") else "NOT promoted"
        failed = [g for g, ok in (state.get("gates") or {}).items() if not ok]
        rows = (state.get("feedback") or {}).get("rows", 0)
        line += f"\n  {state['model_tag']}: {promoted}"
        line += f" (failed gates: {', '.join(failed)})" if failed else ""
        line += f"; learnt from {rows} feedback row(s)"
    elif state.get("error"):
        line += f"\n  {state['error']}"
    return line


@retrain.command()
@PROJECT_OPTION
@click.option("--last", default=10, show_default=True, help="How many runs.")
@click.option("--json", "as_json", is_flag=True, help="The runs' state files as JSON.")
def status(project: Path, last: int, as_json: bool) -> None:
    """The latest retrain runs, newest first."""
    from nbship.operate.retrain import runs

    found = runs(project)[:last]
    if as_json:
        click.echo(json.dumps(found, indent=2))
    elif not found:
        click.echo("No retrain has run yet.")
    for state in [] if as_json else found:
        click.echo(_describe(state))


@retrain.command()
@PROJECT_OPTION
def watch(project: Path) -> None:
    """Run the triggers of env.yaml `retrain:` until stopped: a retrain every
    `every_labels` new labels, every `every_hours`, and on each POST /admin/retrain."""
    from nbship.operate.retrain import watch as watch_triggers

    loaded = load_project(project)
    settings = loaded.config.retrain
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(f"watching {project.resolve()}: {settings}")
    watch_triggers(project, settings, loaded.log_url(), stop=stop, echo=click.echo)
