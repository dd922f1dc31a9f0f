"""Moving a project's champion by hand, and publishing the bento that then serves: the
promotion gates run as in the pipeline (nbship.registry.promotion), on the last build's
golden set and test split."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nbship.packaging.bento import publish
from nbship.project import Project
from nbship.registry.promotion import promote_by_hand

if TYPE_CHECKING:
    import pandas as pd

    from nbship.registry.versions import Registry


class MissingSplit(FileNotFoundError):
    """The build product the gates or a card need is not there: build first."""


def split_part(project: Project, part: str) -> pd.DataFrame:
    """A part (train, test, golden) of the last build's split, as the split task wrote it."""
    import pandas as pd

    path = project.product("split", part)
    if not path.exists():
        raise MissingSplit(f"no {part} split at {path}: run `nbship build` first")
    return pd.read_parquet(path)


def promote_champion(
    project: Project, registry: Registry, tag: str, *, actor: str, reason: str, force: bool
) -> Any:
    """Gates `tag` against the champion, promotes it (PromotionRefused when a gate fails and
    not forced) and publishes its bento; returns the registry's event."""
    version = registry.get(tag)  # an unknown tag is the first thing to say
    golden = split_part(project, "golden")
    gates = {**project.config.gates.model_dump(), "metric": project.config.selection_metric}
    event, _ = promote_by_hand(
        registry, tag, golden=golden, gate_config=gates, test=split_part(project, "test"),
        actor=actor, reason=reason, force=force,
    )  # fmt: skip
    if version.bento_tag:
        publish(version.bento_tag, project.published_bento)
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
