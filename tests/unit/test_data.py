import pandas as pd
import pytest

from nbship.pipeline import data
from nbship.tasks import REGRESSION

pytestmark = pytest.mark.unit


def test_load_source_is_the_packaged_penguins_table():
    df = data.load_source("palmerpenguins:load_penguins")
    assert len(df) == 344
    assert {"species", "island", "bill_length_mm", "sex"} <= set(df.columns)


def test_sample_is_reproducible_and_sized():
    a = data.load_source("palmerpenguins:load_penguins", sample_rows=50, seed=1)
    b = data.load_source("palmerpenguins:load_penguins", sample_rows=50, seed=1)
    c = data.load_source("palmerpenguins:load_penguins", sample_rows=50, seed=2)
    assert len(a) == 50
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


def test_unknown_source_names_the_choices():
    with pytest.raises(ValueError, match="module:function"):
        data.load_source("iris-from-the-internet")


def test_a_source_function_of_a_package_loads_its_table():
    # a scikit-learn Bunch gives its frame: the regression examples' data, no download
    df = data.load_source("sklearn.datasets:load_diabetes")
    assert df.shape == (442, 11) and "target" in df.columns
    with pytest.raises(ValueError, match=r"sklearn\.datasets:nope"):
        data.load_source("sklearn.datasets:nope")
    with pytest.raises(ValueError, match="returned str, not a table"):
        data.load_source("platform:python_version")


def test_a_regression_split_does_not_stratify_and_keeps_every_row():
    df = data.load_source("sklearn.datasets:load_diabetes")
    parts = data.split(df, "target", 0.25, 20, 0, task=REGRESSION)
    assert len(parts.train) + len(parts.test) == len(df)
    assert len(parts.golden) == 20


def test_fingerprint_changes_with_any_value():
    df = data.load_source("palmerpenguins:load_penguins")
    same = df.copy()
    changed = df.copy()
    changed.loc[3, "body_mass_g"] = 1234.0
    assert data.fingerprint(df) == data.fingerprint(same)
    assert data.fingerprint(df) != data.fingerprint(changed)
    assert data.fingerprint(df).startswith("sha256:")


def test_split_is_stratified_disjoint_and_drops_unlabelled_rows():
    df = data.load_source("palmerpenguins:load_penguins")
    df.loc[0, "species"] = None
    parts = data.split(df, target="species", test_size=0.25, golden_size=10, seed=0)
    assert len(parts.train) + len(parts.test) == len(df) - 1
    assert len(parts.golden) == 10
    assert parts.train["species"].notna().all()
    shares = parts.train["species"].value_counts(normalize=True)
    test_shares = parts.test["species"].value_counts(normalize=True)
    assert (shares - test_shares).abs().max() < 0.05
    # the golden rows are rows of the test split
    merged = parts.golden.merge(parts.test.drop_duplicates(), how="left", indicator=True)
    assert (merged["_merge"] == "both").all()
