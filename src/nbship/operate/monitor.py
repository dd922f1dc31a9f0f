"""The monitor: live traffic of a period, window by window, against the training data.

`run_monitor` reads the prediction log for a period, computes each window's metrics
(`windows.window_metrics`), checks the alert rules (`alert_rules.evaluate`), records the
alerts that fired (`alert_store`, once per rule and window) and sends the new ones to
the sinks (`alert_sinks`), then writes the report.
`build_report` makes the report alone: one self-contained HTML page with a summary,
the live distribution of every feature against the training reference, drift (PSI) per
feature over time, what the model answered (a classifier's prediction mix; a regressor's
prediction distribution against its predictions on the training rows, and the share of
predictions outside the training target's range), latency and error rate over time, the
results of the expectations suite on the period's inputs, and the alerts of the period.
What the dashboard shows too (the charts over time, the prediction mix or distribution,
the alerts) is rendered by `sections` for both pages; the rest is the report's own.

Windows are aligned to UTC (`windows.window_bounds`), and the period is widened to
whole windows, so two runs over overlapping periods see the same windows and an alert
is recorded once. Pictures are matplotlib SVG inlined as in the model cards: no
scripts, nothing fetched, every text escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from nbship.common import html_page as page
from nbship.common.artifacts import atomic_path
from nbship.common.timeutil import EPOCH
from nbship.drift import (
    DEFAULT_MIN_ROWS,
    DEFAULT_PSI_THRESHOLD,
    DEFAULT_PVALUE_THRESHOLD,
    MISSING,
    OTHER,
    check_profile,
)
from nbship.operate import sections
from nbship.operate.alert_rules import Alert, MonitorConfig, Rule, evaluate, parse_config
from nbship.operate.alert_sinks import Delivery, send
from nbship.operate.alert_store import AlertStore
from nbship.operate.sections import LIVE, TRAINING, Timeline, drift_verdict, pct, when
from nbship.operate.windows import served_task, window_bounds, window_metrics, window_row
from nbship.prediction_log import read_log

SECTIONS = (
    ("summary", "Summary"),
    ("alerts", "Alerts"),
    ("distributions", "Distributions: live vs training"),
    ("drift", "Drift over time"),
    ("mix", "Prediction mix over time"),  # a regressor's: REGRESSION_TITLES
    ("latency", "Latency over time"),
    ("errors", "Errors over time"),
    ("quality", "Data quality"),
)
REGRESSION_TITLES = {"mix": "Predictions over time"}
_CSS_EXTRA = "td.drifted { background: #fbdcdc; font-weight: 600; }"


@dataclass
class _Analysis:
    """A period's numbers: each window's metrics and the whole period's."""

    since: datetime
    until: datetime
    window: timedelta
    windows: list[dict[str, Any]]
    period: dict[str, Any]
    profile: Mapping[str, Any] | None
    min_rows: int
    psi_threshold: float
    rules: Sequence[Rule] = ()
    alerts: list[Alert] = field(default_factory=list)
    suite_path: str | Path | None = None
    task: str = "classification"

    @property
    def regression(self) -> bool:
        return self.task == "regression"

    @cached_property
    def timeline(self) -> Timeline:
        """The windows as the shared charts (`sections`) draw them."""
        rows = [window_row(m, m["window_start"], m["window_end"]) for m in self.windows]
        return Timeline(rows, self.since, self.until, self.window, self.min_rows, self.rules)


def _analyse(
    log_url: str,
    profile: Mapping[str, Any] | None,
    *,
    since: datetime,
    until: datetime,
    window: timedelta,
    suite_path: str | Path | None,
    rules: Sequence[Rule],
    min_rows: int,
    psi_threshold: float,
    pvalue_threshold: float,
    task: str | None = None,
) -> _Analysis:
    if profile is not None:
        check_profile(profile)
    bounds = window_bounds(since, until, window)
    start, end = bounds[0][0], bounds[-1][1]
    log = read_log(log_url, since=start, until=end)
    if task is None:
        answered = log[(log["kind"] == "predict") & (log["status"] == "ok")]
        task = served_task(profile, outputs=answered["outputs"])
    options: dict[str, Any] = {
        "min_rows": min_rows,
        "psi_threshold": psi_threshold,
        "pvalue_threshold": pvalue_threshold,
        "task": task,
    }
    # the suite (Great Expectations) per window only when a rule asks for it
    per_window_suite = suite_path if any(r.metric == "dq_failures" for r in rules) else None
    windows = [
        window_metrics(
            log, profile, window_start=a, window_end=b, suite_path=per_window_suite, **options
        )
        for a, b in bounds
    ]
    period = window_metrics(
        log, profile, window_start=start, window_end=end, suite_path=suite_path, **options
    )
    return _Analysis(
        since=start,
        until=end,
        window=window,
        windows=windows,
        period=period,
        profile=profile,
        min_rows=min_rows,
        psi_threshold=psi_threshold,
        rules=tuple(rules),
        suite_path=suite_path,
        task=task,
    )


def _fired(analysis: _Analysis) -> list[Alert]:
    return [a for metrics in analysis.windows for a in evaluate(analysis.rules, metrics)]


def _merge(*groups: Sequence[Alert]) -> list[Alert]:
    """Alerts of several sources, each (rule, window) once, by window then rule."""
    seen: dict[tuple[Any, ...], Alert] = {}
    for group in groups:
        for alert in group:
            seen.setdefault((alert.rule, alert.window_start, alert.window_end), alert)
    return sorted(seen.values(), key=lambda a: (a.window_start or EPOCH, a.rule))


# sections -----------------------------------------------------------------------------------


def _summary(analysis: _Analysis) -> list[str]:
    p = analysis.period
    drift = p["drift"]
    drifted = [name for name, r in drift.items() if r["drifted"]]
    parts: list[str] = [
        page.kv(
            [
                ("period (whole windows)", f"{when(analysis.since)} to {when(analysis.until)}"),
                ("window", str(analysis.window)),
                ("windows", len(analysis.windows)),
                ("requests", p["requests"]),
                ("records predicted", p["records"]),
                ("errors", p["errors"]),
                ("error rate", pct(p["errors"] / p["requests"]) if p["requests"] else None),
                ("rejected as invalid (4xx)", p["validation_failures"]),
                ("server errors (5xx)", p["server_errors"]),
                ("latency p50 / p99 (ms)", _latency_text(p)),
                ("models seen", ", ".join(sorted(p["models"])) or "none"),
                (
                    "features drifted over the period",
                    page.badge(", ".join(drifted), "fail")
                    if drifted
                    else page.badge("none", "pass"),
                ),
                *_prediction_summary(analysis),
                ("alerts in the period", len(analysis.alerts)),
            ]
        )
    ]
    if p["models"]:
        rows = sorted(p["models"].items(), key=lambda kv: -kv[1])
        parts.append(page.table(("model", "requests"), rows, caption="Models that answered"))
    parts.append(sections.traffic_chart(analysis.timeline))
    if analysis.profile is None:
        parts.append(page.note("No training reference profile: drift is not computed."))
    return parts


def _prediction_summary(analysis: _Analysis) -> list[tuple[str, Any]]:
    """A regressor's predictions in the summary: their drift and the out-of-range share."""
    if not analysis.regression:
        return []
    result = analysis.period["prediction_drift"]
    if result is None:
        return [("predictions against training", "no training predictions in the profile")]
    verdict = drift_verdict(result) if result.get("psi") is not None else None
    return [
        ("PSI of predictions against training", result.get("psi")),
        ("predictions against training", verdict),
        ("predictions outside the training target's range", pct(result["out_of_range_share"])),
    ]


def _latency_text(metrics: Mapping[str, Any]) -> str | None:
    p50, p99 = metrics["latency_p50_ms"], metrics["latency_p99_ms"]
    return None if p50 is None else f"{page.fmt(p50)} / {page.fmt(p99)}"


def _alerts_section(analysis: _Analysis) -> list[str]:
    parts: list[str] = []
    if analysis.rules:
        rows = [(r.name, r.metric, f"{r.op} {r.threshold:g}") for r in analysis.rules]
        parts.append(page.table(("rule", "metric", "fires when"), rows, caption="Rules"))
    else:
        parts.append(page.note("No alert rules configured."))
    parts.append(sections.alerts_table([a.to_dict() for a in analysis.alerts]))
    return parts


def _distribution_figure(
    i: int, name: str, reference: Mapping[str, Any], live: Mapping[str, Any] | None
) -> page.Html:
    """Training vs live shares of one feature: over the reference's quantile bins
    (numeric) or categories (categorical), with the missing share as a last bar."""
    if reference["kind"] == "numeric":
        groups = sections.bin_labels(reference["edges"])
        train = list(reference["proportions"])
        shown = list((live or {}).get("live_proportions") or [0.0] * len(train))
    else:
        groups = list(reference["proportions"])
        train = [reference["proportions"][g] for g in groups]
        live_shares = dict((live or {}).get("live_proportions") or {})
        if OTHER in live_shares:
            groups.append(OTHER)
            train.append(0.0)
        shown = [live_shares.get(g, 0.0) for g in groups]
    ref_missing = float(reference["missing_share"])
    live_missing = (live or {}).get("missing_share") or 0.0
    # shares of all rows, so the missing bar fits with the others
    train = [t * (1 - ref_missing) for t in train] + [ref_missing]
    shown = [s * (1 - live_missing) for s in shown] + [live_missing]
    groups = [*groups, MISSING]
    n = (live or {}).get("n") or 0
    fig_id = f"fig-dist-{i}"

    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        x = np.arange(len(groups))
        ax.bar(x - 0.2, train, 0.4, color=TRAINING, label="training")
        ax.bar(x + 0.2, shown, 0.4, color=LIVE, label=f"live ({n} rows)")
        rotate = reference["kind"] == "numeric" or len(groups) > 5
        ax.set_xticks(x, groups, rotation=40 if rotate else 0, ha="right" if rotate else "center")
        ax.set_ylabel("share of rows")
        ax.set_title(name)
        fig.legend(loc="outside lower center", ncols=2)

    svg = page.svg(fig_id, f"distribution of {name}, live vs training", (3.6, 2.8), draw)
    caption = "numeric: the training quantile bins" if reference["kind"] == "numeric" else None
    return page.figure(fig_id, svg, caption)


def _drift_table(drift: Mapping[str, Mapping[str, Any]]) -> page.Html:
    rows = []
    for name, r in drift.items():
        test = (
            f"KS D={page.fmt(r.get('ks_stat'), 3)}, p={page.fmt(r.get('ks_pvalue'), 3)}"
            if r["kind"] == "numeric"
            else f"chi² p={page.fmt(r.get('chi2_pvalue'), 3)}"
        )
        rows.append(
            (name, r["kind"], r["n"], pct(r["missing_share"]), r["psi"], test, drift_verdict(r))
        )
    header = ("feature", "kind", "live rows", "missing", "PSI", "test", "verdict")
    return page.table(header, rows)


def _distributions(analysis: _Analysis) -> list[str]:
    if analysis.profile is None:
        return [page.note("No training reference profile given.")]
    drift = analysis.period["drift"]
    figures = [
        _distribution_figure(i, name, reference, drift.get(name))
        for i, (name, reference) in enumerate(analysis.profile["features"].items())
    ]
    reference = analysis.profile.get("predictions")
    if analysis.regression and reference is not None:
        live = analysis.period["prediction_drift"]
        figures.append(_distribution_figure(len(figures), "(predictions)", reference, live))
    return [
        page.note(
            f"The whole period's inputs of successful requests against the training data "
            f"({analysis.profile.get('n_rows')} rows). A feature is flagged when its PSI "
            f"reaches {analysis.psi_threshold:g} and the test's p-value is significant."
        ),
        _drift_table(drift),
        f'<div class="figures">{"".join(figures)}</div>',
    ]


def _drift_section(analysis: _Analysis) -> list[str]:
    if analysis.profile is None:
        return [page.note("No training reference profile given.")]
    names = list(analysis.profile["features"])
    figure = sections.drift_chart(analysis.timeline, names, analysis.psi_threshold)
    rows = []
    for m in analysis.windows:
        cells: list[Any] = [when(m["window_start"]), m["records"]]
        for name in names:
            r = m["drift"][name]
            text = page.escape(page.fmt(r["psi"], 3)) if r["enough_rows"] else "—"
            css = "num drifted" if r["drifted"] else "num"
            cells.append(_Cell(text, css))
        rows.append(cells)
    table = _cell_table(("window", "rows", *names), rows, "PSI per window (flagged in red)")
    return [figure, f"<details><summary>PSI per window</summary>{table}</details>"]


class _Cell:
    """A table cell with its own class (the shared table helper knows only num)."""

    def __init__(self, html: str, css: str) -> None:
        self.html, self.css = html, css


def _cell_table(header: Sequence[str], rows: Sequence[Sequence[Any]], caption: str) -> page.Html:
    head = "".join(f'<th scope="col">{page.escape(h)}</th>' for h in header)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            if isinstance(cell, _Cell):
                cells.append(f'<td class="{cell.css}">{cell.html}</td>')
            else:
                cells.append(f"<td>{page.escape(page.fmt(cell))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return page.Html(
        f"<table><caption>{page.escape(caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _mix_section(analysis: _Analysis) -> list[str]:
    if analysis.regression:
        return _predictions_section(analysis)
    training = (analysis.profile or {}).get("classes", {})
    predictions = analysis.period["predictions"]
    classes = sections.mix_classes(predictions, training)
    if not classes:
        return [page.note("No predictions in the period.")]
    figure = sections.mix_chart(analysis.timeline, classes)
    return [figure, sections.mix_table(predictions, training)]


def _predictions_section(analysis: _Analysis) -> list[str]:
    """A regressor's predictions over time and against its predictions on training."""
    period = analysis.period
    profile = analysis.profile or {}
    if not period["records"] and not any(w["records"] for w in analysis.windows):
        return [page.note("No predictions in the period.")]
    reference = profile.get("predictions")
    figure = sections.predictions_chart(analysis.timeline, reference, profile.get("target_range"))
    parts: list[str] = [figure]
    if period["prediction_drift"] is None:
        parts.append(
            page.note("No training predictions in the profile: their drift is not computed.")
        )
    else:
        parts.append(
            sections.predictions_table(
                period["prediction_drift"], reference, period.get("prediction_quantiles")
            )
        )
    return parts


def _latency_section(analysis: _Analysis) -> list[str]:
    return [sections.latency_chart(analysis.timeline)]


def _errors_section(analysis: _Analysis) -> list[str]:
    parts: list[str] = [sections.errors_chart(analysis.timeline)]
    fields = analysis.period["validation_fields"]
    if fields:
        rows = sorted(fields.items(), key=lambda kv: (-kv[1], kv[0]))
        parts.append(
            page.table(
                ("field", "rejected requests"),
                rows,
                caption="Rejected requests (4xx) by the field the error names",
            )
        )
    else:
        parts.append(page.note("No request was rejected as invalid."))
    return parts


def _quality_section(analysis: _Analysis) -> list[str]:
    if analysis.suite_path is None:
        return [page.note("No expectations suite given: the data-quality check did not run.")]
    dq = analysis.period["dq"]
    if analysis.profile is None:
        return [
            page.note("No training reference profile (the feature list): the suite did not run.")
        ]
    if dq is None:
        return [
            page.note(
                f"Fewer than {analysis.min_rows} records in the period: the suite did not run."
            )
        ]
    verdict = (
        page.badge(f"all {dq['evaluated']} expectations met", "pass")
        if dq["success"]
        else page.badge(f"{len(dq['failures'])} of {dq['evaluated']} expectations failed", "fail")
    )
    parts: list[str] = [
        page.note(
            f"The suite {Path(analysis.suite_path).name} (its expectations on the model's "
            "features) on every input record of a successful request in the period."
        ),
        page.Html(f"<p>{verdict}</p>"),
    ]
    if dq["failures"]:
        rows = [(f["expectation"], f["column"], f["detail"]) for f in dq["failures"]]
        parts.append(page.table(("expectation", "column", "what was found"), rows))
    return parts


def _render(analysis: _Analysis, title: str) -> str:
    bodies = {
        "summary": _summary(analysis),
        "alerts": _alerts_section(analysis),
        "distributions": _distributions(analysis),
        "drift": _drift_section(analysis),
        "mix": _mix_section(analysis),
        "latency": _latency_section(analysis),
        "errors": _errors_section(analysis),
        "quality": _quality_section(analysis),
    }
    titles = [(a, REGRESSION_TITLES.get(a, t) if analysis.regression else t) for a, t in SECTIONS]
    sections = "\n".join(page.section(a, t, bodies[a]) for a, t in titles)
    nav = "".join(f'<a href="#{a}">{page.escape(t)}</a>' for a, t in titles)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    status = (
        page.badge(f"{len(analysis.alerts)} alert(s)", "fail")
        if analysis.alerts
        else page.badge("no alerts", "pass")
    )
    period = f"{page.escape(when(analysis.since))} to {page.escape(when(analysis.until))}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{page.escape(title)}</title>
<style>{page.CSS}{_CSS_EXTRA}</style>
</head>
<body>
<header><h1>{page.escape(title)}</h1><p>{period}
{status}</p><nav>{nav}</nav></header>
{sections}
<footer>Generated <time datetime="{now}">{now}</time> by nbship monitor.
Self-contained: no scripts, nothing fetched.</footer>
</body>
</html>
"""


# the public functions -----------------------------------------------------------------------


def build_report(
    log_url: str,
    profile: Mapping[str, Any] | None,
    *,
    since: datetime,
    until: datetime,
    window: timedelta,
    suite_path: str | Path | None = None,
    rules: Sequence[Rule] | None = None,
    alert_url: str | None = None,
    min_rows: int = DEFAULT_MIN_ROWS,
    psi_threshold: float = DEFAULT_PSI_THRESHOLD,
    pvalue_threshold: float = DEFAULT_PVALUE_THRESHOLD,
    title: str = "Live traffic monitor",
    task: str | None = None,
) -> str:
    """The monitor report of the prediction log at `log_url` for [since, until) (naive
    times are UTC; widened to whole windows) as one self-contained HTML page.

    `profile`: the training reference (`drift.reference_profile`), None for no drift.
    `suite_path`: the expectations suite run on the period's inputs. `rules`: shown, and
    evaluated per window (the alerts they fire are listed, not recorded or sent);
    `alert_url`: the AlertStore database whose alerts in the period are listed too.
    `task`: the served model's ("classification" / "regression"; default: the profile's,
    see `windows.served_task`).
    """
    analysis = _analyse(
        log_url,
        profile,
        since=since,
        until=until,
        window=window,
        suite_path=suite_path,
        rules=rules or (),
        min_rows=min_rows,
        psi_threshold=psi_threshold,
        pvalue_threshold=pvalue_threshold,
        task=task,
    )
    stored: list[Alert] = []
    if alert_url is not None:
        with AlertStore(alert_url) as store:
            stored = store.alerts(analysis.since, analysis.until)
    analysis.alerts = _merge(stored, _fired(analysis))
    return _render(analysis, title)


@dataclass(frozen=True)
class MonitorResult:
    """What a monitor run did: the report it wrote, each window's metrics, the alerts
    that fired, those recorded for the first time (and so sent), and the deliveries."""

    report_path: Path
    windows: list[dict[str, Any]]
    alerts: list[Alert]
    new_alerts: list[Alert]
    deliveries: list[Delivery]


def run_monitor(
    log_url: str,
    profile: Mapping[str, Any] | None,
    config: MonitorConfig | Mapping[str, Any] | None,
    since: datetime,
    until: datetime,
    out_path: str | Path,
    alert_url: str | None = None,
    *,
    suite_path: str | Path | None = None,
    title: str = "Live traffic monitor",
    task: str | None = None,
) -> MonitorResult:
    """One monitor run over [since, until): metrics per window, rules checked, alerts
    recorded in the AlertStore at `alert_url` (default: the prediction log's database)
    once per rule and window, the new ones sent to the configured sinks, and the report
    written atomically to `out_path`. `config` is a MonitorConfig or the `monitoring`
    section of env.yaml (parsed with alerts.parse_config; ConfigError when it is wrong).
    A sink that fails is logged and reported in `deliveries`, never raised. `task` as
    in `build_report`."""
    if not isinstance(config, MonitorConfig):
        config = parse_config(config)
    analysis = _analyse(
        log_url,
        profile,
        since=since,
        until=until,
        window=config.window,
        suite_path=suite_path,
        rules=config.rules,
        min_rows=config.min_rows,
        psi_threshold=config.psi_threshold,
        pvalue_threshold=config.pvalue_threshold,
        task=task,
    )
    fired = _fired(analysis)
    with AlertStore(alert_url or log_url) as store:
        new = store.record(fired)
        deliveries = send(new, config.sinks)
        analysis.alerts = _merge(store.alerts(analysis.since, analysis.until), fired)
    html = _render(analysis, title)
    target = Path(out_path)
    with atomic_path(target) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return MonitorResult(
        report_path=target,
        windows=analysis.windows,
        alerts=fired,
        new_alerts=new,
        deliveries=deliveries,
    )
