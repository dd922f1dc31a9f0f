"""A release on one server (see nbship.registry.versions.Release): which arm answers a
request and the guard rails that roll a canary (or an A/B arm "b") back by themselves;
the shadow model predicts in nbship.serving.shadow.

Every server sharing a registry follows its release as it follows the champion (the
Reloader in serving.following); what is here is what one server does with it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import Counter

from nbship.common.webhook import post_alerts
from nbship.config import GuardSettings, ReleaseSettings
from nbship.registry.versions import SHADOW, Release

if TYPE_CHECKING:
    from nbship.serving.following import ServedModel

ARM_HEADER = "x-nbship-arm"
# one more webhook for the guard rails' alerts, where the bento is served (env.yaml's
# `monitoring.sinks` webhooks are the ones packaged)
ALERT_WEBHOOK_ENV = "NBSHIP_ALERT_WEBHOOK"
logger = logging.getLogger("bentoml.nbship.release")

RELEASE_ANSWERS = Counter(
    name="nbship_release_answers",
    documentation="Requests answered while a release runs, by arm and model tag",
    labelnames=["arm", "model_tag"],
)


@dataclass(frozen=True)
class ReleaseConfig:
    """serving.json's "release": env.yaml's `release:` (checked at packaging, one
    schema: nbship.config) and the webhooks its guard rails alert."""

    settings: ReleaseSettings
    webhooks: tuple[Mapping[str, Any], ...] = ()

    @property
    def guard(self) -> GuardSettings:
        return self.settings.guard

    @classmethod
    def from_config(cls, raw: Mapping[str, Any] | None) -> ReleaseConfig:
        """From serving.json (a bento built before releases has none: the defaults)."""
        raw = dict(raw or {})
        webhooks = tuple(raw.pop("webhooks", None) or ())
        if url := os.environ.get(ALERT_WEBHOOK_ENV):
            webhooks += ({"type": "webhook", "url": url},)
        return cls(ReleaseSettings.model_validate(raw), webhooks)


@dataclass(frozen=True)
class ServedRelease:
    """The running release and its version's model, loaded and verified."""

    release: Release
    model: ServedModel

    @property
    def splits_traffic(self) -> bool:
        """Canary and A/B answer some requests; a shadow never does."""
        return self.release.kind != SHADOW


def takes_trial(release: Release, key: str | None) -> bool:
    """Whether this request goes to the release's version: the same key always lands on
    the same arm (hashed with the version's tag, so raising a canary's share keeps the
    callers it already had); a request without a key is a random draw."""
    if key is None:
        return random.random() < release.share
    digest = hashlib.blake2b(f"{release.tag}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < release.share


class ArmWindow:
    """One arm's answers over the last `seconds`: when, how long, whether it failed.
    Appended on the event loop, read by the reloader thread (deque appends and pops
    are atomic; a reader copies it first)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.events: deque[tuple[float, float, bool]] = deque()

    def add(self, latency_ms: float, ok: bool) -> None:
        now = time.monotonic()
        self.events.append((now, latency_ms, ok))
        while self.events and self.events[0][0] < now - self.seconds:
            self.events.popleft()

    def summary(self) -> dict[str, Any]:
        cutoff = time.monotonic() - self.seconds
        events = [e for e in list(self.events) if e[0] >= cutoff]
        latencies = [ms for _, ms, _ in events]
        errors = sum(1 for *_, ok in events if not ok)
        return {
            "requests": len(events),
            "errors": errors,
            "error_rate": errors / len(events) if events else None,
            "p90_ms": float(np.percentile(latencies, 90)) if latencies else None,
            "p99_ms": float(np.percentile(latencies, 99)) if latencies else None,
        }


def breach(
    guard: GuardSettings, trial: Mapping[str, Any], champion: Mapping[str, Any]
) -> str | None:
    """Why the trial arm must be rolled back (its window against the champion's), or None."""
    n = trial["requests"]
    if n < guard.min_requests:
        return None
    over = f"over its last {n} answers ({guard.window_seconds:g} s)"
    if trial["error_rate"] > guard.max_error_rate:
        return f"error rate {trial['error_rate']:.3f} > {guard.max_error_rate:g} {over}"
    p99 = trial["p99_ms"]
    if guard.max_p99_ms is not None and p99 > guard.max_p99_ms:
        return f"p99 {p99:.1f} ms > {guard.max_p99_ms:g} ms {over}"
    p90, baseline = trial["p90_ms"], champion["p90_ms"]
    if (
        guard.max_p90_ratio is not None
        and baseline
        and champion["requests"] >= guard.min_requests
        and p90 > guard.max_p90_ratio * baseline
    ):
        return (
            f"p90 {p90:.1f} ms > {guard.max_p90_ratio:g} x the champion's {baseline:.1f} ms {over}"
        )
    return None


def guard_alert(release: Release, reason: str, guard: GuardSettings) -> dict[str, Any]:
    """The rollback as an alert, in the shape `nbship monitor` sends (Alert.to_dict)."""
    now = datetime.now(UTC)
    return {
        "rule": f"release_guard:{release.kind}",
        "metric": "release_guard",
        "op": "breach",
        "value": 1.0,
        "threshold": 0.0,
        "window_start": (now - timedelta(seconds=guard.window_seconds)).isoformat(),
        "window_end": now.isoformat(),
        "created_at": now.isoformat(),
        "message": f"{release.kind} of {release.tag} rolled back to {release.champion_tag}:"
        f" {reason}",
    }


def send_alert(config: ReleaseConfig, alert: Mapping[str, Any]) -> list[str]:
    """Posts the alert to every configured webhook; returns the failures, in words (a dead
    webhook must not stop the rollback, which has already happened)."""
    logger.error("ALERT %s", alert["message"])
    failed = []
    for sink in config.webhooks:
        try:
            post_alerts(str(sink["url"]), [alert], float(sink.get("timeout_s", 5.0)))
        except Exception as exc:
            failed.append(f"{type(exc).__name__}: {exc}")
            logger.warning("alert webhook failed: %s", failed[-1])
    return failed
