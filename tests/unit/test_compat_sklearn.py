"""The private scikit-learn attributes behind `nbship.compat.sklearn_private` still mean what
the compiled plan relies on, and the public ones compiled.py reads instead still say the
same: each test fits small real estimators and fails naming the installed scikit-learn
version and the version checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn.compose import ColumnTransformer, make_column_selector
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from nbship.compat import sklearn_private
from nbship.compat.sklearn_private import (
    CHECKED_VERSION,
    column_transformer_input_indices,
    imputer_fit_dtype,
    transform_output,
)
from nbship.serving.compiled import UnsupportedModel, compile_and_verify, compile_model

pytestmark = pytest.mark.unit


def broken(what: str) -> str:
    return (
        f"checked against scikit-learn {CHECKED_VERSION}, found {sklearn.__version__}: {what}."
        f" Adapt {sklearn_private.__name__} (or nbship.serving.compiled, for a public"
        " attribute) and this test to this version."
    )


def private(estimator: object, name: str) -> None:
    """The private attribute is still an instance attribute of the fitted estimator."""
    assert name in vars(estimator), broken(
        f"a fitted {type(estimator).__name__} no longer has {name}"
    )


# --- SimpleImputer._fit_dtype ----------------------------------------------------


@pytest.mark.parametrize(
    ("imputer", "frame", "kind"),
    [
        (SimpleImputer(), pd.DataFrame({"x": [1.0, np.nan, 3.0]}), "f"),
        # the case the public statistics_ gets wrong: an object array whatever the data
        (
            SimpleImputer(strategy="constant", fill_value=-1.0),
            pd.DataFrame({"x": [1.0, np.nan]}),
            "f",
        ),
        (SimpleImputer(strategy="most_frequent"), pd.DataFrame({"x": [1, 2, 2]}), "i"),
        # pandas' own string dtype (the default for text in pandas 3): validated to object
        (
            SimpleImputer(strategy="most_frequent"),
            pd.DataFrame({"s": ["a", None, "a"]}),
            "O",
        ),
        (
            SimpleImputer(strategy="most_frequent"),
            pd.DataFrame({"s": ["a", np.nan, "b"]}, dtype=object),
            "O",
        ),
        # a number as the fill value of object data: the data decides, not the fill
        (
            SimpleImputer(strategy="constant", fill_value=0),
            pd.DataFrame({"s": ["a", None]}, dtype=object),
            "O",
        ),
    ],
    ids=["mean", "constant_number", "most_frequent_int", "str_dtype", "object", "object_0"],
)
def test_imputer_fit_dtype_is_the_dtype_the_training_data_was_validated_to(
    imputer: SimpleImputer, frame: pd.DataFrame, kind: str
):
    assert imputer_fit_dtype(imputer) is None, broken("an unfitted imputer has a fit dtype")
    imputer.fit(frame)
    private(imputer, "_fit_dtype")
    dtype = imputer_fit_dtype(imputer)
    assert dtype is not None and dtype.kind == kind, broken(
        f"SimpleImputer._fit_dtype is {dtype!r} after fitting on {frame.dtypes.tolist()},"
        f" not of kind {kind!r}"
    )


def test_an_object_fit_dtype_means_transform_keeps_objects():
    """What the plan does with kind "O" (impute the values as they are) is what
    scikit-learn's transform does, because transform converts its input to that dtype."""
    imputer = SimpleImputer(strategy="most_frequent").fit(
        pd.DataFrame({"s": ["a", np.nan, "a"]}, dtype=object)
    )
    out = imputer.transform(pd.DataFrame({"s": [np.nan, 1.5, "b"]}, dtype=object))
    assert out.dtype.kind == "O" and out[:, 0].tolist() == ["a", 1.5, "b"], broken(
        f"an object-fitted SimpleImputer transforms to {out.dtype} {out[:, 0].tolist()}"
    )
    numbers = SimpleImputer(strategy="constant", fill_value=-1.0).fit(
        pd.DataFrame({"x": [1.0, np.nan]})
    )
    out = numbers.transform(pd.DataFrame({"x": [np.nan, 2.0]}))
    assert out.dtype.kind == "f" and out[:, 0].tolist() == [-1.0, 2.0], broken(
        f"a number-fitted constant SimpleImputer transforms to {out.dtype} {out[:, 0].tolist()}"
    )


# --- ColumnTransformer._transformer_to_input_indices -----------------------------


def test_input_indices_resolve_every_kind_of_column_selection():
    frame = pd.DataFrame(
        {
            "a": [1.0, 2.0, 3.0],
            "b": [4.0, 5.0, 6.0],
            "c": [7.0, 8.0, 9.0],
            "d": [0.5, 0.25, 0.125],
            "e": pd.Series(["x", "y", "x"], dtype=object),
            "f": [10.0, 11.0, 12.0],
        }
    )
    ct = ColumnTransformer(
        [
            ("names", "passthrough", ["c", "a"]),  # not in frame order
            ("slice", "passthrough", slice(1, 2)),
            ("mask", "passthrough", [False, False, False, True, False, False]),
            ("selector", OneHotEncoder(), make_column_selector(dtype_include=object)),
            ("dropped", "drop", ["b"]),
        ],
        remainder="passthrough",
    )
    assert column_transformer_input_indices(ct) is None, broken(
        "an unfitted ColumnTransformer has input indices"
    )
    out = ct.fit_transform(frame)
    private(ct, "_transformer_to_input_indices")
    indices = column_transformer_input_indices(ct)
    expected = {
        "names": [2, 0],
        "slice": [1],
        "mask": [3],
        "selector": [4],
        "dropped": [1],
        "remainder": [5],
    }
    assert indices == expected, broken(
        f"ColumnTransformer._transformer_to_input_indices is {indices}, not {expected}"
    )
    # the meaning relied on: the entry reads exactly these columns, in this order
    values = frame.to_numpy()
    for name in ("names", "slice", "mask", "remainder"):
        part = out[:, ct.output_indices_[name]]
        np.testing.assert_array_equal(
            part.astype(float),
            values[:, expected[name]].astype(float),
            err_msg=broken(f"entry {name!r} does not output its input columns {expected[name]}"),
        )


# --- _SetOutputMixin._sklearn_output_config --------------------------------------


def test_transform_output_is_what_set_output_asked_for():
    frame = pd.DataFrame({"x": [1.0, 2.0, 4.0]})
    ct = ColumnTransformer([("s", StandardScaler(), ["x"])])
    assert transform_output(ct) == "default"
    assert isinstance(ct.fit_transform(frame), np.ndarray)
    ct.set_output(transform="pandas")
    private(ct, "_sklearn_output_config")
    assert transform_output(ct) == "pandas", broken(
        f"after set_output(transform='pandas'), _sklearn_output_config is"
        f" {getattr(ct, '_sklearn_output_config', None)!r}"
    )
    assert isinstance(ct.fit_transform(frame), pd.DataFrame), broken(
        "set_output(transform='pandas') no longer makes transform return a DataFrame"
    )
    ct.set_output(transform=None)  # None leaves the setting as it was
    assert transform_output(ct) == "pandas", broken("set_output(transform=None) changed it")
    ct.set_output(transform="default")
    assert transform_output(ct) == "default", broken(
        "set_output(transform='default') is not read back as 'default'"
    )
    assert isinstance(ct.fit_transform(frame), np.ndarray)


# --- the public attributes compiled.py reads instead of private ones -------------

CATEGORIES = pd.DataFrame(
    {
        "island": pd.Series(["A", "A", "A", "B", "B", "C", None], dtype=object),
        "sex": pd.Series(["m", "f", "m", "f", "m", "f", "m"], dtype=object),
    }
)


@pytest.mark.parametrize(
    ("params", "enabled"),
    [
        ({}, False),
        ({"handle_unknown": "ignore", "drop": "first"}, False),
        ({"min_frequency": 2}, True),
        ({"max_categories": 2}, True),
        ({"min_frequency": 0.5, "handle_unknown": "infrequent_if_exist"}, True),
    ],
)
def test_infrequent_categories_are_defined_exactly_when_grouping_is_enabled(
    params: dict, enabled: bool
):
    """compiled.py refuses an encoder that has `infrequent_categories_` (public; it used
    to read the private `_infrequent_enabled`)."""
    encoder = OneHotEncoder(**params).fit(CATEGORIES)
    assert hasattr(encoder, "infrequent_categories_") is enabled, broken(
        f"OneHotEncoder({params}).infrequent_categories_ is"
        f" {'' if enabled else 'not '}expected to be defined"
    )


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"drop": "first"},
        {"drop": "if_binary"},
        {"drop": ["A", "f"]},
        {"handle_unknown": "ignore", "sparse_output": False},
        {"min_frequency": 2},
    ],
)
def test_feature_names_out_count_the_output_columns(params: dict):
    """compiled.py checks its one-hot width against `len(get_feature_names_out())`
    (public; it used to sum the private `_n_features_outs`)."""
    encoder = OneHotEncoder(**params).fit(CATEGORIES)
    width = encoder.transform(CATEGORIES).shape[1]
    names = encoder.get_feature_names_out()
    assert len(names) == width, broken(
        f"OneHotEncoder({params}) has {len(names)} output names for {width} output columns"
    )


def small_pipeline(encoder: OneHotEncoder, imputer: SimpleImputer) -> tuple[Pipeline, pd.DataFrame]:
    rng = np.random.default_rng(0)
    n = 60
    frame = pd.DataFrame(
        {
            "x": np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n)),
            "c": pd.Series(rng.choice(["A", "B", "C"], size=n), dtype=object),
        }
    )
    target = np.where(frame["x"].fillna(0) + (frame["c"] == "A") > 0.5, "yes", "no")
    model = Pipeline(
        [
            (
                "preprocess",
                ColumnTransformer(
                    [
                        ("num", Pipeline([("i", imputer), ("s", StandardScaler())]), ["x"]),
                        ("cat", encoder, ["c"]),
                    ]
                ),
            ),
            ("model", LogisticRegression(max_iter=1000)),
        ]
    )
    return model.fit(frame, target), frame


def test_the_plan_refuses_infrequent_grouping_and_imputes_constant_numbers_as_numbers():
    model, frame = small_pipeline(OneHotEncoder(min_frequency=5), SimpleImputer())
    with pytest.raises(UnsupportedModel, match="infrequent categories are not supported"):
        compile_model(model, ["x", "c"])
    # a numeric constant imputer: its statistics_ is an object array, but the plan must
    # impute numbers (what _fit_dtype says), and match scikit-learn
    model, frame = small_pipeline(
        OneHotEncoder(handle_unknown="ignore"), SimpleImputer(strategy="constant", fill_value=3)
    )
    plan, report = compile_and_verify(model, ["x", "c"], [frame])
    assert plan is not None, report
    assert "impute+scale 1 num" in plan.description


def test_the_compat_module_imports_only_numpy_and_sklearn():
    """It ships in the bento and is imported by the serving plan: no nbship, no pandas."""
    tree = ast.parse(Path(sklearn_private.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module, "relative import"
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "typing", "numpy", "sklearn"}, imported
