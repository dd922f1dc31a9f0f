"""scikit-learn, nbship's compiled numpy plan and onnxruntime (the model converted by
skl2onnx) on the same fitted models, measured in one run.

    uv sync --locked --inexact --group bench-onnx
    nice -n 10 uv run --group bench-onnx python -m benchmarks.onnx_compare [--seconds 1.0]

Models: the example's five candidates on penguins (`training.build_candidate`), a Ridge
and a HistGradientBoostingRegressor on `sklearn.datasets:load_diabetes` (behind the same
impute + scale ColumnTransformer), and a Pipeline whose first step is a transformer class
of the project's own (`BillRatio`, defined here).

ONNX input is what skl2onnx documents for a ColumnTransformer on a DataFrame: one input
per column, FloatTensorType([None, 1]) for numbers (NaN = missing), StringTensorType for
categories, the classifier's ZipMap off. skl2onnx cannot convert a SimpleImputer on
strings whose missing value is NaN (the example's categorical imputer); where that is the
only failure, the model is converted again from a copy whose string imputers' missing
value is "" (scikit-learn's fitted model is unchanged), and the caller feeds "" for a
missing category: the "adapted" conversion, checked against scikit-learn like any other.

Agreement is checked on the same rows for the plan and ONNX: held-out test and golden
rows plus edge rows (all missing, each column missing, an unknown category), with the rule
of `compiled.verify`: classification max |prob diff| <= 1e-5 and argmax labels equal,
regression |diff| <= 1e-5 x max(1, |value|). Edge rows scikit-learn itself rejects are
skipped.

Speed: each path from its own ready input (a DataFrame for scikit-learn, a dict of lists
for the plan, a dict of (n, 1) arrays for onnxruntime); one-row latency is the p50 of
single calls, also "from records" (shaping the validated request records is included);
batch throughput is 1,000 rows per call (median call). Ratios are x faster than
scikit-learn in the same run (> 1 is faster). One thread each: threadpoolctl limits
scikit-learn's BLAS/OpenMP, onnxruntime gets intra_op = inter_op = 1 thread.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from nbship.pipeline import data, training
from nbship.serving.compiled import compile_and_verify, to_columns

from .compiled import FEATURES, HYPERPARAMS

ATOL = 1e-5
UNKNOWN = "\x00unknown-category"


class BillRatio(BaseEstimator, TransformerMixin):
    """A project's own transformer: adds bill_length / bill_depth as a column."""

    def fit(self, X: pd.DataFrame, y: Any = None) -> BillRatio:
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        X = X.copy()
        X["bill_ratio"] = X["bill_length_mm"] / X["bill_depth_mm"]
        return X


@dataclass
class Case:
    name: str
    model: Any
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    train: pd.DataFrame
    target: str
    held_out: list[pd.DataFrame]
    regression: bool = False
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]


def numeric_preprocess(columns: list[str]) -> ColumnTransformer:
    return ColumnTransformer(
        [
            (
                "numeric",
                Pipeline(
                    [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
                ),
                columns,
            )
        ]
    )


def cases() -> list[Case]:
    parts = data.split(
        data.load_source("palmerpenguins:load_penguins"),
        "species",
        test_size=0.25,
        golden_size=24,
        seed=42,
    )
    num, cat = FEATURES.numeric, FEATURES.categorical
    out = [
        Case(
            name,
            training.build_candidate(name, FEATURES, HYPERPARAMS.get(name)),
            num,
            cat,
            parts.train,
            "species",
            [parts.test, parts.golden],
        )
        for name in ("logreg", "forest", "knn", "hist_gb", "baseline")
    ]
    custom_ct = training.build_candidate("logreg", FEATURES).steps[0][1]
    custom_ct.transformers[0] = (
        "numeric",
        custom_ct.transformers[0][1],
        [*num, "bill_ratio"],
    )
    custom = Pipeline(
        [("ratio", BillRatio()), ("preprocess", custom_ct), ("model", LogisticRegression())]
    )
    out.append(Case("custom", custom, num, cat, parts.train, "species", [parts.test, parts.golden]))

    diabetes = data.load_source("sklearn.datasets:load_diabetes")
    dcols = tuple(c for c in diabetes.columns if c != "target")
    dtrain, dtest = train_test_split(diabetes, test_size=0.25, random_state=42)
    for name, est in (
        ("ridge", Ridge(alpha=1.0)),
        ("hgb_reg", HistGradientBoostingRegressor(max_iter=100, random_state=0)),
    ):
        model = Pipeline([("preprocess", numeric_preprocess(list(dcols))), ("model", est)])
        out.append(Case(name, model, dcols, (), dtrain, "target", [dtest], regression=True))
    return out


# --- scikit-learn's answer and the agreement rule ------------------------------


def sk_output(case: Case, X: pd.DataFrame) -> np.ndarray:
    if case.regression:
        return np.asarray(case.model.predict(X), dtype=float).reshape(-1)
    return np.asarray(case.model.predict_proba(X), dtype=float)


def edge_rows(case: Case) -> list[pd.DataFrame]:
    base = case.held_out[0][case.columns].iloc[[0]].reset_index(drop=True)

    def row(**changes: Any) -> pd.DataFrame:
        r = base.copy()
        for c, v in changes.items():
            r[c] = pd.Series([v], dtype=float if c in case.numeric else object)
        return r

    rows = [row(**dict.fromkeys(case.columns, np.nan))]
    rows += [row(**{c: np.nan}) for c in case.columns]
    rows += [row(**{c: UNKNOWN}) for c in case.categorical]
    return rows


def eval_frames(case: Case) -> list[pd.DataFrame]:
    """Held-out frames and the edge rows scikit-learn answers, each with its answer."""
    frames = [f[case.columns].reset_index(drop=True) for f in case.held_out]
    for X in edge_rows(case):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sk_output(case, X)
        except Exception:
            continue
        frames.append(X)
    return frames


def agreement(case: Case, run: Callable[[pd.DataFrame], np.ndarray]) -> tuple[bool, float, str]:
    """(agrees, max abs diff, first failure) of `run` against scikit-learn."""
    worst, worst_scaled, mismatches = 0.0, 0.0, 0
    for X in case.results["eval"]:
        expected = sk_output(case, X)
        try:
            got = np.asarray(run(X), dtype=float)
        except Exception as exc:
            return False, float("nan"), f"fails on {len(X)} rows: {one_line(exc)}"
        got = got.reshape(expected.shape) if got.size == expected.size else got
        if got.shape != expected.shape:
            return False, float("nan"), f"shape {got.shape} != {expected.shape}"
        diff = np.abs(got - expected)
        diff[np.isnan(diff)] = np.inf
        worst = max(worst, float(diff.max()))
        if case.regression:
            scaled = diff / np.maximum(1.0, np.abs(expected))
        else:
            scaled = diff
            mismatches += int(np.sum(got.argmax(axis=1) != expected.argmax(axis=1)))
        worst_scaled = max(worst_scaled, float(scaled.max()))
    ok = worst_scaled <= ATOL and mismatches == 0
    why = "" if ok else f"{mismatches} label mismatches, max diff {worst:.2g}"
    return ok, worst, why


def one_line(exc: BaseException, width: int = 150) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    if len(text) > 70 and exc.__cause__ is not None:  # e.g. a node dump: the cause says why
        text = f"{text[:45]}... <- {type(exc.__cause__).__name__}: {exc.__cause__}"
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= width else text[: width - 3] + "..."


# --- ONNX -------------------------------------------------------------------------


def string_nan_imputers_to_empty(model: Any) -> Any:
    """A copy whose string SimpleImputers treat "" as missing (skl2onnx's supported form)."""
    model = copy.deepcopy(model)
    stack = [model]
    while stack:
        m = stack.pop()
        if isinstance(m, SimpleImputer) and np.asarray(m.statistics_).dtype == object:
            m.missing_values = ""
        stack += [s for _, s in getattr(m, "steps", [])]
        stack += [t for _, t, _ in getattr(m, "transformers_", [])]
    return model


def convert(case: Case, model: Any, double: bool = False) -> Any:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType

    number = DoubleTensorType if double else FloatTensorType
    types = [(c, number([None, 1])) for c in case.numeric]
    types += [(c, StringTensorType([None, 1])) for c in case.categorical]
    options = {} if case.regression else {id(model.steps[-1][1]): {"zipmap": False}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_sklearn(model, initial_types=types, options=options)


def session(onx: Any) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(onx.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def onnx_feed(case: Case, X: pd.DataFrame, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    feed = {c: X[c].to_numpy(dtype=dtype, na_value=np.nan).reshape(-1, 1) for c in case.numeric}
    for c in case.categorical:
        values = ["" if v is None or v != v else v for v in X[c].tolist()]
        feed[c] = np.array(values, dtype=object).reshape(-1, 1)
    return feed


def onnx_feed_records(case: Case, records: list[dict]) -> dict[str, np.ndarray]:
    feed = {
        c: np.array([r[c] for r in records], dtype=np.float32).reshape(-1, 1) for c in case.numeric
    }
    for c in case.categorical:
        values = ["" if r[c] is None else r[c] for r in records]
        feed[c] = np.array(values, dtype=object).reshape(-1, 1)
    return feed


def onnx_runner(case: Case, sess: Any) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    out = sess.get_outputs()[0 if case.regression else 1].name

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        return sess.run([out], feed)[0]

    return run


def try_onnx(case: Case) -> None:
    r = case.results
    r["onnx"], r["onnx_how"] = None, ""
    try:
        onx = convert(case, case.model)
        r["onnx_how"] = "as-is"
    except Exception as exc:
        r["onnx_fail"] = one_line(exc)
        if "missing values are string" not in str(exc):
            return
        try:
            onx = convert(case, string_nan_imputers_to_empty(case.model))
            r["onnx_how"] = "adapted"
        except Exception as exc2:
            r["onnx_fail_adapted"] = one_line(exc2)
            return
    try:
        run = onnx_runner(case, session(onx))
    except Exception as exc:
        r["onnx_fail_adapted" if r["onnx_how"] == "adapted" else "onnx_fail"] = one_line(exc)
        r["onnx_how"] = ""
        return
    r["onnx"] = run
    r["onnx_ok"], r["onnx_diff"], r["onnx_why"] = agreement(case, lambda X: run(onnx_feed(case, X)))
    if not r["onnx_ok"]:
        # float32 thresholds and sums can differ from scikit-learn's float64: try doubles
        model = case.model if r["onnx_how"] == "as-is" else string_nan_imputers_to_empty(case.model)
        try:
            run64 = onnx_runner(case, session(convert(case, model, double=True)))
            ok, _, why = agreement(case, lambda X: run64(onnx_feed(case, X, np.float64)))
            r["onnx_f64"] = "agrees" if ok else why
        except Exception as exc:
            r["onnx_f64"] = one_line(exc)


# --- the plan ---------------------------------------------------------------------


def try_plan(case: Case) -> None:
    r = case.results
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan, report = compile_and_verify(case.model, case.columns, case.held_out)
    r["plan"], r["plan_report"] = plan, report
    if plan is None:
        return
    predict = plan.predict_values if case.regression else plan.predict_proba
    r["plan_run"] = predict
    r["plan_kind"] = "numpy" if plan.estimator_compiled else "prep+sk"
    r["plan_ok"], r["plan_diff"], r["plan_why"] = agreement(
        case, lambda X: predict(to_columns(X, case.columns))
    )


# --- timing -----------------------------------------------------------------------


ROUNDS = 5


def median_seconds(
    calls: dict[str, Callable[[], object]], seconds: float, least: int
) -> dict[str, float]:
    """The median seconds of one call of each, timed in interleaved rounds (the paths
    see the same load from the rest of the machine), about `seconds` per path."""
    samples: dict[str, list[float]] = {path: [] for path in calls}
    for call in calls.values():
        call()
    for _ in range(ROUNDS):
        for path, call in calls.items():
            started, n = time.perf_counter(), 0
            while n * ROUNDS < least or time.perf_counter() - started < seconds / ROUNDS:
                t0 = time.perf_counter()
                call()
                samples[path].append(time.perf_counter() - t0)
                n += 1
    return {path: statistics.median(times) for path, times in samples.items()}


def sk_frame_from_records(case: Case, records: list[dict]) -> pd.DataFrame:
    """What `serving.ModelService.frame` builds from validated records."""
    return pd.DataFrame(
        {
            c: np.array([r[c] for r in records], dtype=float)
            if c in case.numeric
            else [r[c] for r in records]
            for c in case.columns
        }
    )


def measure(case: Case, seconds: float) -> None:
    r = case.results
    pool = pd.concat([f[case.columns] for f in case.held_out], ignore_index=True)
    sk = (lambda X: case.model.predict(X)) if case.regression else case.model.predict_proba
    paths: dict[str, tuple[Callable[[Any], object], Callable[[pd.DataFrame], Any]]] = {
        "sk": (sk, lambda X: X)
    }
    if r.get("plan") is not None:
        paths["plan"] = (r["plan_run"], lambda X: to_columns(X, case.columns))
    if r.get("onnx") is not None:
        paths["onnx"] = (r["onnx"], lambda X: onnx_feed(case, X))
    shape_records = {
        "sk": lambda recs: sk_frame_from_records(case, recs),
        "plan": lambda recs: {c: [x[c] for x in recs] for c in case.columns},
        "onnx": lambda recs: onnx_feed_records(case, recs),
    }
    one = pool.iloc[[0]].reset_index(drop=True)
    batch = pool.iloc[np.arange(1000) % len(pool)].reset_index(drop=True)
    cols = to_columns(one, case.columns)
    records = [dict(zip(cols, row, strict=True)) for row in zip(*cols.values(), strict=True)]
    ones, recs, batches = {}, {}, {}
    for path, (run, prepare) in paths.items():
        x1, xb, shape = prepare(one), prepare(batch), shape_records[path]
        ones[path] = lambda run=run, x1=x1: run(x1)
        recs[path] = lambda run=run, shape=shape: run(shape(records))
        batches[path] = lambda run=run, xb=xb: run(xb)
    for path, t in median_seconds(ones, seconds, 30).items():
        r[f"{path}_p50"] = t
    for path, t in median_seconds(recs, seconds, 30).items():
        r[f"{path}_rec_p50"] = t
    for path, t in median_seconds(batches, seconds, 5).items():
        r[f"{path}_rps"] = 1000 / t


# --- report -----------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    args = parser.parse_args()
    import onnxruntime
    import skl2onnx

    started = time.perf_counter()
    with threadpool_limits(1):
        all_cases = cases()
        for case in all_cases:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                case.model.fit(case.train[case.columns], case.train[case.target])
            case.results["eval"] = eval_frames(case)
            try_plan(case)
            try_onnx(case)
            measure(case, args.seconds)

    import sklearn

    print(
        f"scikit-learn {sklearn.__version__}, skl2onnx {skl2onnx.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, numpy {np.__version__}; one thread each"
    )
    print()
    print("Coverage and agreement with scikit-learn (max |diff| of probabilities / values)")
    print(f"{'model':<9}{'rows':>5}  {'plan':<9}{'plan diff':>10}  {'onnx':<13}{'onnx diff':>10}")
    for case in all_cases:
        r = case.results
        rows = sum(len(f) for f in r["eval"])
        plan = (r["plan_kind"] if r["plan_ok"] else "DIFFERS") if r["plan"] is not None else "no"
        pdiff = f"{r['plan_diff']:.1e}" if r["plan"] is not None else "-"
        if r["onnx"] is None:
            onnx, odiff = "no", "-"
        else:
            onnx = r["onnx_how"] if r["onnx_ok"] else f"{r['onnx_how']}:DIFF"
            odiff = f"{r['onnx_diff']:.1e}"
        print(f"{case.name:<9}{rows:>5}  {plan:<9}{pdiff:>10}  {onnx:<13}{odiff:>10}")
    print()
    print("Why not (one line each)")
    for case in all_cases:
        r = case.results
        if r["plan"] is None:
            print(f"  {case.name:<9}plan: {r['plan_report'].get('reason', '')[:110]}")
        elif not r["plan_ok"]:
            print(f"  {case.name:<9}plan: {r['plan_why']}")
        if "onnx_fail" in r:
            print(f"  {case.name:<9}onnx as-is: {r['onnx_fail']}")
        if "onnx_fail_adapted" in r:
            print(f"  {case.name:<9}onnx adapted: {r['onnx_fail_adapted']}")
        if r["onnx"] is not None and not r["onnx_ok"]:
            print(f"  {case.name:<9}onnx {r['onnx_how']}: {r['onnx_why']}")
        if "onnx_f64" in r:
            print(f"  {case.name:<9}onnx {r['onnx_how']} with float64 inputs: {r['onnx_f64']}")
    print()
    print("Speed: x faster than scikit-learn in this run (> 1 is faster)")
    print(
        f"{'model':<9}{'1-row p50 us':>13}{'plan':>7}{'onnx':>7}"
        f"{'records p50 us':>16}{'plan':>7}{'onnx':>7}"
        f"{'1000 rows/s':>13}{'plan':>7}{'onnx':>7}"
    )

    def ratio(r: dict, path: str, key: str, inverse: bool) -> str:
        if f"{path}_{key}" not in r:
            return "-"
        x = r[f"sk_{key}"] / r[f"{path}_{key}"] if inverse else r[f"{path}_{key}"] / r[f"sk_{key}"]
        return f"{x:.1f}"

    for case in all_cases:
        r = case.results
        print(
            f"{case.name:<9}{r['sk_p50'] * 1e6:>13.0f}"
            f"{ratio(r, 'plan', 'p50', True):>7}{ratio(r, 'onnx', 'p50', True):>7}"
            f"{r['sk_rec_p50'] * 1e6:>16.0f}"
            f"{ratio(r, 'plan', 'rec_p50', True):>7}{ratio(r, 'onnx', 'rec_p50', True):>7}"
            f"{r['sk_rps']:>13.0f}"
            f"{ratio(r, 'plan', 'rps', False):>7}{ratio(r, 'onnx', 'rps', False):>7}"
        )
    print()
    print(f"(benchmark took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
