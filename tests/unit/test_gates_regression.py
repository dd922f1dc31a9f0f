"""The promotion gates on real regressors (scikit-learn's diabetes data, shipped with it)."""

import json
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes
from sklearn.dummy import DummyRegressor
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline

from nbship import tasks
from nbship.registry import gates
from nbship.registry.gates import GateConfig

pytestmark = pytest.mark.unit

TARGET = "target"


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    df = load_diabetes(as_frame=True).frame.sample(frac=1.0, random_state=0)
    return df.iloc[:300], df.iloc[300:410], df.iloc[410:]  # train, test, golden (32 rows)


@pytest.fixture(scope="module")
def columns(frames) -> list[str]:
    return [c for c in frames[0].columns if c != TARGET]


def _fit(model, frames, columns):
    train = frames[0]
    return model.fit(train[columns], train[TARGET])


def _score(model, frames, columns) -> dict[str, float]:
    test = frames[1]
    return tasks.REGRESSION.score(model, test[columns], test[TARGET])


@pytest.fixture(scope="module")
def champion(frames, columns):
    model = _fit(LinearRegression(), frames, columns)
    return model, _score(model, frames, columns)


@pytest.fixture(scope="module")
def refit(frames, columns):
    """A genuinely equivalent challenger: the same model on the same rows, fitted again."""
    model = _fit(LinearRegression(), frames, columns)
    return model, _score(model, frames, columns)


@pytest.fixture(scope="module")
def dummy(frames, columns):
    """A deliberately worse challenger: the training mean for every row."""
    model = _fit(DummyRegressor(strategy="mean"), frames, columns)
    return model, _score(model, frames, columns)


# metric gate ----------------------------------------------------------------------------


def test_metric_gate_rmse_lower_is_better_pass_and_fail(champion, dummy, refit):
    config = GateConfig(metric="rmse")
    worse = gates.metric_gate(champion[1], dummy[1], config)
    assert not worse.passed, worse.message
    ev = worse.evidence
    assert ev["metric"] == "rmse" and ev["higher_is_better"] is False
    assert ev["task"] == "regression" and ev["tolerance_kind"] == "relative"
    assert (
        ev["worse_by"] == pytest.approx(dummy[1]["rmse"] - champion[1]["rmse"])
        and ev["worse_by"] > 0
    )
    assert "rmse (lower is better)" in worse.message and "worse by" in worse.message
    # a lower rmse is better, however much lower
    assert gates.metric_gate(dummy[1], champion[1], config).passed
    same = gates.metric_gate(champion[1], refit[1], config)
    assert same.passed and same.evidence["worse_by"] == pytest.approx(0.0, abs=1e-9)


def test_metric_gate_tolerance_is_relative_for_error_metrics_absolute_for_r2():
    config = GateConfig(metric="rmse", metric_tolerance=0.01)  # 1% of the champion's rmse
    ok = gates.metric_gate({"rmse": 100.0}, {"rmse": 100.9}, config)
    assert ok.passed, ok.message  # 0.9 worse: an absolute 0.01 would have refused it
    assert ok.evidence["allowed"] == pytest.approx(1.0)
    assert "relative to the champion's rmse" in ok.message and "allows 1" in ok.message
    assert not gates.metric_gate({"rmse": 100.0}, {"rmse": 101.5}, config).passed
    # exactly at the tolerance passes despite float rounding
    assert gates.metric_gate({"mae": 0.3}, {"mae": 0.303}, GateConfig(metric="mae")).passed
    # the same relative rule whatever the target's scale
    assert gates.metric_gate({"mae": 0.001}, {"mae": 0.00100999}, GateConfig(metric="mae")).passed
    assert not gates.metric_gate({"mae": 0.001}, {"mae": 0.00102}, GateConfig(metric="mae")).passed
    median = GateConfig(metric="median_ae", metric_tolerance=0.1)
    assert gates.metric_gate({"median_ae": 50.0}, {"median_ae": 54.0}, median).passed
    assert not gates.metric_gate({"median_ae": 50.0}, {"median_ae": 56.0}, median).passed
    # r2 has no unit: its tolerance stays absolute, and higher is better
    r2 = GateConfig(metric="r2", metric_tolerance=0.01)
    result = gates.metric_gate({"r2": 0.80}, {"r2": 0.795}, r2)
    assert result.passed and result.evidence["tolerance_kind"] == "absolute"
    assert result.message.endswith("tolerance 0.01")
    assert not gates.metric_gate({"r2": 0.80}, {"r2": 0.78}, r2).passed
    assert gates.metric_gate({"r2": 0.80}, {"r2": 0.95}, r2).passed


def test_metric_gate_auto_resolves_per_task_and_refuses_another_tasks_metric(champion, dummy):
    auto = GateConfig()  # the default: the task's own default metric
    assert auto.metric == "auto"
    result = gates.metric_gate(champion[1], dummy[1], auto, task="regression")
    assert result.evidence["metric"] == "rmse" and not result.passed
    # without a task, the metrics given tell it
    assert gates.metric_gate(champion[1], dummy[1], auto).evidence["metric"] == "rmse"
    assert gates.metric_gate({"f1_macro": 0.9}, {"f1_macro": 0.9}, auto).evidence["metric"] == (
        "f1_macro"
    )
    with pytest.raises(ValueError, match="unknown regression metric 'f1_macro'"):
        gates.metric_gate(champion[1], dummy[1], GateConfig(metric="f1_macro"), tasks.REGRESSION)
    with pytest.raises(ValueError, match="needs the task"):
        gates.metric_gate({"x": 1.0}, {"x": 1.0}, auto)


def test_gate_config_accepts_both_tasks_metrics_and_auto():
    for metric in [*tasks.METRICS, "auto"]:
        assert GateConfig.from_mapping({"metric": metric}).metric == metric
    with pytest.raises(ValueError, match="unknown gate metric 'auc'"):
        GateConfig.from_mapping({"metric": "auc"})
    config = GateConfig.from_mapping({"value_abs_tolerance": 2.0, "value_rel_tolerance": 0.0})
    assert (config.value_abs_tolerance, config.value_rel_tolerance) == (2.0, 0.0)
    assert GateConfig.metric_for(GateConfig(), tasks.REGRESSION) == "rmse"
    assert GateConfig().metric_for(tasks.CLASSIFICATION) == "f1_macro"


# differential gate ----------------------------------------------------------------------


def test_differential_gate_passes_an_equivalent_regressor(frames, columns, champion, refit):
    config = GateConfig()
    result = gates.differential_gate(champion[0], refit[0], frames[2], columns, config)
    assert result.passed, result.message
    ev = result.evidence
    assert ev["task"] == "regression" and ev["n_rows"] == len(frames[2]) == 32
    assert ev["n_differing"] == 0 and ev["rows"] == []
    assert ev["max_abs_delta"] < 1e-6
    # a nearby model (ridge with a tiny penalty) moves the predictions, within 5%
    nearby = _fit(Ridge(alpha=1e-4), frames, columns)
    close = gates.differential_gate(champion[0], nearby, frames[2], columns, config)
    assert close.passed, close.message
    assert close.evidence["max_abs_delta"] > 0


def test_differential_gate_fails_a_dummy_regressor_with_rows_listed(
    frames, columns, champion, dummy
):
    config = GateConfig()
    golden = frames[2]
    result = gates.differential_gate(champion[0], dummy[0], golden, columns, config)
    assert not result.passed, result.message
    ev = result.evidence
    assert ev["share"] > config.max_diff_share
    assert ev["n_differing"] == len(ev["rows"]) == ev["rows_listed"] > 0
    old = champion[0].predict(golden[columns])
    mean = float(frames[0][TARGET].mean())
    for row in ev["rows"]:
        # (row, old, new): the champion's own prediction, then the dummy's constant
        assert row["old"] == pytest.approx(old[row["row"]])
        assert row["new"] == pytest.approx(mean)
        assert row["abs_delta"] == pytest.approx(abs(mean - old[row["row"]]))
        assert row["abs_delta"] > 0.05 * abs(row["old"])
    # the rows within the tolerance are not counted
    within = np.abs(mean - old) <= 0.05 * np.abs(old)
    assert ev["n_differing"] == int((~within).sum())
    assert f"{ev['n_differing']}/32 predictions differ" in result.message
    assert "|new - old| > 0.0 + 0.05 x |old|" in result.message


def test_differential_gate_tolerance_is_absolute_plus_relative(frames, columns, champion, dummy):
    golden = frames[2]
    deltas = np.abs(dummy[0].predict(golden[columns]) - champion[0].predict(golden[columns]))
    loose = GateConfig(value_abs_tolerance=float(deltas.max()) + 1.0, value_rel_tolerance=0.0)
    result = gates.differential_gate(champion[0], dummy[0], golden, columns, loose)
    assert result.passed and result.evidence["n_differing"] == 0
    exact = GateConfig(value_abs_tolerance=0.0, value_rel_tolerance=0.0, max_diff_share=1.0)
    result = gates.differential_gate(champion[0], dummy[0], golden, columns, exact)
    assert result.passed and result.evidence["n_differing"] == int((deltas > 0).sum())


def test_value_changed_on_edge_values():
    config = GateConfig(value_abs_tolerance=1.0, value_rel_tolerance=0.1)
    old = np.array([0.0, 10.0, 10.0, np.nan, np.nan, 5.0, -10.0])
    new = np.array([1.0, 12.0, 12.1, np.nan, 1.0, np.nan, -12.0])
    assert gates.value_changed(old, new, config).tolist() == [
        False,  # |1 - 0| = 1 + 0.1 x 0
        False,  # 2 = 1 + 0.1 x 10
        True,
        False,  # NaN both times: no change
        True,
        True,
        False,  # the relative part uses |old|
    ]


def test_differential_gate_refuses_models_of_different_tasks(frames, columns, champion):
    golden = frames[2]
    y = (frames[0][TARGET] > 150).map({True: "high", False: "low"})
    classifier = LogisticRegression(max_iter=1000).fit(frames[0][columns], y)
    with pytest.raises(ValueError, match="different tasks"):
        gates.differential_gate(champion[0], classifier, golden, columns, GateConfig())


# benchmark gate -------------------------------------------------------------------------


def test_benchmark_gate_times_predict_of_regressors(frames, columns, champion, refit):
    batch = frames[2][columns]
    config = GateConfig(max_latency_factor=50.0, latency_repeats=5)
    result = gates.benchmark_gate(champion[0], refit[0], batch, config, 1.0, 1.2)
    assert result.passed, result.message
    ev = result.evidence
    assert ev["method"] == "predict" and result.message.startswith(
        "challenger vs champion: predict "
    )
    assert ev["champion_ms"]["p50"] > 0 and ev["train_ratio"] == pytest.approx(1.2)
    assert not hasattr(champion[0], "predict_proba")  # so predict is what was timed


def test_benchmark_gate_fails_a_clearly_slower_regressor(frames, columns, champion):
    slow = _fit(RandomForestRegressor(n_estimators=300, random_state=0), frames, columns)
    config = GateConfig(max_latency_factor=1.5, latency_repeats=5)
    result = gates.benchmark_gate(champion[0], slow, frames[2][columns], config)
    assert not result.passed, result.message
    assert "p50" in result.evidence["failed"] and result.evidence["method"] == "predict"


# invariance gate ------------------------------------------------------------------------


def test_invariance_gate_on_a_regressor(frames, columns, champion):
    frame = frames[1][columns]
    values = sorted(float(v) for v in frames[0]["sex"].unique())
    check = {"column": "sex", "values": values, "max_changed_share": 0.1}
    result = gates.invariance_gate(champion[0], frame, GateConfig(invariance=(check,)))
    # the linear model uses sex: flipping it moves many predictions by more than 5%
    assert not result.passed, result.message
    shares = result.evidence["checks"][0]["changed_share"]
    assert set(shares) == {str(v) for v in values} and max(shares.values()) > 0.1
    assert result.evidence["task"] == "regression"
    assert result.message.startswith("predictions changed (|new - old| > 0.0 + 0.05 x |old|)")
    # the shares are of rows moved beyond the tolerance, row by row
    base = champion[0].predict(frame)
    variant = frame.assign(sex=values[0])
    moved = np.abs(champion[0].predict(variant) - base) > 0.05 * np.abs(base)
    assert shares[str(values[0])] == pytest.approx(moved.mean())
    # a model that ignores the column keeps every prediction
    blind = make_pipeline(
        ColumnTransformer([("drop", "drop", ["sex"])], remainder="passthrough"), LinearRegression()
    )
    _fit(blind, frames, columns)
    strict = GateConfig(invariance=({**check, "max_changed_share": 0.0},))
    ok = gates.invariance_gate(blind, frame, strict)
    assert ok.passed, ok.message
    assert set(ok.evidence["checks"][0]["changed_share"].values()) == {0.0}


# all gates ------------------------------------------------------------------------------


def test_run_gates_on_regressors_all_gates_and_json_serialisable(
    frames, columns, champion, refit, dummy
):
    values = sorted(float(v) for v in frames[0]["sex"].unique())
    config = GateConfig(
        max_latency_factor=50.0,
        latency_repeats=3,
        invariance=({"column": "sex", "values": values, "max_changed_share": 1.0},),
    )
    common = dict(golden=frames[2], columns=columns, config=config)
    bad = gates.run_gates(
        champion=champion[0],
        challenger=dummy[0],
        champion_metrics=champion[1],
        challenger_metrics=dummy[1],
        **common,
    )
    assert [r.gate for r in bad] == ["metric", "differential", "benchmark", "invariance"]
    assert {r.gate for r in bad if not r.passed} == {"metric", "differential"}
    assert bad[0].evidence["metric"] == "rmse"
    good = gates.run_gates(
        champion=champion[0],
        challenger=refit[0],
        champion_metrics=champion[1],
        challenger_metrics=refit[1],
        task="regression",
        **common,
    )
    assert gates.passed(good), [r.message for r in good]
    first = gates.run_gates(
        champion=None,
        challenger=refit[0],
        champion_metrics=None,
        challenger_metrics=refit[1],
        **common,
    )
    assert [r.gate for r in first] == ["metric", "invariance"] and gates.passed(first)
    assert first[0].evidence["metric"] == "rmse"
    assert first[0].evidence["challenger"] == pytest.approx(refit[1]["rmse"])
    for results in (bad, good, first):
        text = json.dumps([asdict(r) for r in results], allow_nan=False)
        assert json.loads(text)[0]["gate"] == "metric"
        assert all("\n" not in r.message for r in results)


def test_run_gates_refuses_to_compare_a_classifier_champion_with_a_regressor(
    frames, columns, champion
):
    y = (frames[0][TARGET] > 150).map({True: "high", False: "low"})
    classifier = LogisticRegression(max_iter=1000).fit(frames[0][columns], y)
    results = gates.run_gates(
        champion=classifier,
        challenger=champion[0],
        champion_metrics={"f1_macro": 0.9},
        challenger_metrics=champion[1],
        golden=frames[2],
        columns=columns,
        config=GateConfig(),
    )
    assert [r.gate for r in results] == ["metric", "invariance"]
    assert not results[0].passed and not gates.passed(results)
    assert "champion is a classification model and the challenger a regression" in (
        results[0].message
    )
    json.dumps([asdict(r) for r in results], allow_nan=False)
