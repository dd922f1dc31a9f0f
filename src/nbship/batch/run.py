"""A batch run: the input scored chunk by chunk into the output and the rejects file,
in this process or on a Dask cluster (`batch.cluster`); both write the same files."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath

import pyarrow as pa

from nbship.batch.files import TableWriter, file_format, open_source, read_chunks
from nbship.batch.scorer import ROW_COLUMN, BatchError, Scored, Scorer
from nbship.batch.screen import REJECT_SCHEMA

DEFAULT_CHUNK_ROWS = 100_000
# called after each chunk with (rows read so far, the input's row count when known)
Progress = Callable[[int, int | None], None]


def rejects_path(output: str) -> str:
    """Beside the output: `scores.parquet` -> `scores.rejects.parquet`."""
    path = PurePosixPath(output)
    return str(path.with_name(f"{path.stem}.rejects{path.suffix}")) if "://" not in output \
        else output[: -len(path.suffix)] + ".rejects" + path.suffix  # fmt: skip


@dataclass(frozen=True)
class Summary:
    """What a run did, as `nbship predict` reports it (and prints as JSON with --json)."""

    model_tag: str
    source: str  # where the model came from: registry or bento
    inference: str
    rows: int
    scored: int
    rejected_rows: int
    errors: int  # reject records: a row breaking two rules counts twice
    output: str
    rejects: str
    seconds: float
    workers: int | None = None  # a Dask run: how many workers scored

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def output_schema(scorer: Scorer, passthrough: pa.Schema) -> pa.Schema:
    """The output's columns: the input's other columns, the row index, the answer."""
    empty = scorer.prediction_columns(None, 0)
    fields = [*passthrough, pa.field(ROW_COLUMN, pa.int64())]
    return pa.schema(fields + [pa.field(n, a.type) for n, a in empty.items()])


def write_scored(
    scorer: Scorer,
    results: Iterable[Scored],
    output: str,
    rejects: str,
    progress: Progress | None = None,
    total: int | None = None,
) -> tuple[int, int, int]:
    """Writes each chunk's output and rejects, in order; (rows, scored, reject records).
    The two files appear only when every chunk succeeded."""
    out, bad = TableWriter(output), TableWriter(rejects)
    rows = errors = 0
    try:
        for scored in results:
            out.write(scored.output)
            if scored.rejects.num_rows:
                bad.write(scored.rejects)
            rows += scored.rows
            errors += scored.rejects.num_rows
            if progress is not None:
                progress(rows, total)
        # an input without rows still gives a well-formed (empty) output
        out.commit(output_schema(scorer, pa.schema([])))
        bad.commit(REJECT_SCHEMA)
    except BaseException:
        out.discard()
        bad.discard()
        raise
    return rows, out.rows, errors


def predict_file(
    scorer: Scorer,
    input_url: str,
    output: str,
    rejects: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
) -> Summary:
    """Scores `input_url` (CSV or parquet, a path or fsspec URL) in chunks of `chunk_rows`
    into `output`, the rows that break the contract into `rejects`."""
    if chunk_rows < 1:
        raise BatchError(f"chunk_rows must be at least 1, got {chunk_rows}")
    rejects = rejects or rejects_path(output)
    for url in (output, rejects):
        file_format(url)  # a bad suffix fails before any work
    started = time.perf_counter()
    source = open_source(input_url)
    scorer.check_columns(source.columns)

    def scored_chunks() -> Iterable[Scored]:
        first = 0
        for chunk in read_chunks(source, chunk_rows):
            yield scorer.score(chunk, first)
            first += chunk.num_rows

    rows, scored, errors = write_scored(
        scorer, scored_chunks(), output, rejects, progress, source.total_rows
    )
    return summary(scorer, rows, scored, errors, output, rejects, started)


def summary(
    scorer: Scorer, rows: int, scored: int, errors: int, output: str, rejects: str,
    started: float, workers: int | None = None,
) -> Summary:  # fmt: skip
    served = scorer.served
    return Summary(
        model_tag=served.tag, source=served.source, inference=served.inference, rows=rows,
        scored=scored, rejected_rows=rows - scored, errors=errors, output=output,
        rejects=rejects, seconds=time.perf_counter() - started, workers=workers,
    )  # fmt: skip
