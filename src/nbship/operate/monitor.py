"""The monitor: live traffic of a period, window by window, against the training data.

`run_monitor` reads the prediction log for a period, computes each window's metrics
(`alerts.window_metrics`), checks the alert rules, records the alerts that fired (once
per rule and window) and sends the new ones to the sinks, then writes the report.
`build_report` makes the report alone: one self-contained HTML page with a summary,
the live distribution of every feature against the training reference, drift (PSI) per
feature over time, the prediction mix, latency and error rate over time, the results of
the expectations suite on the period's inputs, and the alerts of the period.

Windows are aligned to UTC (hourly windows start on the hour), and the period is widened
to whole windows, so two runs over overlapping periods see the same windows and an
alert is recorded once. Pictures are matplotlib SVG inlined as in the model cards: no
scripts, nothing fetched, every text escaped.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from nbship.common import html_page as page
from nbship.common.artifacts import atomic_path
from nbship.drift import (
    DEFAULT_MIN_ROWS,
    DEFAULT_PSI_THRESHOLD,
    DEFAULT_PVALUE_THRESHOLD,
    MISSING,
    OTHER,
    check_profile,
)
from nbship.operate.alerts import (
    Alert,
    AlertStore,
    Delivery,
    MonitorConfig,
    Rule,
    evaluate,
    parse_config,
    send,
    window_metrics,
)
from nbship.prediction_log import read_log

MAX_WINDOWS = 2000  # beyond this a report is unreadable and slow: use longer windows
SECTIONS = (
    ("summary", "Summary"),
    ("alerts", "Alerts"),
    ("distributions", "Distributions: live vs training"),
    ("drift", "Drift over time"),
    ("mix", "Prediction mix over time"),
    ("latency", "Latency over time"),
    ("errors", "Errors over time"),
    ("quality", "Data quality"),
)
_LIVE, _TRAIN, _LIMIT = "#dd8452", "#4c72b0", "#9b1c1c"
_CYCLE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3")
_CSS_EXTRA = "td.drifted { background: #fbdcdc; font-weight: 600; }"


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def drift_verdict(result: Mapping[str, Any]) -> page.Html:
    """A feature's drift verdict as a badge: drifted, ok, or too few rows to say."""
    if result["drifted"]:
        return page.badge("drifted", "fail")
    if result["enough_rows"]:
        return page.badge("ok", "pass")
    return page.badge("too few rows", "none")


def window_bounds(
    since: datetime, until: datetime, window: timedelta
) -> list[tuple[datetime, datetime]]:
    """The windows [start, end) covering [since, until), aligned to multiples of `window`
    since the Unix epoch (UTC): the same windows whatever the period."""
    if window <= timedelta(0):
        raise ValueError("the window must be positive")
    since, until = _utc(since), _utc(until)
    if until <= since:
        raise ValueError(f"until ({until.isoformat()}) must be after since ({since.isoformat()})")
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    start = epoch + window * math.floor((since - epoch) / window)
    count = math.ceil((until - start) / window)
    if count > MAX_WINDOWS:
        raise ValueError(f"{count} windows of {window} in the period: at most {MAX_WINDOWS}")
    return [(start + window * i, start + window * (i + 1)) for i in range(count)]


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
) -> _Analysis:
    if profile is not None:
        check_profile(profile)
    bounds = window_bounds(since, until, window)
    start, end = bounds[0][0], bounds[-1][1]
    log = read_log(log_url, since=start, until=end)
    options = {
        "min_rows": min_rows,
        "psi_threshold": psi_threshold,
        "pvalue_threshold": pvalue_threshold,
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
    )


def _fired(analysis: _Analysis) -> list[Alert]:
    return [a for metrics in analysis.windows for a in evaluate(analysis.rules, metrics)]


def _merge(*groups: Sequence[Alert]) -> list[Alert]:
    """Alerts of several sources, each (rule, window) once, by window then rule."""
    seen: dict[tuple[Any, ...], Alert] = {}
    for group in groups:
        for alert in group:
            seen.setdefault((alert.rule, alert.window_start, alert.window_end), alert)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return sorted(seen.values(), key=lambda a: (a.window_start or epoch, a.rule))


# rendering helpers --------------------------------------------------------------------------


def _when(value: datetime | None) -> str:
    return "—" if value is None else _utc(value).strftime("%Y-%m-%d %H:%M UTC")


def _x(analysis: _Analysis) -> list[datetime]:
    """The windows' midpoints as naive UTC times (matplotlib's date axis)."""
    half = analysis.window / 2
    return [(_utc(m["window_start"]) + half).replace(tzinfo=None) for m in analysis.windows]


def _time_axis(ax: Axes) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_xlabel("window (UTC)")


def _series(values: Sequence[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def _time_figure(
    analysis: _Analysis,
    fig_id: str,
    label: str,
    draw_axes: Callable[[Axes], None],
    caption: str,
) -> page.Html:
    """A figure over the period's windows (the whole period on the time axis, empty
    windows included)."""

    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        draw_axes(ax)
        ax.set_xlim(analysis.since.replace(tzinfo=None), analysis.until.replace(tzinfo=None))
        _time_axis(ax)
        if ax.get_legend_handles_labels()[0]:
            fig.legend(loc="outside right upper")

    return page.figure(fig_id, page.svg(fig_id, label, (7.2, 2.6), draw), caption)


def _rule_lines(ax: Axes, analysis: _Analysis, metrics: Sequence[str]) -> None:
    """The thresholds of the rules on `metrics`, as dotted lines."""
    for rule in analysis.rules:
        if rule.metric in metrics:
            ax.axhline(rule.threshold, color=_LIMIT, linestyle=":", linewidth=1)
            ax.annotate(
                f"rule {rule.name}",
                (1, rule.threshold),
                xycoords=("axes fraction", "data"),
                ha="right",
                va="bottom",
                fontsize=6,
                color=_LIMIT,
            )


def _pct(value: Any) -> Any:
    return None if value is None else page.Num(page.escape(f"{100 * float(value):.1f}%"))


# sections -----------------------------------------------------------------------------------


def _summary(analysis: _Analysis) -> list[str]:
    p = analysis.period
    drift = p["drift"]
    drifted = [name for name, r in drift.items() if r["drifted"]]
    parts: list[str] = [
        page.kv(
            [
                ("period (whole windows)", f"{_when(analysis.since)} to {_when(analysis.until)}"),
                ("window", str(analysis.window)),
                ("windows", len(analysis.windows)),
                ("requests", p["requests"]),
                ("records predicted", p["records"]),
                ("errors", p["errors"]),
                ("error rate", _pct(p["errors"] / p["requests"]) if p["requests"] else None),
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
                ("alerts in the period", len(analysis.alerts)),
            ]
        )
    ]
    if p["models"]:
        rows = sorted(p["models"].items(), key=lambda kv: -kv[1])
        parts.append(page.table(("model", "requests"), rows, caption="Models that answered"))
    parts.append(_requests_figure(analysis))
    if analysis.profile is None:
        parts.append(page.note("No training reference profile: drift is not computed."))
    return parts


def _latency_text(metrics: Mapping[str, Any]) -> str | None:
    p50, p99 = metrics["latency_p50_ms"], metrics["latency_p99_ms"]
    return None if p50 is None else f"{page.fmt(p50)} / {page.fmt(p99)}"


def _requests_figure(analysis: _Analysis) -> page.Html:
    x = _x(analysis)
    width = analysis.window / 1.25

    def draw(ax: Axes) -> None:
        ok = [m["requests"] - m["errors"] for m in analysis.windows]
        errors = [m["errors"] for m in analysis.windows]
        ax.bar(x, ok, width=width, color=_TRAIN, label="answered")
        ax.bar(x, errors, width=width, bottom=ok, color=_LIMIT, label="failed")
        ax.set_ylabel("requests")
        ax.set_title("Requests per window")

    return _time_figure(
        analysis, "fig-requests", "requests per window", draw, "requests per window"
    )


def _alerts_section(analysis: _Analysis) -> list[str]:
    parts: list[str] = []
    if analysis.rules:
        rows = [(r.name, r.metric, f"{r.op} {r.threshold:g}") for r in analysis.rules]
        parts.append(page.table(("rule", "metric", "fires when"), rows, caption="Rules"))
    else:
        parts.append(page.note("No alert rules configured."))
    if not analysis.alerts:
        parts.append(page.Html(f"<p>{page.badge('no alerts in the period', 'pass')}</p>"))
        return parts
    rows = [
        (
            page.badge(a.rule, "fail"),
            a.metric,
            a.value,
            f"{a.op} {a.threshold:g}",
            f"{_when(a.window_start)} to {_when(a.window_end)}",
            _when(a.created_at),
        )
        for a in analysis.alerts
    ]
    parts.append(
        page.table(
            ("rule", "metric", "value", "threshold", "window", "recorded"),
            rows,
            caption=f"{len(analysis.alerts)} alert(s)",
        )
    )
    return parts


def _bin_labels(edges: Sequence[float]) -> list[str]:
    if not edges:
        return ["all"]
    labels = [f"≤{edges[0]:g}"]
    labels += [f"({a:g}, {b:g}]" for a, b in itertools.pairwise(edges)]
    return [*labels, f">{edges[-1]:g}"]


def _distribution_figure(
    i: int, name: str, reference: Mapping[str, Any], live: Mapping[str, Any] | None
) -> page.Html:
    """Training vs live shares of one feature: over the reference's quantile bins
    (numeric) or categories (categorical), with the missing share as a last bar."""
    if reference["kind"] == "numeric":
        groups = _bin_labels(reference["edges"])
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
        ax.bar(x - 0.2, train, 0.4, color=_TRAIN, label="training")
        ax.bar(x + 0.2, shown, 0.4, color=_LIVE, label=f"live ({n} rows)")
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
            (name, r["kind"], r["n"], _pct(r["missing_share"]), r["psi"], test, drift_verdict(r))
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
    x = _x(analysis)

    def draw(ax: Axes) -> None:
        for i, name in enumerate(names):
            psi = _series([m["drift"][name]["psi"] for m in analysis.windows])
            enough = [m["drift"][name]["enough_rows"] for m in analysis.windows]
            psi[~np.asarray(enough, dtype=bool)] = np.nan  # noise, not drift
            ax.plot(x, psi, marker="o", markersize=3, color=_CYCLE[i % len(_CYCLE)], label=name)
        ax.axhline(analysis.psi_threshold, color=_LIMIT, linestyle="--", linewidth=1)
        ax.set_ylabel("PSI")
        ax.set_title("PSI per feature and window (dashed: the drift threshold)")

    figure = _time_figure(
        analysis, "fig-drift", "PSI per feature over time", draw, _rows_caption(analysis)
    )
    rows = []
    for m in analysis.windows:
        cells: list[Any] = [_when(m["window_start"]), m["records"]]
        for name in names:
            r = m["drift"][name]
            text = page.escape(page.fmt(r["psi"], 3)) if r["enough_rows"] else "—"
            css = "num drifted" if r["drifted"] else "num"
            cells.append(_Cell(text, css))
        rows.append(cells)
    table = _cell_table(("window", "rows", *names), rows, "PSI per window (flagged in red)")
    return [figure, f"<details><summary>PSI per window</summary>{table}</details>"]


def _rows_caption(analysis: _Analysis) -> str:
    return f"windows with fewer than {analysis.min_rows} rows are left out"


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
    classes = list((analysis.profile or {}).get("classes", {}))
    for m in analysis.windows:
        classes += [c for c in m["predictions"] if c not in classes]
    if not classes:
        return [page.note("No predictions in the period.")]
    x = _x(analysis)
    width = analysis.window / 1.25

    def draw(ax: Axes) -> None:
        bottom = np.zeros(len(x))
        for i, label in enumerate(classes):
            shares = []
            for m in analysis.windows:
                total = sum(m["predictions"].values())
                shares.append(m["predictions"].get(label, 0) / total if total else 0.0)
            color = _CYCLE[i % len(_CYCLE)]
            ax.bar(x, shares, width=width, bottom=bottom, color=color, label=label)
            bottom += np.asarray(shares)
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of predictions")
        ax.set_title("Predicted classes per window")

    figure = _time_figure(analysis, "fig-mix", "prediction mix over time", draw, "stacked shares")
    train = (analysis.profile or {}).get("classes", {})
    total = sum(analysis.period["predictions"].values())
    rows = [
        (
            label,
            analysis.period["predictions"].get(label, 0),
            _pct(analysis.period["predictions"].get(label, 0) / total) if total else None,
            _pct(train[label]) if label in train else None,
        )
        for label in classes
    ]
    header = ("class", "predictions", "share in the period", "share in training")
    return [figure, page.table(header, rows)]


def _latency_section(analysis: _Analysis) -> list[str]:
    x = _x(analysis)

    def draw(ax: Axes) -> None:
        for key, label, color in (
            ("latency_p50_ms", "p50", _TRAIN),
            ("latency_p99_ms", "p99", _LIVE),
        ):
            values = _series([m[key] for m in analysis.windows])
            ax.plot(x, values, marker="o", markersize=3, color=color, label=label)
        _rule_lines(ax, analysis, ("latency_p50_ms", "latency_p99_ms"))
        ax.set_ylabel("ms")
        ax.set_title("Latency of successful requests")

    return [
        _time_figure(
            analysis, "fig-latency", "latency p50 and p99 over time", draw, _rows_caption(analysis)
        )
    ]


def _errors_section(analysis: _Analysis) -> list[str]:
    x = _x(analysis)

    def draw(ax: Axes) -> None:
        rates = _series([m["error_rate"] for m in analysis.windows])
        server = _series([m["server_error_rate"] for m in analysis.windows])
        ax.plot(x, rates, marker="o", markersize=3, color=_LIMIT, label="all errors")
        ax.plot(x, server, marker="s", markersize=3, color="#8172b3", label="5xx")
        _rule_lines(ax, analysis, ("error_rate", "server_error_rate"))
        ax.set_ylim(bottom=0)
        ax.set_ylabel("share of requests")
        ax.set_title("Error rate")

    parts: list[str] = [
        _time_figure(analysis, "fig-errors", "error rate over time", draw, _rows_caption(analysis))
    ]
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
    sections = "\n".join(page.section(a, t, bodies[a]) for a, t in SECTIONS)
    nav = "".join(f'<a href="#{a}">{page.escape(t)}</a>' for a, t in SECTIONS)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    status = (
        page.badge(f"{len(analysis.alerts)} alert(s)", "fail")
        if analysis.alerts
        else page.badge("no alerts", "pass")
    )
    period = f"{page.escape(_when(analysis.since))} to {page.escape(_when(analysis.until))}"
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
) -> str:
    """The monitor report of the prediction log at `log_url` for [since, until) (naive
    times are UTC; widened to whole windows) as one self-contained HTML page.

    `profile`: the training reference (`drift.reference_profile`), None for no drift.
    `suite_path`: the expectations suite run on the period's inputs. `rules`: shown, and
    evaluated per window (the alerts they fire are listed, not recorded or sent);
    `alert_url`: the AlertStore database whose alerts in the period are listed too.
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
) -> MonitorResult:
    """One monitor run over [since, until): metrics per window, rules checked, alerts
    recorded in the AlertStore at `alert_url` (default: the prediction log's database)
    once per rule and window, the new ones sent to the configured sinks, and the report
    written atomically to `out_path`. `config` is a MonitorConfig or the `monitoring`
    section of env.yaml (parsed with alerts.parse_config; ConfigError when it is wrong).
    A sink that fails is logged and reported in `deliveries`, never raised."""
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
