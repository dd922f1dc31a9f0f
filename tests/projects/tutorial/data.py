"""The tutorial notebook's data, generated (nothing is downloaded): mixed numeric and
categorical columns with missing values, an id column that is not a feature, and a
binary target that follows the columns."""

from __future__ import annotations

import numpy as np
import pandas as pd


def census_table(rows: int = 600, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, rows)
    hours = rng.normal(40, 10, rows).round(1)
    education = rng.choice(["HS-grad", "Bachelors", "Masters", "Doctorate"], rows)
    workclass = rng.choice(["Private", "Self-emp", "Gov"], rows).astype(object)
    workclass[rng.random(rows) < 0.05] = None
    hours[rng.random(rows) < 0.05] = np.nan
    score = (
        (age - 40) / 15
        + (hours - 40) / 10
        + pd.Series(education).map({"HS-grad": -1.0, "Bachelors": 0.0, "Masters": 0.7,
                                    "Doctorate": 1.2}).to_numpy()
        + rng.normal(0, 0.5, rows)
    )  # fmt: skip
    return pd.DataFrame(
        {
            "person_id": np.arange(1, rows + 1),
            "age": age,
            "hours_per_week": hours,
            "education": education,
            "workclass": workclass,
            "class": np.where(np.nan_to_num(score) > 0.3, ">50K", "<=50K"),
        }
    )
