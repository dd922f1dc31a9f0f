"""Loading the example data, fingerprinting it and splitting it for training."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

SOURCES = ("palmerpenguins",)


def load_source(source: str, sample_rows: int | None = None, seed: int = 0) -> pd.DataFrame:
    """The raw table of a named source, optionally a reproducible row sample.

    Only packaged data is supported: nothing is downloaded at run time.
    """
    if source == "palmerpenguins":
        import palmerpenguins

        df = palmerpenguins.load_penguins()
    elif Path(source).suffix in (".csv", ".parquet"):
        path = Path(source)
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    else:
        raise ValueError(
            f"unknown data source {source!r}: use one of {SOURCES} or a .csv/.parquet path"
        )
    if sample_rows is not None and sample_rows < len(df):
        df = df.sample(n=sample_rows, random_state=seed).sort_index()
    return df.reset_index(drop=True)


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


def split(df: pd.DataFrame, target: str, test_size: float, golden_size: int, seed: int) -> Split:
    """Stratified train/test split plus a small pinned golden set carved from the test part.

    Rows without a label cannot train or score a model, so they are dropped first.
    """
    labelled = df.dropna(subset=[target])
    train, test = train_test_split(
        labelled, test_size=test_size, random_state=seed, stratify=labelled[target]
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
) -> tuple[Split, dict[str, int]]:
    """`split(df, ...)` unchanged, so the golden set the gates compare models on stays
    pinned to the original data, plus the labelled feedback rows split the same way
    (stratified when the labels allow it) and appended to train and test: the
    new model learns from feedback and both models are scored on some of it. Returns
    the split and how many feedback rows went to each part."""
    base = split(df, target=target, test_size=test_size, golden_size=golden_size, seed=seed)
    labelled = feedback.dropna(subset=[target])
    if labelled.empty:
        return base, {"train": 0, "test": 0}
    if len(labelled) * test_size < 1:  # too few to hold any out
        fb_train, fb_test = labelled, labelled.iloc[:0]
    else:
        counts = labelled[target].value_counts()
        n_test = math.ceil(len(labelled) * test_size)
        # stratifying needs two rows per label and room for every label in both parts
        fits = counts.min() >= 2 and len(counts) <= min(n_test, len(labelled) - n_test)
        stratify = labelled[target] if fits else None
        fb_train, fb_test = train_test_split(
            labelled, test_size=test_size, random_state=seed, stratify=stratify
        )
    parts = Split(
        train=pd.concat([base.train, fb_train], ignore_index=True),
        test=pd.concat([base.test, fb_test], ignore_index=True),
        golden=base.golden,
    )
    return parts, {"train": len(fb_train), "test": len(fb_test)}
