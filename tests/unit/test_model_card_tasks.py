"""Model cards per task: a regressor's (residuals, predicted vs actual, its metrics and gate
verdicts) and binary classifiers with short labels ("Yes"/"No", 0/1)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes
from sklearn.dummy import DummyRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import confusion_matrix

from nbship import tasks
from nbship.registry import gates, model_card
from nbship.registry.versions import ModelVersion
from tests.unit.test_model_card import contains_run, parse, rows, svg_texts

pytestmark = pytest.mark.unit

TARGET = "target"


def _version(tag: str, **fields: Any) -> ModelVersion:
    name, version = tag.split(":")
    base: dict[str, Any] = {
        "tag": tag,
        "name": name,
        "version": version,
        "created_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "candidate": None,
        "params": {},
        "metrics": {},
        "data_fingerprint": None,
        "definition_hash": None,
        "versions": {},
        "git_commit": None,
        "train_seconds": None,
        "predict_ms": {},
        "reports": None,
        "bento_tag": None,
        "gates": [],
    }
    return ModelVersion(**{**base, **fields})


# binary classifiers with short labels ---------------------------------------------------


def _binary(labels: tuple[Any, Any]) -> tuple[pd.DataFrame, LogisticRegression]:
    no, yes = labels
    frame = pd.DataFrame(
        {
            "x": [0.1, 0.4, 0.5, 0.9, 1.2, 1.5, 1.9, 2.2, 0.3, 2.0],
            "y": [no, no, no, yes, no, yes, yes, yes, no, yes],
        }
    )
    return frame, LogisticRegression().fit(frame[["x"]], frame["y"])


@pytest.mark.parametrize("labels", [("No", "Yes"), (0, 1)], ids=["Yes/No", "0/1"])
def test_a_binary_target_with_short_labels_gets_its_card(labels: tuple[Any, Any]) -> None:
    """Short labels are not rotated; they used to crash the confusion matrix with
    "None is not a valid value for align"."""
    frame, model = _binary(labels)
    metrics = tasks.CLASSIFICATION.score(model, frame[["x"]], frame["y"])
    version = _version(
        "churn:v1",
        metrics={"test": metrics},
        extra={"features": ["x"], "target": "y", "classes": [str(c) for c in model.classes_]},
    )
    doc = parse(model_card.render_card(version=version, model=model, train=frame, test=frame,
                                       target="y"))  # fmt: skip
    section = doc.by_id("predictions")
    assert section.all("h2")[0].text() == "Confusion matrix"
    names = [str(c) for c in sorted(labels)]
    cm = confusion_matrix(frame["y"], model.predict(frame[["x"]]), labels=sorted(labels))
    texts = svg_texts(section.by_id("fig-predictions-this"))
    assert all(name in texts for name in names)
    assert contains_run(texts, [str(int(v)) for v in cm.ravel()]), texts
    overview = dict((r[0], r[1]) for r in rows(doc.by_id("overview").all("table")[0]))
    assert overview["task"] == "classification"
    assert overview["target"] == f"y ({', '.join(str(c) for c in model.classes_)})"
    class_rows = {r[0]: r for r in rows(doc.by_id("data").all("table")[1])[1:]}
    assert set(class_rows) == set(names)


# a regressor ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def regression() -> dict[str, Any]:
    df = load_diabetes(as_frame=True).frame.sample(frac=1.0, random_state=1)
    train, test, golden = df.iloc[:300], df.iloc[300:410], df.iloc[410:]
    columns = [c for c in df.columns if c != TARGET]
    linear = LinearRegression().fit(train[columns], train[TARGET])
    dummy = DummyRegressor().fit(train[columns], train[TARGET])

    def score(model: Any) -> dict[str, dict[str, float]]:
        return {
            s: tasks.REGRESSION.score(model, f[columns], f[TARGET])
            for s, f in (("test", test), ("train", train))
        }

    sexes = sorted(float(v) for v in train["sex"].unique())
    config = gates.GateConfig(
        latency_repeats=3,
        invariance=({"column": "sex", "values": sexes, "max_changed_share": 0.5},),
    )
    verdicts = gates.run_gates(
        champion=dummy,
        challenger=linear,
        champion_metrics=score(dummy)["test"],
        challenger_metrics=score(linear)["test"],
        golden=golden,
        columns=columns,
        config=config,
    )
    extra = {
        "features": columns,
        "target": TARGET,
        "task": "regression",
        "target_range": [float(train[TARGET].min()), float(train[TARGET].max())],
        "selection": {"metric": "rmse", "value": score(linear)["test"]["rmse"]},
    }
    champion = _version("diabetes:mean1", candidate="mean", metrics=score(dummy), extra=extra)
    challenger = _version(
        "diabetes:linear2",
        candidate="linear",
        metrics=score(linear),
        extra=extra,
        gates=json.loads(json.dumps([asdict(v) for v in verdicts])),
    )
    page = model_card.render_card(
        version=challenger,
        model=linear,
        train=train,
        test=test,
        target=TARGET,
        champion=champion,
        champion_model=dummy,
        aliases={"champion": champion.tag, "challenger": challenger.tag},
    )
    return {
        "page": page,
        "doc": parse(page),
        "test": test,
        "train": train,
        "columns": columns,
        "linear": linear,
        "dummy": dummy,
        "champion": champion,
        "challenger": challenger,
    }


def test_a_regressor_card_shows_residuals_and_predicted_vs_actual(regression) -> None:
    doc, test, columns = regression["doc"], regression["test"], regression["columns"]
    section = doc.by_id("predictions")
    assert section.all("h2")[0].text() == model_card.RESIDUALS_HEADING
    figures = [f.attrs["id"] for f in section.all("figure")]
    assert figures == ["fig-predictions-this", "fig-predictions-champion"]
    for fig_id, model in (
        ("fig-predictions-this", regression["linear"]),
        ("fig-predictions-champion", regression["dummy"]),
    ):
        figure = section.by_id(fig_id)
        (svg,) = figure.all("svg")
        texts = svg_texts(svg)
        assert {"predicted vs actual", "residual vs predicted", "residuals"} <= set(texts)
        residual = test[TARGET] - model.predict(test[columns])
        rmse = float(np.sqrt(np.mean(residual**2)))
        caption = figure.all("figcaption")[0].text()
        assert f"RMSE {rmse:.4g}" in caption and f"on {len(test)} test rows" in caption
    (table,) = [rows(t) for t in section.all("table") if "Residuals on the test rows" in t.text()]
    assert table[0][:5] == ["model", "test rows", "RMSE ↓", "MAE ↓", "R² ↑"]
    residual = test[TARGET] - regression["linear"].predict(test[columns])
    this = table[1]
    assert this[1] == str(len(test))
    assert this[3] == f"{float(np.mean(np.abs(residual))):.4g}"
    assert this[5] == f"{float(np.mean(residual)):.4g}"  # the bias
    # the data section shows the target's distribution, not class shares
    data = doc.by_id("data")
    assert "fig-target" in [f.attrs["id"] for f in data.all("figure")]
    assert "fig-classes" not in [f.attrs["id"] for f in data.all("figure")]


def test_a_regressor_card_shows_its_metrics_with_directions_against_the_champion(
    regression,
) -> None:
    doc, mine, theirs = regression["doc"], regression["challenger"], regression["champion"]
    section = doc.by_id("metrics")
    table = rows(section.all("table")[0])
    by_key = {(r[0].split()[0], r[1]): r for r in table[1:]}
    assert len(by_key) == 2 * len(tasks.REGRESSION_METRICS)
    for (name, split), row in by_key.items():
        assert row[0] == f"{name} {'↑' if tasks.METRICS[name] else '↓'}"
        a, b = mine.metrics[split][name], theirs.metrics[split][name]
        assert row[2:4] == [f"{a:.4f}", f"{b:.4f}"]
        assert row[4].startswith(f"{a - b:+.4f}")
    # the linear model beats the mean: a lower rmse, a higher r2, both "better"
    assert by_key[("rmse", "test")][4].endswith("(better)")
    assert by_key[("r2", "test")][4].endswith("(better)")
    a, b = mine.metrics["test"]["rmse"], theirs.metrics["test"]["rmse"]
    assert f"({(a - b) / b:+.1%})" in by_key[("rmse", "test")][4]  # error metrics: relative too
    assert "in the target's units" in section.text()
    chart = svg_texts(section.by_id("fig-metrics"))
    assert {"rmse ↓", "r2 ↑"} <= set(chart)
    assert f"{a:.4g}" in chart and f"{b:.4g}" in chart
    overview = dict((r[0], r[1]) for r in rows(doc.by_id("overview").all("table")[0]))
    assert overview["task"] == "regression"
    low, high = mine.extra["target_range"]
    assert overview["target"] == f"{TARGET} (from {low:.4g} to {high:.4g} in training)"


def test_a_regressor_card_renders_its_gate_evidence(regression) -> None:
    section = regression["doc"].by_id("gates")
    verdicts = {v["gate"]: v for v in regression["challenger"].gates}
    tables = [rows(t) for t in section.all("table")]
    diff = verdicts["differential"]["evidence"]
    assert not verdicts["differential"]["passed"]  # the mean and a linear model differ
    caption = f"Changed rows: {len(diff['rows'])} of {diff['n_differing']} differing rows"
    (changed,) = [rows(t) for t in section.all("table") if caption in t.text()]
    assert changed[0] == [
        "golden row",
        "champion prediction (old)",
        "this version (new)",
        "|new - old|",
    ]
    assert [r[0] for r in changed[1:]] == [str(r["row"]) for r in diff["rows"]]
    assert changed[1][1] == f"{diff['rows'][0]['old']:.4g}"
    latency = next(t for t in tables if t[0][0].endswith("latency"))
    assert latency[0][0] == "predict latency"
    chart = next(f for f in section.all("figure") if "benchmark" in f.attrs["id"])
    assert any(t.startswith("predict on ") for t in svg_texts(chart))
    shares = next(t for t in tables if t[0][0] == "column")
    assert shares[0][2] == "share of predictions changed"
    assert "predict_proba" not in regression["page"]


def test_a_regressor_card_without_champion_and_a_champion_of_another_task(regression) -> None:
    test, train, columns = regression["test"], regression["train"], regression["columns"]
    version = replace(regression["challenger"], gates=[])
    alone = parse(
        model_card.render_card(
            version=version, model=regression["linear"], train=train, test=test, target=TARGET
        )
    )
    predictions = alone.by_id("predictions")
    assert [f.attrs["id"] for f in predictions.all("figure")] == ["fig-predictions-this"]
    metrics = rows(alone.by_id("metrics").all("table")[0])
    assert metrics[0][1:] == ["test", "train"]
    # a classifier champion (the task changed): compared by metrics only, never predicted
    y = (train[TARGET] > 150).map({True: "high", False: "low"})
    classifier = LogisticRegression(max_iter=1000).fit(train[columns], y)
    page = model_card.render_card(
        version=version,
        model=regression["linear"],
        train=train,
        test=test,
        target=TARGET,
        champion=_version("diabetes:cls0", extra={"features": columns}),
        champion_model=classifier,
    )
    section = parse(page).by_id("predictions")
    assert [f.attrs["id"] for f in section.all("figure")] == ["fig-predictions-this"]
    assert "is a classification model and this version a regression one" in section.text()


def test_the_task_can_be_given_by_name(regression) -> None:
    test, train = regression["test"], regression["train"]
    version = replace(regression["challenger"], gates=[])
    page = model_card.render_card(
        version=version,
        model=regression["linear"],
        train=train,
        test=test,
        target=TARGET,
        task="regression",
    )
    assert parse(page).by_id("predictions").all("h2")[0].text() == model_card.RESIDUALS_HEADING
    with pytest.raises(ValueError, match="unknown task"):
        model_card.render_card(
            version=version, model=regression["linear"], train=train, test=test,
            target=TARGET, task="ranking",
        )  # fmt: skip
