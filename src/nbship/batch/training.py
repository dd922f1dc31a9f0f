"""Training on the project's Dask cluster: one line in a train notebook,

    with on_cluster():
        model.fit(X, y)   # or a GridSearchCV(..., n_jobs=-1) search

puts scikit-learn's joblib work (the `n_jobs` parallelism of searches, forests, cross
validation) on the dask.distributed cluster env.yaml names in `batch.dask` (the cluster
`nbship predict` scores on), or on `address`. With no cluster configured it does
nothing, so the same notebook runs on a laptop. The data is sent to the workers by
joblib; the fitted model comes back to the notebook, which hands it over as usual.
Needs the `dask` extra (`pip install 'nbship[dask]'`). Here, not in `pipeline/`: a bento
ships `pipeline/` whole, and serving has no use for Dask.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from nbship.config import read_raw

ADDRESS_SETTING = ("batch", "dask")


def configured_address(project_dir: str | Path = ".") -> str | None:
    """env.yaml's `batch.dask` (the notebook runs in the project folder), or None."""
    try:
        raw = read_raw(Path(project_dir))
    except ValueError:  # no env.yaml here: a notebook run outside a project
        return None
    section = raw.get(ADDRESS_SETTING[0]) or {}
    value = section.get(ADDRESS_SETTING[1]) if isinstance(section, dict) else None
    return str(value) if value else None


@contextmanager
def on_cluster(address: str | None = None, project_dir: str | Path = ".") -> Iterator[Any]:
    """joblib's work inside the block on the Dask cluster at `address` (default: env.yaml
    `batch.dask`); yields the dask Client, or None when no cluster is configured."""
    address = address or configured_address(project_dir)
    if address is None:
        with nullcontext():
            yield None
        return
    import joblib
    from distributed import Client

    # the Client registers joblib's "dask" backend; parallel_config makes it the default
    # for every estimator's n_jobs inside the block, and only there
    with Client(address) as client, joblib.parallel_config(backend="dask"):
        yield client
