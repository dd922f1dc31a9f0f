"""Where new alerts go: a log line, a webhook. A sink that fails is logged and
skipped, never raised: a dead webhook must not take the monitor down.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nbship.common.webhook import post_alerts
from nbship.operate.alert_rules import Alert, Sink

# the name the alert lines have always been logged under (the log sink's documented
# logger, which operators' logging configuration routes), kept across the module split
logger = logging.getLogger("nbship.operate.alerts")


@dataclass(frozen=True)
class Delivery:
    """What became of the alerts at one sink."""

    sink: str
    ok: bool
    error: str | None = None


def _log_sink(alerts: Sequence[Alert]) -> None:
    for alert in alerts:
        logger.warning("ALERT %s", alert.message)


def _webhook_sink(alerts: Sequence[Alert], sink: Sink) -> None:
    post_alerts(str(sink.url), [a.to_dict() for a in alerts], sink.timeout_s)


def send(alerts: Sequence[Alert], sinks: Iterable[Sink]) -> list[Delivery]:
    """Hands `alerts` to every sink (a webhook gets one POST with all of them as JSON:
    {"source": "nbship", "alerts": [Alert.to_dict(), ...]}). A sink that fails is
    logged and reported in the result; it never raises and never stops the others."""
    if not alerts:
        return []
    deliveries = []
    for sink in sinks:
        name = sink.describe()
        try:
            if sink.type == "log":
                _log_sink(alerts)
            elif sink.type == "webhook":
                _webhook_sink(alerts, sink)
            else:
                raise ValueError(f"unknown sink type {sink.type!r}")
        except Exception as exc:  # a sink must never take the monitor down
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            logger.error("alert sink %s failed for %d alert(s): %s", name, len(alerts), error)
            deliveries.append(Delivery(name, False, error))
        else:
            deliveries.append(Delivery(name, True))
    return deliveries
