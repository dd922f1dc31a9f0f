import json
from dataclasses import asdict

import pytest
from sklearn.dummy import DummyClassifier

from nbship.pipeline import data, training
from nbship.registry import gates
from nbship.registry.gates import GateConfig

pytestmark = pytest.mark.unit

FEATURES = training.Features(
    numeric=("bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"),
    categorical=("island", "sex"),
)
COLUMNS = FEATURES.columns
TARGET = "species"
LOGREG = {"C": 1.0, "max_iter": 1000}


@pytest.fixture(scope="module")
def parts():
    df = data.load_source("palmerpenguins:load_penguins")
    return data.split(df, target=TARGET, test_size=0.3, golden_size=30, seed=0)


def _fitted(parts, estimator, hyperparams=None):
    model = training.build_candidate(estimator, FEATURES, hyperparams)
    seconds = training.fit(model, parts.train, FEATURES, TARGET)
    return model, seconds


@pytest.fixture(scope="module")
def champion(parts):
    model, seconds = _fitted(parts, "logreg", LOGREG)
    return model, seconds, training.score(model, parts.test, FEATURES, TARGET)


@pytest.fixture(scope="module")
def dummy(parts):
    """A deliberately worse challenger: the same preprocessing, then the majority class."""
    model = training.build_candidate("logreg", FEATURES)
    model.steps[-1] = ("model", DummyClassifier(strategy="most_frequent"))
    training.fit(model, parts.train, FEATURES, TARGET)
    return model, training.score(model, parts.test, FEATURES, TARGET)


@pytest.fixture(scope="module")
def refit(parts):
    """A genuinely equivalent challenger: the same candidate, data and seed, fitted again."""
    model, seconds = _fitted(parts, "logreg", LOGREG)
    return model, seconds, training.score(model, parts.test, FEATURES, TARGET)


@pytest.fixture(scope="module")
def nearby(parts):
    """Equivalent in behaviour: logreg with a slightly different C."""
    model, _ = _fitted(parts, "logreg", {"C": 1.2, "max_iter": 1000})
    return model, training.score(model, parts.test, FEATURES, TARGET)


@pytest.fixture(scope="module")
def slow(parts):
    """Clearly slower to predict than logreg: a forest of many trees."""
    model, seconds = _fitted(parts, "forest", {"n_estimators": 400, "random_state": 0})
    return model, seconds


def test_worse_challenger_fails_metric_and_differential_gates_with_rows_listed(
    parts, champion, dummy
):
    config = GateConfig()
    metric = gates.metric_gate(champion[2], dummy[1], config)
    assert not metric.passed
    assert metric.evidence["worse_by"] > 0.3
    assert "f1_macro" in metric.message and "tolerance 0.01" in metric.message

    diff = gates.differential_gate(champion[0], dummy[0], parts.golden, COLUMNS, config)
    assert not diff.passed
    ev = diff.evidence
    assert ev["n_rows"] == len(parts.golden) == 30
    assert ev["share"] > config.max_diff_share
    assert ev["n_differing"] == len(ev["rows"]) > 0
    majority = dummy[0].predict(parts.golden[COLUMNS].iloc[:1])[0]
    changed = [r for r in ev["rows"] if r["old"] != r["new"]]
    assert changed and all(r["new"] == majority for r in changed)
    assert ev["label_changes"] == len(changed)
    assert all(0 <= r["row"] < 30 and 0 <= r["max_prob_delta"] <= 1 for r in ev["rows"])
    # the listed old labels are the champion's own predictions on those rows
    row = changed[0]
    assert champion[0].predict(parts.golden[COLUMNS].iloc[[row["row"]]])[0] == row["old"]


def test_differential_gate_caps_the_listed_rows_but_counts_them_all(parts, champion, dummy):
    big = parts.test  # ~100 rows, more than half of them not the majority class
    diff = gates.differential_gate(champion[0], dummy[0], big, COLUMNS, GateConfig())
    assert diff.evidence["n_differing"] > gates.MAX_LISTED_ROWS
    assert len(diff.evidence["rows"]) == diff.evidence["rows_listed"] == gates.MAX_LISTED_ROWS
    assert str(diff.evidence["n_differing"]) in diff.message


@pytest.mark.parametrize("which", ["refit", "nearby"])
def test_equivalent_challenger_passes_metric_and_differential_gates(
    request, parts, champion, which
):
    challenger = request.getfixturevalue(which)
    model, metrics = challenger[0], challenger[-1]
    config = GateConfig()
    assert gates.metric_gate(champion[2], metrics, config).passed
    diff = gates.differential_gate(champion[0], model, parts.golden, COLUMNS, config)
    assert diff.passed, diff.message
    assert diff.evidence["share"] <= config.max_diff_share
    if which == "refit":
        assert diff.evidence["n_differing"] == 0
        assert diff.evidence["max_prob_delta"] < 1e-9


def test_metric_gate_follows_the_metric_direction_and_tolerance():
    loss = GateConfig(metric="log_loss", metric_tolerance=0.05)
    assert gates.metric_gate({"log_loss": 0.20}, {"log_loss": 0.24}, loss).passed
    assert not gates.metric_gate({"log_loss": 0.20}, {"log_loss": 0.30}, loss).passed
    assert gates.metric_gate({"log_loss": 0.20}, {"log_loss": 0.01}, loss).passed
    f1 = GateConfig()
    # exactly at the tolerance passes despite float rounding (0.98 - 0.97 > 0.01 in binary)
    assert gates.metric_gate({"f1_macro": 0.98}, {"f1_macro": 0.97}, f1).passed
    assert not gates.metric_gate({"f1_macro": 0.98}, {"f1_macro": 0.96}, f1).passed
    with pytest.raises(ValueError, match="f1_macro"):
        gates.metric_gate({"accuracy": 1.0}, {"f1_macro": 1.0}, f1)


def test_benchmark_gate_fails_a_clearly_slower_challenger(parts, champion, slow):
    config = GateConfig(max_latency_factor=1.5, latency_repeats=10)
    result = gates.benchmark_gate(champion[0], slow[0], parts.golden[COLUMNS], config)
    assert not result.passed, result.message
    assert result.evidence["latency_ratio"]["p50"] > 1.5
    assert "p50" in result.evidence["failed"]
    assert result.evidence["train_ratio"] is None


def test_benchmark_gate_passes_an_equivalent_challenger(parts, champion, refit):
    # A generous factor: this checks the gate's decision, not the machine's timing noise.
    config = GateConfig(max_latency_factor=50.0, latency_repeats=10)
    result = gates.benchmark_gate(
        champion[0],
        refit[0],
        parts.golden[COLUMNS],
        config,
        champion_train_seconds=champion[1],
        challenger_train_seconds=champion[1],
    )
    assert result.passed, result.message
    ev = result.evidence
    assert ev["champion_ms"]["p50"] > 0 and ev["challenger_ms"]["p99"] >= ev["challenger_ms"]["p50"]
    assert ev["train_ratio"] == pytest.approx(1.0)
    assert ev["failed"] == []


def test_benchmark_gate_fails_on_training_time_when_both_are_given(parts, champion, refit):
    config = GateConfig(max_latency_factor=50.0, max_train_factor=3.0, latency_repeats=3)
    result = gates.benchmark_gate(
        champion[0],
        refit[0],
        parts.golden[COLUMNS],
        config,
        champion_train_seconds=1.0,
        challenger_train_seconds=5.0,
    )
    assert not result.passed
    assert result.evidence["train_ratio"] == pytest.approx(5.0)
    assert result.evidence["failed"] == ["train"]
    assert "train 5.000 vs 1.000 s" in result.message


def test_benchmark_gate_ignores_the_train_ratio_of_a_fit_under_the_floor(parts, champion, refit):
    # 10 ms against 57 ms (x5.7) is machine load, not a slower model (a CI failure)
    config = GateConfig(max_latency_factor=50.0, max_train_factor=5.0, latency_repeats=3)
    args = (champion[0], refit[0], parts.golden[COLUMNS], config)
    quick = gates.benchmark_gate(*args, champion_train_seconds=0.010,
                                 challenger_train_seconds=0.057)  # fmt: skip
    assert quick.passed and quick.evidence["train_ratio"] == pytest.approx(5.7)
    assert "not applied under 1 s" in quick.message
    slow = gates.benchmark_gate(*args, champion_train_seconds=0.2, challenger_train_seconds=1.2)
    assert not slow.passed and slow.evidence["failed"] == ["train"]


def test_invariance_gate_detects_a_model_that_uses_island(parts, champion):
    frame = parts.test[COLUMNS]
    values = ["Biscoe", "Dream", "Torgersen"]
    strict = GateConfig(
        invariance=({"column": "island", "values": values, "max_changed_share": 0.0},)
    )
    result = gates.invariance_gate(champion[0], frame, strict)
    assert not result.passed, result.message
    check = result.evidence["checks"][0]
    assert check["column"] == "island" and set(check["changed_share"]) == set(values)
    assert max(check["changed_share"].values()) > 0
    assert "FAILED" in result.message

    generous = GateConfig(
        invariance=({"column": "island", "values": values, "max_changed_share": 0.9},)
    )
    assert gates.invariance_gate(champion[0], frame, generous).passed


def test_invariance_gate_passes_trivially_without_checks_and_refuses_a_missing_column(
    parts, champion
):
    result = gates.invariance_gate(champion[0], parts.golden[COLUMNS], GateConfig())
    assert result.passed and "no invariance checks" in result.message
    config = GateConfig(invariance=({"column": "x", "values": [1], "max_changed_share": 0.1},))
    with pytest.raises(ValueError, match="'x'"):
        gates.invariance_gate(champion[0], parts.golden[COLUMNS], config)


def test_from_mapping_reads_env_yaml_and_rejects_unknown_keys():
    assert GateConfig.from_mapping(None) == GateConfig()
    config = GateConfig.from_mapping(
        {
            "metric": "accuracy",
            "max_diff_share": 0.2,
            "invariance": [
                {"column": "sex", "values": ["male", "female"], "max_changed_share": 0.1}
            ],
        }
    )
    assert config.metric == "accuracy" and config.max_diff_share == 0.2
    assert [check.model_dump() for check in config.invariance] == [
        {"column": "sex", "values": ["male", "female"], "max_changed_share": 0.1},
    ]
    unknown = r"gates\.tolerance: unknown setting .*; gates\.max_latency: unknown setting"
    with pytest.raises(ValueError, match=unknown):
        GateConfig.from_mapping({"tolerance": 0.1, "max_latency": 2, "metric": "f1_macro"})
    with pytest.raises(ValueError, match="unknown gate metric"):
        GateConfig.from_mapping({"metric": "auc"})
    with pytest.raises(ValueError, match="missing"):
        GateConfig.from_mapping({"invariance": [{"column": "sex", "values": ["male"]}]})


def test_run_gates_all_gates_and_json_serialisable(parts, champion, dummy, refit):
    config = GateConfig(
        max_latency_factor=50.0,
        latency_repeats=5,
        invariance=({"column": "sex", "values": ["male", "female"], "max_changed_share": 0.5},),
    )
    common = dict(golden=parts.golden, columns=COLUMNS, config=config)
    bad = gates.run_gates(
        champion=champion[0],
        challenger=dummy[0],
        champion_metrics=champion[2],
        challenger_metrics=dummy[1],
        **common,
    )
    assert [r.gate for r in bad] == ["metric", "differential", "benchmark", "invariance"]
    assert not gates.passed(bad)
    assert {r.gate for r in bad if not r.passed} == {"metric", "differential"}

    good = gates.run_gates(
        champion=champion[0],
        challenger=refit[0],
        champion_metrics=champion[2],
        challenger_metrics=refit[2],
        champion_train_seconds=champion[1],
        challenger_train_seconds=champion[1],
        **common,
    )
    assert gates.passed(good), [r.message for r in good]

    first = gates.run_gates(
        champion=None,
        challenger=refit[0],
        champion_metrics=None,
        challenger_metrics=refit[2],
        **common,
    )
    assert [r.gate for r in first] == ["metric", "invariance"]
    assert first[0].passed and first[0].message == "no champion: first model"
    assert gates.passed(first)

    for results in (bad, good, first):
        text = json.dumps([asdict(r) for r in results], allow_nan=False)
        assert json.loads(text)[0]["gate"] == "metric"
        assert all(isinstance(r.message, str) and "\n" not in r.message for r in results)
