"""Training on Dask: `nbship.batch.training.on_cluster()` puts scikit-learn's joblib work
on the configured cluster (a LocalCluster in this process) and gives the same model as
training here; with no cluster configured it does nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import GridSearchCV

from nbship.batch import training as cluster

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as local:  # fmt: skip
        yield local.scheduler_address


def search() -> GridSearchCV:
    forest = RandomForestClassifier(n_estimators=10, random_state=0)
    return GridSearchCV(forest, {"max_depth": [2, 4, 8]}, cv=3, n_jobs=-1)


def test_joblib_work_runs_on_the_configured_cluster(address: str, tmp_path: Path):
    from distributed import get_task_stream

    (tmp_path / "env.yaml").write_text(yaml.safe_dump({"batch": {"dask": address}}))
    X, y = make_classification(n_samples=200, random_state=0)
    with cluster.on_cluster(project_dir=tmp_path) as client:
        assert client is not None and client.scheduler.address == address
        with get_task_stream(client) as stream:
            on_dask = search().fit(X, y)
    assert len(stream.data) >= 9  # 3 settings x 3 folds went to the workers
    here = search().fit(X, y)
    assert on_dask.best_params_ == here.best_params_
    np.testing.assert_array_equal(on_dask.predict_proba(X), here.predict_proba(X))


def test_without_a_cluster_it_does_nothing(tmp_path: Path):
    (tmp_path / "env.yaml").write_text(yaml.safe_dump({"batch": {"chunk_rows": 10}}))
    with cluster.on_cluster(project_dir=tmp_path) as client:
        assert client is None
    assert cluster.configured_address(tmp_path / "elsewhere") is None
