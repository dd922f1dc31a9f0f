"""The dashboard: one live web page of a model in service, served on 127.0.0.1.

`create_app` makes a Starlette app with four routes:

* `GET /` the page: the champion (id="champion"), headline numbers of the period
  (requests, error rate, latency p50/p99), charts over the period's windows (traffic,
  latency p50/p99, error rate, drift PSI per feature; a regressor's predicted values),
  the registered versions with their aliases, what the model answered against training
  (a classifier's prediction mix; a regressor's prediction distribution and the share
  of predictions outside the training target's range), drift per feature, the release
  (the version on trial beside the champion, with each arm's requests, errors and
  latency, and the last releases that ended) and the alerts;
* `GET /api/summary` the same numbers as JSON (see `build_summary`);
* `GET /fragment` the page's live part (charts and tables) alone, for the refresh;
* `GET /healthz` "ok".

The numbers are `windows.window_metrics` of each window of the prediction log (windows
aligned to UTC by `windows.window_bounds`, so they are the windows the alert rules see)
and of the whole period; the charts, the prediction mix and the alerts are the
monitor report's (`sections`). Drift compares the inputs of successful requests with the
training reference profile: the one given, else the `drift_profile` the pipeline stored
with the champion in the registry. The served model's task is the champion's metadata
`task`, else the profile's (`windows.served_task`; "classification" when nothing says).

The page works offline: charts are matplotlib SVG inlined in the HTML, the only script
is inline (it re-reads /api/summary and /fragment every `refresh_seconds`), and a
Content-Security-Policy (meta tag and header) lets nothing load from anywhere else.
Every text is HTML-escaped. Nothing is written: the registry, the log and the alert
store are only read (a missing SQLite file stays missing), and a source that cannot be
read is named on the page instead of failing it. It is served by `nbship dashboard`.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from nbship.common import html_page as page
from nbship.common.sqlite import database_file
from nbship.common.timeutil import utc
from nbship.drift import (
    DEFAULT_MIN_ROWS,
    DEFAULT_PSI_THRESHOLD,
    DEFAULT_PVALUE_THRESHOLD,
    check_profile,
)
from nbship.operate import sections
from nbship.operate.alert_store import ALERTS_TABLE, AlertStore
from nbship.operate.sections import Timeline, drift_verdict, when
from nbship.operate.windows import served_task, window_bounds, window_metrics, window_row
from nbship.prediction_log import SHADOW_KIND, read_log
from nbship.registry.versions import (
    CHAMPION,
    SHADOW,
    ModelVersion,
    Registry,
    RegistryError,
    Release,
)

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8001
DEFAULT_WINDOW = timedelta(minutes=5)
DEFAULT_PERIOD = timedelta(hours=24)
DEFAULT_REFRESH_SECONDS = 30.0
ENDED_RELEASES = 5  # the ended releases the page lists, newest first
CACHE_SECONDS = 5.0  # the page, its refresh and the JSON share one computation this long
# Host headers answered (a DNS-rebinding page cannot read the dashboard through its name)
LOCAL_HOSTS = ("127.0.0.1", "localhost")
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src 'self' data:"
)
_HEADERS = {
    "Content-Security-Policy": f"{CSP}; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_CSS_EXTRA = """
header p { margin: .2rem 0; }
.overview { display: flex; flex-wrap: wrap; gap: 1rem; margin: 1rem 0; }
#champion { border: 2px solid #1c3f8f; border-radius: .5rem; padding: .6rem 1rem;
            background: #f4f7fe; min-width: 18rem; }
#champion .label { font-size: 12px; text-transform: uppercase; color: #1c3f8f;
                   font-weight: 700; letter-spacing: .05em; }
#champion .tag { font-size: 1.3rem; font-weight: 700; margin: .2rem 0; }
#champion .tag code { font-size: 1.1rem; }
.tiles { display: flex; flex-wrap: wrap; gap: .6rem; }
.tile { border: 1px solid #dcdce2; border-radius: .5rem; padding: .4rem .8rem;
        min-width: 8rem; }
.tile .label { font-size: 12px; color: #55555f; }
.tile .value { font-size: 1.25rem; font-weight: 700; font-variant-numeric: tabular-nums; }
.charts { display: flex; flex-wrap: wrap; gap: 1rem; }
.problems { background: #fbdcdc; color: #9b1c1c; padding: .4rem .8rem; border-radius: .4rem; }
#no-traffic { font-size: 1.1rem; color: #55555f; }
#refresh-status { color: #9b1c1c; }
"""

# The page's only script: every `data-refresh` seconds it re-reads /api/summary into the
# [data-field] elements (formatted as the server does, see `_show`) and replaces #live
# with /fragment. A constant: nothing is interpolated into it.
_SCRIPT = """
(() => {
  "use strict";
  const body = document.body;
  const every = 1000 * Math.max(1, Number(body.dataset.refresh) || 30);
  const status = document.getElementById("refresh-status");
  const pick = (obj, path) =>
    path.split(".").reduce((o, k) => (o === null || o === undefined ? null : o[k]), obj);
  const show = (v, f) => {
    if (v === null || v === undefined) return "\\u2014";
    if (f === "pct") return (100 * v).toFixed(1) + "%";
    if (f === "ms") return v.toFixed(1) + " ms";
    if (f === "num4") return v.toFixed(4);
    if (f === "time") return new Date(v).toISOString().slice(11, 19) + " UTC";
    return String(v);
  };
  const get = async (url, json) => {
    const r = await fetch(url, {cache: "no-store"});
    if (!r.ok) throw new Error(url + ": HTTP " + r.status);
    return json ? r.json() : r.text();
  };
  const refresh = async () => {
    try {
      const summary = await get("api/summary", true);
      for (const el of document.querySelectorAll("[data-field]")) {
        el.textContent = show(pick(summary, el.dataset.field), el.dataset.format);
      }
      document.getElementById("live").innerHTML = await get("fragment", false);
      body.dataset.refreshes = String(Number(body.dataset.refreshes || 0) + 1);
      status.textContent = "";
    } catch (err) {
      status.textContent = "(refresh failed: " + err.message + ")";
    }
    setTimeout(refresh, every);
  };
  setTimeout(refresh, every);
})();
"""


def _shown_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "?"


def _problem(what: str, url: str, exc: BaseException) -> str:
    cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{what} {_shown_url(url)}: {cause[0] if cause else type(exc).__name__}"


def _jsonable(value: Any) -> Any:
    """Plain JSON: times as ISO 8601, numpy values as numbers, NaN and inf as null."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return utc(value).isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# the numbers --------------------------------------------------------------------------------


def _has_table(url: str, table: str) -> bool:
    """Whether the database at `url` has `table`, without creating a missing SQLite file."""
    parsed = make_url(url)
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        database = database_file(url)
        if database is None:  # in memory (empty), unless a file: URI
            if not (parsed.database or "").startswith("file:"):
                return False
        elif not database.is_file():
            return False
    elif parsed.get_driver_name() in ("psycopg", "psycopg2"):
        connect_args["connect_timeout"] = 10
    engine = create_engine(url, connect_args=connect_args)
    try:
        return inspect(engine).has_table(table)
    finally:
        engine.dispose()


def _test_metric(version: ModelVersion) -> dict[str, Any]:
    """The version's selection metric on the test split ({"name", "value"})."""
    test = version.metrics.get("test") or {}
    selection = version.extra.get("selection") or {}
    name = selection.get("metric") if isinstance(selection, Mapping) else None
    if not name or name not in test:
        name = next(iter(test), None)
    return {"name": name, "value": test.get(name) if name else None}


def _gates(version: ModelVersion) -> str:
    """The latest verdict of each recorded gate: "passed", "failed" or "none"."""
    if not version.gates:
        return "none"
    latest = {str(g.get("gate")): g for g in version.gates}
    return "passed" if all(g.get("passed") for g in latest.values()) else "failed"


def _versions(
    registry_url: str, model_name: str, problems: list[str]
) -> tuple[list[ModelVersion], dict[str, str], list[Release]]:
    """The model's versions, aliases and releases (newest first; none in a registry made
    before releases existed)."""
    try:
        with Registry(registry_url, create=False) as registry:
            versions, aliases = registry.list(model_name), registry.aliases(model_name)
            return versions, aliases, registry.releases(model_name)
    except RegistryError:  # no registry file yet: nothing registered
        return [], {}, []
    except SQLAlchemyError as exc:
        problems.append(_problem("registry", registry_url, exc))
        return [], {}, []


def _profile(
    given: Mapping[str, Any] | None, champion: ModelVersion | None, problems: list[str]
) -> tuple[Mapping[str, Any] | None, str | None]:
    """The drift reference and where it came from ("given", "champion" or None)."""
    candidates = [(given, "given")]
    if champion is not None:
        candidates.append((champion.extra.get("drift_profile"), "champion"))
    for profile, source in candidates:
        if profile is None:
            continue
        try:
            check_profile(profile)
        except ValueError as exc:
            problems.append(f"drift reference ({source}): {exc}")
            continue
        return profile, source
    return None, None


def _drift_rows(drift: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    keys = ("kind", "n", "psi", "pvalue", "enough_rows", "drifted")
    return {name: {k: r.get(k) for k in keys} for name, r in drift.items()}


_PREDICTION_KEYS = (
    "n",
    "psi",
    "pvalue",
    "ks_pvalue",
    "mean",
    "reference_mean",
    "out_of_range",
    "out_of_range_share",
    "target_range",
    "enough_rows",
    "drifted",
    "live_proportions",
)


def _regression_period(
    whole: Mapping[str, Any], reference: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A regressor's predictions of the period against those on the training rows."""
    result = whole.get("prediction_drift")
    training = (reference or {}).get("predictions")
    return {
        "prediction_psi": whole.get("prediction_psi"),
        "prediction_out_of_range_share": whole.get("prediction_out_of_range_share"),
        "prediction_quantiles": dict(whole.get("prediction_quantiles") or {}),
        "prediction_drift": None
        if result is None
        else {k: result.get(k) for k in _PREDICTION_KEYS},
        "training_predictions": None
        if training is None
        else {
            k: training.get(k) for k in ("n", "mean", "std", "min", "max", "edges", "proportions")
        },
        "target_range": (reference or {}).get("target_range"),
    }


def _arm(rows: pd.DataFrame, tag: str, min_rows: int, task: str) -> dict[str, Any]:
    """The rows of one version as the period's numbers count them (`window_metrics`):
    requests, errors, error_rate and latency_p99_ms (None under `min_rows`)."""
    metrics = window_metrics(rows, None, min_rows=min_rows, task=task)
    keys = ("requests", "errors", "error_rate", "latency_p99_ms")
    return {"tag": tag, **{key: metrics[key] for key in keys}}


def _release_summary(
    releases: Sequence[Release],
    log: pd.DataFrame,
    *,
    log_url: str,
    until: datetime,
    since: datetime,
    min_rows: int,
    task: str,
    problems: list[str],
) -> dict[str, Any]:
    """The `release` entry of the summary (see `build_summary`)."""
    import pandas as pd

    running = next((r for r in releases if r.active), None)
    ended = [
        {
            "id": r.id,
            "kind": r.kind,
            "tag": r.tag,
            "champion_tag": r.champion_tag,
            "share": r.share,
            "started_at": r.started_at,
            "ended_at": r.ended_at,
            "outcome": r.outcome,
            "end_reason": r.end_reason,
            "end_actor": r.end_actor,
        }
        for r in releases
        if not r.active
    ][:ENDED_RELEASES]
    if running is None:
        return {"active": None, "ended": ended}

    counted = max(since, running.started_at)  # its own answers only, within the period
    rows = log[log["ts"] >= pd.Timestamp(counted)]
    arms = {
        arm: _arm(rows[rows["model_tag"] == tag], tag, min_rows, task)
        for arm, tag in zip(running.arms, (running.champion_tag, running.tag), strict=True)
    }
    shadow: dict[str, Any] | None = None
    if running.kind == SHADOW:
        try:
            logged = read_log(
                log_url, since=counted, until=until, kind=SHADOW_KIND, model_tag=running.tag
            )
        except (SQLAlchemyError, OSError) as exc:
            problems.append(_problem("prediction log (shadow rows)", log_url, exc))
            logged = read_log("sqlite:///:memory:")
        # a shadow row is measured as a request would be: `window_metrics` counts "predict"
        shadow = _arm(logged.assign(kind="predict"), running.tag, min_rows, task)
    return {
        "active": {
            "id": running.id,
            "kind": running.kind,
            "tag": running.tag,
            "champion_tag": running.champion_tag,
            "share": running.share,
            "started_at": running.started_at,
            "actor": running.actor,
            "reason": running.reason,
            "counted_since": counted,
            "arms": arms,
            "shadow": shadow,
        },
        "ended": ended,
    }


def build_summary(
    *,
    registry_url: str,
    log_url: str,
    model_name: str,
    profile: Mapping[str, Any] | None = None,
    window: timedelta = DEFAULT_WINDOW,
    period: timedelta = DEFAULT_PERIOD,
    alert_url: str | None = None,
    min_rows: int = DEFAULT_MIN_ROWS,
    psi_threshold: float = DEFAULT_PSI_THRESHOLD,
    pvalue_threshold: float = DEFAULT_PVALUE_THRESHOLD,
    now: datetime | None = None,
) -> dict[str, Any]:
    """What the dashboard shows, as a dict (datetimes as such; `_jsonable` for JSON).

    Keys: `model`, `generated_at`, `window_seconds`, `period_seconds`, `min_rows`;
    `champion` (None, or tag, version, created_at, candidate, bento_tag, `selection`
    {name, value}: the selection metric on the test split, `metrics`: all test metrics,
    `requests` it answered in the period); `versions` (newest first: tag, aliases,
    created_at, candidate, test_metric {name, value}, gates "passed"/"failed"/"none",
    requests in the period); `period` (since, until: whole windows; requests, errors,
    error_rate, server_error_rate, validation_failures, records, latency_p50_ms,
    latency_p99_ms, predictions {label: n}, training_classes {label: share}, models
    {tag: requests}; and for a regressor: prediction_psi, prediction_out_of_range_share,
    prediction_quantiles {p10, p50, p90}, prediction_drift {n, psi, pvalue, mean,
    reference_mean, out_of_range, out_of_range_share, target_range, enough_rows,
    drifted, live_proportions} or None); `task` ("classification" / "regression");
    `windows` (each: `windows.window_row`: start, end, requests, errors, error_rate,
    server_error_rate, latency_p50_ms, latency_p99_ms, predictions, prediction_p10/p50/
    p90, prediction_psi, prediction_out_of_range_share, drift_psi {feature: PSI, None
    under min_rows}); `latest` (the current window's row); `drift` (source
    "given"/"champion"/None, `latest` {window_start, window_end, features} of the newest
    window with enough rows or None, `period` {feature: kind, n, psi, pvalue,
    enough_rows, drifted}, drifted_count); `release` (`active`: None, or the running
    release's id, kind, tag, champion_tag, share, started_at, actor, reason,
    counted_since (its start, or the period's when it started before), `arms` {arm name
    (`Release.arms`): tag, requests, errors, error_rate, latency_p99_ms of the requests
    that tag answered since then} and `shadow` (a shadow release's: the same numbers of
    its shadow rows; else None); `ended`: the last ENDED_RELEASES ended releases, newest
    first: id, kind, tag, champion_tag, share, started_at, ended_at, outcome,
    end_reason, end_actor); `alerts` (Alert.to_dict() of the period, None when there is
    no alert store) and `problems` (sources that could not be read). Rates, quantiles
    and drift are None under `min_rows`, as in the alert rules."""
    now = utc(now or datetime.now(UTC))
    bounds = window_bounds(now - period, now, window)
    since, until = bounds[0][0], bounds[-1][1]
    problems: list[str] = []

    versions, aliases, releases = _versions(registry_url, model_name, problems)
    by_tag: dict[str, list[str]] = {}
    for alias, tag in sorted(aliases.items()):
        by_tag.setdefault(tag, []).append(alias)
    champion = next((v for v in versions if v.tag == aliases.get(CHAMPION)), None)
    reference, source = _profile(profile, champion, problems)

    import pandas as pd

    try:
        log = read_log(log_url, since=since, until=until, kind="predict")
    except (SQLAlchemyError, OSError) as exc:
        problems.append(_problem("prediction log", log_url, exc))
        log = read_log("sqlite:///:memory:")  # an empty frame of the right shape
    metadata = champion.extra if champion is not None else None
    task = served_task(reference, metadata, log.loc[log["status"] == "ok", "outputs"])
    options: dict[str, Any] = {
        "min_rows": min_rows,
        "psi_threshold": psi_threshold,
        "pvalue_threshold": pvalue_threshold,
        "task": task,
    }
    stamps = log["ts"]
    windows: list[dict[str, Any]] = []
    latest_drift: dict[str, Any] | None = None
    for start, end in bounds:
        i, j = stamps.searchsorted(pd.Timestamp(start)), stamps.searchsorted(pd.Timestamp(end))
        rows = log.iloc[i:j]
        if rows.empty:
            windows.append(window_row({}, start, end))
            continue
        # drift only where it can be told from noise (under min_rows it is None anyway)
        metrics = window_metrics(
            rows,
            reference if len(rows) >= min_rows else None,
            window_start=start,
            window_end=end,
            **options,
        )
        windows.append(window_row(metrics, start, end))
        if any(r["enough_rows"] for r in metrics["drift"].values()):
            latest_drift = {
                "window_start": start,
                "window_end": end,
                "features": _drift_rows(metrics["drift"]),
            }
    whole = window_metrics(log, reference, window_start=since, window_end=until, **options)
    models = dict(whole["models"])

    alerts: list[dict[str, Any]] | None = None
    alert_db = alert_url or log_url
    try:
        if _has_table(alert_db, ALERTS_TABLE):
            with AlertStore(alert_db) as store:
                alerts = [a.to_dict() for a in store.alerts(since, until)]
    except SQLAlchemyError as exc:
        problems.append(_problem("alert store", alert_db, exc))

    release = _release_summary(
        releases, log, log_url=log_url, since=since, until=until, min_rows=min_rows,
        task=task, problems=problems,
    )  # fmt: skip

    def version_row(v: ModelVersion) -> dict[str, Any]:
        return {
            "tag": v.tag,
            "aliases": by_tag.get(v.tag, []),
            "created_at": v.created_at,
            "candidate": v.candidate,
            "test_metric": _test_metric(v),
            "gates": _gates(v),
            "requests": models.get(v.tag, 0),
        }

    return {
        "model": model_name,
        "generated_at": now,
        "window_seconds": window.total_seconds(),
        "period_seconds": period.total_seconds(),
        "min_rows": min_rows,
        "champion": None
        if champion is None
        else {
            "tag": champion.tag,
            "version": champion.version,
            "created_at": champion.created_at,
            "candidate": champion.candidate,
            "bento_tag": champion.bento_tag,
            "selection": _test_metric(champion),
            "metrics": dict(champion.metrics.get("test") or {}),
            "requests": models.get(champion.tag, 0),
        },
        "versions": [version_row(v) for v in versions],
        "period": {
            "since": since,
            "until": until,
            **{
                key: whole[key]
                for key in (
                    "requests",
                    "errors",
                    "error_rate",
                    "server_error_rate",
                    "validation_failures",
                    "records",
                    "latency_p50_ms",
                    "latency_p99_ms",
                )
            },
            "predictions": dict(whole["predictions"]),
            "training_classes": dict((reference or {}).get("classes") or {}),
            "models": models,
            **(_regression_period(whole, reference) if task == "regression" else {}),
        },
        "task": task,
        "windows": windows,
        "latest": windows[-1],
        "drift": {
            "source": source,
            "latest": latest_drift,
            "period": _drift_rows(whole["drift"]),
            "drifted_count": whole["drifted_features"],
        },
        "release": release,
        "alerts": alerts,
        "problems": problems,
    }


# the page -------------------------------------------------------------------------------------


def _show(value: Any, fmt: str = "") -> str:
    """A number as the page's script writes it (keep the two in step)."""
    if value is None:
        return "—"
    if fmt == "pct":
        return f"{100 * float(value):.1f}%"
    if fmt == "ms":
        return f"{float(value):.1f} ms"
    if fmt == "num4":
        return f"{float(value):.4f}"
    if fmt == "time":
        return utc(value).strftime("%H:%M:%S UTC")
    return str(value)


def _field(path: str, value: Any, fmt: str = "", tag: str = "span") -> str:
    """An element the script refreshes from the summary's `path`."""
    attrs = f'data-field="{page.escape(path)}"' + (
        f' data-format="{page.escape(fmt)}"' if fmt else ""
    )
    return f"<{tag} {attrs}>{page.escape(_show(value, fmt))}</{tag}>"


def _span(value: timedelta) -> str:
    seconds = value.total_seconds()
    for unit, size in (("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    return f"{seconds:g} s"


def _charts(summary: Mapping[str, Any], psi_threshold: float) -> list[page.Html]:
    """The charts over the period's windows; drift only when there is a reference."""
    timeline = Timeline(
        rows=summary["windows"],
        since=summary["period"]["since"],
        until=summary["period"]["until"],
        window=timedelta(seconds=summary["window_seconds"]),
        min_rows=summary["min_rows"],
    )
    charts = [
        sections.traffic_chart(timeline),
        sections.latency_chart(timeline),
        sections.errors_chart(timeline),
    ]
    if features := list(summary["drift"]["period"]):
        charts.append(sections.drift_chart(timeline, features, psi_threshold))
    if summary.get("task") == "regression":
        period = summary["period"]
        training = period.get("training_predictions")
        charts.append(sections.predictions_chart(timeline, training, period.get("target_range")))
    return charts


def _versions_section(summary: Mapping[str, Any]) -> str:
    versions = summary["versions"]
    if not versions:
        return page.note("No model versions registered yet.")
    rows = []
    for v in versions:
        aliases = page.Html(" ".join(page.badge(a, "alias") for a in v["aliases"]))
        metric = v["test_metric"]
        shown = (
            "—" if metric["value"] is None else f"{metric['name']} {_show(metric['value'], 'num4')}"
        )
        gates = page.Html(
            page.badge("no gate results", "none")
            if v["gates"] == "none"
            else page.badge("gates passed", "pass")
            if v["gates"] == "passed"
            else page.badge("gates failed", "fail")
        )
        rows.append(
            (
                page.Html(f"<code>{page.escape(v['tag'])}</code>"),
                aliases,
                when(v["created_at"]),
                v["candidate"],
                shown,
                gates,
                v["requests"],
            )
        )
    header = ("version", "aliases", "created", "candidate", "test metric", "gates", "requests")
    return page.table(header, rows, table_id="versions")


def _drift_section(summary: Mapping[str, Any], min_rows: int) -> str:
    drift = summary["drift"]
    if drift["source"] is None:
        return page.note("No training reference profile: drift is not computed.")
    latest = drift["latest"]
    note = (
        f"Newest window with at least {min_rows} rows: {when(latest['window_start'])} to "
        f"{when(latest['window_end'])}."
        if latest
        else f"No window has {min_rows} rows yet."
    )
    rows = []
    for name, period in drift["period"].items():
        recent = (latest or {}).get("features", {}).get(name) or {}
        verdict = drift_verdict(period)
        rows.append(
            (
                name,
                period["kind"],
                recent.get("psi") if recent.get("enough_rows") else None,
                period["psi"] if period["enough_rows"] else None,
                period["pvalue"],
                period["n"],
                page.Html(verdict),
            )
        )
    header = ("feature", "kind", "PSI (window)", "PSI (period)", "p-value", "rows", "verdict")
    return page.note(note) + page.table(header, rows, table_id="drift")


# how an ended release's outcome shows: kept, undone by a guard rail, or ended otherwise
_OUTCOME_BADGES = {"promoted": "pass", "rolled_back": "fail"}
_SHARE_TEXT = {
    "shadow": "of the requests predicted off the request path (never answered)",
    "canary": "of the requests answered by the canary",
    "ab": "of the requests answered by arm b",
}


def _ms(value: Any) -> page.Num | None:
    return None if value is None else page.Num(page.escape(_show(value, "ms")))


def _release_section(summary: Mapping[str, Any]) -> str:
    active, ended = summary["release"]["active"], summary["release"]["ended"]
    parts: list[str] = []
    if active is None:
        parts.append(f"<p>{page.badge('no release running', 'none')}</p>")
    else:
        kind = active["kind"]
        share = f"{100 * float(active['share']):g}% {_SHARE_TEXT.get(kind, 'of the requests')}"
        details = page.kv(
            [
                ("kind", page.badge(kind, "alias")),
                ("on trial", page.code(active["tag"])),
                ("beside the champion", page.code(active["champion_tag"])),
                ("share", share),
                ("started", when(active["started_at"])),
                ("by", active["actor"]),
                ("reason", active["reason"]),
            ]
        )
        shown = dict(active["arms"])
        if kind == SHADOW:  # it answers nothing: its numbers are those of its shadow rows
            shown[SHADOW] = active["shadow"]
        rows = [
            (
                arm,
                page.code(n["tag"]),
                n["requests"],
                n["errors"],
                sections.pct(n["error_rate"]),
                _ms(n["latency_p99_ms"]),
            )
            for arm, n in shown.items()
        ]
        caption = (
            f"Since {when(active['counted_since'])}; error rate and p99 from "
            f"{summary['min_rows']} requests"
            + ("; the shadow's are its predictions, never answered" if kind == SHADOW else "")
        )
        header = ("arm", "version", "requests", "errors", "error rate", "latency p99")
        arms = page.table(header, rows, caption=caption, table_id="release-arms")
        parts.append(f'<div id="release-active" data-kind="{page.escape(kind)}">{details}</div>')
        parts.append(arms)
    if ended:
        rows = [
            (
                when(r["ended_at"]),
                r["kind"],
                page.code(r["tag"]),
                page.badge(str(r["outcome"]), _OUTCOME_BADGES.get(str(r["outcome"]), "none")),
                r["end_reason"],
                r["end_actor"],
            )
            for r in ended
        ]
        header = ("ended", "kind", "version", "outcome", "reason", "by")
        caption = f"The last {len(ended)} ended release(s)"
        parts.append(page.table(header, rows, caption=caption, table_id="releases-ended"))
    else:
        parts.append(page.note("No release has ended yet."))
    return "".join(parts)


def _alerts_section(summary: Mapping[str, Any]) -> str:
    alerts = summary["alerts"]
    if alerts is None:
        return page.note("No alert store yet (`nbship monitor` records alerts).")
    return sections.alerts_table(alerts, table_id="alerts")


def _live(summary: Mapping[str, Any], psi_threshold: float) -> str:
    """The part of the page the script replaces on every refresh."""
    parts = []
    if summary["problems"]:
        items = "".join(f"<li>{page.escape(p)}</li>" for p in summary["problems"])
        parts.append(f'<div class="problems"><strong>Not readable:</strong><ul>{items}</ul></div>')
    if summary["period"]["requests"]:
        charts = "".join(_charts(summary, psi_threshold))
        parts.append(page.section("charts", "Traffic", f'<div class="charts">{charts}</div>'))
    else:
        parts.append(
            '<p id="no-traffic">no traffic yet: the prediction log has no request in the '
            "period.</p>"
        )
    parts.append(page.section("release-section", "Release", _release_section(summary)))
    parts.append(page.section("versions-section", "Model versions", _versions_section(summary)))
    period = summary["period"]
    if summary.get("task") == "regression":
        table = (
            page.note("No training predictions in the reference profile: not compared.")
            if period["prediction_drift"] is None and period["records"]
            else sections.predictions_table(
                period["prediction_drift"],
                period["training_predictions"],
                period["prediction_quantiles"],
                table_id="predictions",
            )
        )
        title = "Prediction distribution"
        parts.append(page.section("predictions-section", title, table))
    else:
        mix = sections.mix_table(period["predictions"], period["training_classes"], table_id="mix")
        parts.append(page.section("mix-section", "Prediction mix", mix))
    parts.append(
        page.section(
            "drift-section", "Drift per feature", _drift_section(summary, summary["min_rows"])
        )
    )
    parts.append(page.section("alerts-section", "Alerts", _alerts_section(summary)))
    return "\n".join(parts)


def _tile(label: str, path: str, value: Any, fmt: str = "") -> str:
    return (
        f'<div class="tile"><div class="label">{page.escape(label)}</div>'
        f'<div class="value">{_field(path, value, fmt)}</div></div>'
    )


def _page(summary: Mapping[str, Any], live: str, refresh_seconds: float) -> str:
    model = summary["model"]
    champion = summary["champion"] or {}
    selection = champion.get("selection") or {}
    period, latest = summary["period"], summary["latest"]
    window = timedelta(seconds=summary["window_seconds"])
    span = timedelta(seconds=summary["period_seconds"])
    tiles = "".join(
        [
            _tile("requests in the period", "period.requests", period["requests"]),
            _tile("error rate", "period.error_rate", period["error_rate"], "pct"),
            _tile("latency p50", "period.latency_p50_ms", period["latency_p50_ms"], "ms"),
            _tile("latency p99", "period.latency_p99_ms", period["latency_p99_ms"], "ms"),
            _tile("requests this window", "latest.requests", latest["requests"]),
            _tile("drifted features", "drift.drifted_count", summary["drift"]["drifted_count"]),
        ]
    )
    if summary.get("task") == "regression":
        share = period.get("prediction_out_of_range_share")
        tiles += _tile("predictions out of range", "period.prediction_out_of_range_share",
                       share, "pct")  # fmt: skip
    metric_name = selection.get("name") or "test metric"
    span_text, window_text = page.escape(_span(span)), page.escape(_span(window))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{page.escape(CSP)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{page.escape(model)}: nbship dashboard</title>
<link rel="icon" href="data:,">
<style>{page.CSS}{_CSS_EXTRA}</style>
</head>
<body data-refresh="{page.escape(f"{refresh_seconds:g}")}">
<header>
<h1>Dashboard: <code>{page.escape(model)}</code></h1>
<p class="note">The last {span_text} in windows of {window_text} (UTC, whole
windows). Updated {_field("generated_at", summary["generated_at"], "time")}; refreshed every
{page.escape(f"{refresh_seconds:g}")} s <span id="refresh-status"></span></p>
</header>
<section class="overview" aria-label="overview">
<div id="champion">
<div class="label">Champion</div>
<div class="tag">{_field("champion.tag", champion.get("tag"), tag="code")}</div>
<div class="note">candidate {_field("champion.candidate", champion.get("candidate"))};
{page.escape(metric_name)} {_field("champion.selection.value", selection.get("value"), "num4")};
{_field("champion.requests", champion.get("requests"))} requests in the period</div>
</div>
<div class="tiles">{tiles}</div>
</section>
<div id="live">
{live}
</div>
<footer>nbship dashboard. Everything on this page comes from this server; the numbers as
JSON: <a href="api/summary">api/summary</a>.</footer>
<script>{_SCRIPT}</script>
</body>
</html>
"""


# the app ----------------------------------------------------------------------------------------


class _Snapshot:
    """The summary and the rendered live part, computed at most once per CACHE_SECONDS
    (one computation at a time: matplotlib's settings are global)."""

    def __init__(self, compute: Callable[[], dict[str, Any]], render: Callable[[Any], str]):
        self._compute, self._render = compute, render
        self._lock = threading.Lock()
        self._at = -math.inf
        self._summary: dict[str, Any] = {}
        self._live = ""

    def get(self) -> tuple[dict[str, Any], str]:
        with self._lock:
            if time.monotonic() - self._at >= CACHE_SECONDS:
                summary = self._compute()
                self._live = self._render(summary)
                self._summary = summary
                self._at = time.monotonic()
            return self._summary, self._live


def create_app(
    *,
    registry_url: str,
    log_url: str,
    model_name: str,
    profile: Mapping[str, Any] | None = None,
    window: timedelta = DEFAULT_WINDOW,
    period: timedelta = DEFAULT_PERIOD,
    refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
    alert_url: str | None = None,
    min_rows: int = DEFAULT_MIN_ROWS,
    psi_threshold: float = DEFAULT_PSI_THRESHOLD,
    pvalue_threshold: float = DEFAULT_PVALUE_THRESHOLD,
    allowed_hosts: Sequence[str] = LOCAL_HOSTS,
) -> Starlette:
    """The dashboard of model `model_name` (see the module doc).

    `registry_url`, `log_url`: the registry and the prediction log (SQLAlchemy URLs);
    `alert_url`: the AlertStore database (default: the log's). `profile`: the training
    reference (`drift.reference_profile`); None takes the champion's stored
    `drift_profile`. The page covers the last `period` in windows of `window` and
    re-reads its numbers every `refresh_seconds`. `min_rows`, `psi_threshold`,
    `pvalue_threshold` as in the alert rules. `allowed_hosts`: Host header names
    answered (["*"] for any, when serving beyond 127.0.0.1)."""
    if profile is not None:
        check_profile(profile)
    if refresh_seconds <= 0:
        raise ValueError("refresh_seconds must be positive")
    if min_rows < 1:
        raise ValueError("min_rows must be at least 1")
    now = datetime.now(UTC)
    window_bounds(now - period, now, window)  # a bad window/period fails here, not per page

    def compute() -> dict[str, Any]:
        return build_summary(
            registry_url=registry_url,
            log_url=log_url,
            model_name=model_name,
            profile=profile,
            window=window,
            period=period,
            alert_url=alert_url,
            min_rows=min_rows,
            psi_threshold=psi_threshold,
            pvalue_threshold=pvalue_threshold,
        )

    snapshot = _Snapshot(compute, lambda summary: _live(summary, psi_threshold))

    def page(_request: Request) -> Response:
        summary, live = snapshot.get()
        return HTMLResponse(_page(summary, live, refresh_seconds), headers=_HEADERS)

    def fragment(_request: Request) -> Response:
        return HTMLResponse(snapshot.get()[1], headers=_HEADERS)

    def summary(_request: Request) -> Response:
        return JSONResponse(_jsonable(snapshot.get()[0]), headers=_HEADERS)

    def healthz(_request: Request) -> Response:
        return PlainTextResponse("ok", headers=_HEADERS)

    # plain functions: Starlette runs them in its thread pool, off the event loop
    routes = [
        Route("/", page, methods=["GET"]),
        Route("/fragment", fragment, methods=["GET"]),
        Route("/api/summary", summary, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))]
    return Starlette(routes=routes, middleware=middleware)


def serve_dashboard(app: Starlette, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Serves `app` with uvicorn until SIGINT/SIGTERM."""
    import uvicorn

    print(f"nbship dashboard on http://{host}:{port}/", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
