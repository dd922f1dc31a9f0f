"""A batch run on an existing dask.distributed cluster: the workers read and score the
input's partitions, this process writes their results in order into the same output
and rejects files a local run writes.

Partitions are read by the workers with the local run's own readers, so a cell means
the same on a cluster as here: a parquet file in row ranges (`chunk_rows` rows, within
a row group), a CSV in line-aligned byte ranges of about `chunk_rows` rows (dask's
`read_bytes`; as with any splitting of a CSV, a quoted field may not hold a newline).
The model is sent to every worker once (`scatter(broadcast=True)`); at most two
partitions per worker are in flight, so neither the workers nor this process hold more
than a few partitions, whatever the input's size. The workers must reach the input's
URL (the same path on one machine, or an object store).
"""

from __future__ import annotations

import io
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from itertools import islice
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from nbship.batch.files import csv_convert, file_format, filesystem, open_source
from nbship.batch.run import Progress, Summary, rejects_path, summary, write_scored
from nbship.batch.scorer import ROW_COLUMN, Scored, Scorer

IN_FLIGHT_PER_WORKER = 2


@dataclass(frozen=True)
class ParquetPart:
    url: str
    row_group: int
    offset: int  # within the row group
    length: int

    def read(self) -> pa.Table:
        fs, path = filesystem(self.url)
        with fs.open(path, "rb") as f:
            table = pq.ParquetFile(f).read_row_group(self.row_group)
        return table.slice(self.offset, self.length).combine_chunks()


@dataclass(frozen=True)
class CsvPart:
    block: Any  # a dask Delayed of the block's bytes (line-aligned)
    header: bytes | None  # the header line, for every block but the first
    columns: list[str]

    def read(self, data: bytes) -> pa.Table:
        body = (self.header or b"") + data
        return pcsv.read_csv(io.BytesIO(body), convert_options=csv_convert(self.columns))


def parquet_parts(url: str, chunk_rows: int) -> list[ParquetPart]:
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        meta = pq.ParquetFile(f).metadata
    parts = []
    for group in range(meta.num_row_groups):
        rows = meta.row_group(group).num_rows
        parts += [ParquetPart(url, group, start, min(chunk_rows, rows - start))
                  for start in range(0, rows, chunk_rows)]  # fmt: skip
    return parts


def csv_parts(url: str, columns: list[str], chunk_rows: int) -> list[CsvPart]:
    from dask.bytes import read_bytes

    sample_size = 1 << 16
    sample, blocks = read_bytes(url, delimiter=b"\n", sample=sample_size, blocksize=None)
    header = sample.split(b"\n", 1)[0] + b"\n"
    lines = max(1, sample.count(b"\n") - 1)
    line_bytes = max(1.0, (len(sample) - len(header)) / lines)
    blocksize = max(1 << 10, int(line_bytes * chunk_rows))  # a task per ~chunk_rows rows
    _, blocks = read_bytes(url, delimiter=b"\n", sample=False, blocksize=blocksize)
    flat = [block for per_file in blocks for block in per_file]
    return [CsvPart(block, None if i == 0 else header, columns) for i, block in enumerate(flat)]


def _score_parquet(part: ParquetPart, scorer: Scorer) -> Scored:
    return scorer.score(part.read())


def _score_csv(data: bytes, part: CsvPart, scorer: Scorer) -> Scored:
    return scorer.score(part.read(data))


def _submitters(
    client: Any, scorer: Scorer, fmt: str, url: str, columns: list[str], chunk_rows: int
) -> Iterator[Callable[[], Any]]:
    """One call per partition that submits its reading and scoring (a Future): called
    only when the window has room, so no partition is read before it can be scored."""
    remote = client.scatter(scorer, broadcast=True)
    if fmt == "parquet":
        for part in parquet_parts(url, chunk_rows):
            yield partial(client.submit, _score_parquet, part, remote, pure=False)
        return
    for block in csv_parts(url, columns, chunk_rows):

        def submit(block: CsvPart = block) -> Any:
            data = client.compute(block.block)
            return client.submit(_score_csv, data, replace(block, block=None), remote, pure=False)

        yield submit


def shifted(scored: Scored, offset: int) -> Scored:
    """A partition's result with its row indexes made the input's."""

    def shift(table: pa.Table) -> pa.Table:
        at = table.schema.get_field_index(ROW_COLUMN)
        return table.set_column(at, ROW_COLUMN, pc.add(table.column(at), offset))

    return replace(scored, output=shift(scored.output), rejects=shift(scored.rejects))


def predict_on_cluster(
    scorer: Scorer,
    input_url: str,
    output: str,
    address: str,
    rejects: str | None = None,
    chunk_rows: int = 100_000,
    progress: Progress | None = None,
) -> Summary:
    """Scores `input_url` on the cluster at `address` (a scheduler address, or a
    `distributed` Client/LocalCluster's `scheduler_address`)."""
    from distributed import Client

    rejects = rejects or rejects_path(output)
    for url in (output, rejects):
        file_format(url)
    started = time.perf_counter()
    source = open_source(input_url)
    scorer.check_columns(source.columns)
    with Client(address) as client:
        workers = len(client.scheduler_info(n_workers=-1)["workers"])
        submits = _submitters(client, scorer, source.format, input_url, source.columns,
                              chunk_rows)  # fmt: skip

        def results() -> Iterator[Scored]:
            window = max(1, IN_FLIGHT_PER_WORKER * workers)
            pending: deque[Any] = deque(submit() for submit in islice(submits, window))
            offset = 0
            while pending:
                scored = pending.popleft().result()
                pending.extend(submit() for submit in islice(submits, 1))  # keep it full
                yield shifted(scored, offset)
                offset += scored.rows

        rows, scored_rows, errors = write_scored(
            scorer, results(), output, rejects, progress, source.total_rows
        )
    return summary(scorer, rows, scored_rows, errors, output, rejects, started, workers)
