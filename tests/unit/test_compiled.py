import ast
import json
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, RobustScaler, StandardScaler

from nbship.pipeline import data, training
from nbship.serving.compiled import (
    CompiledModel,
    UnsupportedModel,
    compile_and_verify,
    compile_model,
    to_columns,
    verify,
)
from tests.support import PROJECT

pytestmark = pytest.mark.unit

FEATURES = training.Features(
    numeric=("bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"),
    categorical=("island", "sex"),
)
COLUMNS = FEATURES.columns
NUMERIC = list(FEATURES.numeric)
# small ensembles: the same code paths, a fraction of the fit time
HYPERPARAMS = {
    "logreg": {"max_iter": 1000},
    "forest": {"n_estimators": 20, "max_depth": 6, "random_state": 0},
    "knn": {"n_neighbors": 7},
    "hist_gb": {"max_iter": 20, "random_state": 0},
}


@pytest.fixture(scope="module")
def parts():
    df = data.load_source("palmerpenguins:load_penguins")
    return data.split(df, target="species", test_size=0.3, golden_size=10, seed=0)


@pytest.fixture(scope="module")
def fitted(parts):
    models = {}
    for name in training.ESTIMATORS:
        model = training.build_candidate(name, FEATURES, HYPERPARAMS.get(name))
        training.fit(model, parts.train, FEATURES, "species")
        models[name] = model
    return models


def fit_pipeline(preprocess, estimator, frame, columns=COLUMNS):
    model = Pipeline([("preprocess", preprocess), ("model", estimator)])
    return model.fit(frame[columns], frame["species"])


@pytest.mark.parametrize("name", sorted(training.ESTIMATORS))
def test_every_candidate_compiles_and_matches_sklearn_on_held_out_rows(parts, fitted, name):
    model = fitted[name]
    plan, report = compile_and_verify(model, COLUMNS, [parts.test, parts.golden])
    assert isinstance(plan, CompiledModel), report
    assert report["compiled"] is True
    assert report["label_mismatches"] == 0 and report["max_abs_diff"] <= 1e-5
    # held-out rows plus the edge rows (all missing, each column missing, unknowns)
    assert report["rows"] > len(parts.test) + len(parts.golden)
    assert report["estimator_compiled"] is (name == "logreg") is plan.estimator_compiled
    json.dumps(report)

    X = parts.test[COLUMNS]
    assert X.isna().any().any()  # real missing values go through the plan
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no feature-name or other warnings from the plan
        got = plan.predict_proba(to_columns(X, COLUMNS))
        one = plan.predict_proba(to_columns(X.iloc[:1], COLUMNS))
    expected = model.predict_proba(X)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(one, expected[:1], rtol=0, atol=1e-5)
    assert plan.classes == [str(c) for c in model.classes_]
    assert plan.predict(to_columns(X, COLUMNS)) == list(model.predict(X))


def test_description_says_what_was_compiled(fitted):
    plan = compile_model(fitted["logreg"], COLUMNS)
    assert plan.description == (
        "numpy plan: impute+scale 4 numeric, impute+one-hot 2 categorical (9 features)"
        " -> LogisticRegression (numpy)"
    )
    assert compile_model(fitted["forest"], COLUMNS).description.endswith(
        "-> RandomForestClassifier (scikit-learn)"
    )


def test_missing_values_are_imputed_and_unknown_categories_are_all_zeros(parts, fitted):
    model = fitted["logreg"]
    plan = compile_model(model, COLUMNS)
    base = parts.test[COLUMNS].iloc[[0]].reset_index(drop=True)

    # all missing, as the service sends it (None) and as NaN: both imputed
    none = {c: [None] for c in COLUMNS}
    nans = {c: [float("nan")] for c in COLUMNS}
    imputed = pd.DataFrame(
        {c: pd.Series([np.nan], dtype=float if c in FEATURES.numeric else object) for c in COLUMNS}
    )
    expected = model.predict_proba(imputed)
    np.testing.assert_allclose(plan.predict_proba(none), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(plan.predict_proba(nans), expected, rtol=0, atol=1e-12)
    # ... which is the row of the fitted medians and most frequent categories
    impute = model.named_steps["preprocess"].named_transformers_
    fill = [*impute["numeric"].named_steps["impute"].statistics_]
    fill += [*impute["categorical"].named_steps["impute"].statistics_]
    filled = {c: [v] for c, v in zip(COLUMNS, fill, strict=True)}
    np.testing.assert_allclose(plan.predict_proba(filled), expected, rtol=0, atol=1e-12)

    # an island nobody trained on: every island column is 0, as sklearn's "ignore"
    atlantis = base.assign(island=pd.Series(["Atlantis"], dtype=object))
    np.testing.assert_allclose(
        plan.predict_proba(to_columns(atlantis, COLUMNS)),
        model.predict_proba(atlantis),
        rtol=0,
        atol=1e-12,
    )
    assert not np.allclose(
        plan.predict_proba(to_columns(atlantis, COLUMNS)),
        plan.predict_proba(to_columns(base, COLUMNS)),
    )

    # service-shaped input: numpy float columns with NaN, lists of str/None
    mixed = {c: list(v) for c, v in to_columns(parts.test[COLUMNS].iloc[:5], COLUMNS).items()}
    mixed["sex"][0] = None
    for c in FEATURES.numeric:
        mixed[c] = np.array(mixed[c], dtype=float)
    frame = pd.DataFrame(mixed)
    np.testing.assert_allclose(
        plan.predict_proba(mixed), model.predict_proba(frame), rtol=0, atol=1e-12
    )


def test_binary_logistic_regression(parts):
    two = parts.train[parts.train["species"] != "Chinstrap"]
    model = training.build_candidate("logreg", FEATURES, {"C": 0.05, "max_iter": 1000})
    training.fit(model, two, FEATURES, "species")
    held_out = parts.test[parts.test["species"] != "Chinstrap"]
    plan, report = compile_and_verify(model, COLUMNS, [held_out])
    assert plan is not None, report
    assert plan.estimator_compiled
    assert plan.classes == ["Adelie", "Gentoo"]
    got = plan.predict_proba(to_columns(held_out, COLUMNS))
    assert got.shape == (len(held_out), 2)
    np.testing.assert_allclose(got, model.predict_proba(held_out[COLUMNS]), rtol=0, atol=1e-12)
    # a decision value far past exp's range saturates instead of overflowing
    extreme = {c: [1e6] for c in FEATURES.numeric} | {"island": ["Biscoe"], "sex": ["male"]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = plan.predict_proba(extreme)
    np.testing.assert_allclose(p, model.predict_proba(pd.DataFrame(extreme)), atol=1e-12)


@pytest.mark.parametrize(
    "variant",
    [
        "passthrough_remainder",
        "drop_first_dense_mean_constant",
        "sparse_output_knn",
        "scale_then_impute_weights",
    ],
)
def test_other_supported_preprocessing(parts, variant):
    columns = [*COLUMNS, "year"]
    numeric, categorical = list(FEATURES.numeric), list(FEATURES.categorical)
    estimator = LogisticRegression(max_iter=2000)
    if variant == "passthrough_remainder":  # year is passed through as a number
        preprocess = ColumnTransformer(
            [
                ("num", Pipeline([("i", SimpleImputer()), ("s", StandardScaler())]), numeric),
                ("cat", OneHotEncoder(handle_unknown="ignore"), categorical),
            ],
            remainder="passthrough",
        )
    elif variant == "drop_first_dense_mean_constant":
        preprocess = ColumnTransformer(
            [
                (
                    "num",
                    Pipeline([("i", SimpleImputer(strategy="mean")), ("s", StandardScaler())]),
                    numeric,
                ),
                (
                    "cat",
                    Pipeline(
                        [
                            ("i", SimpleImputer(strategy="constant", fill_value="unknown")),
                            ("o", OneHotEncoder(drop="first", sparse_output=False)),
                        ]
                    ),
                    categorical,
                ),
                ("year", "drop", ["year"]),
            ]
        )
    elif variant == "sparse_output_knn":  # the estimator saw a sparse matrix
        preprocess = ColumnTransformer(
            [
                ("num", Pipeline([("i", SimpleImputer()), ("s", StandardScaler())]), numeric),
                ("cat", OneHotEncoder(handle_unknown="ignore"), categorical),
            ],
            sparse_threshold=1.0,
        )
        estimator = KNeighborsClassifier(n_neighbors=5)
    else:
        preprocess = ColumnTransformer(
            [
                (
                    "num",
                    Pipeline(
                        [
                            ("s", StandardScaler(with_mean=False)),
                            ("i", SimpleImputer(strategy="median")),
                        ]
                    ),
                    numeric,
                ),
                ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical),
            ],
            transformer_weights={"num": 2.0, "cat": 0.5},
        )
    model = fit_pipeline(preprocess, estimator, parts.train, columns)
    if variant == "sparse_output_knn":
        assert model.named_steps["preprocess"].sparse_output_
    plan, report = compile_and_verify(model, columns, [parts.test, parts.golden])
    assert plan is not None, report
    assert report["max_abs_diff"] <= 1e-5 and report["label_mismatches"] == 0


def test_handle_unknown_error_raises_like_sklearn(parts):
    preprocess = ColumnTransformer(
        [
            ("num", Pipeline([("i", SimpleImputer()), ("s", StandardScaler())]), NUMERIC),
            ("cat", OneHotEncoder(handle_unknown="error"), list(FEATURES.categorical)),
        ]
    )
    train = parts.train.dropna(subset=list(FEATURES.categorical))
    model = fit_pipeline(preprocess, LogisticRegression(max_iter=2000), train)
    plan, report = compile_and_verify(model, COLUMNS, [parts.test.dropna()])
    assert plan is not None, report
    row = to_columns(parts.test.dropna().iloc[:1], COLUMNS)
    with pytest.raises(ValueError, match="unknown category 'Atlantis' in column 'island'"):
        plan.predict_proba(row | {"island": ["Atlantis"]})


def robust_pipeline():
    preprocess = ColumnTransformer(
        [
            (
                "numeric",
                Pipeline([("impute", SimpleImputer()), ("scale", RobustScaler())]),
                list(FEATURES.numeric),
            ),
            ("categorical", OneHotEncoder(handle_unknown="ignore"), list(FEATURES.categorical)),
        ]
    )
    return Pipeline([("preprocess", preprocess), ("model", LogisticRegression(max_iter=2000))])


def test_unsupported_step_is_named_and_falls_back(parts):
    model = robust_pipeline().fit(parts.train[COLUMNS], parts.train["species"])
    with pytest.raises(UnsupportedModel) as info:
        compile_model(model, COLUMNS)
    assert str(info.value) == (
        "step 'preprocess' -> 'numeric' -> 'scale': RobustScaler is not supported"
    )
    assert info.value.step == ("preprocess", "numeric", "scale")
    plan, report = compile_and_verify(model, COLUMNS, [parts.test])
    assert plan is None
    assert report["compiled"] is False
    assert "RobustScaler is not supported" in report["reason"]
    assert report["message"].startswith("serving with scikit-learn")
    json.dumps(report)
    # the model itself keeps working: the fallback is scikit-learn
    assert len(model.predict_proba(parts.test[COLUMNS])) == len(parts.test)


@pytest.mark.parametrize(
    ("build", "columns", "match"),
    [
        (
            lambda: Pipeline(
                [
                    (
                        "preprocess",
                        ColumnTransformer(
                            [
                                ("log", FunctionTransformer(np.log1p), ["body_mass_g"]),
                                ("cat", OneHotEncoder(handle_unknown="ignore"), ["island"]),
                            ]
                        ),
                    ),
                    ("model", KNeighborsClassifier()),
                ]
            ),
            ["body_mass_g", "island"],
            "step 'preprocess' -> 'log': FunctionTransformer with a function",
        ),
        (
            lambda: Pipeline([("impute", SimpleImputer()), ("model", KNeighborsClassifier())]),
            NUMERIC,
            "step 'impute': SimpleImputer where the plan needs a ColumnTransformer first",
        ),
        (
            lambda: KNeighborsClassifier(),
            NUMERIC,
            "the model is a KNeighborsClassifier, not a Pipeline",
        ),
    ],
    ids=["function_transformer", "no_column_transformer", "not_a_pipeline"],
)
def test_other_unsupported_models(parts, build, columns, match):
    frame = parts.train.dropna()
    model = build().fit(frame[columns], frame["species"])
    with pytest.raises(UnsupportedModel, match=match):
        compile_model(model, columns)
    plan, report = compile_and_verify(model, columns, [parts.test.dropna()])
    assert plan is None and report["compiled"] is False


def test_unfitted_pipeline_is_unsupported():
    with pytest.raises(UnsupportedModel, match="not fitted"):
        compile_model(training.build_candidate("logreg", FEATURES), COLUMNS)


def test_corrupted_plan_fails_verification(parts, fitted):
    model = fitted["logreg"]
    frames = [parts.test, parts.golden]
    plan = compile_model(model, COLUMNS)
    assert verify(plan, model, frames).ok

    plan._head.intercept = plan._head.intercept + np.array([1e-3, 0.0, 0.0])
    slight = verify(plan, model, frames)
    assert not slight.ok
    assert slight.label_mismatches == 0 and 1e-5 < slight.max_abs_diff < 1e-2
    assert "differs from scikit-learn" in slight.message and "0 label mismatches" in slight.message

    plan._head.weights = plan._head.weights.copy()
    plan._head.weights[:, 0] = 0.0  # no evidence left for the first class
    plan._head.intercept = plan._head.intercept + np.array([-20.0, 0.0, 0.0])
    broken = verify(plan, model, frames)
    assert not broken.ok and broken.label_mismatches > 0
    assert f"{broken.label_mismatches} label mismatches" in broken.message


def test_input_checks_and_empty_batch(fitted):
    plan = compile_model(fitted["logreg"], COLUMNS)
    row = {
        "bill_length_mm": [39.1],
        "bill_depth_mm": [18.7],
        "flipper_length_mm": [181.0],
        "body_mass_g": [3750.0],
        "island": ["Torgersen"],
        "sex": ["male"],
    }
    assert plan.predict_proba(row).shape == (1, 3)
    assert plan.predict_proba(row | {"unused": [1, 2, 3]}).shape == (1, 3)
    with pytest.raises(ValueError, match="missing column 'sex'"):
        plan.predict_proba({k: v for k, v in row.items() if k != "sex"})
    with pytest.raises(ValueError, match="has 2 values, expected 1"):
        plan.predict_proba(row | {"sex": ["male", "female"]})
    assert plan.predict_proba({c: [] for c in COLUMNS}).shape == (0, 3)


def test_plan_pickles_and_verify_without_rows_is_not_ok(parts, fitted):
    plan = compile_model(fitted["forest"], COLUMNS)
    again = pickle.loads(pickle.dumps(plan))
    columns = to_columns(parts.test, COLUMNS)
    np.testing.assert_array_equal(again.predict_proba(columns), plan.predict_proba(columns))
    empty = verify(plan, fitted["forest"], [])
    assert not empty.ok and empty.rows == 0


def test_module_imports_only_the_sklearn_compat_layer_of_nbship():
    """compiled.py stays self-contained: of nbship it imports only the scikit-learn compat
    layer, which holds the private scikit-learn attributes the plan reads (one place,
    version-checked by test_compat_sklearn) and imports only numpy and scikit-learn. The
    bento ships nbship.compat whole beside nbship.serving (SERVED_SUBPACKAGES)."""
    tree = ast.parse((PROJECT / "src" / "nbship" / "serving" / "compiled.py").read_text())
    imported = set()
    from_nbship = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            names = [node.module]
        else:
            continue
        imported |= {name.split(".")[0] for name in names}
        from_nbship |= {name for name in names if name.split(".")[0] == "nbship"}
    assert from_nbship <= {"nbship.compat.sklearn_private"}, from_nbship
    assert imported - {"nbship"} <= {
        "__future__",
        "collections",
        "dataclasses",
        "math",
        "typing",
        "warnings",
        "numpy",
        "scipy",
        "sklearn",
        "pandas",
    }, imported
