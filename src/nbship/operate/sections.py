"""The window sections the monitor report and the dashboard both show, rendered once.

Both pages show a period of live traffic in windows (`windows.window_bounds`): charts of
requests, latency, error rate, drift (PSI) per feature and what the model answered over
the windows, what it answered against training, drift verdicts and the alerts. What the
model answered is, for a classifier, the prediction mix (class shares, `mix_*`) and,
for a regressor, the prediction distribution (`predictions_*`: quantiles per window,
the distribution against the predictions on the training rows, the share outside the
training target's range). Each is
made here, from `windows.window_row`s and the period's `window_metrics`, so the two pages
show the same thing the same way; each page keeps only what is its own (the monitor:
distributions, PSI per window, data quality; the dashboard: versions, tiles, refresh).

Charts are matplotlib SVG inlined in the page (`html_page.svg`): no scripts, nothing
fetched. Every chart is `<figure id="fig-<name>" data-chart="<name>">`, the name one of
CHART_TITLES; every text is escaped.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import matplotlib.dates as mdates
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from nbship.common import html_page as page
from nbship.common.timeutil import utc
from nbship.operate.alert_rules import Rule

TRAINING, LIVE, LIMIT, SERVER = "#4c72b0", "#dd8452", "#9b1c1c", "#8172b3"
CYCLE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3")
CHART_TITLES = {
    "traffic": "Requests per window",
    "latency": "Latency p50 / p99",
    "errors": "Error rate",
    "drift": "Drift (PSI) per feature",
    "mix": "Predicted classes per window",
    "predictions": "Predicted values per window",
}
_CHART_SIZE = (7.2, 2.6)  # inches: one chart the width of the page's text


# values as the pages show them --------------------------------------------------------------


def when(value: datetime | str | None) -> str:
    """A time to the minute, UTC ("—" for none); an ISO 8601 string (`Alert.to_dict`'s
    form) is read first."""
    if value is None:
        return "—"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return utc(moment).strftime("%Y-%m-%d %H:%M UTC")


def pct(value: Any) -> page.Num | None:
    """A share as a percentage, right-aligned in a table (None stays None: a dash)."""
    return None if value is None else page.Num(page.escape(f"{100 * float(value):.1f}%"))


def series(values: Sequence[Any]) -> np.ndarray:
    """Values to plot: None (too few rows in the window) as NaN, a gap in the line."""
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def drift_verdict(result: Mapping[str, Any]) -> page.Html:
    """A feature's drift verdict as a badge: drifted, ok, or too few rows to say."""
    if result["drifted"]:
        return page.badge("drifted", "fail")
    if result["enough_rows"]:
        return page.badge("ok", "pass")
    return page.badge("too few rows", "none")


# charts over the period's windows -----------------------------------------------------------


@dataclass(frozen=True)
class Timeline:
    """A period's windows as the charts draw them: `rows` are `windows.window_row`s,
    oldest first, over [since, until); `rules` draw their thresholds on the charts of
    their metric."""

    rows: Sequence[Mapping[str, Any]]
    since: datetime
    until: datetime
    window: timedelta
    min_rows: int
    rules: Sequence[Rule] = ()

    def x(self) -> np.ndarray:
        """The windows' midpoints on matplotlib's date axis (days since its epoch, UTC)."""
        half = self.window / 2
        return _days([utc(r["start"]) + half for r in self.rows])

    @property
    def bar_width(self) -> float:
        """A bar per window, a fifth of it left as a gap, in the date axis' days."""
        return self.window / 1.25 / timedelta(days=1)

    def column(self, key: str) -> np.ndarray:
        return series([r[key] for r in self.rows])

    def rule_lines(self, ax: Axes, metrics: Sequence[str]) -> None:
        """The thresholds of the rules on `metrics`, as dotted lines."""
        for rule in self.rules:
            if rule.metric in metrics:
                ax.axhline(rule.threshold, color=LIMIT, linestyle=":", linewidth=1)
                ax.annotate(
                    f"rule {rule.name}",
                    (1, rule.threshold),
                    xycoords=("axes fraction", "data"),
                    ha="right",
                    va="bottom",
                    fontsize=6,
                    color=LIMIT,
                )


def _days(times: Sequence[datetime]) -> np.ndarray:
    # numbers, not datetimes, go to matplotlib (naive: the date axis is UTC), so the
    # values the charts plot are typed as matplotlib declares them
    return np.asarray(mdates.date2num([utc(t).replace(tzinfo=None) for t in times]), dtype=float)


def _chart(
    name: str,
    timeline: Timeline,
    draw_axes: Callable[[Axes, np.ndarray], None],
    caption: str | None = None,
) -> page.Html:
    """One chart over the whole period (empty windows included) on a UTC time axis."""
    title = CHART_TITLES[name]
    since, until = _days([timeline.since, timeline.until])

    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        draw_axes(ax, timeline.x())
        ax.set_xlim(float(since), float(until))
        locator = mdates.AutoDateLocator(maxticks=8)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.set_xlabel("window (UTC)")
        ax.set_title(title)
        if ax.get_legend_handles_labels()[0]:
            fig.legend(loc="outside right upper")

    fig_id = f"fig-{name}"
    svg = page.svg(fig_id, title, _CHART_SIZE, draw)
    text = f"<figcaption>{page.escape(caption)}</figcaption>" if caption else ""
    return page.Html(
        f'<figure id="{fig_id}" class="chart" data-chart="{page.escape(name)}">{svg}{text}</figure>'
    )


def traffic_chart(timeline: Timeline) -> page.Html:
    """Requests per window, answered and failed stacked."""
    width = timeline.bar_width

    def draw(ax: Axes, x: np.ndarray) -> None:
        ok = [r["requests"] - r["errors"] for r in timeline.rows]
        failed = [r["errors"] for r in timeline.rows]
        ax.bar(x, ok, width=width, color=TRAINING, label="answered")
        ax.bar(x, failed, width=width, bottom=ok, color=LIMIT, label="failed")
        ax.set_ylabel("requests")

    return _chart("traffic", timeline, draw)


def latency_chart(timeline: Timeline) -> page.Html:
    """Latency p50 and p99 of successful requests per window."""

    def draw(ax: Axes, x: np.ndarray) -> None:
        for key, label, color in (
            ("latency_p50_ms", "p50", TRAINING),
            ("latency_p99_ms", "p99", LIVE),
        ):
            ax.plot(x, timeline.column(key), marker="o", markersize=3, color=color, label=label)
        timeline.rule_lines(ax, ("latency_p50_ms", "latency_p99_ms"))
        ax.set_ylim(bottom=0)
        ax.set_ylabel("ms")

    caption = f"successful requests; windows with fewer than {timeline.min_rows} are left out"
    return _chart("latency", timeline, draw, caption)


def errors_chart(timeline: Timeline) -> page.Html:
    """The share of failed requests per window, all and 5xx."""

    def draw(ax: Axes, x: np.ndarray) -> None:
        rates, server = timeline.column("error_rate"), timeline.column("server_error_rate")
        ax.plot(x, rates, marker="o", markersize=3, color=LIMIT, label="all errors")
        ax.plot(x, server, marker="s", markersize=3, color=SERVER, label="5xx")
        timeline.rule_lines(ax, ("error_rate", "server_error_rate"))
        ax.set_ylim(bottom=0)
        ax.set_ylabel("share of requests")

    caption = f"windows with fewer than {timeline.min_rows} requests are left out"
    return _chart("errors", timeline, draw, caption)


def drift_chart(timeline: Timeline, features: Sequence[str], psi_threshold: float) -> page.Html:
    """Each feature's PSI per window against the drift threshold (dashed)."""

    def draw(ax: Axes, x: np.ndarray) -> None:
        for i, name in enumerate(features):
            values = series([r["drift_psi"].get(name) for r in timeline.rows])
            ax.plot(x, values, marker="o", markersize=3, color=CYCLE[i % len(CYCLE)], label=name)
        ax.axhline(psi_threshold, color=LIMIT, linestyle="--", linewidth=1)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("PSI")

    few = timeline.min_rows
    caption = f"windows with fewer than {few} rows are left out; dashed: the threshold"
    return _chart("drift", timeline, draw, caption)


def mix_chart(timeline: Timeline, classes: Sequence[str]) -> page.Html:
    """The predicted classes' shares per window, stacked."""
    width = timeline.bar_width

    def draw(ax: Axes, x: np.ndarray) -> None:
        bottom = np.zeros(len(x))
        for i, label in enumerate(classes):
            shares = []
            for r in timeline.rows:
                total = sum(r["predictions"].values())
                shares.append(r["predictions"].get(label, 0) / total if total else 0.0)
            color = CYCLE[i % len(CYCLE)]
            ax.bar(x, shares, width=width, bottom=bottom, color=color, label=label)
            bottom += np.asarray(shares)
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of predictions")

    return _chart("mix", timeline, draw, "stacked shares")


def predictions_chart(
    timeline: Timeline,
    reference: Mapping[str, Any] | None = None,
    target_range: Sequence[float] | None = None,
) -> page.Html:
    """A regressor's predictions per window: the median and the 10th-90th percentile
    band, against the mean of its predictions on the training rows (dashed) and the
    training target's range (dotted)."""

    def draw(ax: Axes, x: np.ndarray) -> None:
        low, mid, high = (timeline.column(f"prediction_p{q}") for q in (10, 50, 90))
        ax.fill_between(x, low, high, color=LIVE, alpha=0.25, label="live p10-p90")
        ax.plot(x, mid, marker="o", markersize=3, color=LIVE, label="live median")
        if reference is not None and reference.get("mean") is not None:
            mean = float(reference["mean"])
            ax.axhline(mean, color=TRAINING, linestyle="--", linewidth=1, label="training mean")
        if target_range is not None:
            for bound in target_range:
                ax.axhline(float(bound), color=LIMIT, linestyle=":", linewidth=1)
        ax.set_ylabel("prediction")

    caption = f"windows with fewer than {timeline.min_rows} predictions are left out" + (
        "; dotted: the training target's range" if target_range is not None else ""
    )
    return _chart("predictions", timeline, draw, caption)


# tables -------------------------------------------------------------------------------------


def bin_labels(edges: Sequence[float]) -> list[str]:
    """The names of a numeric profile's bins (its quantile edges), and a last one."""
    if not edges:
        return ["all"]
    labels = [f"≤{edges[0]:g}"]
    labels += [f"({a:g}, {b:g}]" for a, b in itertools.pairwise(edges)]
    return [*labels, f">{edges[-1]:g}"]


def predictions_table(
    result: Mapping[str, Any] | None,
    reference: Mapping[str, Any] | None,
    quantiles: Mapping[str, Any] | None = None,
    table_id: str = "",
) -> page.Html:
    """A regressor's predictions of the period against its predictions on the training
    rows (`result`: `drift.prediction_drift`'s, `reference`: the profile's `predictions`):
    the summary, the verdict, the share outside the training target's range, and the
    share of predictions per training quantile bin."""
    if result is None or not result.get("n"):
        return page.note("No predictions in the period.")
    bounds = result.get("target_range")
    q = quantiles or {}
    training_mean = (reference or {}).get("mean")
    outside: Any = "—"
    range_label = "outside the training target's range"
    if bounds:
        range_label += f" [{bounds[0]:g}, {bounds[1]:g}]"
        share = result.get("out_of_range_share")
        shown = "" if share is None else f" ({100 * float(share):.1f}%)"
        outside = f"{result['out_of_range']}{shown}"
    summary = page.kv(
        [
            ("predictions", result["n"]),
            (
                "mean (live / training)",
                f"{page.fmt(result.get('mean'))} / {page.fmt(training_mean)}",
            ),
            (
                "p10 / p50 / p90 (live)",
                " / ".join(page.fmt(q.get(k)) for k in ("p10", "p50", "p90")),
            ),
            ("PSI against the training predictions", result.get("psi")),
            ("KS p-value", result.get("ks_pvalue")),
            ("verdict", drift_verdict(result) if reference is not None else "—"),
            (range_label, outside),
        ]
    )
    if reference is None:
        return summary
    live = list(result.get("live_proportions") or [])
    rows = [
        (label, pct(train), pct(live[i]) if i < len(live) else None)
        for i, (label, train) in enumerate(
            zip(bin_labels(reference["edges"]), reference["proportions"], strict=False)
        )
    ]
    header = ("predicted value (training quantile bin)", "share in training", "share in the period")
    return page.Html(
        summary + page.table(header, rows, caption="Prediction distribution", table_id=table_id)
    )


def mix_classes(predictions: Mapping[str, int], training: Mapping[str, float]) -> list[str]:
    """The classes of the mix: training's, then any other predicted, each once."""
    return list(dict.fromkeys([*training, *predictions]))


def mix_table(
    predictions: Mapping[str, int], training: Mapping[str, float], table_id: str = ""
) -> page.Html:
    """The period's predictions per class against the training shares
    (`predictions` {label: count}, `training` {label: share})."""
    classes = mix_classes(predictions, training)
    if not classes:
        return page.note("No predictions in the period.")
    total = sum(predictions.values())
    rows = [
        (
            label,
            predictions.get(label, 0),
            pct(predictions.get(label, 0) / total) if total else None,
            pct(training.get(label)),
        )
        for label in classes
    ]
    header = ("class", "predictions", "share in the period", "share in training")
    return page.table(header, rows, table_id=table_id)


def alerts_table(alerts: Sequence[Mapping[str, Any]], table_id: str = "") -> page.Html:
    """The alerts (`Alert.to_dict()`s) of the period, or a badge saying there are none."""
    if not alerts:
        return page.Html(f"<p>{page.badge('no alerts in the period', 'pass')}</p>")
    rows = [
        (
            page.badge(a["rule"], "fail"),
            a["metric"],
            a["value"],
            f"{a['op']} {a['threshold']:g}",
            f"{when(a['window_start'])} to {when(a['window_end'])}",
            when(a["created_at"]),
        )
        for a in alerts
    ]
    header = ("rule", "metric", "value", "threshold", "window", "recorded")
    return page.table(header, rows, caption=f"{len(alerts)} alert(s)", table_id=table_id)
