"""Model cards: one self-contained HTML page per registered model version.

A card shows what a person needs to judge a version: the data it was trained and tested
on, its metrics next to the champion's (each with its direction, ↑ higher or ↓ lower is
better), its predictions on the test set (a classifier's confusion matrix; a regressor's
predicted-vs-actual, residual-vs-predicted and residual histogram), every recorded gate
verdict with its evidence, and where it came from (library versions, params, hashes,
commit, bento). The task is the one the model does (`nbship.tasks.of_model`).

Pictures are matplotlib figures rendered to inline SVG. The page has no scripts and
fetches nothing, so it can be mailed, archived or opened from disk as it is. Every text
value is HTML-escaped here; matplotlib escapes the text it writes into its SVG.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from sklearn.metrics import confusion_matrix

from nbship import tasks
from nbship.common import html_page as page
from nbship.common.artifacts import atomic_path
from nbship.pipeline.data import fingerprint
from nbship.registry.versions import ModelVersion, split_tag
from nbship.tasks import METRICS, Task

# (anchor, heading) of the card's sections, in page order; the predictions section is
# titled "Residuals" instead for a regressor.
SECTIONS = (
    ("overview", "Overview"),
    ("data", "Data summary"),
    ("metrics", "Metrics"),
    ("predictions", "Confusion matrix"),
    ("gates", "Gate results"),
    ("provenance", "Versions & provenance"),
)
RESIDUALS_HEADING = "Residuals"
# Beyond these, tables and small multiples get long without telling more.
MAX_HISTOGRAMS = 12
MAX_CATEGORIES = 20

_THIS, _CHAMPION = "#1f77b4", "#a0a0a0"
_TRAIN, _TEST = "#4c72b0", "#dd8452"
_SPLIT_COLORS = (_TRAIN, _TEST, _CHAMPION)


def _split_color(i: int) -> str:
    """The colour of the i-th split (train, test, ...) in every chart."""
    return _SPLIT_COLORS[i % len(_SPLIT_COLORS)]


# rendering helpers -----------------------------------------------------------------------


def _metric(value: Any) -> str:
    """Metric values always with 4 decimals, so columns line up and compare by eye."""
    return f"{float(value):.4f}" if page.is_number(value) else page.fmt(value)


def _metric_cell(value: Any) -> page.Html:
    return page.Num(page.escape(_metric(value)))


def _verdict_badge(passed: Any) -> page.Html:
    return page.badge("PASSED", "pass") if passed else page.badge("FAILED", "fail")


def _time(value: datetime | str | None) -> str | None:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="seconds")
    return value


# figures ---------------------------------------------------------------------------------


def _grouped_bars(
    ax: Axes,
    groups: Sequence[str],
    series: Sequence[tuple[str, Sequence[float], str]],
    labels: Sequence[Sequence[str]] | None = None,
) -> None:
    """Bars of each series side by side per group; `labels` are written on the bars."""
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for i, (name, values, color) in enumerate(series):
        offset = (i - (len(series) - 1) / 2) * width
        bars = ax.bar(x + offset, values, width, label=name, color=color)
        if labels is not None:
            ax.bar_label(bars, labels=list(labels[i]), fontsize=6, padding=1)
    rotate = max((len(g) for g in groups), default=0) * len(groups) > 48
    ax.set_xticks(x, list(groups), rotation=30 if rotate else 0, ha="right" if rotate else "center")
    ax.margins(y=0.12)  # room for the bar labels
    # below the plot, so it never covers a bar
    ax.figure.legend(loc="outside lower center", ncols=len(series))


# data summary ----------------------------------------------------------------------------


def _feature_columns(
    version: ModelVersion, frames: Mapping[str, pd.DataFrame], target: str
) -> list[str]:
    """The model's input columns: as recorded at packaging, else every non-target column."""
    recorded = version.extra.get("features")
    first = next(iter(frames.values()))
    columns = list(recorded) if recorded else [c for c in first.columns if c != target]
    for name, frame in frames.items():
        missing = [c for c in [*columns, target] if c not in frame.columns]
        if missing:
            raise ValueError(f"the {name} frame lacks column(s) {missing} of {version.tag}")
    return columns


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _splits_table(version: ModelVersion, frames: Mapping[str, pd.DataFrame]) -> page.Html:
    recorded: dict[str, Any] = dict(version.extra.get("data_fingerprints") or {})
    if version.data_fingerprint and "train" not in recorded:
        recorded["train"] = version.data_fingerprint
    # split, rows, fingerprint at training, fingerprint of the rows shown, match
    rows: list[tuple[str, int | None, page.Html, page.Html | None, page.Html | None]] = []
    for name, frame in frames.items():
        shown, known = fingerprint(frame), recorded.get(name)
        match = None
        if known is not None:
            match = page.badge("same", "pass") if known == shown else page.badge("differs", "fail")
        rows.append((name, len(frame), page.code(known), page.code(shown), match))
    for name in sorted(set(recorded) - set(frames)):
        rows.append((name, None, page.code(recorded[name]), None, None))
    header = ("split", "rows", "fingerprint at training", "fingerprint of the rows shown", "match")
    return page.table(header, rows)


def _class_distribution(frames: Mapping[str, pd.DataFrame], target: str) -> list[str]:
    counts = {name: f[target].dropna().value_counts() for name, f in frames.items()}
    classes = sorted({c for vc in counts.values() for c in vc.index}, key=str)
    shares = {
        name: [vc.get(c, 0) / max(int(vc.sum()), 1) for c in classes] for name, vc in counts.items()
    }
    names = [str(c) for c in classes]

    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        series = [(n, shares[n], _split_color(i)) for i, n in enumerate(frames)]
        labels = [[str(int(counts[n].get(c, 0))) for c in classes] for n in frames]
        _grouped_bars(ax, names, series, labels)
        ax.set_ylabel("share of rows")
        ax.set_title(f"{target}: class shares (bars labelled with counts)")

    svg = page.svg("fig-classes", f"class distribution of {target}", (4.6, 2.6), draw)
    header = ["class"] + [f"{n} {k}" for n in frames for k in ("rows", "share")]
    # a class, then each split's row count and share
    rows: list[list[Any]] = [
        [str(c)]
        + [v for n in frames for v in (int(counts[n].get(c, 0)), page.Num(f"{shares[n][i]:.3f}"))]
        for i, c in enumerate(classes)
    ]
    return [
        "<h3>Class distribution</h3>",
        '<div class="figures">',
        page.figure("fig-classes", svg),
        page.table(header, rows),
        "</div>",
    ]


def _numeric_summary(frames: Mapping[str, pd.DataFrame], columns: Sequence[str]) -> page.Html:
    rows = []
    for column in columns:
        for name, frame in frames.items():
            values = pd.to_numeric(frame[column], errors="coerce")
            missing = int(values.isna().sum())
            present = values.dropna()
            stats = [present.mean(), present.std(), present.min(), present.max()]
            share = missing / len(values) if len(values) else 0.0
            numbers = [None if pd.isna(s) else float(s) for s in stats]
            rows.append((column, name, *numbers, page.Num(f"{missing} ({share:.1%})")))
    return page.table(("feature", "split", "mean", "std", "min", "max", "missing"), rows)


def _histograms(
    fig_id: str, frames: Mapping[str, pd.DataFrame], columns: Sequence[str], label: str
) -> page.Html:
    """Small multiples: one histogram per column, every split overlaid as a density."""
    shown = list(columns[:MAX_HISTOGRAMS])
    ncols = min(len(shown), 4)
    nrows = math.ceil(len(shown) / ncols)

    def draw(fig: Figure) -> None:
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, column in zip(axes, shown, strict=False):
            values = {
                n: pd.to_numeric(f[column], errors="coerce").dropna().to_numpy(float)
                for n, f in frames.items()
            }
            every = np.concatenate(list(values.values()))
            ax.set_title(column, fontsize=8)
            ax.set_yticks([])
            if every.size == 0:
                ax.text(0.5, 0.5, "no values", ha="center", transform=ax.transAxes)
                continue
            edges = np.histogram_bin_edges(every, bins=15)
            for i, (n, v) in enumerate(values.items()):
                # the first split filled, the others as outlines: overlaps stay readable
                style: dict[str, Any] = (
                    {"histtype": "stepfilled", "alpha": 0.45}
                    if i == 0
                    else {"histtype": "step", "linewidth": 1.2}
                )
                ax.hist(v, bins=edges, density=True, color=_split_color(i), label=n, **style)
        for ax in axes[len(shown) :]:
            ax.set_axis_off()
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside lower center", ncols=len(frames))

    svg = page.svg(fig_id, label, (2.2 * ncols, 1.7 * nrows), draw)
    caption = "densities, so splits of different sizes compare"
    if len(columns) > len(shown):
        caption += f"; the first {len(shown)} of {len(columns)} columns"
    return page.figure(fig_id, svg, caption)


def _categorical_counts(frames: Mapping[str, pd.DataFrame], columns: Sequence[str]) -> list[str]:
    parts: list[str] = []
    for column in columns:
        counts = {n: f[column].dropna().astype(str).value_counts() for n, f in frames.items()}
        first = next(iter(counts.values()))
        # most frequent in the first split (train) first
        values = sorted(
            {v for vc in counts.values() for v in vc.index},
            key=lambda v: (-int(first.get(v, 0)), v),
        )
        rows: list[list[Any]] = [
            [v, *(int(vc.get(v, 0)) for vc in counts.values())] for v in values[:MAX_CATEGORIES]
        ]
        if rest := values[MAX_CATEGORIES:]:
            others = (int(vc.reindex(rest).fillna(0).sum()) for vc in counts.values())
            rows.append([f"({len(rest)} more values)", *others])
        rows.append(["(missing)", *(int(f[column].isna().sum()) for f in frames.values())])
        parts.append(page.table([column, *frames], rows))
    return parts


def _data_section(
    version: ModelVersion,
    frames: Mapping[str, pd.DataFrame],
    target: str,
    features: Sequence[str],
    classifier: bool,
) -> list[str]:
    first = next(iter(frames.values()))
    numeric = [c for c in features if _is_numeric(first[c])]
    categorical = [c for c in features if c not in numeric]
    parts: list[str] = ["<h3>Splits</h3>", _splits_table(version, frames)]
    if classifier:
        parts += _class_distribution(frames, target)
    else:  # a regressor's target is a number: its distribution, like the features'
        parts += [
            "<h3>Target distribution</h3>",
            _numeric_summary(frames, [target]),
            _histograms("fig-target", frames, [target], f"distribution of {target}"),
        ]
    parts.append(f"<h3>Numeric features ({len(numeric)})</h3>")
    if numeric:
        parts += [
            _numeric_summary(frames, numeric),
            _histograms("fig-histograms", frames, numeric, "numeric feature histograms"),
        ]
    else:
        parts.append(page.note("No numeric features."))
    parts.append(f"<h3>Categorical features ({len(categorical)})</h3>")
    parts += (
        [f'<div class="figures">{"".join(_categorical_counts(frames, categorical))}</div>']
        if categorical
        else [page.note("No categorical features.")]
    )
    return parts


# metrics ---------------------------------------------------------------------------------


def _metric_names(*metric_sets: Mapping[str, Any]) -> list[str]:
    """Known metrics in METRICS order, then any others by name."""
    names = {n for m in metric_sets for n in m}
    return [n for n in METRICS if n in names] + sorted(names - set(METRICS))


def _splits_of(*metrics: Mapping[str, Any]) -> list[str]:
    names = {s for m in metrics for s, v in m.items() if isinstance(v, Mapping)}
    return [s for s in ("test", "train") if s in names] + sorted(names - {"test", "train"})


def _in_target_units(name: str) -> bool:
    """A regression error metric (rmse, mae, median_ae): in the target's units, so its
    change reads best as a share of the champion's value."""
    return name in tasks.REGRESSION_METRICS and not METRICS[name]


def _direction(name: str) -> str:
    if name not in METRICS:
        return ""
    return " ↑" if METRICS[name] else " ↓"


def _delta_cell(name: str, mine: Any, theirs: Any) -> page.Html | None:
    """this - champion, marked better/worse in the metric's own direction."""
    if not (page.is_number(mine) and page.is_number(theirs)):
        return None
    delta = float(mine) - float(theirs)
    text = f"{delta:+.4f}"
    if _in_target_units(name) and float(theirs) != 0:
        text += f" ({delta / abs(float(theirs)):+.1%})"  # the metric gate's tolerance is relative
    if name not in METRICS or abs(delta) < 1e-12:
        return page.Num(page.escape(text))
    better = (delta > 0) == METRICS[name]
    kind = "better" if better else "worse"
    return page.Num(f'<span class="{kind}">{page.escape(text)} ({kind})</span>')


def _metrics_section(version: ModelVersion, champion: ModelVersion | None, task: Task) -> list[str]:
    mine = version.metrics or {}
    theirs = (champion.metrics or {}) if champion else {}
    splits = _splits_of(mine, theirs)
    if not splits:
        return [page.note("No metrics recorded for this version.")]
    parts: list[str] = []
    selection = version.extra.get("selection") or {}
    if isinstance(selection, Mapping) and selection.get("metric"):
        parts.append(page.note(f"Selected among candidates by test {selection['metric']}."))
    if not task.is_classification:
        parts.append(
            page.note(
                "rmse, mae and median_ae are in the target's units (lower is better; the "
                "metric gate's tolerance for them is a share of the champion's value); r2 "
                "has none (higher is better, 1 is perfect)."
            )
        )
    rows: list[list[Any]]
    if champion is None:
        names = _metric_names(*(mine.get(s) or {} for s in splits))
        rows = [
            [f"{n}{_direction(n)}", *(_metric_cell((mine.get(s) or {}).get(n)) for s in splits)]
            for n in names
        ]
        parts.append(page.table(["metric (↑ higher / ↓ lower is better)", *splits], rows))
    else:
        rows = []
        for split in splits:
            a, b = mine.get(split) or {}, theirs.get(split) or {}
            rows += [
                [
                    f"{n}{_direction(n)}",
                    split,
                    _metric_cell(a.get(n)),
                    _metric_cell(b.get(n)),
                    _delta_cell(n, a.get(n), b.get(n)),
                ]
                for n in _metric_names(a, b)
            ]
        header = [
            "metric",
            "split",
            "this version",
            f"champion {champion.tag}",
            "Δ this - champion",
        ]
        parts.append(page.table(header, rows))
    parts.append(_metrics_chart(version, champion, task))
    return parts


def _metrics_chart(version: ModelVersion, champion: ModelVersion | None, task: Task) -> str:
    """Grouped bars of the test metrics; a regressor's as one small panel per metric,
    since rmse in the target's units and r2 near 1 share no scale."""
    mine = version.metrics or {}
    if champion is not None:
        a, b = mine.get("test") or {}, (champion.metrics or {}).get("test") or {}
        sides = [("this version", a, _THIS), (f"champion {champion.tag}", b, _CHAMPION)]
        title = "test metrics: this version vs champion"
    else:
        a, b = mine.get("test") or {}, mine.get("train") or {}
        sides = [("test", a, _TEST), ("train", b, _TRAIN)]
        title = "metrics: test vs train"
    names = [
        n for n in _metric_names(a, b) if page.is_number(a.get(n)) and page.is_number(b.get(n))
    ]
    if not names:
        return ""
    series = [(label, [float(m[n]) for n in names], color) for label, m, color in sides]
    if not task.is_classification:
        return _metric_panels(names, series, title)

    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        labels = [[f"{v:.3f}" for v in values] for _, values, _ in series]
        _grouped_bars(ax, [f"{n}{_direction(n)}" for n in names], series, labels)
        ax.set_title(title)

    svg = page.svg("fig-metrics", title, (max(3.2, 1.3 * len(names) + 1), 2.6), draw)
    return page.figure("fig-metrics", svg, "↑ higher is better, ↓ lower is better")


def _metric_panels(
    names: Sequence[str], series: Sequence[tuple[str, Sequence[float], str]], title: str
) -> str:
    """One panel per metric, each on its own scale, the two sides as two bars."""

    def draw(fig: Figure) -> None:
        axes = fig.subplots(1, len(names), squeeze=False).ravel()
        x = np.arange(len(series))
        for j, (ax, name) in enumerate(zip(axes, names, strict=True)):
            values = [float(s[1][j]) for s in series]
            bars = ax.bar(x, values, 0.7, color=[s[2] for s in series])
            ax.bar_label(bars, labels=[f"{v:.4g}" for v in values], fontsize=6, padding=1)
            ax.set_xticks([])
            ax.margins(y=0.15)
            ax.set_title(f"{name}{_direction(name)}", fontsize=8)
        handles = [Rectangle((0, 0), 1, 1, color=color) for _, _, color in series]
        fig.legend(handles, [s[0] for s in series], loc="outside lower center", ncols=len(series))
        fig.suptitle(title, fontsize=9)

    svg = page.svg("fig-metrics", title, (max(3.2, 1.7 * len(names)), 2.6), draw)
    caption = "↑ higher is better, ↓ lower is better; each metric on its own scale"
    return page.figure("fig-metrics", svg, caption)


# predictions -----------------------------------------------------------------------------


# (figure id, title, fitted model, its input columns)
_Predictor = tuple[str, str, Any, Sequence[str]]


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _confusion_figure(
    fig_id: str, title: str, cm: np.ndarray, labels: Sequence[str], vmax: int
) -> str:
    n = len(labels)

    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        # vector cells (pcolormesh), not imshow: imshow would embed a PNG in the SVG
        ax.pcolormesh(cm, cmap="Blues", vmin=0, vmax=max(vmax, 1), edgecolors="white")
        ax.set_xlim(0, n)
        ax.set_ylim(n, 0)  # the first class on top, as in the table
        ticks = np.arange(n) + 0.5
        rotate = max((len(s) for s in labels), default=0) > 6
        # short labels ("Yes"/"No", 0/1) stay level and centred: matplotlib has no ha=None
        ax.set_xticks(
            ticks, labels, rotation=30 if rotate else 0, ha="right" if rotate else "center"
        )
        ax.set_yticks(ticks, labels)
        ax.tick_params(length=0)
        ax.spines[:].set_visible(False)
        for i in range(n):
            for j in range(n):
                color = "white" if cm[i, j] > 0.6 * max(vmax, 1) else "#1d1d1f"
                ax.text(j + 0.5, i + 0.5, str(int(cm[i, j])), ha="center", va="center", color=color)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title(title)

    side = 1.0 + 0.55 * n
    return page.svg(
        fig_id, f"confusion matrix: {title}", (max(2.8, side + 0.8), max(2.4, side)), draw
    )


def _confusion_section(models: Sequence[_Predictor], test: pd.DataFrame, target: str) -> list[str]:
    """Confusion matrices on the test set, one per (fig_id, title, model, columns)."""
    labelled = test[test[target].notna()]
    y = labelled[target].to_numpy()
    predictions = [np.asarray(m.predict(labelled[list(cols)])) for _, _, m, cols in models]
    classes = {_plain(c) for _, _, m, _ in models for c in m.classes_} | {_plain(v) for v in y}
    labels = sorted(classes, key=str)
    matrices = [confusion_matrix(y, p, labels=labels) for p in predictions]
    vmax = int(max(int(cm.max()) for cm in matrices))
    names = [str(c) for c in labels]
    figures, tables = [], []
    for (fig_id, title, _, _), cm in zip(models, matrices, strict=True):
        correct, total = int(np.trace(cm)), int(cm.sum())
        caption = f"{title}: {correct} of {total} test rows right ({correct / max(total, 1):.1%})"
        svg = _confusion_figure(fig_id, title, cm, names, vmax)
        figures.append(page.figure(fig_id, svg, caption))
        rows = [[f"actual {names[i]}", *(int(v) for v in cm[i])] for i in range(len(names))]
        tables.append(page.table(["", *(f"predicted {n}" for n in names)], rows, caption=title))
    return [
        page.note(f"{len(y)} test rows; rows are the actual class, columns the predicted one."),
        f'<div class="figures">{"".join(figures)}</div>',
        f'<details><summary>The counts as tables</summary><div class="figures">{"".join(tables)}'
        "</div></details>",
    ]


def _regression_plot(
    predicted: np.ndarray, actual: np.ndarray, title: str, limits: tuple[float, float]
) -> Callable[[Figure], None]:
    """Three panels of one regressor on the test rows: predicted vs actual (the diagonal is
    a perfect model), residual vs predicted, and the residuals' histogram. `limits` (the
    value range of the target and every model's predictions) is shared, so the champion's
    panels compare with this version's by eye."""
    residual = actual - predicted

    def draw(fig: Figure) -> None:
        scatter, spread, hist = fig.subplots(1, 3)
        low, high = limits
        scatter.plot([low, high], [low, high], color="#77777f", linewidth=0.8, linestyle="--")
        scatter.scatter(actual, predicted, s=8, alpha=0.6, color=_THIS)
        scatter.set_xlim(low, high)
        scatter.set_ylim(low, high)
        scatter.set_xlabel("actual")
        scatter.set_ylabel("predicted")
        scatter.set_title("predicted vs actual", fontsize=8)
        spread.axhline(0, color="#77777f", linewidth=0.8)
        spread.scatter(predicted, residual, s=8, alpha=0.6, color=_THIS)
        spread.set_xlim(low, high)
        spread.set_xlabel("predicted")
        spread.set_ylabel("actual - predicted")
        spread.set_title("residual vs predicted", fontsize=8)
        finite = residual[np.isfinite(residual)]
        if finite.size:
            hist.hist(finite, bins=min(20, max(5, finite.size // 4)), color=_THIS, alpha=0.8)
        hist.axvline(0, color="#77777f", linewidth=0.8)
        hist.set_xlabel("actual - predicted")
        hist.set_ylabel("test rows")
        hist.set_title("residuals", fontsize=8)
        fig.suptitle(title, fontsize=9)

    return draw


def _residual_stats(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    residual = actual - predicted
    ok = np.isfinite(residual)
    residual, actual = residual[ok], actual[ok]
    if not residual.size:
        return dict.fromkeys(("rmse", "mae", "r2", "bias", "std", "max"), float("nan"))
    total = float(np.sum((actual - actual.mean()) ** 2))
    return {
        "rmse": float(np.sqrt(np.mean(residual**2))),
        "mae": float(np.mean(np.abs(residual))),
        "r2": 1.0 - float(np.sum(residual**2)) / total if total > 0 else float("nan"),
        "bias": float(np.mean(residual)),
        "std": float(np.std(residual)),
        "max": float(np.max(np.abs(residual))),
    }


def _residual_section(models: Sequence[_Predictor], test: pd.DataFrame, target: str) -> list[str]:
    """Per model, one figure (predicted vs actual, residual vs predicted, the residuals'
    histogram) and a row of residual statistics, on the labelled test rows."""
    labelled = test[test[target].notna()]
    y = pd.to_numeric(labelled[target], errors="coerce").to_numpy(float)
    predictions = [
        np.asarray(model.predict(labelled[list(cols)]), dtype=float).reshape(len(labelled))
        for _, _, model, cols in models
    ]
    every = np.concatenate([y, *predictions])
    every = every[np.isfinite(every)]
    low, high = (float(every.min()), float(every.max())) if every.size else (0.0, 1.0)
    pad = (high - low) * 0.05 or 1.0
    limits = (low - pad, high + pad)
    figures, rows = [], []
    for (fig_id, title, _, _), predicted in zip(models, predictions, strict=True):
        stats = _residual_stats(y, predicted)
        draw = _regression_plot(predicted, y, title, limits)
        svg = page.svg(fig_id, f"predictions and residuals: {title}", (9.0, 2.8), draw)
        caption = (
            f"{title}: RMSE {page.fmt(stats['rmse'])}, MAE {page.fmt(stats['mae'])}, "
            f"R² {page.fmt(stats['r2'])} on {len(y)} test rows"
        )
        figures.append(page.figure(fig_id, svg, caption))
        rows.append(
            [title, len(y), *(stats[k] for k in ("rmse", "mae", "r2", "bias", "std", "max"))]
        )
    header = [
        "model",
        "test rows",
        "RMSE ↓",
        "MAE ↓",
        "R² ↑",
        "mean residual (bias)",
        "residual std",
        "largest |residual|",
    ]
    return [
        page.note(
            f"{len(y)} test rows; residual = actual - predicted. On the left, points on the "
            "dashed diagonal are predicted exactly; a pattern in the middle panel is error the "
            "model could still learn."
        ),
        f'<div class="figures">{"".join(figures)}</div>',
        page.table(header, rows, caption="Residuals on the test rows"),
    ]


# gates -----------------------------------------------------------------------------------


def _latest_verdicts(gates: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The last recorded verdict of each gate (runs are appended: pipeline, then manual
    promotions), in the order the gates first appear."""
    latest: dict[str, Mapping[str, Any]] = {}
    for verdict in gates:
        latest[str(verdict.get("gate"))] = verdict
    return latest


def _gate_status(gates: Sequence[Mapping[str, Any]]) -> page.Html:
    if not gates:
        return page.badge("no gate results recorded", "none")
    latest = _latest_verdicts(gates)
    failed = [name for name, v in latest.items() if not v.get("passed")]
    if not failed:
        return page.badge(f"all {len(latest)} gates passed", "pass")
    return page.Html(
        page.badge(f"FAILED: {', '.join(failed)}", "fail")
        + page.escape(f" ({len(failed)} of {len(latest)} gates failed)")
    )


def _scalars(evidence: Mapping[str, Any], skip: Iterable[str] = ()) -> page.Html:
    """The evidence's top-level values as a label -> value table (nested ones as JSON)."""
    skipped = set(skip)
    rows = [
        (
            k.replace("_", " "),
            page.code(page.fmt(v)) if isinstance(v, Mapping | list | tuple) else v,
        )
        for k, v in evidence.items()
        if k not in skipped
    ]
    return page.kv(rows) if rows else page.Html("")


def _regression_evidence(evidence: Mapping[str, Any]) -> bool:
    """Verdicts of a regressor's gates say so; older ones (no "task") are a classifier's."""
    return evidence.get("task") == "regression"


def _differential_evidence(evidence: Mapping[str, Any], _fig_id: str) -> list[str]:
    rows = evidence.get("rows") or []
    parts: list[str] = [_scalars(evidence, skip=("rows",))]
    regression = _regression_evidence(evidence)
    if not rows:
        nothing = (
            "No golden-set prediction moved beyond the tolerance."
            if regression
            else "No golden-set row changed its label or moved a probability."
        )
        return [*parts, page.note(nothing)]
    listed = f"{len(rows)} of {evidence.get('n_differing', len(rows))} differing rows"
    if regression:
        header = ("golden row", "champion prediction (old)", "this version (new)", "|new - old|")
        delta = "abs_delta"
    else:
        header = ("golden row", "champion label (old)", "this version (new)", "max probability Δ")
        delta = "max_prob_delta"
    parts.append(
        page.table(
            header,
            [(r.get("row"), r.get("old"), r.get("new"), r.get(delta)) for r in rows],
            caption=f"Changed rows: {listed}",
        )
    )
    return parts


def _benchmark_evidence(evidence: Mapping[str, Any], fig_id: str) -> list[str]:
    old = evidence.get("champion_ms") or {}
    new = evidence.get("challenger_ms") or {}
    ratio = evidence.get("latency_ratio") or {}
    method = str(evidence.get("method") or "predict_proba")  # older verdicts: a classifier's
    quantiles = [
        q for q in ("p50", "p99") if page.is_number(old.get(q)) and page.is_number(new.get(q))
    ]
    parts: list[str] = [
        _scalars(evidence, skip=("champion_ms", "challenger_ms", "latency_ratio")),
        page.table(
            (f"{method} latency", "champion ms", "challenger (this) ms", "ratio"),
            [(q, old.get(q), new.get(q), ratio.get(q)) for q in ("p50", "p99")],
        ),
    ]
    if not quantiles:
        return parts

    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        series = [
            ("champion", [float(old[q]) for q in quantiles], _CHAMPION),
            ("challenger (this)", [float(new[q]) for q in quantiles], _THIS),
        ]
        labels = [[f"{v:.2f}" for v in values] for _, values, _ in series]
        _grouped_bars(ax, quantiles, series, labels)
        ax.set_ylabel("ms per batch")
        ax.set_title(f"{method} on {page.fmt(evidence.get('batch_rows'))} rows")

    svg = page.svg(fig_id, "benchmark latencies", (3.2, 2.4), draw)
    return [*parts, page.figure(fig_id, svg, "p50 and p99 over the repeats")]


def _invariance_evidence(evidence: Mapping[str, Any], _fig_id: str) -> list[str]:
    checks = evidence.get("checks") or []
    parts: list[str] = [_scalars(evidence, skip=("checks",))]
    if not checks:
        return [*parts, page.note("No invariance checks configured.")]
    rows = []
    for check in checks:
        limit = check.get("max_changed_share")
        for value, share in (check.get("changed_share") or {}).items():
            ok = page.is_number(share) and page.is_number(limit) and share <= limit + 1e-12
            rows.append((check.get("column"), value, share, limit, _verdict_badge(ok)))
    changed = "predictions" if _regression_evidence(evidence) else "labels"
    parts.append(
        page.table(("column", "set to", f"share of {changed} changed", "max share", "result"), rows)
    )
    return parts


def _generic_evidence(evidence: Mapping[str, Any], _fig_id: str) -> list[str]:
    return [_scalars(evidence)]


_EVIDENCE: dict[str, Callable[[Mapping[str, Any], str], list[str]]] = {
    "differential": _differential_evidence,
    "benchmark": _benchmark_evidence,
    "invariance": _invariance_evidence,
}


def _gates_section(gates: Sequence[Mapping[str, Any]]) -> list[str]:
    if not gates:
        return [page.note("No gate results recorded for this version.")]
    parts: list[str] = []
    if len(gates) > len(_latest_verdicts(gates)):
        parts.append(
            page.note(
                f"{len(gates)} verdicts from several gate runs, oldest first; the overview "
                "uses the latest verdict of each gate."
            )
        )
    rows = [
        (i, v.get("gate"), _verdict_badge(v.get("passed")), v.get("message"))
        for i, v in enumerate(gates, 1)
    ]
    parts.append(page.table(("#", "gate", "result", "message"), rows))
    for i, verdict in enumerate(gates, 1):
        gate = str(verdict.get("gate"))
        evidence = verdict.get("evidence")
        parts.append(f"<h3>#{i} {page.escape(gate)} {_verdict_badge(verdict.get('passed'))}</h3>")
        if not isinstance(evidence, Mapping) or not evidence:
            parts.append(page.note("No evidence recorded."))
            continue
        render = _EVIDENCE.get(gate, _generic_evidence)
        parts += render(evidence, f"fig-gate-{i}-{re.sub(r'[^a-z0-9]+', '-', gate.lower())}")
    return parts


# provenance ------------------------------------------------------------------------------

# extra keys the card shows elsewhere
_SHOWN_EXTRA = {
    "trained_at",
    "selection",
    "target",
    "task",
    "classes",
    "target_range",
    "data_fingerprints",
}


def _reports_link(reports: str | None) -> Any:
    if not reports:
        return None
    path = Path(reports)
    # quote() keeps a relative path from ever reading as a scheme ("javascript:...")
    href = path.as_uri() if path.is_absolute() else quote(path.as_posix())
    return page.Html(f'<a href="{page.escape(href)}"><code>{page.escape(reports)}</code></a>')


def _latency(predict_ms: Mapping[str, Any]) -> str | None:
    if not predict_ms:
        return None
    return ", ".join(f"{k} {page.fmt(v)} ms" for k, v in predict_ms.items())


def _provenance_section(version: ModelVersion) -> list[str]:
    commit = version.git_commit
    if commit and commit.endswith("-dirty"):
        commit_cell: Any = page.Html(f"{page.code(commit)} (built from uncommitted changes)")
    else:
        commit_cell = page.code(commit)
    train_seconds = None if version.train_seconds is None else f"{version.train_seconds:.3f} s"
    parts: list[str] = [
        page.kv(
            [
                ("model name", version.name),
                ("version", version.version),
                ("bento", page.code(version.bento_tag)),
                ("candidate", version.candidate),
                ("definition hash", page.code(version.definition_hash)),
                ("git commit", commit_cell),
                ("training time", train_seconds),
                ("one-row predict latency", _latency(version.predict_ms or {})),
                ("HTML reports of the run", _reports_link(version.reports)),
            ]
        ),
        "<h3>Library versions</h3>",
    ]
    # python first, then the libraries by name
    libraries = sorted((version.versions or {}).items(), key=lambda kv: (kv[0] != "python", kv[0]))
    parts.append(
        page.table(("library", "version"), libraries) if libraries else page.note("None recorded.")
    )
    parts.append("<h3>Parameters</h3>")
    params = _flatten(version.params or {})
    parts.append(
        page.table(("parameter", "value"), sorted(params.items()))
        if params
        else page.note("No parameters recorded (the estimator's defaults).")
    )
    other = {k: v for k, v in (version.extra or {}).items() if k not in _SHOWN_EXTRA}
    if other:
        parts += ["<h3>Other metadata</h3>", _scalars(other)]
    return parts


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# overview --------------------------------------------------------------------------------


def _overview(
    version: ModelVersion,
    aliases: Mapping[str, str] | None,
    champion: ModelVersion | None,
    target: str,
    task: Task,
) -> list[str]:
    if aliases is None:
        alias_cell: Any = "not known (no aliases given)"
    else:
        own = sorted(a for a, tag in aliases.items() if tag == version.tag)
        alias_cell = page.Html(" ".join(page.badge(a, "alias") for a in own)) if own else "none"
    selection = version.extra.get("selection") or {}
    chosen = (
        f"best test {selection.get('metric')} among candidates ({page.fmt(selection.get('value'))})"
        if isinstance(selection, Mapping) and selection.get("metric")
        else None
    )
    classes = version.extra.get("classes")
    target_range = version.extra.get("target_range")
    if classes:
        target_cell = f"{target} ({', '.join(map(str, classes))})"
    elif isinstance(target_range, list | tuple) and len(target_range) == 2:
        low, high = (page.fmt(v) for v in target_range)
        target_cell = f"{target} (from {low} to {high} in training)"
    else:
        target_cell = target
    return [
        page.kv(
            [
                ("tag", page.code(version.tag)),
                ("candidate", version.candidate),
                ("registered", _time(version.created_at)),
                ("trained", _time(version.extra.get("trained_at"))),
                ("aliases pointing here", alias_cell),
                ("promotion gates", _gate_status(version.gates or [])),
                ("selected as", chosen),
                ("task", task.kind),
                ("target", target_cell),
                ("compared with", page.code(champion.tag) if champion else "no champion given"),
            ]
        )
    ]


# the page --------------------------------------------------------------------------------


def render_card(
    *,
    version: ModelVersion,
    model: Any,
    train: pd.DataFrame,
    test: pd.DataFrame,
    target: str,
    champion: ModelVersion | None = None,
    champion_model: Any = None,
    aliases: Mapping[str, str] | None = None,
    task: Task | str | None = None,
) -> str:
    """The model card of `version` as one self-contained HTML5 page.

    `train` and `test` hold the feature columns and the `target` column; `model` is the
    fitted model of `version`. `task` (a Task or its name, e.g. the version's
    metadata["task"]) defaults to the one the model does (`nbship.tasks.of_model`): a
    classifier gets class shares and confusion matrices, a regressor the target's
    distribution, predicted-vs-actual and residual plots. With `champion` (and
    `champion_model`) the metrics and predictions are shown next to the champion's; a
    champion that is this very version is not compared with itself, and the predictions of
    a champion doing another task are not drawn. `aliases` ({alias: tag}) tells which
    aliases point here. Apart from the generation time the page is deterministic.
    """
    if champion is not None and champion.tag == version.tag:
        champion, champion_model = None, None
    if isinstance(task, str) and task:
        task = tasks.get(task)
    resolved = task if isinstance(task, Task) else tasks.of_model(model)
    frames = {"train": train, "test": test}
    features = _feature_columns(version, frames, target)
    this_title = f"this version ({version.candidate or version.tag})"
    models: list[_Predictor] = [("fig-predictions-this", this_title, model, features)]
    notes: list[str] = []
    if champion_model is not None:
        title = f"champion {champion.tag}" if champion else "champion"
        other = tasks.of_model(champion_model)
        if other.kind == resolved.kind:
            columns = _feature_columns(champion, frames, target) if champion else features
            models.append(("fig-predictions-champion", title, champion_model, columns))
        else:
            notes.append(
                page.note(
                    f"The {title} is a {other.kind} model and this version a {resolved.kind} "
                    "one: its predictions are not shown."
                )
            )
    titles = dict(SECTIONS)
    if resolved.is_classification:
        predictions = _confusion_section(models, test, target)
    else:  # a regressor: no classes to confuse, so residuals
        titles["predictions"] = RESIDUALS_HEADING
        predictions = _residual_section(models, test, target)
    bodies = {
        "overview": _overview(version, aliases, champion, target, resolved),
        "data": _data_section(version, frames, target, features, resolved.is_classification),
        "metrics": _metrics_section(version, champion, resolved),
        "predictions": [*notes, *predictions],
        "gates": _gates_section(version.gates or []),
        "provenance": _provenance_section(version),
    }
    sections = "\n".join(page.section(a, titles[a], bodies[a]) for a, _ in SECTIONS)
    nav = "".join(f'<a href="#{a}">{page.escape(titles[a])}</a>' for a, _ in SECTIONS)
    status = _gate_status(version.gates or [])
    now = datetime.now(UTC).isoformat(timespec="seconds")
    tag = page.escape(version.tag)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Model card {page.escape(version.tag)}</title>
<style>{page.CSS}</style>
</head>
<body>
<header><h1>Model card <code>{tag}</code></h1><p>{status}</p><nav>{nav}</nav></header>
{sections}
<footer>Generated <time datetime="{now}">{now}</time> by nbship.
Self-contained: no scripts, nothing fetched.</footer>
</body>
</html>
"""


def write_card(path: str | Path, html: str) -> Path:
    """Writes a card atomically (a reader sees the old page or the new, never half)."""
    target = Path(path)
    with atomic_path(target) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return target


def card_filename(tag: str) -> str:
    """`name:version` -> "name-version.html"."""
    name, version = split_tag(tag)
    for part in (name, version):
        if part in (".", "..") or any(c in part for c in "/\\\0"):
            raise ValueError(f"model tag {tag!r} cannot name a file")
    return f"{name}-{version}.html"
