"""Batch scoring on a Dask cluster (a two-worker LocalCluster in this process) writes the
same scores and rejects as a local run, for CSV and parquet inputs split into several
partitions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from nbship.batch import cluster, run
from nbship.batch.scorer import Scorer
from tests.unit.test_batch import bento, classifier, mixed_rows, write_csv

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:The `__get_pydantic_core_schema__` method"),
]
__all__ = ["bento", "classifier"]  # fixtures, imported to be used here


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as local:  # fmt: skip
        yield local.scheduler_address


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_cluster_run_writes_what_a_local_run_writes(
    bento: Path, tmp_path: Path, address: str, fmt: str
):
    _, lines = mixed_rows()
    data = write_csv(tmp_path / "in.csv", lines * 30)  # 690 rows
    if fmt == "parquet":  # three row groups, each split in row ranges
        table = pcsv.read_csv(data)
        pq.write_table(table, tmp_path / "in.parquet", row_group_size=250)
        data = str(tmp_path / "in.parquet")
    model = Scorer.from_bento(bento)
    here = run.predict_file(model, data, str(tmp_path / "here.parquet"))
    parts = (cluster.parquet_parts(data, 100) if fmt == "parquet"
             else cluster.csv_parts(data, ["id", "bill_length_mm", "island"], 100))  # fmt: skip
    assert len(parts) >= 3
    there = cluster.predict_on_cluster(model, data, str(tmp_path / "there.parquet"), address,
                                       chunk_rows=100)  # fmt: skip
    assert there.workers == 2
    assert (there.rows, there.scored, there.errors) == (here.rows, here.scored, here.errors)
    for name in ("", ".rejects"):
        local = pq.read_table(tmp_path / f"here{name}.parquet")
        remote = pq.read_table(tmp_path / f"there{name}.parquet")
        assert local.num_rows > 0 and local.equals(remote), name
