"""Reading and writing pipeline products. Every write is atomic: a crashed task
leaves either the previous file or none, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import joblib
import pandas as pd


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` that replaces it only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; products are not
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _write(path: str | Path, writer: Callable[[Path], None]) -> None:
    with atomic_path(path) as tmp:
        writer(tmp)


def write_json(obj: Any, path: str | Path) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"

    def write(tmp: Path) -> None:
        tmp.write_text(text)

    _write(path, write)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_frame(df: pd.DataFrame, path: str | Path) -> None:
    _write(path, lambda tmp: df.to_parquet(tmp, index=False))


def write_model(model: Any, path: str | Path) -> None:
    _write(path, lambda tmp: joblib.dump(model, tmp))


def read_model(path: str | Path) -> Any:
    # Candidate files are this pipeline's own products, never user uploads.
    return joblib.load(path)
