import pytest

from nbship.pipeline import data, training

pytestmark = pytest.mark.unit

FEATURES = training.Features(
    numeric=("bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"),
    categorical=("island", "sex"),
)


@pytest.fixture(scope="module")
def parts():
    df = data.load_source("palmerpenguins")
    return data.split(df, target="species", test_size=0.3, golden_size=5, seed=0)


@pytest.mark.parametrize("name", sorted(set(training.ESTIMATORS) - {"baseline"}))
def test_every_candidate_fits_raw_columns_with_missing_values(parts, name):
    model = training.build_candidate(name, FEATURES)
    seconds = training.fit(model, parts.train, FEATURES, "species")
    metrics = training.score(model, parts.test, FEATURES, "species")
    assert seconds > 0
    assert set(metrics) == set(training.METRICS)
    assert metrics["accuracy"] > 0.9  # penguins are easy; a broken pipeline is not
    # rows with missing values are imputed inside the pipeline, not dropped
    raw = parts.test[FEATURES.columns].copy()
    raw.loc[raw.index[:3], ["bill_length_mm", "sex"]] = None
    assert len(model.predict(raw)) == len(raw)


def test_unknown_estimator_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="logreg"):
        training.build_candidate("xgboost", FEATURES)


def test_hyperparams_reach_the_estimator():
    model = training.build_candidate("knn", FEATURES, {"n_neighbors": 3})
    assert model.named_steps["model"].n_neighbors == 3


def test_choose_winner_respects_metric_direction():
    metrics = {
        "a": {"f1_macro": 0.90, "log_loss": 0.30},
        "b": {"f1_macro": 0.95, "log_loss": 0.40},
    }
    assert training.choose_winner(metrics, "f1_macro").winner == "b"
    assert training.choose_winner(metrics, "log_loss").winner == "a"


def test_choose_winner_breaks_ties_by_log_loss_then_name_and_refuses_unknown_metric():
    metrics = {
        "a": {"accuracy": 1.0, "log_loss": 0.06},
        "b": {"accuracy": 1.0, "log_loss": 0.01},
        "c": {"accuracy": 0.9, "log_loss": 0.001},
    }
    choice = training.choose_winner(metrics, "accuracy")
    assert choice.winner == "b"
    assert [name for name, _ in choice.ranking] == ["b", "a", "c"]
    same = {"z": {"accuracy": 0.9, "log_loss": 0.1}, "a": {"accuracy": 0.9, "log_loss": 0.1}}
    assert training.choose_winner(same, "accuracy").winner == "a"
    with pytest.raises(ValueError, match="unknown selection metric"):
        training.choose_winner(metrics, "auc")


def test_baseline_predicts_priors_and_scores_poorly(parts):
    model = training.build_candidate("baseline", FEATURES)
    training.fit(model, parts.train, FEATURES, "species")
    assert training.score(model, parts.test, FEATURES, "species")["f1_macro"] < 0.5
