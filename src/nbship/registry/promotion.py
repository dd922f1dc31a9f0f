"""A new model version's way to `champion`: register it as challenger, run the gates
against the current champion, record every verdict, promote only when they pass."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from nbship.pipeline.data import fingerprint
from nbship.pipeline.training import score
from nbship.registry.gates import GateConfig, run_gates
from nbship.registry.model_store import file_digests, load_verified, local_dir
from nbship.registry.versions import (
    ModelVersion,
    Registry,
    RegistryError,
    UnknownModelError,
    _jsonable,
    _version,
    split_tag,
)

PIPELINE_ACTOR = "nbship-pipeline"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    tag: str
    promoted: bool
    previous_champion: str | None
    gates: list[dict[str, Any]]


def load_registered(version: ModelVersion, registry: Registry | None = None) -> Any:
    """A registered version's model, loaded only once its files match the registry.

    A version registered before digests were recorded gets them now, from the local
    store, when a registry is given (trust on first use, logged)."""
    artifact = version.extra.get("artifact")
    folder = local_dir(version.tag)
    if not artifact and registry is not None and folder is not None:
        artifact = {"files": file_digests(folder)}
        registry.annotate(version.tag, artifact=artifact)
        logger.warning("recorded digests of %s, registered before hash checks", version.tag)
    return load_verified(version.tag, artifact or {})


class PromotionRefused(RuntimeError):
    """A gate failed and the promotion was not forced."""


def _gate(
    registry: Registry,
    version: ModelVersion,
    *,
    model: Any,
    golden: pd.DataFrame,
    columns: Sequence[str],
    config: GateConfig,
    test: pd.DataFrame | None = None,
    target: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Every gate of `version` (registered or not) against the current champion; records
    nothing. Returns the verdicts and the champion's tag (None for a first model)."""
    champion = registry.alias(version.name, "champion")
    if champion is not None and champion.tag == version.tag:
        champion = None  # re-checking the champion itself: nothing to compare with
    champion_model = load_registered(champion, registry) if champion else None
    champion_metrics = champion.metrics.get("test", {}) if champion else {}
    challenger_metrics = version.metrics["test"]
    scored_on = "each model's own test split"
    if champion is not None and test is not None and target is not None:
        champion_metrics = score(
            champion_model, test, champion.extra.get("features") or columns, target
        )
        challenger_metrics = score(model, test, columns, target)
        scored_on = f"the same {len(test)} test rows ({fingerprint(test)})"
    results = run_gates(
        champion=champion_model,
        challenger=model,
        champion_metrics=champion_metrics,
        challenger_metrics=challenger_metrics,
        golden=golden,
        columns=columns,
        config=config,
        champion_train_seconds=champion.train_seconds if champion else None,
        challenger_train_seconds=version.train_seconds,
    )
    verdicts = [asdict(r) for r in results]
    for verdict in verdicts:
        if verdict["gate"] == "metric" and champion is not None:
            verdict["evidence"]["scored_on"] = scored_on
    return _jsonable(verdicts), champion.tag if champion else None


def gate_against_champion(
    registry: Registry,
    tag: str,
    *,
    model: Any,
    golden: pd.DataFrame,
    columns: Sequence[str],
    config: GateConfig,
    test: pd.DataFrame | None = None,
    target: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Runs every gate for `tag` against the current champion and records the verdicts
    with the version; returns them and the champion's tag (None for a first model).

    With a labelled `test` frame, the metric gate scores both models on it: a model
    trained on new data (feedback) is compared with the champion on the same rows, not
    with the score the champion once had on its own test split."""
    verdicts, champion = _gate(
        registry, registry.get(tag), model=model, golden=golden, columns=columns,
        config=config, test=test, target=target,
    )  # fmt: skip
    registry.record_gates(tag, verdicts)
    return verdicts, champion


def prospective_version(
    tag: str, metadata: Mapping[str, Any], *, bento_tag: str | None = None
) -> ModelVersion:
    """The ModelVersion `Registry.register(tag, metadata, bento_tag)` would record, without
    recording anything."""
    name, version = split_tag(tag)
    return _version(Registry._new_version(tag, name, version, _jsonable(dict(metadata)), bento_tag))


@dataclass(frozen=True)
class PendingVersion:
    """A new version gated against the champion but not registered yet: what the registry
    will hold once `commit_version` records it (nothing has changed before that)."""

    version: ModelVersion  # as it will be registered, with its gate verdicts
    metadata: dict[str, Any]
    previous_champion: str | None

    @property
    def gates(self) -> list[dict[str, Any]]:
        return self.version.gates

    @property
    def promoted(self) -> bool:
        """Whether committing it makes it champion (every gate passed)."""
        return all(v["passed"] for v in self.version.gates)

    def aliases_after(self, registry: Registry) -> dict[str, str]:
        """The model's aliases once committed (challenger, and champion when promoted)."""
        aliases = {**registry.aliases(self.version.name), "challenger": self.version.tag}
        if self.promoted:
            aliases["champion"] = self.version.tag
        return aliases


def gate_new_version(
    *,
    registry: Registry,
    tag: str,
    bento_tag: str | None,
    metadata: Mapping[str, Any],
    model: Any,
    golden: pd.DataFrame,
    columns: Sequence[str],
    gate_config: Mapping[str, Any] | None,
    test: pd.DataFrame | None = None,
    target: str | None = None,
) -> PendingVersion:
    """Runs the gates of a version not registered yet against the current champion;
    changes nothing in the registry (see `commit_version`)."""
    try:
        registry.get(tag)
    except UnknownModelError:
        pass
    else:
        raise RegistryError(f"{tag} is registered already")
    version = prospective_version(tag, metadata, bento_tag=bento_tag)
    verdicts, champion = _gate(
        registry, version, model=model, golden=golden, columns=columns,
        config=GateConfig.from_mapping(gate_config), test=test, target=target,
    )  # fmt: skip
    return PendingVersion(
        version=replace(version, gates=verdicts),
        metadata=dict(metadata),
        previous_champion=champion,
    )


def commit_version(
    registry: Registry,
    pending: PendingVersion,
    *,
    actor: str = PIPELINE_ACTOR,
    **extra: Any,
) -> Verdict:
    """Registers a gated version (with `extra` metadata, e.g. its card's path) as
    challenger, records its verdicts and promotes it when they all passed."""
    tag = pending.version.tag
    registry.register(tag, {**pending.metadata, **extra}, bento_tag=pending.version.bento_tag)
    registry.set_alias(tag, "challenger", actor=actor, reason="new pipeline run")
    registry.record_gates(tag, pending.gates)
    if pending.promoted:
        reason = (
            "gates passed" if pending.previous_champion
            else "first model: no champion to compare with"
        )  # fmt: skip
        registry.promote(tag, actor=actor, reason=reason)
    return Verdict(
        tag=tag,
        promoted=pending.promoted,
        previous_champion=pending.previous_champion,
        gates=pending.gates,
    )


def register_and_gate(
    *,
    registry: Registry,
    tag: str,
    bento_tag: str,
    metadata: Mapping[str, Any],
    model: Any,
    golden: pd.DataFrame,
    columns: Sequence[str],
    gate_config: Mapping[str, Any] | None,
    test: pd.DataFrame | None = None,
    target: str | None = None,
    actor: str = PIPELINE_ACTOR,
) -> Verdict:
    """Gates `tag` against the champion, then registers it as challenger and promotes it
    to champion when every gate passes (`gate_new_version` + `commit_version`)."""
    pending = gate_new_version(
        registry=registry, tag=tag, bento_tag=bento_tag, metadata=metadata, model=model,
        golden=golden, columns=columns, gate_config=gate_config, test=test, target=target,
    )  # fmt: skip
    return commit_version(registry, pending, actor=actor)


def check_by_hand(
    registry: Registry,
    tag: str,
    *,
    golden: pd.DataFrame,
    gate_config: Mapping[str, Any] | None,
    force: bool,
    test: pd.DataFrame | None = None,
) -> list[dict[str, Any]]:
    """The pipeline's gates for a registered `tag` against the champion, recorded with the
    version; PromotionRefused when one fails and not `force`."""
    version = registry.get(tag)
    verdicts, _ = gate_against_champion(
        registry, tag, model=load_registered(version), golden=golden,
        columns=version.extra.get("features") or list(golden.columns),
        config=GateConfig.from_mapping(gate_config), test=test,
        target=version.extra.get("target"),
    )  # fmt: skip
    failed = [v for v in verdicts if not v["passed"]]
    if failed and not force:
        lines = "\n".join(f"- {v['gate']}: {v['message']}" for v in failed)
        raise PromotionRefused(f"{tag} failed {len(failed)} gate(s); --force to override:\n{lines}")
    return verdicts


def promote_by_hand(
    registry: Registry,
    tag: str,
    *,
    golden: pd.DataFrame,
    gate_config: Mapping[str, Any] | None,
    actor: str,
    reason: str,
    force: bool,
    test: pd.DataFrame | None = None,
) -> tuple[Any, list[dict[str, Any]]]:
    """The same gates as the pipeline, then the promotion; a failure refuses it unless
    forced, and the force is recorded with the event."""
    verdicts = check_by_hand(
        registry, tag, golden=golden, gate_config=gate_config, force=force, test=test
    )
    event = registry.promote(tag, actor=actor, reason=reason, forced=force)
    return event, verdicts


def render_version_card(
    registry: Registry,
    version: ModelVersion,
    *,
    train: pd.DataFrame,
    test: pd.DataFrame,
    target: str,
    cards_dir: str | Path,
    compare_with: str | None,
    model: Any | None = None,
    aliases: Mapping[str, str] | None = None,
) -> Path:
    """Renders and writes `version`'s model card (registered or still pending), compared
    with `compare_with`; records nothing in the registry."""
    from nbship.registry.model_card import card_filename, render_card, write_card

    champion = registry.get(compare_with) if compare_with and compare_with != version.tag else None
    html = render_card(
        version=version,
        model=model if model is not None else load_registered(version),
        train=train,
        test=test,
        target=target,
        champion=champion,
        champion_model=load_registered(champion) if champion else None,
        aliases=registry.aliases(version.name) if aliases is None else aliases,
    )
    return write_card(Path(cards_dir).resolve() / card_filename(version.tag), html)


def write_version_card(
    registry: Registry,
    tag: str,
    *,
    train: pd.DataFrame,
    test: pd.DataFrame,
    target: str,
    cards_dir: str | Path,
    compare_with: str | None,
    model: Any | None = None,
) -> Path:
    """Renders the version's model card (compared with `compare_with`, usually the
    champion it was gated against), writes it and records its path in the registry."""
    path = render_version_card(
        registry, registry.get(tag), train=train, test=test, target=target,
        cards_dir=cards_dir, compare_with=compare_with, model=model,
    )  # fmt: skip
    registry.annotate(tag, card=str(path))
    return path
