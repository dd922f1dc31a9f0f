"""`nbship models ...`: the model registry from the command line.

Every command finds the registry from the project's env.yaml (`registry: {url: ...}`,
`$NBSHIP_REGISTRY_URL` overrides, default `<project>/registry.db`). The registry (and
SQLAlchemy) is imported inside the commands so `nbship --help` stays fast.
"""

from __future__ import annotations

import getpass
import heapq
import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from nbship.cli.common import PROJECT_OPTION, load_project, project_registry, table

if TYPE_CHECKING:
    from nbship.registry.versions import Release

REASON_OPTION = click.option(
    "--reason", "-r", required=True, help="Why: recorded in the promotion history."
)


def _when(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S UTC")


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


@click.group()
def models() -> None:
    """The model registry: versions, champion/challenger aliases, promotion and release
    history."""


@models.command("list")
@PROJECT_OPTION
@click.option("--name", "-n", default=None, help="Only versions of this model name.")
def list_versions(project: Path, name: str | None) -> None:
    """Registered model versions, newest first."""
    with project_registry(load_project(project)) as registry:
        versions = registry.list(name)
        held: dict[str, list[str]] = {}
        for model in {v.name for v in versions}:
            for alias, tag in registry.aliases(model).items():
                held.setdefault(tag, []).append(alias)
    if not versions:
        click.echo("No model versions registered" + (f" for {name}." if name else "."))
        return
    rows = []
    for v in versions:
        selection = v.extra.get("selection") or {}
        chosen = (
            f"{selection['metric']}={_value(selection.get('value'))}"
            if isinstance(selection, dict) and "metric" in selection
            else ""
        )
        rows.append(
            [
                v.tag,
                ",".join(sorted(held.get(v.tag, []))) or "-",
                v.candidate or "-",
                _when(v.created_at),
                chosen,
            ]
        )
    click.echo(table(["TAG", "ALIASES", "CANDIDATE", "CREATED", "SELECTION"], rows))


@models.command()
@PROJECT_OPTION
@click.argument("tag")
def show(project: Path, tag: str) -> None:
    """Everything recorded for one model version."""
    from nbship.registry.versions import flatten

    with project_registry(load_project(project)) as registry:
        v = registry.get(tag)
        held = sorted(a for a, t in registry.aliases(v.name).items() if t == v.tag)
    rows: list[list[Any]] = [
        ["tag", v.tag],
        ["aliases", ", ".join(held) or "-"],
        ["created", _when(v.created_at)],
        ["candidate", _value(v.candidate)],
        ["bento", _value(v.bento_tag)],
        ["git commit", _value(v.git_commit)],
        ["data fingerprint", _value(v.data_fingerprint)],
        ["definition hash", _value(v.definition_hash)],
        ["train seconds", _value(v.train_seconds)],
        ["reports", _value(v.reports)],
    ]
    sections = {
        "params": v.params,
        "metrics": v.metrics,
        "predict_ms": v.predict_ms,
        "versions": v.versions,
    }
    for section, data in sections.items():
        rows += [[key, _value(val)] for key, val in flatten(data, f"{section}.").items()]
    for key in sorted(v.extra):
        value = v.extra[key]
        if key == "drift_profile" and isinstance(value, dict):  # kilobytes of bins
            value = f"{len(value.get('features', {}))} features of {value.get('n_rows')} rows"
        rows.append([key, _value(value)])
    for verdict in v.gates:
        passed = "pass" if verdict.get("passed") else "FAIL"
        rows.append([f"gate {verdict.get('gate')}", f"{passed}: {verdict.get('message')}"])
    click.echo(table(["FIELD", "VALUE"], rows))


@models.command()
@PROJECT_OPTION
@click.argument("tag")
@REASON_OPTION
@click.option("--force", is_flag=True, help="Promote even if gates failed (recorded as forced).")
@click.option(
    "--alias",
    type=click.Choice(["champion", "challenger"]),
    default="champion",
    show_default=True,
    help="Which alias to move.",
)
def promote(project: Path, tag: str, reason: str, force: bool, alias: str) -> None:
    """Make TAG the champion (what serves), or the challenger. A champion must pass the
    promotion gates against the current one (recorded with the version) unless --force;
    its bento is then published to bentos/."""
    from nbship.packaging.release import MissingSplit, promote_champion
    from nbship.registry.promotion import PromotionRefused

    loaded = load_project(project)
    with project_registry(loaded) as registry:
        if alias == "champion":
            try:
                event = promote_champion(
                    loaded, registry, tag, actor=getpass.getuser(), reason=reason, force=force
                )
            except (PromotionRefused, MissingSplit) as exc:
                raise click.ClickException(str(exc)) from None
        else:
            event = registry.set_alias(
                tag, alias, actor=getpass.getuser(), reason=reason, forced=force
            )
    was = f" (was {event.previous_tag})" if event.previous_tag else ""
    forced = " [forced]" if event.forced else ""
    click.echo(f"{event.tag} is now the {event.alias} of {event.name}{was}{forced}")


@models.command()
@PROJECT_OPTION
@click.argument("tag")
def card(project: Path, tag: str) -> None:
    """Write TAG's HTML model card again, compared with the current champion, on the
    last build's train/test split; prints its path."""
    from nbship.packaging.release import MissingSplit, split_part
    from nbship.registry.promotion import write_version_card

    loaded = load_project(project)
    try:
        train, test = split_part(loaded, "train"), split_part(loaded, "test")
    except MissingSplit as exc:
        raise click.ClickException(str(exc)) from None
    with project_registry(loaded) as registry:
        version = registry.get(tag)
        champion = registry.alias(version.name, "champion")
        path = write_version_card(
            registry, tag, train=train, test=test, target=loaded.config.target,
            cards_dir=loaded.cards_dir, compare_with=champion.tag if champion else None,
        )  # fmt: skip
    click.echo(str(path))


@models.command()
@PROJECT_OPTION
@click.argument("name")
@REASON_OPTION
def rollback(project: Path, name: str, reason: str) -> None:
    """Give NAME's champion back to the one before the current promotion."""
    from nbship.packaging.release import rollback_champion

    loaded = load_project(project)
    with project_registry(loaded) as registry:
        event = rollback_champion(loaded, registry, name, actor=getpass.getuser(), reason=reason)
    click.echo(f"rolled back {name}: champion is {event.tag} again (was {event.previous_tag})")


@models.command()
@PROJECT_OPTION
@click.argument("a")
@click.argument("b")
def diff(project: Path, a: str, b: str) -> None:
    """What differs between versions A and B: params, metrics, versions, data, definition."""
    with project_registry(load_project(project)) as registry:
        changes = registry.diff(a, b)
    if not changes:
        click.echo(f"{a} and {b} have the same params, metrics, versions, data and definition.")
        return
    rows = [[key, _value(x), _value(y)] for key, (x, y) in changes.items()]
    click.echo(table(["KEY", a, b], rows))


def _release_rows(releases: list[Release]) -> list[tuple[datetime, list[Any]]]:
    """History rows of releases (newest first): each start, and its end once it ended.
    PREVIOUS is the champion it was on trial beside; a release forces nothing."""
    rows: list[tuple[datetime, list[Any]]] = []
    for r in releases:
        if r.ended_at is not None:
            action = f"release ended ({r.outcome})"
            rows.append(
                (r.ended_at, [_when(r.ended_at), "-", action, r.tag, r.champion_tag,
                              r.end_actor or "-", "-", r.end_reason or "-"])
            )  # fmt: skip
        action = f"release {r.kind} {100 * r.share:g}%"
        rows.append(
            (r.started_at, [_when(r.started_at), "-", action, r.tag, r.champion_tag, r.actor,
                            "-", r.reason])
        )  # fmt: skip
    # a replaced release ends as the next starts: listed after (older than) that start
    return sorted(rows, key=lambda row: row[0], reverse=True)


@models.command()
@PROJECT_OPTION
@click.argument("name")
def history(project: Path, name: str) -> None:
    """Every alias change and release (started, ended) of model NAME, newest first."""
    with project_registry(load_project(project)) as registry:
        events, releases = registry.history(name), registry.releases(name)
    if not events and not releases:
        click.echo(f"No promotions recorded for {name}.")
        return
    promotions = [
        (
            e.at,
            [
                _when(e.at),
                e.alias,
                "rollback" if e.rollback else "promote",
                e.tag,
                e.previous_tag or "-",
                e.actor,
                "yes" if e.forced else "no",
                e.reason,
            ],
        )
        for e in events
    ]
    # both newest first: merged by time, each keeping its own order
    merged = heapq.merge(promotions, _release_rows(releases), key=lambda row: row[0], reverse=True)
    rows = [row for _, row in merged]
    headers = ["AT", "ALIAS", "ACTION", "TAG", "PREVIOUS", "ACTOR", "FORCED", "REASON"]
    click.echo(table(headers, rows))
