"""A compiled inference path: a fitted scikit-learn Pipeline as a numpy-only plan.

`pipeline.predict_proba` on one row costs milliseconds, nearly all of it per-call
overhead (DataFrame column selection, validation, ColumnTransformer bookkeeping), not
arithmetic. At package time `compile_model` turns the fitted pipeline into a plan of
precomputed arrays and lookup tables that takes *columnar* input (a dict of column ->
list of values) and runs in microseconds; `verify` checks it against the pipeline
itself, and `compile_and_verify` ships it only when it agrees (classification: labels
equal, probabilities within `atol`; regression: values within `atol` x max(1, |value|)),
so a model the plan cannot reproduce keeps being served by scikit-learn.

Supported, inside one ColumnTransformer (remainder drop or passthrough, nested
Pipelines, transformer weights): SimpleImputer (any strategy; missing values NaN/None),
StandardScaler, OneHotEncoder (no infrequent categories), passthrough/drop. A final
LogisticRegression (a classifier) or LinearRegression, Ridge, Lasso or ElasticNet (a
single-target regressor: an affine map) is compiled to numpy; any other final classifier
with predict_proba, or regressor with predict, is called on the plan's numpy output,
exactly what the fitted pipeline passes it. The plan's `task` says which it is: a
classifier's plan answers `predict_proba`, a regressor's `predict_values`.

Input conventions of `CompiledModel.predict_proba` / `predict_values`: numeric values
are numbers, None or NaN (missing); categorical values are str, None or NaN (missing). A
missing value is always imputed, as it was in training.

This module imports only numpy, scikit-learn (pandas only inside `verify`) and, for the
few private scikit-learn attributes the plan must read, `nbship.compat.sklearn_private`
(itself numpy and scikit-learn only, version-checked by its tests), so the serving process
can import it without the training stack.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import is_regressor
from sklearn.compose import ColumnTransformer
from sklearn.exceptions import NotFittedError
from sklearn.impute import SimpleImputer
from sklearn.linear_model import ElasticNet, Lasso, LinearRegression, LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler
from sklearn.utils.validation import check_is_fitted

from nbship.compat.sklearn_private import (
    column_transformer_input_indices,
    imputer_fit_dtype,
    transform_output,
)

if TYPE_CHECKING:
    import pandas as pd

# a category no fitted encoder knows, for the verification's unknown-category rows
UNKNOWN_CATEGORY = "\x00nbship-unknown-category"
# regressors whose predict is X @ coef_ + intercept_: compiled to numpy (exact types only,
# as LogisticRegression: a subclass may predict otherwise)
LINEAR_REGRESSORS = (LinearRegression, Ridge, Lasso, ElasticNet)


class UnsupportedModel(Exception):
    """The pipeline holds a step the plan cannot reproduce; `step` names where."""

    def __init__(self, reason: str, step: Sequence[str] = ()) -> None:
        self.reason = reason
        self.step = tuple(step)
        where = " -> ".join(repr(s) for s in self.step)
        super().__init__(f"step {where}: {reason}" if where else reason)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# --- plan steps ------------------------------------------------------------------
# A block is either a float array (n, k) the plan owns and may change in place, or a
# list of k column sequences (the caller's values, never changed).


def _as_numbers(block: np.ndarray | list) -> np.ndarray:
    if isinstance(block, np.ndarray):
        return block
    # a fresh (k, n) array; None becomes NaN. Transposed view: (n, k), ours to change.
    return np.array(block, dtype=float).T


def _as_columns(block: np.ndarray | list) -> list:
    return block.T.tolist() if isinstance(block, np.ndarray) else block


class _NumberImpute:
    short = "impute"

    def __init__(self, fill: np.ndarray) -> None:
        self.fill = fill

    def __call__(self, block: np.ndarray | list, n: int) -> np.ndarray:
        X = _as_numbers(block)
        missing = np.isnan(X)
        if missing.any():
            np.copyto(X, self.fill, where=missing)
        return X


class _ValueImpute:
    """Imputation of object (string) columns: None or NaN -> the fitted value."""

    short = "impute"

    def __init__(self, fill: list) -> None:
        self.fill = fill

    def __call__(self, block: np.ndarray | list, n: int) -> list:
        return [
            [f if v is None or v != v else v for v in col]
            for col, f in zip(_as_columns(block), self.fill, strict=True)
        ]


class _Scale:
    short = "scale"

    def __init__(self, mean: np.ndarray | None, scale: np.ndarray | None) -> None:
        self.mean = mean
        self.scale = scale

    def __call__(self, block: np.ndarray | list, n: int) -> np.ndarray:
        X = _as_numbers(block)
        if self.mean is not None:
            X -= self.mean
        if self.scale is not None:
            X /= self.scale
        return X


class _OneHot:
    """Category -> output column by dict lookup; unknown -> all zeros (or an error)."""

    short = "one-hot"

    def __init__(
        self,
        tables: list[dict[Any, int]],
        missing: list[int | None],
        offsets: list[int],
        width: int,
        error_on_unknown: bool,
        names: list[str],
    ) -> None:
        self.tables = tables
        self.missing = missing  # output index of the missing-value category, if fitted
        self.offsets = offsets
        self.width = width
        self.error_on_unknown = error_on_unknown
        self.names = names  # for error messages: the input column of each feature

    def __call__(self, block: np.ndarray | list, n: int) -> np.ndarray:
        width = self.width
        X = np.zeros((n, width))
        hits = []
        for j, col in enumerate(_as_columns(block)):
            table, offset = self.tables[j], self.offsets[j]
            for i, v in enumerate(col):
                try:
                    k = table.get(v)
                except TypeError:  # unhashable
                    k = None
                if k is None:
                    if v is None or v != v:
                        k = self.missing[j]
                    if k is None:
                        if self.error_on_unknown:
                            raise ValueError(f"unknown category {v!r} in column {self.names[j]!r}")
                        continue
                if k >= 0:  # -1: the dropped category
                    hits.append(i * width + offset + k)
        if hits:
            X.reshape(-1)[hits] = 1.0
        return X


class _Weight:
    short = "weight"

    def __init__(self, weight: float) -> None:
        self.weight = weight

    def __call__(self, block: np.ndarray | list, n: int) -> np.ndarray:
        X = _as_numbers(block)
        X *= self.weight
        return X


class _Branch:
    """One ColumnTransformer entry: its input columns and steps, numbers out."""

    def __init__(self, name: str, inputs: list[str], steps: list, width: int) -> None:
        self.name = name
        self.inputs = inputs
        self.steps = steps
        self.width = width

    @property
    def may_be_missing(self) -> bool:
        """Missing input values can reach the output: nothing imputes or encodes them."""
        return not any(isinstance(s, _NumberImpute | _ValueImpute | _OneHot) for s in self.steps)

    def __call__(self, columns: Mapping[str, Sequence], n: int) -> np.ndarray:
        block: np.ndarray | list = [columns[c] for c in self.inputs]
        for step in self.steps:
            block = step(block, n)
        return _as_numbers(block)

    @property
    def summary(self) -> str:
        ops = "+".join(dict.fromkeys(s.short for s in self.steps)) or "passthrough"
        return f"{ops} {len(self.inputs)} {self.name}"


class _Affine:
    """X @ coef + intercept: a linear model's decision values (rows, k), or one value per
    row for a 1-D coef."""

    def __init__(self, coef: np.ndarray, intercept: Any, check_nan: bool) -> None:
        self.weights = np.ascontiguousarray(coef.T, dtype=float)  # (features,) or (features, k)
        self.intercept = intercept
        self.check_nan = check_nan  # a missing value may reach it: refuse, as sklearn does

    def __call__(self, X: np.ndarray) -> np.ndarray:
        if self.check_nan and np.isnan(X).any():
            raise ValueError("Input X contains NaN: a missing value reached the estimator")
        z = X @ self.weights
        z += self.intercept
        return z


class _LinearRegression(_Affine):
    """A single-target linear regressor: its affine map is the prediction, one value per
    row."""


class _LogisticRegression(_Affine):
    """sklearn 1.9: binary -> expit of the one decision value; else softmax."""

    def __init__(
        self, coef: np.ndarray, intercept: np.ndarray, binary: bool, check_nan: bool
    ) -> None:
        super().__init__(coef, intercept, check_nan)
        self.binary = binary

    def __call__(self, X: np.ndarray) -> np.ndarray:
        z = super().__call__(X)
        if self.binary:
            # expit(z) = 1 / (1 + e^-z), written so a large |z| cannot overflow
            p = np.exp(-np.logaddexp(0.0, -z[:, 0]))
            out = np.empty((len(p), 2))
            out[:, 1] = p
            out[:, 0] = 1.0 - p
            return out
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z


class _Estimator:
    """Any other classifier: its own predict_proba on the plan's numpy output."""

    def __init__(self, estimator: Any, sparse: bool) -> None:
        self.estimator = estimator
        self.sparse = sparse  # the ColumnTransformer handed it a sparse matrix

    def _input(self, X: np.ndarray) -> Any:
        if self.sparse:
            from scipy import sparse

            return sparse.csr_matrix(X)
        return X

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.estimator.predict_proba(self._input(X)), dtype=float)


class _Regressor(_Estimator):
    """Any other regressor: its own predict on the plan's numpy output."""

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return _one_value_per_row(self.estimator.predict(self._input(X)))


def _one_value_per_row(predicted: Any) -> np.ndarray:
    """A single-target prediction as a 1-D float array (some regressors give (n, 1))."""
    values = np.asarray(predicted, dtype=float)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise ValueError(f"predicted shape {values.shape}: not one value per row")
    return values


_Head = _LogisticRegression | _Estimator | _LinearRegression


class CompiledModel:
    """The plan: columnar input -> class probabilities, in `classes` order (a
    classifier's), or -> one value per row (a regressor's: `classes` empty)."""

    def __init__(
        self,
        columns: list[str],
        branches: list[_Branch],
        post: list,
        head: _Head,
        classes: list[str],
        description: str,
        unknown_ignored: list[str],
        given: list[str],
    ) -> None:
        self.columns = tuple(columns)  # the input columns the plan reads
        self.classes = list(classes)
        self.task = (
            "regression" if isinstance(head, _LinearRegression | _Regressor) else ("classification")
        )
        self.estimator_compiled = isinstance(head, _LogisticRegression | _LinearRegression)
        self.description = description
        # columns whose unknown categories encode as all zeros (verification edge rows)
        self.unknown_ignored = tuple(unknown_ignored)
        self._given = tuple(given)  # the pipeline's input columns, dropped ones included
        self._branches = branches
        self._post = post
        self._head = head

    def __repr__(self) -> str:
        return f"CompiledModel({self.description})"

    def predict_proba(self, columns: Mapping[str, Sequence]) -> np.ndarray:
        """Probabilities, shape (n, n_classes), for n rows given column by column."""
        if self.task != "classification":
            raise TypeError("a regressor's plan has no probabilities: call predict_values")
        return self._run(columns, (len(self.classes),))

    def predict_values(self, columns: Mapping[str, Sequence]) -> np.ndarray:
        """A regressor's predicted values, shape (n,), for n rows given column by column."""
        if self.task != "regression":
            raise TypeError("a classifier's plan predicts classes: call predict_proba")
        return self._run(columns, ())

    def _run(self, columns: Mapping[str, Sequence], shape: tuple[int, ...]) -> np.ndarray:
        n = -1
        for name in self.columns:
            try:
                size = len(columns[name])
            except KeyError:
                raise ValueError(f"missing column {name!r}") from None
            except TypeError:
                raise ValueError(f"column {name!r} must be a sequence of values") from None
            if n < 0:
                n = size
            elif size != n:
                raise ValueError(f"column {name!r} has {size} values, expected {n}")
        if n <= 0:
            return np.empty((0, *shape))
        blocks = [branch(columns, n) for branch in self._branches]
        X = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)
        for step in self._post:
            X = _as_numbers(step(X, n))
        return self._head(X)

    def predict(self, columns: Mapping[str, Sequence]) -> list[str] | list[float]:
        """The most probable class of each row (the first on a tie, as argmax), or a
        regressor's predicted values."""
        if self.task == "regression":
            values: list[float] = self.predict_values(columns).tolist()
            return values
        return [self.classes[i] for i in np.argmax(self.predict_proba(columns), axis=1)]


# --- compiling -----------------------------------------------------------------


def _compile_steps(t: Any, path: list[str], width: int) -> tuple[list, int]:
    """The plan steps of one transformer (or nested Pipeline) and its output width."""
    if t is None or (isinstance(t, str) and t == "passthrough"):
        return [], width
    if isinstance(t, Pipeline):
        steps: list = []
        for name, step in t.steps:
            more, width = _compile_steps(step, [*path, name], width)
            steps += more
        return steps, width
    if isinstance(t, FunctionTransformer):
        # what a fitted ColumnTransformer makes of "passthrough": the identity
        if t.func is None:
            return [], width
        raise UnsupportedModel("FunctionTransformer with a function is not supported", path)
    if isinstance(t, SimpleImputer):
        return [_compile_imputer(t, path, width)], width
    if isinstance(t, StandardScaler):
        mean = np.asarray(t.mean_, dtype=float) if t.with_mean else None
        scale = np.asarray(t.scale_, dtype=float) if t.with_std else None
        if t.n_features_in_ != width:
            raise UnsupportedModel(f"StandardScaler expects {t.n_features_in_} columns", path)
        return ([_Scale(mean, scale)] if t.with_mean or t.with_std else []), width
    if isinstance(t, OneHotEncoder):
        step = _compile_onehot(t, path, width)
        return [step], step.width
    if isinstance(t, ColumnTransformer):
        raise UnsupportedModel("a nested ColumnTransformer is not supported", path)
    raise UnsupportedModel(f"{type(t).__name__} is not supported", path)


def _compile_imputer(t: SimpleImputer, path: list[str], width: int) -> Any:
    if t.add_indicator:
        raise UnsupportedModel("SimpleImputer(add_indicator=True) is not supported", path)
    stats = np.asarray(t.statistics_)
    if len(stats) != width:
        raise UnsupportedModel(f"SimpleImputer expects {len(stats)} columns, not {width}", path)
    if not t.keep_empty_features and any(_is_missing(v) for v in stats.tolist()):
        raise UnsupportedModel("SimpleImputer drops a column that had no values at fit time", path)
    missing = t.missing_values
    fit_dtype = imputer_fit_dtype(t)
    if fit_dtype is None:
        raise UnsupportedModel("cannot tell what dtype the SimpleImputer was fitted on", path)
    if fit_dtype.kind == "O":
        if not _is_missing(missing):
            raise UnsupportedModel(
                f"SimpleImputer(missing_values={missing!r}) is not supported (NaN/None)", path
            )
        return _ValueImpute(stats.tolist())
    if not (isinstance(missing, float) and math.isnan(missing)):
        raise UnsupportedModel(
            f"SimpleImputer(missing_values={missing!r}) is not supported on numbers (NaN)",
            path,
        )
    return _NumberImpute(stats.astype(float))


def _compile_onehot(t: OneHotEncoder, path: list[str], width: int) -> _OneHot:
    # public: defined exactly when min_frequency or max_categories enables grouping
    if hasattr(t, "infrequent_categories_"):
        raise UnsupportedModel("OneHotEncoder infrequent categories are not supported", path)
    if len(t.categories_) != width:
        raise UnsupportedModel(f"OneHotEncoder expects {len(t.categories_)} columns", path)
    drop = t.drop_idx_
    tables, missing, offsets = [], [], []
    offset = 0
    for j, cats in enumerate(t.categories_):
        dropped = None if drop is None or drop[j] is None else int(drop[j])
        table: dict[Any, int] = {}
        miss: int | None = None
        missing_seen = 0
        for k, cat in enumerate(cats.tolist()):
            out = -1 if k == dropped else k - (dropped is not None and k > dropped)
            if _is_missing(cat):
                miss, missing_seen = out, missing_seen + 1
            else:
                table[cat] = out
        if missing_seen > 1:
            raise UnsupportedModel("OneHotEncoder categories hold both None and NaN", path)
        tables.append(table)
        missing.append(miss)
        offsets.append(offset)
        offset += len(cats) - (dropped is not None)
    try:
        # public: one output name per output column, after drop (and grouping)
        encoder_width = len(t.get_feature_names_out())
    except (TypeError, ValueError) as exc:  # e.g. a feature_name_combiner that fails
        raise UnsupportedModel(f"cannot count the OneHotEncoder's outputs: {exc}", path) from None
    if offset != encoder_width:
        raise UnsupportedModel("OneHotEncoder output width does not add up", path)
    return _OneHot(
        tables,
        missing,
        offsets,
        offset,
        error_on_unknown=t.handle_unknown == "error",
        names=[],  # set by the branch, which knows its input columns
    )


def _compile_column_transformer(
    ct: ColumnTransformer, name: str, columns: list[str]
) -> tuple[list[_Branch], int, list[str]]:
    if transform_output(ct) != "default":
        raise UnsupportedModel("ColumnTransformer.set_output(...) is not supported", [name])
    indices = column_transformer_input_indices(ct)
    if indices is None:
        raise UnsupportedModel("cannot resolve the ColumnTransformer's columns", [name])
    names_in = getattr(ct, "feature_names_in_", None)
    if names_in is not None:
        names = list(names_in)
    elif ct.n_features_in_ == len(columns):
        names = list(columns)
    else:
        raise UnsupportedModel(
            f"fitted on {ct.n_features_in_} unnamed columns, given {len(columns)}", [name]
        )
    weights = ct.transformer_weights or {}
    branches: list[_Branch] = []
    unknown_ignored: list[str] = []
    offset = 0
    for branch_name, trans, selection in ct.transformers_:
        if isinstance(trans, str) and trans == "drop":
            continue
        inputs = [names[i] for i in indices[branch_name]]
        if not inputs:
            continue
        path = [name, branch_name]
        if np.isscalar(selection):
            raise UnsupportedModel("a 1-D (scalar) column selection is not supported", path)
        unknown = [c for c in inputs if c not in columns]
        if unknown:
            raise UnsupportedModel(f"reads columns not among the model's: {unknown}", path)
        steps, width = _compile_steps(trans, path, len(inputs))
        for step in steps:
            if isinstance(step, _OneHot):
                step.names = list(inputs)
                if not step.error_on_unknown:
                    unknown_ignored += inputs
        weight = weights.get(branch_name)
        if weight is not None:
            steps.append(_Weight(float(weight)))
        out = ct.output_indices_[branch_name]
        if (out.start, out.stop) != (offset, offset + width):
            raise UnsupportedModel(
                f"output columns {out.start}:{out.stop}, the plan makes {offset}:{offset + width}",
                path,
            )
        offset += width
        branches.append(_Branch(branch_name, inputs, steps, width))
    if not branches:
        raise UnsupportedModel("the ColumnTransformer outputs no columns", [name])
    return branches, offset, list(dict.fromkeys(unknown_ignored))


def compile_model(pipeline: Any, columns: Sequence[str]) -> CompiledModel:
    """The numpy plan of a fitted Pipeline(ColumnTransformer, ..., classifier or
    regressor): a regressor by scikit-learn's tags, a classifier with predict_proba.

    Raises UnsupportedModel, naming the step, for anything the plan cannot reproduce.
    """
    columns = list(columns)
    if not isinstance(pipeline, Pipeline):
        raise UnsupportedModel(
            f"the model is a {type(pipeline).__name__}, not a Pipeline starting with a "
            "ColumnTransformer"
        )
    try:
        check_is_fitted(pipeline)
    except NotFittedError:
        raise UnsupportedModel("the pipeline is not fitted") from None
    *transforms, (est_name, estimator) = pipeline.steps
    regressor = is_regressor(estimator)
    if not regressor and not hasattr(estimator, "predict_proba"):
        raise UnsupportedModel(
            f"{type(estimator).__name__} is no regressor and has no predict_proba", [est_name]
        )
    transforms = [(n, t) for n, t in transforms if not (t is None or t == "passthrough")]
    if not transforms or not isinstance(transforms[0][1], ColumnTransformer):
        first, what = transforms[0] if transforms else (est_name, estimator)
        raise UnsupportedModel(
            f"{type(what).__name__} where the plan needs a ColumnTransformer first", [first]
        )
    ct_name, ct = transforms[0]
    branches, width, unknown_ignored = _compile_column_transformer(ct, ct_name, columns)
    post: list = []
    for step_name, step in transforms[1:]:
        more, width = _compile_steps(step, [step_name], width)
        post += more

    if hasattr(estimator, "feature_names_in_"):
        raise UnsupportedModel(
            f"{type(estimator).__name__} was fitted with feature names", [est_name]
        )
    if getattr(estimator, "n_features_in_", width) != width:
        raise UnsupportedModel(
            f"{type(estimator).__name__} expects {estimator.n_features_in_} features, "
            f"the plan makes {width}",
            [est_name],
        )
    check_nan = any(b.may_be_missing for b in branches) and not any(
        isinstance(s, _NumberImpute) for s in post
    )
    head: _Head
    if regressor:
        head = _regression_head(estimator, est_name, check_nan, ct)
    elif type(estimator) is LogisticRegression:
        coef = estimator.coef_
        coef = np.asarray(coef.toarray() if hasattr(coef, "toarray") else coef, dtype=float)
        n_classes = len(estimator.classes_)
        binary = n_classes == 2
        if coef.shape[0] != (1 if binary else n_classes):
            raise UnsupportedModel(f"LogisticRegression coef_ shape {coef.shape}", [est_name])
        intercept = np.asarray(estimator.intercept_, dtype=float).reshape(-1)
        head = _LogisticRegression(coef, intercept, binary, check_nan)
    else:
        head = _Estimator(estimator, sparse=bool(getattr(ct, "sparse_output_", False)))

    read = {c for b in branches for c in b.inputs}
    parts = ", ".join(b.summary for b in branches)
    after = "".join(f" -> {s.short}" for s in post)
    runs = "numpy" if isinstance(head, _LogisticRegression | _LinearRegression) else "scikit-learn"
    description = (
        f"numpy plan: {parts} ({width} features){after} -> {type(estimator).__name__} ({runs})"
    )
    return CompiledModel(
        columns=[c for c in columns if c in read],
        branches=branches,
        post=post,
        head=head,
        classes=[] if regressor else [str(c) for c in pipeline.classes_],
        description=description,
        unknown_ignored=unknown_ignored,
        given=columns,
    )


def _regression_head(
    estimator: Any, name: str, check_nan: bool, ct: ColumnTransformer
) -> _LinearRegression | _Regressor:
    """A linear regressor's affine map in numpy, else the regressor itself on numpy."""
    if type(estimator) not in LINEAR_REGRESSORS:
        return _Regressor(estimator, sparse=bool(getattr(ct, "sparse_output_", False)))
    coef = estimator.coef_
    coef = np.asarray(coef.toarray() if hasattr(coef, "toarray") else coef, dtype=float)
    intercept = np.asarray(estimator.intercept_, dtype=float).reshape(-1)
    if coef.ndim == 2 and coef.shape[0] == 1:  # fitted on a one-column 2-D target
        coef = coef[0]
    if coef.ndim != 1 or len(intercept) != 1:
        raise UnsupportedModel(
            f"{type(estimator).__name__} coef_ shape {coef.shape}: only a single target",
            [name],
        )
    return _LinearRegression(coef, float(intercept[0]), check_nan)


# --- verification --------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    ok: bool
    rows: int
    max_abs_diff: float
    label_mismatches: int
    message: str


def to_columns(frame: pd.DataFrame, columns: Sequence[str]) -> dict[str, list]:
    """A frame as the service's columnar input: lists of values, None for missing."""
    import pandas as pd

    out: dict[str, list] = {}
    for c in columns:
        series = frame[c]
        if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(
            series.dtype
        ):
            values = series.to_numpy(dtype=float, na_value=np.nan).tolist()
            out[c] = [None if v != v else v for v in values]
        else:
            out[c] = [None if _is_scalar_na(v) else v for v in series.tolist()]
    return out


def _is_scalar_na(value: Any) -> bool:
    import pandas as pd

    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or array in a cell
        return False


def _edge_rows(compiled: CompiledModel, template: pd.DataFrame) -> list[pd.DataFrame]:
    """One-row frames: all missing, each column missing alone, unknown categories.

    Missing categoricals are NaN in an object column (as in the training data), which
    every SimpleImputer treats as missing.
    """
    import pandas as pd

    columns = list(template.columns)
    base = template.iloc[0]
    numeric = {
        c
        for c in columns
        if pd.api.types.is_numeric_dtype(template[c].dtype)
        and not pd.api.types.is_bool_dtype(template[c].dtype)
    }

    def row(**changes: Any) -> pd.DataFrame:
        values = {c: changes.get(c, base[c]) for c in columns}
        return pd.DataFrame(
            {
                c: pd.Series(
                    [np.nan if _is_scalar_na(v) else v],
                    dtype=float if c in numeric else object,
                )
                for c, v in values.items()
            }
        )

    rows = [row(**dict.fromkeys(columns, np.nan))]
    rows += [row(**{c: np.nan}) for c in columns]
    unknown = [c for c in compiled.unknown_ignored if c not in numeric]
    rows += [row(**{c: UNKNOWN_CATEGORY}) for c in unknown]
    if len(unknown) > 1:
        rows.append(row(**dict.fromkeys(unknown, UNKNOWN_CATEGORY)))
    return rows


def verify(
    compiled: CompiledModel,
    pipeline: Any,
    frames: Sequence[pd.DataFrame],
    atol: float = 1e-5,
) -> Verification:
    """Compare the plan with `pipeline` on every row of `frames` plus edge rows.

    A classifier's probabilities must agree within `atol` and labels must be equal: the
    plan's argmax against `pipeline.predict` (or, where scikit-learn's own predict and
    argmax differ on a tie, against its argmax, which is what the service returns). A
    regressor's values must agree within `atol` x max(1, |value|): absolute for small
    values, relative for large ones (the same affine map summed in another order
    differs in its last bits, whatever the target's scale); `max_abs_diff` is still the
    largest absolute difference. Edge rows are built from the first row of the first
    non-empty frame; on those, both failing is agreement.
    """
    regression = compiled.task == "regression"
    columns = list(compiled._given)
    frames = [f for f in frames if len(f)]
    pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    errors: list[str] = []
    held_out = edge = 0
    try:
        for frame in frames:
            X = frame[columns]
            pairs.append(_compare(compiled, pipeline, X))
            held_out += len(X)
    except Exception as exc:  # the plan or the pipeline failing is a failed check
        errors.append(f"held-out rows: {type(exc).__name__}: {exc}")
    if frames and not errors:
        for X in _edge_rows(compiled, frames[0][columns]):
            try:
                with warnings.catch_warnings():
                    # e.g. OneHotEncoder(handle_unknown="warn") on the unknown category
                    warnings.simplefilter("ignore", UserWarning)
                    expected = _reference(compiled, pipeline, X)
            except Exception:
                expected = None
            try:
                got = _plan_output(compiled, to_columns(X, columns))
            except Exception as exc:
                if expected is not None:
                    errors.append(f"edge row {X.iloc[0].to_dict()}: {exc}")
                continue
            if expected is None:
                errors.append(f"edge row {X.iloc[0].to_dict()}: plan answered, sklearn failed")
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                pairs.append(_compare(compiled, pipeline, X, got=got, expected=expected))
            edge += 1

    rows = held_out + edge
    max_diff = 0.0
    max_scaled = 0.0  # the figure held against atol
    mismatches = 0
    for got, expected, labels, expected_labels in pairs:
        if got.shape != expected.shape:
            errors.append(f"shape {got.shape} != scikit-learn's {expected.shape}")
            continue
        if not got.size:
            continue
        diff = np.abs(got - expected)
        # both missing (NaN) is agreement only for a regressor that predicts NaN itself
        same_nan = np.isnan(got) & np.isnan(expected) if regression else np.zeros(diff.shape, bool)
        diff[np.isnan(diff) & ~same_nan] = np.inf
        diff[same_nan] = 0.0
        max_diff = max(max_diff, float(diff.max()))
        scaled = diff / np.maximum(1.0, np.abs(np.nan_to_num(expected))) if regression else diff
        max_scaled = max(max_scaled, float(scaled.max()))
        mismatches += int(np.sum(labels != expected_labels))

    ok = not errors and rows > 0 and mismatches == 0 and max_scaled <= atol
    tolerance = f"{atol:g} x max(1, |value|)" if regression else f"{atol:g}"
    counted = f"{rows} rows ({held_out} held-out + {edge} edge)"
    if not frames:
        message = "no rows to verify on"
    elif errors:
        message = f"failed on {counted}: {errors[0]}"
    elif ok and regression:
        message = f"matches scikit-learn on {counted}: max value diff {max_diff:.1e}"
    elif ok:
        message = f"matches scikit-learn on {counted}: max prob diff {max_diff:.1e}, labels equal"
    elif regression:
        message = (
            f"differs from scikit-learn on {counted}: "
            f"max value diff {max_diff:.2g} (tolerance {tolerance})"
        )
    else:
        message = (
            f"differs from scikit-learn on {counted}: {mismatches} label mismatches, "
            f"max prob diff {max_diff:.2g} (tolerance {tolerance})"
        )
    return Verification(
        ok=ok, rows=rows, max_abs_diff=max_diff, label_mismatches=mismatches, message=message
    )


def _reference(compiled: CompiledModel, pipeline: Any, X: pd.DataFrame) -> np.ndarray:
    """What scikit-learn answers, that the plan must match: probabilities or values."""
    if compiled.task == "regression":
        return _one_value_per_row(pipeline.predict(X))
    return np.asarray(pipeline.predict_proba(X))


def _plan_output(compiled: CompiledModel, columns: Mapping[str, Sequence]) -> np.ndarray:
    if compiled.task == "regression":
        return compiled.predict_values(columns)
    return compiled.predict_proba(columns)


def _compare(
    compiled: CompiledModel,
    pipeline: Any,
    X: pd.DataFrame,
    got: np.ndarray | None = None,
    expected: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(plan output, sklearn output, plan labels, accepted labels) on one frame; a
    regressor has no labels (empty arrays: nothing to mismatch)."""
    if expected is None:
        expected = _reference(compiled, pipeline, X)
    if got is None:
        got = _plan_output(compiled, to_columns(X, compiled.columns))
    if compiled.task == "regression":
        none = np.empty(0, dtype=object)
        return got, expected, none, none
    classes = np.asarray(compiled.classes, dtype=object)
    predicted = np.asarray([str(v) for v in pipeline.predict(X)], dtype=object)
    argmax = classes[np.argmax(expected, axis=1)]
    labels = classes[np.argmax(got, axis=1)] if got.shape == expected.shape else argmax
    # sklearn's predict may break a tie differently from argmax; either is fine
    accepted = np.where(labels == argmax, argmax, predicted)
    return got, expected, labels, accepted


def compile_and_verify(
    pipeline: Any,
    columns: Sequence[str],
    frames: Sequence[pd.DataFrame],
    atol: float = 1e-5,
) -> tuple[CompiledModel | None, dict[str, Any]]:
    """The plan when it compiles and verifies, else None; and a JSON-ready report.

    The report says whether the plan is served ("compiled"), why not ("reason"), and
    one line for a person ("message"), plus the verification's figures when it ran.
    """
    try:
        compiled = compile_model(pipeline, columns)
    except Exception as exc:  # UnsupportedModel, or a model no step anticipated
        reason = (
            str(exc)
            if isinstance(exc, UnsupportedModel)
            else (f"cannot compile: {type(exc).__name__}: {exc}")
        )
        return None, {
            "compiled": False,
            "reason": reason,
            "message": f"serving with scikit-learn: {reason}",
        }
    check = verify(compiled, pipeline, frames, atol=atol)
    report: dict[str, Any] = {
        "compiled": check.ok,
        "task": compiled.task,
        "estimator_compiled": compiled.estimator_compiled,
        "description": compiled.description,
        "rows": check.rows,
        "max_abs_diff": check.max_abs_diff if math.isfinite(check.max_abs_diff) else None,
        "label_mismatches": check.label_mismatches,
        "atol": atol,
    }
    if check.ok:
        report["message"] = f"serving the compiled plan: {check.message}"
        return compiled, report
    report["reason"] = f"verification failed: {check.message}"
    report["message"] = f"serving with scikit-learn: {report['reason']}"
    return None, report
