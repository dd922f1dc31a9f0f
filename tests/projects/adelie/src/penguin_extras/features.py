"""A transformer of the project's own: the bill's shape as one number."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin


class BillShape(BaseEstimator, TransformerMixin):
    """Adds `bill_ratio` (length / depth) to the measurements it is given."""

    def fit(self, X: pd.DataFrame, y: object = None) -> BillShape:
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        out = X.copy()
        out["bill_ratio"] = X["bill_length_mm"] / X["bill_depth_mm"]
        return out

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        return np.asarray([*self.feature_names_in_, "bill_ratio"], dtype=object)
