"""Compiled-plan benchmark: the fitted scikit-learn Pipeline's predict_proba on a
DataFrame against the compiled numpy plan's predict_proba on columnar input (a dict of
column -> list), one row and 1000 rows, both measured in the same run.

    uv run python -m benchmarks.compiled [--candidates logreg forest] [--seconds 1.0]

Rows are real penguins (with their missing values), cycled to the batch size. The
"from records" lines add what the service pays to shape validated records: a
DataFrame built column by column (as `serving.frame` does) for scikit-learn, a dict of
lists for the plan.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from nbship.pipeline import data, training
from nbship.serving.compiled import compile_and_verify, to_columns

FEATURES = training.Features(
    numeric=("bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"),
    categorical=("island", "sex"),
)
HYPERPARAMS = {
    "logreg": {"C": 1.0, "max_iter": 1000},
    "forest": {"n_estimators": 100, "max_depth": 6, "random_state": 0},
    "knn": {"n_neighbors": 7},
    "hist_gb": {"max_iter": 100, "random_state": 0},
}


def rate(call: Callable[[], object], seconds: float) -> float:
    """Calls per second: the best of three timed runs of about seconds/3 each."""
    call()
    started, n = time.perf_counter(), 0
    while time.perf_counter() - started < 0.05:  # calibrate
        call()
        n += 1
    per_run = max(1, int(n * seconds / 3 / 0.05))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(per_run):
            call()
        best = min(best, (time.perf_counter() - t0) / per_run)
    return 1.0 / best


def service_frame(records: list[dict]) -> pd.DataFrame:
    """What `serving.ModelService.frame` builds from validated records."""
    return pd.DataFrame(
        {
            c: np.array([r[c] for r in records], dtype=float)
            if c in FEATURES.numeric
            else [r[c] for r in records]
            for c in FEATURES.columns
        }
    )


def service_columns(records: list[dict]) -> dict[str, list]:
    """What a service feeding the plan would build: one list per column."""
    return {c: [r[c] for r in records] for c in FEATURES.columns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", nargs="+", default=["logreg", "forest"])
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    args = parser.parse_args()

    parts = data.split(
        data.load_source("palmerpenguins:load_penguins"),
        "species",
        test_size=0.25,
        golden_size=24,
        seed=42,
    )
    pool = parts.test[FEATURES.columns]
    batches = {n: pool.iloc[np.arange(n) % len(pool)].reset_index(drop=True) for n in (1, 1000)}

    print(f"{'model':<8}{'rows':>6}{'path':>22}{'calls/s':>11}{'rows/s':>12}{'÷ sklearn':>11}")
    for name in args.candidates:
        model = training.build_candidate(name, FEATURES, HYPERPARAMS.get(name))
        training.fit(model, parts.train, FEATURES, "species")
        plan, report = compile_and_verify(model, FEATURES.columns, [parts.test, parts.golden])
        print(f"{name}: {report['message']}")
        if plan is None:
            continue
        print(f"  {plan.description}")
        for n, frame in batches.items():
            rates = measure(model, plan, frame, args.seconds)
            for path, r in rates.items():
                floor = rates["sklearn from records" if "records" in path else "sklearn"]
                print(f"{name:<8}{n:>6}{path:>22}{r:>11.0f}{r * n:>12.0f}{r / floor:>11.2f}")


def measure(model, plan, frame: pd.DataFrame, seconds: float) -> dict[str, float]:
    """Calls per second of each path on the same rows."""
    columns = to_columns(frame, FEATURES.columns)
    records = [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]
    paths = {
        "sklearn": lambda: model.predict_proba(frame),
        "compiled": lambda: plan.predict_proba(columns),
        "sklearn from records": lambda: model.predict_proba(service_frame(records)),
        "compiled from records": lambda: plan.predict_proba(service_columns(records)),
    }
    return {path: rate(call, seconds) for path, call in paths.items()}


if __name__ == "__main__":
    main()
