"""A new model version's way to `champion`: register it as challenger, run the gates
against the current champion, record every verdict, promote only when they pass."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from .gates import GateConfig, passed, run_gates
from .registry import Registry

PIPELINE_ACTOR = "nbship-pipeline"


@dataclass(frozen=True)
class Verdict:
    tag: str
    promoted: bool
    previous_champion: str | None
    gates: list[dict[str, Any]]


def load_store_model(tag: str) -> Any:
    """A model from the BentoML store by its explicit tag."""
    import bentoml

    return bentoml.sklearn.load_model(tag)


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
    actor: str = PIPELINE_ACTOR,
) -> Verdict:
    """Registers `tag` as challenger; promotes it to champion when every gate passes."""
    config = GateConfig.from_mapping(gate_config)
    name = tag.split(":", 1)[0]
    registry.register(tag, metadata, bento_tag=bento_tag)
    registry.set_alias(tag, "challenger", actor=actor, reason="new pipeline run")
    champion = registry.alias(name, "champion")
    results = run_gates(
        champion=load_store_model(champion.tag) if champion else None,
        challenger=model,
        champion_metrics=champion.metrics.get("test", {}) if champion else {},
        challenger_metrics=metadata["metrics"]["test"],
        golden=golden,
        columns=columns,
        config=config,
        champion_train_seconds=champion.train_seconds if champion else None,
        challenger_train_seconds=metadata.get("train_seconds"),
    )
    verdicts = [asdict(r) for r in results]
    registry.record_gates(tag, verdicts)
    promoted = passed(results)
    if promoted:
        reason = "gates passed" if champion else "first model: no champion to compare with"
        registry.promote(tag, actor=actor, reason=reason)
    return Verdict(
        tag=tag,
        promoted=promoted,
        previous_champion=champion.tag if champion else None,
        gates=verdicts,
    )
