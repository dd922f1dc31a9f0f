"""Moving a project's champion by hand, and publishing the bento that then serves: the
promotion gates run as in the pipeline (nbship.registry.promotion), on the last build's
golden set and test split."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nbship import tasks
from nbship.packaging.bento import discard_export, export_bento, point_link, publish
from nbship.project import Project
from nbship.registry.promotion import check_by_hand

if TYPE_CHECKING:
    import pandas as pd

    from nbship.registry.versions import ModelVersion, Registry


class MissingSplit(FileNotFoundError):
    """The build product the gates or a card need is not there: build first."""


def split_part(project: Project, part: str) -> pd.DataFrame:
    """A part (train, test, golden) of the last build's split, as the split task wrote it."""
    import pandas as pd

    path = project.product("split", part)
    if not path.exists():
        raise MissingSplit(f"no {part} split at {path}: run `nbship build` first")
    return pd.read_parquet(path)


def gate_metric(setting: str | None, version: ModelVersion) -> str:
    """The metric the gates compare: the configured one, or for "auto" the one the version
    was selected on, else its task's default (classification for a version without one)."""
    task = tasks.recorded(version.extra.get("task"))
    if setting not in (None, "", "auto"):
        return str(setting)
    selected = (version.extra.get("selection") or {}).get("metric")
    if selected and selected != "auto" and selected in task.metrics:
        return str(selected)
    return task.default_metric


def promote_champion(
    project: Project, registry: Registry, tag: str, *, actor: str, reason: str, force: bool
) -> Any:
    """Gates `tag` against the champion, promotes it (PromotionRefused when a gate fails and
    not forced) and publishes its bento; returns the registry's event. The bento is exported
    before the champion moves, so a failed export leaves both as they were."""
    version = registry.get(tag)  # an unknown tag is the first thing to say
    golden = split_part(project, "golden")
    metric = gate_metric(project.config.selection_metric, version)
    gates = {**project.config.gates.model_dump(), "metric": metric}
    check_by_hand(
        registry, tag, golden=golden, gate_config=gates, test=split_part(project, "test"),
        force=force,
    )  # fmt: skip
    exported = (
        export_bento(version.bento_tag, project.published_bento) if version.bento_tag else None
    )
    try:
        event = registry.promote(tag, actor=actor, reason=reason, forced=force)
    except BaseException:
        if exported is not None:
            discard_export(project.published_bento, exported)
        raise
    if exported is not None:
        point_link(project.published_bento, exported)
    return event


def rollback_champion(
    project: Project, registry: Registry, name: str, *, actor: str, reason: str
) -> Any:
    """Gives `name`'s champion back to the previous one and publishes its bento when it is
    this project's model; returns the registry's event."""
    event = registry.rollback(name, actor=actor, reason=reason)
    bento_tag = registry.get(event.tag).bento_tag
    if bento_tag and project.config.bento.name == name:
        publish(bento_tag, project.published_bento)
    return event
