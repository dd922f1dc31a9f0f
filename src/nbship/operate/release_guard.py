"""The guard rails a server cannot check alone, on the prediction log every server writes
to: the trial's answers against the champion's on the same traffic, and the trial's
metric on labelled feedback. `nbship release check` runs them (once, or every so many
seconds); a breach rolls the release back in the registry, which every server follows,
and alerts through `monitoring.sinks`. The servers check error rate and latency
themselves, at once (nbship.serving.releases)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nbship import tasks
from nbship.config import GuardSettings
from nbship.drift import DEFAULT_PVALUE_THRESHOLD
from nbship.operate.alert_rules import Alert, Sink
from nbship.operate.alert_sinks import send
from nbship.operate.release_report import better, release_rows, report
from nbship.registry.versions import SHADOW, Registry, RegistryError, Release


@dataclass(frozen=True)
class Breach:
    """One guard rail that fired: what it measured against what it allows."""

    metric: str
    value: float
    op: str
    threshold: float
    why: str


@dataclass(frozen=True)
class GuardCheck:
    release: Release | None  # the running release checked (None: nothing to check)
    breaches: list[Breach] = field(default_factory=list)
    rolled_back: bool = False
    report: dict[str, Any] | None = None


def breaches(summary: Mapping[str, Any], guard: GuardSettings) -> list[Breach]:
    """What `report`'s summary of a canary or A/B release breaks of `guard`."""
    champion_arm, trial_arm = summary["release"]["arms"]
    found = []
    drift = summary.get("answer_drift") or {}
    psi, pvalue = drift.get("psi"), drift.get("pvalue")
    if (
        guard.max_answer_psi is not None
        and psi is not None
        and psi >= guard.max_answer_psi
        and pvalue is not None
        and pvalue < DEFAULT_PVALUE_THRESHOLD
    ):
        found.append(Breach(
            "answer_psi", psi, ">=", guard.max_answer_psi,
            f"{trial_arm}'s answers unlike the champion's on the same traffic: PSI {psi:.3f}"
            f" >= {guard.max_answer_psi:g} (p = {pvalue:.2g})",
        ))  # fmt: skip
    test = summary.get("test") or {}
    if guard.on_worse_metric and summary.get("verdict") == better(champion_arm):
        difference = float(test["difference"])
        found.append(Breach(
            f"{test['metric']} {trial_arm} - {champion_arm}", difference,
            "<" if test["higher_is_better"] else ">", 0.0,
            f"worse on labelled feedback: {test['metric']} {trial_arm} - {champion_arm} ="
            f" {difference:+.4g}, always-valid p = {test['always_valid_p']:.2g}",
        ))  # fmt: skip
    return found


def check_release(
    registry: Registry,
    log_url: str,
    name: str,
    guard: GuardSettings,
    sinks: Iterable[Sink],
    *,
    actor: str,
) -> GuardCheck:
    """Checks model `name`'s running canary or A/B release; on a breach, ends it as
    rolled back (unless it ended meanwhile) and sends one alert per breach."""
    running = registry.active_release(name)
    if running is None or running.kind == SHADOW:  # a shadow answers nobody: nothing to guard
        return GuardCheck(running)
    task = tasks.recorded(registry.get(running.tag).extra.get("task")).kind
    summary = report(running, release_rows(log_url, running), task)
    found = breaches(summary, guard)
    if not found:
        return GuardCheck(running, report=summary)
    try:
        registry.end_release(name, "rolled_back", actor=actor, release_id=running.id,
                             reason="; ".join(b.why for b in found))  # fmt: skip
    except RegistryError:  # ended meanwhile (by hand, or by a server's guard rail)
        return GuardCheck(running, found, report=summary)
    now = datetime.now(UTC)
    send([Alert(rule=f"release_guard:{running.kind} {running.tag}", metric=b.metric, op=b.op,
                value=b.value, threshold=b.threshold, window_start=running.started_at,
                window_end=now) for b in found], sinks)  # fmt: skip
    return GuardCheck(running, found, rolled_back=True, report=summary)
