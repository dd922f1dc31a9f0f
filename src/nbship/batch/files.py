"""Reading a table in chunks and writing one, CSV or parquet, local or any fsspec URL.

Reading streams: a parquet file is read batch by batch (`ParquetFile.iter_batches`), a
CSV block by block (`pyarrow.csv.open_csv`), and the batches are cut into chunks of
exactly `chunk_rows` rows, so memory holds one chunk whatever the file's size. Every
CSV column is read as text: the contract decides what a cell means (`batch.screen`), and
Arrow's per-block type inference would fail a run half-way on a column whose first
block looked numeric.

Writing goes to a temporary name beside the target, moved into place when the run
succeeds: a failed run leaves no half-written output.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Literal

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from nbship.batch.screen import NULL_TOKENS

Format = Literal["csv", "parquet"]
FORMATS: dict[str, Format] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_CSV_BLOCK = 4 << 20  # bytes Arrow reads at a time


def file_format(url: str) -> Format:
    """csv or parquet, from the name's suffix (a compression suffix is not supported)."""
    suffix = PurePosixPath(url.split("?", 1)[0]).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{url}: expected a .csv or .parquet file, not {suffix or 'no suffix'!r}")
    return FORMATS[suffix]


def filesystem(url: str) -> tuple[Any, str]:
    from fsspec.core import url_to_fs

    return url_to_fs(url)


@dataclass
class Source:
    """An input table: its format, its column names and (parquet) its number of rows."""

    url: str
    format: Format
    columns: list[str]
    total_rows: int | None


def open_source(url: str) -> Source:
    fs, path = filesystem(url)
    fmt = file_format(url)
    if not fs.exists(path):
        raise FileNotFoundError(f"{url}: no such file")
    with fs.open(path, "rb") as f:
        if fmt == "parquet":
            meta = pq.ParquetFile(f).metadata
            return Source(url, fmt, list(meta.schema.to_arrow_schema().names), meta.num_rows)
        reader = pcsv.open_csv(f, read_options=pcsv.ReadOptions(block_size=1 << 16))
        return Source(url, fmt, list(reader.schema.names), None)


def csv_convert(columns: list[str]) -> pcsv.ConvertOptions:
    """Every column as text, the null texts as null."""
    return pcsv.ConvertOptions(
        column_types={c: pa.string() for c in columns},
        null_values=NULL_TOKENS,
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )


def _batches(source: Source, f: Any) -> Iterator[pa.RecordBatch]:
    if source.format == "parquet":
        yield from pq.ParquetFile(f).iter_batches(batch_size=65_536)
        return
    reader = pcsv.open_csv(
        f,
        read_options=pcsv.ReadOptions(block_size=_CSV_BLOCK),
        convert_options=csv_convert(source.columns),
    )
    yield from reader


def read_chunks(source: Source, chunk_rows: int) -> Iterator[pa.Table]:
    """The table in chunks of `chunk_rows` rows (the last one may be shorter)."""
    fs, path = filesystem(source.url)
    with fs.open(path, "rb") as f:
        pending: list[pa.RecordBatch] = []
        held = 0
        for batch in _batches(source, f):
            pending.append(batch)
            held += batch.num_rows
            while held >= chunk_rows:
                table = pa.Table.from_batches(pending)
                yield table.slice(0, chunk_rows).combine_chunks()
                rest = table.slice(chunk_rows)
                pending = rest.to_batches()
                held = rest.num_rows
        if held:
            yield pa.Table.from_batches(pending).combine_chunks()


class TableWriter:
    """One output table written chunk by chunk, in place only once `commit` is called."""

    def __init__(self, url: str, fmt: Format | None = None) -> None:
        self.url = url
        self.format = fmt or file_format(url)
        self.fs, self.path = filesystem(url)
        parent, _, name = self.path.rpartition("/")
        self.partial = (
            f"{parent}/.{name}.{uuid.uuid4().hex[:8]}.partial" if parent else f".{name}.partial"
        )
        self._stack = ExitStack()
        self._writer: Any = None
        self.schema: pa.Schema | None = None
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            parent = self.path.rpartition("/")[0]
            if parent:
                self.fs.makedirs(parent, exist_ok=True)
            sink = self._stack.enter_context(self.fs.open(self.partial, "wb"))
            self.schema = table.schema
            self._writer = self._stack.enter_context(
                pq.ParquetWriter(sink, self.schema)
                if self.format == "parquet"
                else pcsv.CSVWriter(sink, self.schema)
            )
        assert self.schema is not None
        if table.schema != self.schema:  # e.g. an all-null column read as another type
            table = table.cast(self.schema)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def commit(self, schema: pa.Schema) -> None:
        """Closes the file (an empty table of `schema` when nothing was written) and moves
        it to its name."""
        if self._writer is None:
            self.write(schema.empty_table())
        self._stack.close()
        self.fs.mv(self.partial, self.path)

    def discard(self) -> None:
        self._stack.close()
        if self._writer is not None and self.fs.exists(self.partial):
            self.fs.rm(self.partial)
