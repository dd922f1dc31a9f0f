"""Loading the source data, fingerprinting it and splitting it for training."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.model_selection import train_test_split

from nbship.tasks import CLASSIFICATION, Task

SOURCE_FORMS = "a .csv/.parquet path or a `module:function` returning a table"


def load_source(
    source: str, sample_rows: int | None = None, seed: int = 0, drop: Sequence[str] = ()
) -> pd.DataFrame:
    """The raw table of a source, optionally a reproducible row sample.

    A source is a .csv or .parquet file, or `module:function`: a function of an installed
    package that returns the table (e.g. `mypackage.data:load` or
    `sklearn.datasets:load_diabetes`; a scikit-learn Bunch gives its `frame`), so data a
    package ships needs no download at run time. `drop` names columns to leave out (ids,
    leaks of the target): nothing downstream sees them.
    """
    if Path(source).suffix in (".csv", ".parquet"):
        path = Path(source)
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    elif ":" in source:
        df = _call_source(source)
    else:
        raise ValueError(f"unknown data source {source!r}: use {SOURCE_FORMS}")
    missing = [c for c in drop if c not in df.columns]
    if missing:
        raise ValueError(f"data.drop names columns the data does not have: {missing}")
    df = df.drop(columns=list(drop))
    if sample_rows is not None and sample_rows < len(df):
        df = df.sample(n=sample_rows, random_state=seed).sort_index()
    return df.reset_index(drop=True)


def _call_source(source: str) -> pd.DataFrame:
    module_name, _, name = source.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"data source {source!r} cannot be loaded: {exc}") from exc
    kwargs: dict[str, Any] = {}
    try:
        if "as_frame" in inspect.signature(function).parameters:
            kwargs["as_frame"] = True  # scikit-learn's bundled sets
    except (TypeError, ValueError):
        pass
    table = function(**kwargs)
    table = getattr(table, "frame", table)
    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"data source {source!r} returned {type(table).__name__}, not a table")
    return table


def source_columns(source: str, base: Path) -> list[str]:
    """The columns of a data source without loading its rows where the format allows
    (a relative path is taken from `base`, the project folder the tasks run in)."""
    path = Path(source) if Path(source).is_absolute() else base / source
    if path.suffix == ".csv" and path.is_file():
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    if path.suffix == ".parquet" and path.is_file():
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    if path.suffix in (".csv", ".parquet"):
        raise FileNotFoundError(f"data.source: no such file {path}")
    return [str(c) for c in load_source(source).columns]


def fingerprint(df: pd.DataFrame) -> str:
    """A content hash of a table: the same rows, columns and values give the same hash."""
    digest = hashlib.sha256()
    digest.update("\x1f".join(map(str, df.columns)).encode())
    digest.update("\x1f".join(map(str, df.dtypes)).encode())
    digest.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return f"sha256:{digest.hexdigest()}"


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    test: pd.DataFrame
    golden: pd.DataFrame


def split(
    df: pd.DataFrame,
    target: str,
    test_size: float,
    golden_size: int,
    seed: int,
    task: Task = CLASSIFICATION,
) -> Split:
    """Train/test split (stratified on the classes for classification) plus a small pinned
    golden set carved from the test part.

    Rows without a label cannot train or score a model, so they are dropped first.
    """
    labelled = df.dropna(subset=[target])
    train, test = train_test_split(
        labelled, test_size=test_size, random_state=seed, stratify=task.stratify(labelled[target])
    )
    golden = test.sample(n=min(golden_size, len(test)), random_state=seed)
    return Split(
        train=train.reset_index(drop=True),
        test=test.reset_index(drop=True),
        golden=golden.reset_index(drop=True),
    )


def split_with_feedback(
    df: pd.DataFrame,
    feedback: pd.DataFrame,
    target: str,
    test_size: float,
    golden_size: int,
    seed: int,
    task: Task = CLASSIFICATION,
) -> tuple[Split, dict[str, int]]:
    """`split(df, ...)` unchanged, so the golden set the gates compare models on stays
    pinned to the original data, plus the labelled feedback rows split the same way
    (stratified when the labels allow it) and appended to train and test: the
    new model learns from feedback and both models are scored on some of it. Returns
    the split and how many feedback rows went to each part."""
    base = split(df, target, test_size, golden_size, seed, task)
    labelled = feedback.dropna(subset=[target])
    if labelled.empty:
        return base, {"train": 0, "test": 0}
    if len(labelled) * test_size < 1:  # too few to hold any out
        fb_train, fb_test = labelled, labelled.iloc[:0]
    else:
        stratify = task.stratify(labelled[target])
        if stratify is not None:
            counts = stratify.value_counts()
            n_test = math.ceil(len(labelled) * test_size)
            # stratifying needs two rows per label and room for every label in both parts
            if counts.min() < 2 or len(counts) > min(n_test, len(labelled) - n_test):
                stratify = None
        fb_train, fb_test = train_test_split(
            labelled, test_size=test_size, random_state=seed, stratify=stratify
        )
    parts = Split(
        train=pd.concat([base.train, fb_train], ignore_index=True),
        test=pd.concat([base.test, fb_test], ignore_index=True),
        golden=base.golden,
    )
    return parts, {"train": len(fb_train), "test": len(fb_test)}
