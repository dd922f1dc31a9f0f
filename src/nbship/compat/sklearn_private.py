"""The private parts of scikit-learn the compiled plan (`nbship.serving.compiled`) reads,
each behind one named function.

The plan reproduces a fitted preprocessing pipeline in numpy, so it must know three
things scikit-learn records only in private attributes: which input columns each
ColumnTransformer entry reads, whether a SimpleImputer was fitted on objects or numbers,
and what `set_output` asked a transformer to return. Everything else the plan reads is
public (fitted `*_` attributes, `get_feature_names_out`, constructor parameters).

Each function degrades instead of raising: when the attribute is gone it answers None
(or the default), and the plan refuses the model, which then keeps being served by
scikit-learn. `tests/unit/test_compat_sklearn.py` is what fails loudly, naming the
installed version and CHECKED_VERSION, when any of what is relied on here changes.

Like the plan, this module imports only numpy and scikit-learn: it ships in the bento.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer

CHECKED_VERSION = "1.9.1"


def imputer_fit_dtype(imputer: SimpleImputer) -> np.dtype | None:
    """The dtype a fitted SimpleImputer's training data was validated to (kind "O": it
    imputes objects, such as strings, as they are; otherwise numbers), or None when the
    imputer does not record it (not fitted, or a scikit-learn that stores it elsewhere).

    Relies on (scikit-learn 1.9.1): `SimpleImputer._fit_dtype`, set by
    `_validate_input(X, in_fit=True)` to the validated X's dtype and read by `transform`,
    which converts its input to that dtype when its kind is "O" (and otherwise leaves
    numeric input numeric). No public attribute tells the two apart: `statistics_` is an
    object array under strategy="constant" whatever the data (`np.full(..., dtype=object)`
    in `_dense_fit`), and a constant fill value may be a number on object data.
    """
    dtype = getattr(imputer, "_fit_dtype", None)
    return dtype if isinstance(dtype, np.dtype) else None


def column_transformer_input_indices(ct: ColumnTransformer) -> dict[str, list[int]] | None:
    """For each entry of a fitted ColumnTransformer, by name, and for "remainder": the
    positions of the input columns it reads, as resolved at fit time (column names,
    slices, boolean masks and callables such as `make_column_selector` all become integer
    positions); None when the ColumnTransformer does not record them.

    Relies on (scikit-learn 1.9.1): `ColumnTransformer._transformer_to_input_indices`, a
    dict set in `fit` by `_validate_column_callables` (`_get_column_indices(X, columns)`
    for each entry's name) and `_validate_remainder` (key "remainder": the sorted
    positions no entry selected), and read by `transform` and `get_feature_names_out`.
    The public `transformers_` keeps each selection as the user wrote it; resolving
    those to positions would re-implement the private `sklearn.utils._indexing.
    _get_column_indices` rather than ask scikit-learn.
    """
    indices = getattr(ct, "_transformer_to_input_indices", None)
    if not isinstance(indices, dict):
        return None
    return {str(name): [int(i) for i in positions] for name, positions in indices.items()}


def transform_output(estimator: Any) -> str:
    """The container `estimator.set_output(transform=...)` asked its `transform` to return:
    "default" (numpy or scipy, as without set_output) unless it was set to another one
    ("pandas", "polars").

    Relies on (scikit-learn 1.9.1): `_SetOutputMixin.set_output` storing its `transform`
    argument as `estimator._sklearn_output_config["transform"]` (the attribute is absent
    until set_output is called with a value), which `sklearn.utils._set_output.
    _get_output_config` reads. scikit-learn has no public getter: `sklearn.get_config()`
    gives the global setting only, not one estimator's.
    """
    config = getattr(estimator, "_sklearn_output_config", None) or {}
    return str(config.get("transform", "default"))
