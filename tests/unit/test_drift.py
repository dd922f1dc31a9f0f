"""Feature drift on the real penguins data: traffic drawn from the data itself is not
flagged; a shifted numeric column, a changed category mix and a surge of missing
values are; a window too small to tell is not."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from nbship.drift import (
    DEFAULT_MIN_ROWS,
    OTHER,
    PROFILE_VERSION,
    check_profile,
    feature_drift,
    psi,
    reference_profile,
)
from nbship.pipeline.data import load_source, split

pytestmark = pytest.mark.unit

NUMERIC = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
CATEGORICAL = ["island", "sex"]


@pytest.fixture(scope="module")
def penguins() -> pd.DataFrame:
    return load_source("palmerpenguins:load_penguins")


@pytest.fixture(scope="module")
def train(penguins: pd.DataFrame) -> pd.DataFrame:
    # the training split as env.yaml makes it
    return split(penguins, "species", test_size=0.25, golden_size=60, seed=42).train


@pytest.fixture(scope="module")
def profile(train: pd.DataFrame) -> dict:
    return reference_profile(train, NUMERIC, CATEGORICAL, target="species")


def sample(penguins: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    return penguins.sample(n=n, replace=True, random_state=seed).reset_index(drop=True)


def flagged(result: dict[str, dict]) -> list[str]:
    return sorted(name for name, r in result.items() if r["drifted"])


# the profile --------------------------------------------------------------------------------


def test_profile_is_json_and_describes_the_training_data(
    profile: dict, train: pd.DataFrame
) -> None:
    assert json.loads(json.dumps(profile, allow_nan=False)) == profile
    check_profile(profile)
    assert profile["version"] == PROFILE_VERSION
    assert profile["n_rows"] == len(train)
    assert list(profile["features"]) == NUMERIC + CATEGORICAL
    mass = profile["features"]["body_mass_g"]
    assert mass["kind"] == "numeric"
    assert len(mass["proportions"]) == len(mass["edges"]) + 1
    assert sum(mass["proportions"]) == pytest.approx(1.0)
    # quantile bins: each holds roughly a tenth of the rows
    assert max(mass["proportions"]) < 0.2
    assert mass["edges"] == sorted(mass["edges"])
    assert len(mass["sample"]) == train["body_mass_g"].notna().sum()  # fewer than 500
    assert mass["missing_share"] == pytest.approx(train["body_mass_g"].isna().mean())
    island = profile["features"]["island"]
    assert island["kind"] == "categorical"
    shares = train["island"].value_counts(normalize=True)
    assert island["proportions"] == pytest.approx(shares.to_dict())
    sex = profile["features"]["sex"]
    assert sex["missing_share"] == pytest.approx(train["sex"].isna().mean())
    assert sex["missing_share"] > 0
    assert set(profile["classes"]) == {"Adelie", "Chinstrap", "Gentoo"}


def test_profile_is_reproducible_and_the_sample_is_bounded(train: pd.DataFrame) -> None:
    a = reference_profile(train, NUMERIC, CATEGORICAL, sample=50, seed=3)
    b = reference_profile(train, NUMERIC, CATEGORICAL, sample=50, seed=3)
    c = reference_profile(train, NUMERIC, CATEGORICAL, sample=50, seed=4)
    assert a == b
    assert len(a["features"]["body_mass_g"]["sample"]) == 50
    assert a["features"]["body_mass_g"]["sample"] != c["features"]["body_mass_g"]["sample"]


def test_profile_refuses_bad_arguments(train: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="both numeric and categorical"):
        reference_profile(train, ["island"], ["island"])
    with pytest.raises(ValueError, match="bins"):
        reference_profile(train, NUMERIC, CATEGORICAL, bins=1)
    with pytest.raises(ValueError, match="features"):
        check_profile({"version": PROFILE_VERSION})
    with pytest.raises(ValueError, match="version"):
        check_profile({"version": 99, "features": {}})


# drift --------------------------------------------------------------------------------------


def test_traffic_from_the_same_data_is_not_flagged(profile: dict, penguins: pd.DataFrame) -> None:
    for seed in range(5):
        result = feature_drift(profile, sample(penguins, 200, seed))
        assert flagged(result) == [], (seed, {k: r["psi"] for k, r in result.items()})
        for name in NUMERIC:
            assert result[name]["psi"] < 0.2
            assert result[name]["ks_pvalue"] > 0.01
        assert result["island"]["chi2_pvalue"] > 0.01


def test_a_shifted_numeric_column_is_flagged(profile: dict, penguins: pd.DataFrame) -> None:
    live = sample(penguins, 200, 0)
    baseline = feature_drift(profile, live)
    live["body_mass_g"] = live["body_mass_g"] + 800
    result = feature_drift(profile, live)
    assert flagged(result) == ["body_mass_g"]
    mass = result["body_mass_g"]
    assert mass["psi"] > 1.0 > baseline["body_mass_g"]["psi"]
    assert mass["ks_stat"] > 0.3
    assert mass["ks_pvalue"] < 1e-6
    assert mass["mean"] == pytest.approx(mass["reference_mean"] + 800, abs=150)
    # the live shares per reference bin: nothing is as light as the lightest tenth of
    # the training penguins any more, and the heaviest bin holds three times its share
    reference = profile["features"]["body_mass_g"]["proportions"]
    assert mass["live_proportions"][0] == 0.0
    assert mass["live_proportions"][-1] > 3 * reference[-1]


def test_a_changed_category_mix_is_flagged(profile: dict, penguins: pd.DataFrame) -> None:
    live = sample(penguins, 200, 1)
    live["island"] = "Torgersen"
    result = feature_drift(profile, live)
    assert flagged(result) == ["island"]
    island = result["island"]
    assert island["psi"] > 1.0
    assert island["chi2_pvalue"] < 1e-6
    assert island["live_proportions"]["Torgersen"] == 1.0


def test_unseen_categories_and_missing_values_count_as_drift(
    profile: dict, penguins: pd.DataFrame
) -> None:
    live = sample(penguins, 120, 2)
    live.loc[:59, "island"] = "Atlantis"
    live.loc[:79, "flipper_length_mm"] = np.nan
    result = feature_drift(profile, live)
    assert flagged(result) == ["flipper_length_mm", "island"]
    assert result["island"]["unseen"] == ["Atlantis"]
    assert result["island"]["live_proportions"][OTHER] == pytest.approx(0.5)
    flipper = result["flipper_length_mm"]
    assert flipper["missing_share"] == pytest.approx(80 / 120)
    assert flipper["missing_pvalue"] < 1e-6


def test_too_few_rows_are_reported_but_never_flagged(profile: dict, penguins: pd.DataFrame) -> None:
    live = sample(penguins, DEFAULT_MIN_ROWS - 1, 3)
    live["body_mass_g"] = live["body_mass_g"] + 800
    result = feature_drift(profile, live)
    mass = result["body_mass_g"]
    assert mass["n"] == DEFAULT_MIN_ROWS - 1
    assert mass["enough_rows"] is False
    assert mass["drifted"] is False
    assert mass["psi"] > 1.0  # the evidence is still reported
    # the same rows count with a lower bar
    assert feature_drift(profile, live, min_rows=20)["body_mass_g"]["drifted"] is True
    empty = feature_drift(profile, {name: [] for name in NUMERIC + CATEGORICAL})
    assert all(r["n"] == 0 and r["psi"] is None and not r["drifted"] for r in empty.values())


def test_columns_as_plain_lists_and_messy_values(profile: dict, penguins: pd.DataFrame) -> None:
    live = sample(penguins, 60, 4)
    columns = {name: live[name].tolist() for name in NUMERIC + CATEGORICAL}
    assert feature_drift(profile, columns) == feature_drift(profile, live)
    # JSON-decoded traffic: ints, None, a stray string, a missing column
    messy = {
        "bill_length_mm": [40, None, "long", *live["bill_length_mm"].tolist()[3:]],
        "island": live["island"].tolist(),
    }
    result = feature_drift(profile, messy)
    assert result["bill_length_mm"]["n"] == 60
    assert result["bill_length_mm"]["missing_share"] >= 2 / 60
    assert result["sex"]["n"] == 60
    assert result["sex"]["missing_share"] == 1.0
    assert result["sex"]["drifted"] is True  # a feature that stopped arriving drifted
    json.dumps(result, allow_nan=False)


def test_thresholds_are_parameters(profile: dict, penguins: pd.DataFrame) -> None:
    live = sample(penguins, 200, 5)
    live["body_mass_g"] = live["body_mass_g"] + 300  # a modest shift
    mass = feature_drift(profile, live)["body_mass_g"]
    assert mass["drifted"]
    assert 0.2 < mass["psi"] < 0.5
    assert 1e-6 < mass["pvalue"] < 0.01

    def drifted(**thresholds: float) -> bool:
        return feature_drift(profile, live, **thresholds)["body_mass_g"]["drifted"]

    assert not drifted(psi_threshold=2 * mass["psi"])
    assert not drifted(pvalue_threshold=1e-6)
    assert not drifted(min_rows=201)


def test_psi_basics() -> None:
    assert psi([10, 20, 30], [10, 20, 30]) == pytest.approx(0.0)
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0, abs=0.02)
    assert psi([50, 50], [90, 10]) > 0.5
    assert psi([10, 0], [10, 5]) < float("inf")  # an empty reference bin stays finite
    assert psi([10, 20], [0, 0]) is None


def test_the_module_imports_neither_pandas_nor_the_project() -> None:
    code = (
        "import sys; import nbship.drift; "
        "bad = [m for m in ('pandas', 'sklearn', 'sqlalchemy', 'great_expectations') "
        "if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
