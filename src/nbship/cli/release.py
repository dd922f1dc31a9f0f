"""`nbship release ...`: shadow, canary and A/B releases of a registered version beside
the champion. A release is registry state: every server sharing the registry follows it
at its next champion check (`NBSHIP_RELOAD_SECONDS`, or `POST /admin/reload`), as it
follows the champion."""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from nbship.cli.common import PROJECT_OPTION, load_project, project_registry

if TYPE_CHECKING:
    from nbship.project import Project
    from nbship.registry.versions import Registry, Release

SHARE = click.FloatRange(0, 1, min_open=True)


@click.group()
def release() -> None:
    """Shadow, canary and A/B releases beside the champion."""


def _name(project: Project) -> str:
    return project.config.bento.name


def _start(
    project_dir: Path, tag: str, kind: str, share: float, reason: str | None, *, guard: bool
) -> None:
    project = load_project(project_dir)
    with project_registry(project) as registry:
        started = registry.start_release(
            tag, kind, share, actor=getpass.getuser(),
            reason=reason or f"{kind} started from the command line",
        )  # fmt: skip
    what = {"shadow": "predicts", "canary": "answers", "ab": "answers (arm b)"}[kind]
    click.echo(
        f"release {started.id}: {kind} of {started.tag} beside champion {started.champion_tag};"
        f" it {what} {started.share:.0%} of the requests once the servers have checked"
        " the registry (NBSHIP_RELOAD_SECONDS, or POST /admin/reload)"
    )
    every = project.config.release.guard.check_seconds
    if not guard or every is None:  # (a shadow answers nobody: `shadow` asks for none)
        return
    _watch(project, started.id, every)


def _watch(project: Project, release_id: int, every: float) -> None:
    """Starts the watcher of the log-based guard rails of release `release_id`; the
    watcher of a release this one replaced ends by itself at its next round."""
    from nbship.operate.release_guard import start_watcher

    try:
        watcher = start_watcher(project.path, release_id)
    except OSError as exc:
        raise click.ClickException(
            f"release {release_id} started, but not its guard rails' watcher ({exc}):"
            f" run `nbship release check --every {every:g}`"
        ) from None
    shown = watcher.log.relative_to(project.path)
    click.echo(
        f"the log-based guard rails (release.guard) run every {every:g} s in process"
        f" {watcher.pid} ({shown}); `nbship release check` runs them by hand"
    )


REASON = click.option("--reason", "-r", default=None, help="Why: recorded with the release.")
NO_GUARD = click.option(
    "--no-guard", is_flag=True,
    help="Start no watcher of the guard rails on the prediction log: only `nbship release"
    " check` runs them then (the servers still check error rate and latency).",
)  # fmt: skip


@release.command()
@PROJECT_OPTION
@click.argument("tag")
@click.option("--share", type=SHARE, default=1.0, show_default=True,
              help="Share of the requests the shadow predicts.")  # fmt: skip
@REASON
def shadow(project: Path, tag: str, share: float, reason: str | None) -> None:
    """TAG predicts every request (or --share of them) off the request path; its answers
    are logged beside the champion's, never returned."""
    _start(project, tag, "shadow", share, reason, guard=False)


@release.command()
@PROJECT_OPTION
@click.argument("tag")
@click.option("--share", type=SHARE, required=True, help="Share of the requests TAG answers.")
@REASON
@NO_GUARD
def canary(project: Path, tag: str, share: float, reason: str | None, no_guard: bool) -> None:
    """TAG answers --share of the requests (the same callers each time when they send a
    key); the guard rails of env.yaml `release.guard` roll it back by themselves: the
    servers' at once, those on the prediction log in a watcher process started here."""
    _start(project, tag, "canary", share, reason, guard=not no_guard)


@release.command()
@PROJECT_OPTION
@click.argument("tag")
@click.option("--share", type=SHARE, default=0.5, show_default=True,
              help="Share of the requests arm b (TAG) answers.")  # fmt: skip
@REASON
@NO_GUARD
def ab(project: Path, tag: str, share: float, reason: str | None, no_guard: bool) -> None:
    """An A/B test: the champion is arm a, TAG arm b; `nbship release report` compares
    them on the labelled feedback, and the guard rails of `release.guard` roll arm b back
    as they would a canary. Nothing is promoted without the promotion gates."""
    _start(project, tag, "ab", share, reason, guard=not no_guard)


def _running(registry: Registry, name: str) -> Release:
    running = registry.active_release(name)
    if running is None:
        raise click.ClickException(f"no release of {name} is running")
    return running


@release.command()
@PROJECT_OPTION
@click.option("--reason", "-r", required=True, help="Why: recorded with the promotion.")
@click.option("--force", is_flag=True, help="Promote even if gates failed (recorded as forced).")
def promote(project: Path, reason: str, force: bool) -> None:
    """Ends the running release by making its version the champion: through the
    promotion gates (unless --force), and its bento is published."""
    from nbship.packaging.release import MissingSplit, promote_champion
    from nbship.registry.promotion import PromotionRefused

    loaded = load_project(project)
    with project_registry(loaded) as registry:
        running = _running(registry, _name(loaded))
        try:
            promote_champion(
                loaded, registry, running.tag, actor=getpass.getuser(), reason=reason,
                force=force,
            )  # fmt: skip
        except (PromotionRefused, MissingSplit) as exc:
            raise click.ClickException(f"{exc} (the release keeps running)") from None
        registry.end_release(
            running.name, "promoted", actor=getpass.getuser(), reason=reason,
            release_id=running.id,
        )  # fmt: skip
    click.echo(f"{running.tag} is now the champion of {running.name}; release {running.id} ended")


@release.command()
@PROJECT_OPTION
@click.option("--reason", "-r", required=True, help="Why: recorded with the release.")
def abort(project: Path, reason: str) -> None:
    """Ends the running release; the champion answers everything again."""
    loaded = load_project(project)
    with project_registry(loaded) as registry:
        ended = registry.end_release(
            _name(loaded), "aborted", actor=getpass.getuser(), reason=reason
        )
    click.echo(f"release {ended.id} ({ended.kind} of {ended.tag}) aborted")


@release.command()
@PROJECT_OPTION
@click.option("--every", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Check again every this many seconds, until stopped.")  # fmt: skip
def check(project: Path, every: float | None) -> None:
    """The guard rails on the prediction log of every server: a canary's (or arm b's)
    answers unlike the champion's on the same traffic, or worse on labelled feedback
    (env.yaml `release.guard`), roll it back and alert `monitoring.sinks`. `canary` and
    `ab` start a watcher that runs them every `release.guard.check_seconds`; this runs
    them by hand. The servers check error rate and latency themselves."""
    import time

    from nbship.operate.alert_rules import parse_config
    from nbship.operate.release_guard import check_release, checker

    loaded = load_project(project)
    sinks = parse_config(loaded.config.monitoring).sinks
    actor = checker("nbship release check")
    while True:
        with project_registry(loaded) as registry:
            result = check_release(registry, loaded.log_url(), _name(loaded),
                                   loaded.config.release.guard, sinks, actor=actor)  # fmt: skip
        if result.release is None:
            click.echo(f"no release of {_name(loaded)} is running")
        elif result.rolled_back:
            click.echo(
                f"rolled back release {result.release.id} ({result.release.kind} of"
                f" {result.release.tag}): " + "; ".join(b.why for b in result.breaches)
            )
        else:
            verdict = (result.report or {}).get("verdict") or "a shadow: nothing to guard"
            click.echo(
                f"release {result.release.id} ({result.release.kind} of"
                f" {result.release.tag}) within its guard rails; {verdict}"
            )
        if every is None:
            return
        time.sleep(every)


@release.command()
@PROJECT_OPTION
def status(project: Path) -> None:
    """The running release, and the last ones; whether a canary's or an A/B test's
    guard watcher runs."""
    from nbship.operate.release_guard import running_watcher
    from nbship.registry.versions import SHADOW

    loaded = load_project(project)
    with project_registry(loaded) as registry:
        releases = registry.releases(_name(loaded))[:5]
    if not releases:
        click.echo(f"no release of {_name(loaded)} yet")
    for r in releases:
        state = "running" if r.active else f"{r.outcome}: {r.end_reason}"
        if r.active and r.kind != SHADOW:
            pid = running_watcher(loaded.path, r.id)
            state += "; guard watcher " + (f"pid {pid}" if pid else "not running")
        click.echo(
            f"{r.id}  {r.kind:<6} {r.tag}  share {r.share:.0%}  vs {r.champion_tag}"
            f"  since {r.started_at:%Y-%m-%d %H:%M:%S} UTC  {state}"
        )


@release.command()
@PROJECT_OPTION
@click.option("--id", "release_id", type=int, default=None,
              help="A past release (default: the running one, else the last).")  # fmt: skip
@click.option("--min-effect", type=float, default=None,
              help="Smallest difference of the metric worth detecting (canary, A/B).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
def report(project: Path, release_id: int | None, min_effect: float | None, as_json: bool) -> None:
    """How the release's version compares with the champion on the logged traffic:
    agreement (shadow), each arm's errors, latency and metric on labelled feedback, with a
    test of the difference that stays valid however often it is looked at (canary, A/B)."""
    from nbship import tasks
    from nbship.operate.release_report import release_rows, render
    from nbship.operate.release_report import report as build_report

    loaded = load_project(project)
    with project_registry(loaded) as registry:
        releases = registry.releases(_name(loaded))
        chosen = next((r for r in releases if release_id in (None, r.id)), None)
        if chosen is None:
            which = f"release {release_id}" if release_id is not None else "release"
            raise click.ClickException(f"no {which} of {_name(loaded)}")
        task = tasks.recorded(registry.get(chosen.tag).extra.get("task")).kind
    summary = build_report(chosen, release_rows(loaded.log_url(), chosen), task,
                           min_effect=min_effect)  # fmt: skip
    click.echo(json.dumps(summary, indent=2, default=str) if as_json else render(summary))
