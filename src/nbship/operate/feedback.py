"""Labelled feedback, from the prediction log to a training table.

`POST /feedback` stores each call as one log entry (kind "feedback") whose inputs are
the items: `{label, request_id, row}` (the true label of a logged prediction) or
`{label, record}` (a new labelled record). `labelled_feedback` turns every item into a
row of the training table: a record as given, a request id resolved to the inputs of
that logged `/predict` call (its `row`-th record for a batch).

The label is the true outcome: one of the classes for a classifier (text, as the
training table holds it), a number for a regressor (it stays a number: the target
column is float64). When the same prediction is labelled twice, the later label wins.
An item naming a request the log does not hold (never logged, or purged by retention)
cannot become a row: it is counted in the summary, not guessed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from nbship import tasks
from nbship.pipeline.data import fingerprint
from nbship.pipeline.training import Features
from nbship.prediction_log import FEEDBACK_KIND, read_log

ID_CHUNK = 500  # request ids per query (SQLite allows a few thousand bound values)


@dataclass(frozen=True)
class FeedbackSummary:
    """What the export found: `rows` became training rows, `unresolved` named requests
    the log does not hold, `superseded` were relabelled later; `until` is the time of
    the newest feedback entry read (None when there was none). `labels` counts the rows
    per class (classification); a regressor's `label_range` is [min, max] of its
    numeric labels (None without rows)."""

    rows: int
    entries: int
    items: int
    unresolved: int
    superseded: int
    until: datetime | None
    fingerprint: str
    labels: dict[str, int] = field(default_factory=dict)
    task: str = "classification"
    label_range: list[float] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "entries": self.entries,
            "items": self.items,
            "unresolved": self.unresolved,
            "superseded": self.superseded,
            "until": None if self.until is None else self.until.isoformat(),
            "fingerprint": self.fingerprint,
            "labels": self.labels,
            "task": self.task,
            "label_range": self.label_range,
        }


def _logged_record(inputs: Any, row: int) -> dict[str, Any] | None:
    """The `row`-th record of a logged /predict body (a record or a list of them)."""
    if isinstance(inputs, dict):
        return inputs if row == 0 else None
    if isinstance(inputs, list) and 0 <= row < len(inputs) and isinstance(inputs[row], dict):
        return inputs[row]
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def labelled_feedback(
    url: str,
    features: Features,
    target: str,
    *,
    until: datetime | None = None,
    task: str | None = None,
) -> tuple[pd.DataFrame, FeedbackSummary]:
    """Every labelled feedback item in the log at `url` (up to `until`, exclusive) as a
    table of the feature columns + `target`, oldest first, and a summary of the export.

    `task` ("classification" / "regression"): the served model's, which sets the
    target's dtype (text, or float64); None reads it from the labels as the split reads
    a target (`tasks.infer`), which an empty log cannot tell: give it."""
    if task is not None:
        tasks.get(task)  # ValueError naming the known ones
    columns = features.columns
    entries = read_log(url, kind=FEEDBACK_KIND, until=until)
    items = [
        (ts, item)
        for ts, inputs in zip(entries["ts"], entries["inputs"], strict=True)
        for item in (inputs if isinstance(inputs, list) else [])
        if isinstance(item, dict) and item.get("label") is not None
    ]
    if task is None:
        task = tasks.infer(pd.Series([item["label"] for _, item in items], name=target))[0].kind
    regression = task == "regression"
    if regression:  # a label that is no finite number cannot be a training row
        items = [(ts, i) for ts, i in items if _finite(i["label"])]
    wanted = {i["request_id"] for _, i in items if i.get("request_id")}
    predictions: dict[str, Any] = {}  # request id -> its logged /predict body
    ids = sorted(wanted)
    for start in range(0, len(ids), ID_CHUNK):  # only the labelled requests' rows
        logged = read_log(
            url, kind="predict", status="ok", request_ids=ids[start : start + ID_CHUNK]
        )
        predictions.update(zip(logged["request_id"], logged["inputs"], strict=True))
    by_subject: dict[tuple[str, int] | int, dict[str, Any]] = {}
    unresolved = superseded = 0
    for n, (_, item) in enumerate(items):
        subject: tuple[str, int] | int
        if item.get("request_id"):
            row = int(item.get("row") or 0)
            subject = (item["request_id"], row)
            record = _logged_record(predictions.get(item["request_id"]), row)
        else:
            subject, record = n, item.get("record")
        if record is None:
            unresolved += 1
            continue
        if subject in by_subject:
            superseded += 1
        by_subject[subject] = {**{c: record.get(c) for c in columns}, target: item["label"]}
    frame = pd.DataFrame(list(by_subject.values()), columns=[*columns, target])
    frame = _typed(frame, features, target, regression=regression)
    label_range = None
    if regression and frame[target].notna().any():
        label_range = [float(frame[target].min()), float(frame[target].max())]
    counts = {} if regression else dict(frame[target].value_counts().sort_index())
    summary = FeedbackSummary(
        rows=len(frame),
        entries=len(entries),
        items=len(items),
        unresolved=unresolved,
        superseded=superseded,
        until=None if entries.empty else entries["ts"].max().to_pydatetime(),
        fingerprint=fingerprint(frame),
        labels={str(k): int(v) for k, v in counts.items()},
        task=task,
        label_range=label_range,
    )
    return frame, summary


def _finite(value: Any) -> bool:
    """A number a regressor's label can be (not text, not NaN or infinite)."""
    return _is_number(value) and math.isfinite(value)


def _typed(
    frame: pd.DataFrame, features: Features, target: str, *, regression: bool = False
) -> pd.DataFrame:
    """Numbers as float64 and the rest as text, the dtypes of the training table, so the
    two concatenate (and fingerprint) alike; a regressor's target is a number."""
    out = frame.copy()
    numeric = [*features.numeric, target] if regression else list(features.numeric)
    for c in numeric:
        out[c] = pd.to_numeric(out[c], errors="coerce").astype("float64")
    for c in [*features.categorical, *([] if regression else [target])]:
        out[c] = out[c].astype("str")
    return out


def new_labels(url: str, since: datetime | None) -> int:
    """How many feedback items arrived at or after `since` (all of them for None)."""
    entries = read_log(url, kind=FEEDBACK_KIND, since=since)
    return int(entries["n_records"].sum()) if len(entries) else 0
