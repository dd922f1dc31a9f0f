import sys

import numpy as np
import pytest
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from nbship.common.artifacts import read_json, read_model
from nbship.pipeline import data, training
from nbship.tasks import CLASSIFICATION_METRICS, REGRESSION

pytestmark = pytest.mark.unit

FEATURES = training.Features(
    numeric=("bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"),
    categorical=("island", "sex"),
)


@pytest.fixture(scope="module")
def parts():
    df = data.load_source("palmerpenguins:load_penguins")
    return data.split(df, target="species", test_size=0.3, golden_size=5, seed=0)


@pytest.mark.parametrize("name", sorted(set(training.ESTIMATORS) - {"baseline"}))
def test_every_candidate_fits_raw_columns_with_missing_values(parts, name):
    model = training.build_candidate(name, FEATURES)
    seconds = training.fit(model, parts.train, FEATURES, "species")
    metrics = training.score(model, parts.test, FEATURES, "species")
    assert seconds > 0
    assert set(metrics) == set(CLASSIFICATION_METRICS)
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


def test_choose_winner_for_regression_takes_the_lowest_rmse_by_default():
    metrics = {
        "a": {"rmse": 3.0, "mae": 2.0, "r2": 0.5},
        "b": {"rmse": 2.0, "mae": 2.5, "r2": 0.7},
        "c": {"rmse": 2.0, "mae": 1.5, "r2": 0.7},
    }
    choice = training.choose_winner(metrics, "auto", task=REGRESSION)
    assert (choice.metric, choice.winner) == ("rmse", "c")  # tie on rmse: lower mae wins
    assert training.choose_winner(metrics, "r2", task=REGRESSION).winner == "c"
    with pytest.raises(ValueError, match="unknown selection metric 'f1_macro' for regression"):
        training.choose_winner(metrics, "f1_macro", task=REGRESSION)


def test_save_candidate_keeps_the_notebooks_fitted_model_and_writes_its_summary(tmp_path):
    df = data.load_source("sklearn.datasets:load_diabetes")
    X, y = df.drop(columns=["target"]), df["target"]
    model = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(X, y)
    before = model.predict(X.head(5))
    product = {"model": tmp_path / "ridge.joblib", "summary": tmp_path / "ridge.json"}
    summary = training.save_candidate(model, product, X, y, params={"alpha": 1.0})
    assert summary["task"] == "regression" and summary["candidate"] == "ridge"
    assert summary["train_seconds"] is None  # not refitted: the notebook's own object
    assert summary["features"] == list(X.columns)
    assert set(summary["train_metrics"]) == set(REGRESSION.metrics)
    saved = read_model(product["model"])
    np.testing.assert_array_equal(saved.predict(X.head(5)), before)
    assert read_json(product["summary"]) == summary


def test_save_candidate_fits_an_unfitted_model_and_times_it(tmp_path, parts):
    model = training.build_candidate("logreg", FEATURES)
    product = {"model": tmp_path / "m.joblib", "summary": tmp_path / "m.json"}
    X, y = parts.train[FEATURES.columns], parts.train["species"]
    summary = training.save_candidate(model, product, X, y, name="mine")
    assert summary["candidate"] == "mine" and summary["task"] == "classification"
    assert summary["train_seconds"] > 0
    assert summary["train_metrics"]["accuracy"] > 0.9
    with pytest.raises(TypeError, match="not an estimator"):
        training.save_candidate(StandardScaler(), product, X, y)


class NotebookRatio(StandardScaler):
    """Stands for a transformer written in a notebook cell (its module is __main__)."""


def test_save_candidate_refuses_a_class_of_the_notebook_naming_it(tmp_path, monkeypatch, parts):
    monkeypatch.setattr(NotebookRatio, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "NotebookRatio", NotebookRatio, raising=False)
    X, y = parts.train[list(FEATURES.numeric)], parts.train["species"]
    model = make_pipeline(SimpleImputer(), NotebookRatio(), LogisticRegression())
    product = {"model": tmp_path / "m.joblib", "summary": tmp_path / "m.json"}
    with pytest.raises(ValueError, match=r"notebook itself \(__main__\): NotebookRatio \(class\)"):
        training.save_candidate(model, product, X, y)
    assert not product["model"].exists()  # nothing written for the evaluate task to trip on
