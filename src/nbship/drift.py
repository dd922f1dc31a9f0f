"""Feature drift: live inputs against the training reference stored with the model.

`reference_profile` summarises the training table once, at package time, as plain JSON:
for a numeric feature its quantile bin edges, the share of rows per bin, the missing
share and a fixed-size sample of values; for a categorical feature the share of each
category and the missing share. `feature_drift` compares a window of live inputs with it:

* PSI (population stability index) over the reference bins (numeric) or categories
  (categorical), with missing values as a bin of their own and unseen categories as one
  more. Counts are smoothed by `SMOOTHING` (half a row) per bin, so an empty bin neither
  makes PSI infinite nor, in a small window, dominates it; bins empty on both sides are
  left out.
* a test of "same distribution": two-sample Kolmogorov-Smirnov against the reference
  sample (numeric, plus Fisher's exact test on the missing share) or chi-squared on the
  category counts, missing included (categorical).

A feature is flagged `drifted` when it has at least `min_rows` live rows, its PSI reaches
`psi_threshold` AND the test's p-value is below `pvalue_threshold`. Both are needed:
PSI on a small window is inflated by sampling noise alone (about 0.2 on average at 30
rows and 10 bins, under 0.1 from 100 rows), and a test on a large window calls a
negligible shift significant.

The profile also holds what the model answered on the training rows, to set live
predictions against. For a classifier, the training class shares (`classes`: the
prediction mix). For a regressor (`task` "regression"), the distribution of its
predictions on the training rows (`predictions`: a numeric feature's profile, compared
by `prediction_drift` with the same PSI and KS as a feature) and the range of the
training target (`target_range`: [min, max]; a live prediction outside it is one the
training data never backed). A profile without `task` is a classifier's (profiles made
before regression was supported).

This module imports only numpy, scipy and the standard library, so it can be shipped
into the serving bento (to publish drift gauges) without pandas.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from nbship.tasks import MAX_INFERRED_CLASSES, TASKS

if TYPE_CHECKING:  # only for annotations: pandas is not imported here
    import pandas as pd

PROFILE_VERSION = 1
DEFAULT_BINS = 10
DEFAULT_SAMPLE = 500
DEFAULT_PSI_THRESHOLD = 0.2  # the usual "significant shift" line for PSI
DEFAULT_PVALUE_THRESHOLD = 0.01
DEFAULT_MIN_ROWS = 30
SMOOTHING = 0.5  # rows added to every bin's count in PSI (the Jeffreys prior)
OTHER = "(other)"  # live categories the training data never had
MISSING = "(missing)"


# value handling -----------------------------------------------------------------------------


def _column(table: Any, name: str) -> list[Any]:
    """The values of column `name` of a DataFrame or a {column: values} mapping; a
    column the table lacks is all missing (as many rows as the table has)."""
    columns = getattr(table, "columns", None)
    if columns is not None:  # a DataFrame: its length is its row count
        return list(table[name]) if name in columns else [None] * len(table)
    if name in table:
        return list(table[name])
    return [None] * max((len(v) for v in table.values()), default=0)


def _to_float(value: Any) -> float:
    """A number as a float; anything else (None, NaN, pd.NA, a string, inf) as NaN."""
    if isinstance(value, bool):  # JSON true is not a measurement
        return math.nan
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def _numbers(values: Iterable[Any]) -> np.ndarray:
    return np.fromiter((_to_float(v) for v in values), dtype=float)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN, pd.NA (pd.NA != pd.NA is NA: raises in bool)
    except TypeError:
        return True


def _categories(values: Iterable[Any]) -> list[str | None]:
    return [None if _is_missing(v) else str(v) for v in values]


def _number(value: float) -> float | None:
    """A float for JSON: NaN (no value) as None."""
    return None if value is None or not math.isfinite(value) else float(value)


# the reference ------------------------------------------------------------------------------


def _bin_index(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """The bin of each value: bin i is (edges[i-1], edges[i]], the first and last open."""
    return np.searchsorted(np.asarray(edges, dtype=float), values, side="left")


def _numeric_profile(values: np.ndarray, bins: int, sample: int, seed: int) -> dict[str, Any]:
    present = values[~np.isnan(values)]
    n = len(values)
    summary: dict[str, float | None]
    if present.size:
        quantiles = np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1])
        # ties (integer grams, whole millimetres) collapse edges: keep each once
        edges = [float(e) for e in np.unique(quantiles)]
        counts = np.bincount(_bin_index(present, edges), minlength=len(edges) + 1)
        proportions = (counts / present.size).tolist()
        rng = random.Random(seed)
        kept = present.tolist()
        kept = sorted(rng.sample(kept, sample)) if len(kept) > sample else sorted(kept)
        summary = {
            "min": float(present.min()),
            "max": float(present.max()),
            "mean": float(present.mean()),
            "std": float(present.std()),
        }
    else:
        edges, proportions, kept = [], [1.0], []
        summary = {"min": None, "max": None, "mean": None, "std": None}
    return {
        "kind": "numeric",
        "n": n,
        "missing_share": (n - present.size) / n if n else 0.0,
        "edges": edges,
        "proportions": proportions,
        "sample": kept,
        **summary,
    }


def _categorical_profile(values: Sequence[str | None]) -> dict[str, Any]:
    n = len(values)
    present = [v for v in values if v is not None]
    counts: dict[str, int] = {}
    for value in present:
        counts[value] = counts.get(value, 0) + 1
    return {
        "kind": "categorical",
        "n": n,
        "missing_share": (n - len(present)) / n if n else 0.0,
        "proportions": {k: counts[k] / len(present) for k in sorted(counts)},
    }


def _target_task(values: Sequence[Any]) -> str:
    """The task a training target implies, as `tasks.infer` reads a column (without
    pandas): floats are numbers; integers are numbers when there are more than
    MAX_INFERRED_CLASSES distinct values; anything else (text, booleans) is classes."""
    present = [v for v in values if not _is_missing(v)]
    if not present or any(isinstance(v, bool | np.bool_) for v in present):
        return "classification"
    array = np.asarray(present)
    if array.dtype.kind == "f":
        return "regression"
    if array.dtype.kind in "iu" and len(np.unique(array)) > MAX_INFERRED_CLASSES:
        return "regression"
    return "classification"


def _predictions_task(values: Sequence[Any] | np.ndarray) -> str:
    """The task predictions imply: numbers (floats) are a regressor's; labels (text,
    integers, booleans) a classifier's."""
    array = np.asarray(list(values))
    return "regression" if array.dtype.kind == "f" else "classification"


def profile_task(profile: Mapping[str, Any] | None, default: str = "classification") -> str:
    """The task of the model a profile describes: its `task`, else "regression" when it
    holds a regressor's `predictions` or `target_range`, "classification" when it holds
    `classes`, else `default` (a profile without target: nothing says)."""
    if not profile:
        return default
    kind = profile.get("task")
    if isinstance(kind, str) and kind in TASKS:
        return kind
    if "predictions" in profile or "target_range" in profile:
        return "regression"
    if "classes" in profile:
        return "classification"
    return default


def reference_profile(
    train: pd.DataFrame | Mapping[str, Sequence[Any]],
    numeric: Sequence[str],
    categorical: Sequence[str],
    bins: int = DEFAULT_BINS,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    *,
    target: str | None = None,
    predictions: Sequence[Any] | np.ndarray | None = None,
    task: str | None = None,
) -> dict[str, Any]:
    """The training reference of each feature, as JSON-able data (see the module doc).

    `train` is a pandas DataFrame (or a {column: values} mapping). With `target`, what
    the model's answers are set against:

    * classification: the training class shares (`classes`), for the prediction mix;
    * regression: `task` "regression", `target_range` ([min, max] of the target) and,
      with `predictions` (the model's predictions on the `train` rows, in their order),
      their distribution as a numeric profile (`predictions`), for prediction drift.

    `task` ("classification" / "regression") says which; when None it is read from the
    predictions (floats: regression) or else from the target column (as `tasks.infer`
    does). The same table, arguments and seed give the same profile.
    """
    if bins < 2:
        raise ValueError("bins must be at least 2")
    if sample < 1:
        raise ValueError("sample must be at least 1")
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose from {sorted(TASKS)}")
    overlap = set(numeric) & set(categorical)
    if overlap:
        raise ValueError(f"feature(s) {sorted(overlap)} are both numeric and categorical")
    features: dict[str, Any] = {}
    for name in numeric:
        features[name] = _numeric_profile(_numbers(_column(train, name)), bins, sample, seed)
    for name in categorical:
        features[name] = _categorical_profile(_categories(_column(train, name)))
    n_rows = len(_column(train, next(iter(features)))) if features else 0
    profile: dict[str, Any] = {
        "version": PROFILE_VERSION,
        "n_rows": n_rows,
        "bins": bins,
        "seed": seed,
        "features": features,
    }
    target_values = _column(train, target) if target is not None else None
    if task is None:
        if predictions is not None:
            task = _predictions_task(predictions)
        elif target_values is not None:
            task = _target_task(target_values)
        else:
            task = "classification"
    if task == "classification":
        if target_values is not None:
            labels = [v for v in _categories(target_values) if v is not None]
            profile["target"] = target
            profile["classes"] = _categorical_profile(labels)["proportions"]
        return profile
    profile["task"] = "regression"
    if target_values is not None:
        values = _numbers(target_values)
        present = values[~np.isnan(values)]
        if not present.size:
            raise ValueError(f"target {target!r} has no numeric value: no regression target")
        profile["target"] = target
        profile["target_range"] = [float(present.min()), float(present.max())]
    if predictions is not None:
        predicted = _numbers(predictions)
        if features and len(predicted) != n_rows:
            raise ValueError(
                f"{len(predicted)} predictions for {n_rows} training rows: give one per row"
            )
        profile["predictions"] = _numeric_profile(predicted, bins, sample, seed)
    return profile


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_profile(profile: Mapping[str, Any]) -> None:
    """Raises ValueError unless `profile` is one `reference_profile` made (of either
    task)."""
    if not isinstance(profile, Mapping) or not isinstance(profile.get("features"), Mapping):
        raise ValueError("not a drift reference profile (no 'features' mapping)")
    if profile.get("version") != PROFILE_VERSION:
        raise ValueError(
            f"drift profile version {profile.get('version')!r} is not {PROFILE_VERSION}"
        )
    for name, feature in profile["features"].items():
        if not isinstance(feature, Mapping) or feature.get("kind") not in (
            "numeric",
            "categorical",
        ):
            raise ValueError(f"drift profile feature {name!r} has no kind numeric/categorical")
    if "task" in profile and profile["task"] not in TASKS:
        raise ValueError(f"drift profile task {profile['task']!r} is not one of {sorted(TASKS)}")
    if "classes" in profile and not isinstance(profile["classes"], Mapping):
        raise ValueError("drift profile 'classes' is not a {class: share} mapping")
    if "predictions" in profile:
        predicted = profile["predictions"]
        if not isinstance(predicted, Mapping) or predicted.get("kind") != "numeric":
            raise ValueError("drift profile 'predictions' is not a numeric profile")
        if not all(isinstance(predicted.get(k), list) for k in ("edges", "proportions", "sample")):
            raise ValueError("drift profile 'predictions' lacks edges/proportions/sample")
    if "target_range" in profile:
        bounds = profile["target_range"]
        if (
            not isinstance(bounds, Sequence)
            or isinstance(bounds, str)
            or len(bounds) != 2
            or not all(_is_number(b) for b in bounds)
            or bounds[0] > bounds[1]
        ):
            raise ValueError(f"drift profile 'target_range' is not [min, max]: {bounds!r}")


# comparison ---------------------------------------------------------------------------------


def psi(
    reference: Sequence[float], live: Sequence[float], smoothing: float = SMOOTHING
) -> float | None:
    """Population stability index of two count vectors over the same bins:
    sum((a - e) * ln(a / e)) over the shares of the counts plus `smoothing` each, bins
    empty on both sides left out. None when either side has no rows."""
    e = np.asarray(reference, dtype=float)
    a = np.asarray(live, dtype=float)
    if e.sum() <= 0 or a.sum() <= 0:
        return None
    keep = (e + a) > 0
    e, a = e[keep] + smoothing, a[keep] + smoothing
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def _chi2_pvalue(reference: Sequence[float], live: Sequence[float]) -> float | None:
    """p-value of chi-squared on the 2 x k table of counts (bins empty in both dropped)."""
    table = np.array([reference, live], dtype=float)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:  # everything in one bin on both sides: nothing differs
        return 1.0
    if (table.sum(axis=1) == 0).any():
        return None
    # scipy (~1 s) on first use: every nbship command imports this module (its defaults)
    from scipy import stats

    return _number(float(stats.chi2_contingency(table, correction=False).pvalue))


def _numeric_drift(feature: Mapping[str, Any], values: np.ndarray) -> dict[str, Any]:
    from scipy import stats

    n = len(values)
    present = values[~np.isnan(values)]
    missing = n - present.size
    edges = feature["edges"]
    if present.size:
        counts = np.bincount(_bin_index(present, edges), minlength=len(edges) + 1)
        live_bins = (counts / present.size).tolist()
    else:
        live_bins = [0.0] * (len(edges) + 1)
    ref_missing = float(feature["missing_share"])
    ref_n = int(feature.get("n") or 0)
    reference = [p * (1 - ref_missing) * ref_n for p in feature["proportions"]]
    reference.append(ref_missing * ref_n)
    live_counts = [p * present.size for p in live_bins] + [missing]
    sample = np.asarray(feature["sample"], dtype=float)
    ks_stat = ks_pvalue = None
    if present.size and sample.size:
        ks = stats.ks_2samp(sample, present)
        ks_stat, ks_pvalue = _number(float(ks.statistic)), _number(float(ks.pvalue))
    missing_pvalue = None
    if n and ref_n:
        ref_missing_count = round(ref_missing * ref_n)
        table = [[ref_missing_count, ref_n - ref_missing_count], [missing, present.size]]
        missing_pvalue = _number(float(stats.fisher_exact(table).pvalue))
    pvalues = [p for p in (ks_pvalue, missing_pvalue) if p is not None]
    return {
        "kind": "numeric",
        "n": n,
        "missing_share": missing / n if n else None,
        "psi": psi(reference, live_counts),
        "ks_stat": ks_stat,
        "ks_pvalue": ks_pvalue,
        "missing_pvalue": missing_pvalue,
        "pvalue": min(pvalues) if pvalues else None,
        "mean": _number(float(present.mean())) if present.size else None,
        "reference_mean": feature.get("mean"),
        "live_proportions": live_bins,
    }


def _categorical_drift(feature: Mapping[str, Any], values: list[str | None]) -> dict[str, Any]:
    n = len(values)
    reference: Mapping[str, float] = feature["proportions"]
    counts = dict.fromkeys(reference, 0)
    other: dict[str, int] = {}
    missing = 0
    for value in values:
        if value is None:
            missing += 1
        elif value in counts:
            counts[value] += 1
        else:
            other[value] = other.get(value, 0) + 1
    ref_missing = float(feature["missing_share"])
    ref_n = int(feature.get("n") or 0)
    expected = [p * (1 - ref_missing) * ref_n for p in reference.values()]
    expected += [0.0, ref_missing * ref_n]
    live_counts = [*counts.values(), sum(other.values()), missing]
    chi2_pvalue = _chi2_pvalue(expected, live_counts) if n and ref_n else None
    present = n - missing
    shares = {k: c / present for k, c in counts.items()} if present else {}
    if present and other:
        shares[OTHER] = sum(other.values()) / present
    return {
        "kind": "categorical",
        "n": n,
        "missing_share": missing / n if n else None,
        "psi": psi(expected, live_counts),
        "chi2_pvalue": chi2_pvalue,
        "pvalue": chi2_pvalue,
        "live_proportions": shares,
        "unseen": sorted(other)[:20],
    }


def _flag(
    result: dict[str, Any], min_rows: int, psi_threshold: float, pvalue_threshold: float
) -> dict[str, Any]:
    """Adds `enough_rows` and `drifted` (see the module doc) to one comparison."""
    enough = result["n"] >= min_rows
    p, shift = result["pvalue"], result["psi"]
    result["enough_rows"] = enough
    result["drifted"] = bool(
        enough
        and shift is not None
        and shift >= psi_threshold
        and p is not None
        and p < pvalue_threshold
    )
    return result


def feature_drift(
    profile: Mapping[str, Any],
    live: Mapping[str, Sequence[Any]] | pd.DataFrame,
    *,
    psi_threshold: float = DEFAULT_PSI_THRESHOLD,
    pvalue_threshold: float = DEFAULT_PVALUE_THRESHOLD,
    min_rows: int = DEFAULT_MIN_ROWS,
) -> dict[str, dict[str, Any]]:
    """The drift of each profiled feature in `live` (a DataFrame or {column: values}).

    Per feature: `kind`, `n` (live rows), `missing_share`, `psi`, `pvalue` (the test
    that decides: KS or missing-share for numeric, chi-squared for categorical) and the
    test's own fields (`ks_stat`, `ks_pvalue`, `missing_pvalue` / `chi2_pvalue`),
    `live_proportions` (per reference bin, or per category), `enough_rows` and `drifted`.
    With no live rows the statistics are None. JSON-able throughout.
    """
    check_profile(profile)
    if min_rows < 1:
        raise ValueError("min_rows must be at least 1")
    results: dict[str, dict[str, Any]] = {}
    for name, feature in profile["features"].items():
        values = _column(live, name)
        if feature["kind"] == "numeric":
            result = _numeric_drift(feature, _numbers(values))
        else:
            result = _categorical_drift(feature, _categories(values))
        results[name] = _flag(result, min_rows, psi_threshold, pvalue_threshold)
    return results


def out_of_range(
    values: Sequence[Any] | np.ndarray, bounds: Sequence[float] | None
) -> tuple[int, int]:
    """How many of the numbers in `values` lie outside [min, max] = `bounds`, and how
    many numbers there are (values that are no number count in neither)."""
    numbers = _numbers(values)
    present = numbers[~np.isnan(numbers)]
    if bounds is None or not present.size:
        return 0, int(present.size)
    low, high = float(bounds[0]), float(bounds[1])
    return int(((present < low) | (present > high)).sum()), int(present.size)


def prediction_drift(
    profile: Mapping[str, Any],
    predictions: Sequence[Any] | np.ndarray,
    *,
    psi_threshold: float = DEFAULT_PSI_THRESHOLD,
    pvalue_threshold: float = DEFAULT_PVALUE_THRESHOLD,
    min_rows: int = DEFAULT_MIN_ROWS,
) -> dict[str, Any] | None:
    """A regressor's live predictions against its predictions on the training rows
    (the profile's `predictions`), as a numeric feature's drift (`feature_drift`'s
    fields), plus `out_of_range` / `out_of_range_share`: the predictions outside the
    training target's range (`target_range`; the share None under `min_rows`
    predictions or without a range). None when the profile has neither."""
    check_profile(profile)
    if min_rows < 1:
        raise ValueError("min_rows must be at least 1")
    reference = profile.get("predictions")
    bounds = profile.get("target_range")
    if reference is None and bounds is None:
        return None
    numbers = _numbers(predictions)
    if reference is not None:
        result = _flag(
            _numeric_drift(reference, numbers), min_rows, psi_threshold, pvalue_threshold
        )
    else:
        present = numbers[~np.isnan(numbers)]
        result = {
            "kind": "numeric",
            "n": len(numbers),
            "psi": None,
            "pvalue": None,
            "mean": _number(float(present.mean())) if present.size else None,
            "reference_mean": None,
            "enough_rows": len(numbers) >= min_rows,
            "drifted": False,
        }
    outside, n = out_of_range(numbers, bounds)
    result["target_range"] = list(bounds) if bounds is not None else None
    result["out_of_range"] = outside
    result["out_of_range_share"] = outside / n if bounds is not None and n >= min_rows else None
    return result
