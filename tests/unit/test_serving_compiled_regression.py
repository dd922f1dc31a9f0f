"""The compiled plan of a regressor: linear regressors as numpy (an affine map after the
same preprocessing as a classifier's plan), any other regressor called on the plan's
numpy output, both verified against scikit-learn; what the plan cannot reproduce falls
back to scikit-learn without raising."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import ElasticNet, Lasso, LinearRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, RobustScaler, StandardScaler

from nbship.serving.compiled import compile_and_verify, compile_model, to_columns, verify

pytestmark = pytest.mark.unit

NUMERIC = ["x1", "x2"]
COLUMNS = [*NUMERIC, "colour"]


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.Series, pd.DataFrame]:
    rng = np.random.default_rng(1)
    n = 400
    X = pd.DataFrame(
        {
            "x1": rng.normal(10, 3, n),
            "x2": rng.uniform(-5, 5, n),
            "colour": pd.Series(rng.choice(["red", "green", "blue"], n), dtype=object),
        }
    )
    X.loc[::13, "x1"] = np.nan
    X.loc[::19, "colour"] = np.nan
    shift = X["colour"].map({"red": 3.0, "green": -2.0, "blue": 0.0}).fillna(0.0)
    y = 2.5 * X["x1"].fillna(10) - 1.5 * X["x2"] + shift + rng.normal(0, 0.5, n)
    return X.iloc[:300], y.iloc[:300], X.iloc[300:]


class SubRidge(Ridge):
    """Not exactly a Ridge: the plan runs it as scikit-learn, on the plan's output."""


def preprocess(scaler: object | None = None) -> ColumnTransformer:
    return ColumnTransformer(
        [
            (
                "numeric",
                Pipeline([("impute", SimpleImputer()), ("scale", scaler or StandardScaler())]),
                NUMERIC,
            ),
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="most_frequent")),
                        ("onehot", OneHotEncoder(handle_unknown="ignore")),
                    ]
                ),
                ["colour"],
            ),
        ]
    )


def fit(estimator: object, X: pd.DataFrame, y: pd.Series, scaler: object | None = None):
    return Pipeline([("preprocess", preprocess(scaler)), ("model", estimator)]).fit(X, y)


@pytest.mark.parametrize(
    "estimator",
    [LinearRegression(), Ridge(alpha=2.0), Lasso(alpha=0.05), ElasticNet(alpha=0.05)],
    ids=lambda e: type(e).__name__,
)
def test_a_linear_regressor_compiles_to_numpy_and_matches_sklearn(data, estimator):
    X, y, held_out = data
    model = fit(estimator, X, y)
    plan, report = compile_and_verify(model, COLUMNS, [held_out])
    assert plan is not None, report
    assert report["compiled"] is True and report["task"] == "regression"
    assert report["estimator_compiled"] is True and plan.estimator_compiled
    assert report["rows"] > len(held_out)  # plus the edge rows
    assert report["max_abs_diff"] <= 1e-9 and report["label_mismatches"] == 0
    assert report["message"].startswith("serving the compiled plan: matches scikit-learn")
    json.dumps(report)
    assert plan.task == "regression" and plan.classes == []
    assert plan.description.endswith(f"-> {type(estimator).__name__} (numpy)")
    got = plan.predict_values(to_columns(held_out, COLUMNS))
    assert got.shape == (len(held_out),)
    np.testing.assert_allclose(got, model.predict(held_out), rtol=0, atol=1e-9)
    assert plan.predict(to_columns(held_out.iloc[:3], COLUMNS)) == pytest.approx(
        model.predict(held_out.iloc[:3]).tolist(), abs=1e-9
    )
    # all missing and an unknown category, as the service sends them
    edge = {"x1": [None], "x2": [None], "colour": ["purple"]}
    expected = model.predict(pd.DataFrame(edge).astype({"x1": float, "x2": float}))
    np.testing.assert_allclose(plan.predict_values(edge), expected, rtol=0, atol=1e-9)
    assert plan.predict_values({c: [] for c in COLUMNS}).shape == (0,)
    with pytest.raises(TypeError, match="predict_values"):
        plan.predict_proba(to_columns(held_out, COLUMNS))


def test_any_other_regressor_runs_on_the_plans_numpy_output(data):
    X, y, held_out = data
    model = fit(HistGradientBoostingRegressor(max_iter=20, random_state=0), X, y)
    plan, report = compile_and_verify(model, COLUMNS, [held_out])
    assert plan is not None, report
    assert report["estimator_compiled"] is False and report["task"] == "regression"
    assert plan.description.endswith("-> HistGradientBoostingRegressor (scikit-learn)")
    np.testing.assert_allclose(
        plan.predict_values(to_columns(held_out, COLUMNS)), model.predict(held_out), atol=1e-9
    )


def test_a_large_target_verifies_within_a_relative_tolerance(data):
    X, y, held_out = data
    model = fit(Ridge(), X, y * 1e9 + 1e12)
    plan, report = compile_and_verify(model, COLUMNS, [held_out])
    assert plan is not None, report
    check = verify(plan, model, [held_out])
    assert check.ok and "max value diff" in check.message


def test_a_one_column_2d_target_is_one_value_per_row(data):
    X, y, held_out = data
    model = fit(LinearRegression(), X, y.to_frame())
    assert model.predict(held_out).shape == (len(held_out), 1)
    plan, report = compile_and_verify(model, COLUMNS, [held_out])
    assert plan is not None, report
    assert plan.predict_values(to_columns(held_out, COLUMNS)).shape == (len(held_out),)


def test_a_corrupted_linear_plan_fails_verification(data):
    X, y, held_out = data
    model = fit(Ridge(), X, y)
    plan = compile_model(model, COLUMNS)
    assert verify(plan, model, [held_out]).ok
    plan._head.intercept += 1e-3
    check = verify(plan, model, [held_out])
    assert not check.ok and check.label_mismatches == 0
    assert 1e-4 < check.max_abs_diff < 1e-2
    assert "differs from scikit-learn" in check.message and "max value diff" in check.message


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (
            lambda: Pipeline([("preprocess", preprocess(RobustScaler())), ("model", Ridge())]),
            "RobustScaler is not supported",
        ),
        (
            lambda: TransformedTargetRegressor(
                regressor=Pipeline([("preprocess", preprocess()), ("model", Ridge())]),
                func=np.log1p,
                inverse_func=np.expm1,
            ),
            "the model is a TransformedTargetRegressor, not a Pipeline",
        ),
        (
            lambda: Pipeline([("preprocess", preprocess()), ("model", Ridge())]),
            "Ridge coef_ shape (2, 5): only a single target",
        ),
        (
            # a subclass is not compiled to numpy: runs on the plan, fails verification
            lambda: Pipeline([("preprocess", preprocess()), ("model", SubRidge())]),
            "not one value per row",
        ),
    ],
    ids=["unsupported-step", "not-a-pipeline", "several-targets", "several-targets-subclass"],
)
def test_what_the_plan_cannot_reproduce_falls_back_without_raising(data, build, reason):
    X, y, held_out = data
    target = y.abs() + 1
    if "value per row" in reason or "single target" in reason:
        target = pd.concat([target, target * 2], axis=1)
    model = build().fit(X, target)
    plan, report = compile_and_verify(model, COLUMNS, [held_out])
    assert plan is None and report["compiled"] is False
    assert reason in report["reason"], report
    assert report["message"].startswith("serving with scikit-learn")
    json.dumps(report)


def test_a_model_that_breaks_while_compiling_falls_back(data):
    X, y, held_out = data
    model = fit(Ridge(), X, y)
    del model.named_steps["preprocess"].transformers_  # a fitted object no step foresaw
    plan, report = compile_and_verify(model, COLUMNS, [held_out])
    assert plan is None and report["compiled"] is False
    assert report["reason"] == (
        "cannot compile: AttributeError: 'ColumnTransformer' object has no attribute"
        " 'transformers_'"
    ), report
    assert report["message"] == f"serving with scikit-learn: {report['reason']}"
