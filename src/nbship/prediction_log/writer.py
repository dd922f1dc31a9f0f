"""`PredictionLog`: the spool plus the thread that delivers it to the database in large
insert-or-ignore batches (each request stored once), retries while the database fails,
and applies the retention."""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from nbship.common.sqlite import database_file, file_id, writer
from nbship.prediction_log.database import (
    _backend,
    _brief,
    _create_table,
    _engine,
    _Inserter,
    _purge,
    _refused,
)
from nbship.prediction_log.entries import _LENIENT
from nbship.prediction_log.spool import Spool

logger = logging.getLogger("nbship.prediction_log")  # the package's one logger (see spool)

REJECTED_FILE = "rejected.jsonl"
ADOPT_SECONDS = 30.0  # how often a running log looks for spools of dead processes
PURGE_SECONDS = 3600.0  # how often the retention setting is applied


class PredictionLog(Spool):
    """Records `LogEntry`s on the request path; a background thread stores them.

        log = PredictionLog(url_for_sqlite("prediction_log.db"), Path("spool")).start()
        log.record(entry)      # cheap, never raises; False: the entry was dropped
        log.close()            # delivers what it can, leaves the rest in the spool

    `record(entry)` runs on the request path. It encodes the entry as one line (JSON
    header, inputs, outputs) and appends it with a single unbuffered `os.writev` to a
    segment file of a local spool (no fsync per record), then returns: about 10 µs,
    never an exception (a 1,000-record request's raw JSON, ~200 KB, is written as it
    came, neither copied nor decoded: ~0.1 ms). A background thread reads the spool
    about once a second and inserts what it finds in one transaction (multi-row
    insert-or-ignore on the unique `request_id`, so delivering a line twice stores it
    once), then deletes the segments whose rows are all committed.

    Guarantees
        * An entry `record` accepted (it returned True) is in the page cache of a spool
          file, which a killed process (kill -9, OOM kill) cannot lose: the next process
          that opens a `PredictionLog` on the same spool folder adopts the dead process's
          spool and delivers it.
        * A database that is down, locked or refusing connections never fails or slows a
          prediction: entries wait in the spool and are retried with backoff (up to
          `max_backoff` seconds apart), each stored exactly once.
        * The only loss while the machine runs: when the spool holds `max_spool_bytes`, new
          entries are dropped (`record` returns False, the `dropped` counter counts them, a
          warning is logged at most once a minute). Entries the database itself refuses (a
          value it cannot store) are set aside in `<spool>/rejected.jsonl`, counted in
          `rejected`, and logged.
        * A crash of the machine itself (kernel, power) can lose the last seconds: nothing
          is fsynced per record, the spool is fsynced only while the database fails (at
          most once a second), and SQLite commits with `synchronous=NORMAL` (WAL: never
          corrupt, the newest transactions may roll back). `sqlite_synchronous="FULL"`
          syncs every commit, at a measured cost on the request path (an fsync in the
          thread makes the spool appends wait on ext4's journal; see the benchmark).

    `batch_size` rows go in one transaction at most; the thread wakes every
    `flush_interval` seconds or when `batch_size` entries are waiting (few, large
    transactions: each hand-over of the GIL between the thread and the request loop
    costs the request loop time, see the benchmark). `max_spool_bytes` bounds the spool
    (this process's and what it adopted); `segment_bytes` is the size at which a spool
    file is closed and a new one begun. `max_backoff`: longest wait between retries
    while the database fails. `retention` (optional) deletes rows older than that, at
    start and hourly. `sqlite_synchronous`: see the guarantees.
    """

    def __init__(
        self,
        url: str,
        spool_dir: str | os.PathLike[str],
        *,
        batch_size: int = 5000,
        flush_interval: float = 1.0,
        max_spool_bytes: int = 256 << 20,
        segment_bytes: int = 4 << 20,
        max_backoff: float = 30.0,
        retention: timedelta | None = None,
        sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ) -> None:
        if _backend(url) not in ("sqlite", "postgresql"):
            shown = make_url(url).render_as_string(hide_password=True)
            raise ValueError(f"the prediction log needs SQLite or PostgreSQL, not {shown!r}")
        if batch_size < 1 or flush_interval <= 0 or max_spool_bytes < 1 or segment_bytes < 1:
            raise ValueError("batch_size, flush_interval and the byte sizes must be positive")
        if retention is not None and retention <= timedelta(0):
            raise ValueError("retention must be positive")
        if sqlite_synchronous not in ("NORMAL", "FULL"):
            raise ValueError("sqlite_synchronous is NORMAL or FULL")
        super().__init__(
            spool_dir,
            batch_size=batch_size,
            max_spool_bytes=max_spool_bytes,
            segment_bytes=segment_bytes,
            idle_seconds=max(1.0, 4 * flush_interval),
        )
        self._synchronous = sqlite_synchronous
        self.url = url
        self._flush_interval = flush_interval
        self._max_backoff = max_backoff
        self._retention = retention

        # the thread's side
        self._thread: threading.Thread | None = None
        self._kick = threading.Event()  # cut a backoff short (flush/close)
        self._stop = threading.Event()
        self._scanned = threading.Event()  # the first look for dead spools is done
        self._engine: Engine | None = None
        self._inserter: _Inserter | None = None
        self._schema = False
        # a SQLite file deleted (or replaced) under open connections takes their writes
        # with it, unseen: its identity is checked after each commit
        self._file = database_file(url)
        self._file_id: tuple[int, int] | None = None
        self._written = 0
        self._replayed = 0
        self._db_errors = 0
        self._rejected = 0
        self._batches = 0
        self._purged = 0

    def __repr__(self) -> str:
        url = make_url(self.url).render_as_string(hide_password=True)
        return f"PredictionLog({url!r}, {str(self.spool_dir)!r})"

    def __enter__(self) -> PredictionLog:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # lifecycle ----------------------------------------------------------------------------

    def start(self) -> PredictionLog:
        """Claims a spool folder of its own and starts the delivery thread (which first
        adopts spools left by dead processes). Raises only if the spool folder cannot be
        made; the database is not touched here."""
        if self._thread is not None:
            raise RuntimeError("this prediction log was already started")
        self._claim()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Stops taking entries, makes one last delivery attempt (up to `timeout`
        seconds) and releases the spool: what is still in it is delivered by the next
        process that starts a log on the same spool folder."""
        with self._lock:
            self._accepting = False
            self._close_current()
        if self._thread is None:
            return
        self._stop.set()
        self._kick.set()
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning(
                "prediction log: still delivering after %.0f s; the rest stays in %s",
                timeout,
                self.spool_dir,
            )

    def flush(self, timeout: float = 30.0) -> bool:
        """Waits until everything recorded before the call (and the spools of dead
        processes found at start) is in the database; False if that did not happen
        within `timeout` seconds (the database is down, say)."""
        deadline = time.monotonic() + timeout
        thread = self._thread
        if thread is None:
            return True
        self._kick.set()
        self._wake.set()
        while not self._scanned.is_set():
            if not thread.is_alive() or time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        with self._lock:
            targets = [(s, s.size) for s in self._own.values()]
        targets += [(s, s.size) for s in list(self._foreign)]
        while any(segment.done < size for segment, size in targets):
            if not thread.is_alive() or time.monotonic() >= deadline:
                return False
            self._wake.set()
            time.sleep(0.005)
        return True

    @property
    def stats(self) -> dict[str, int]:
        """Counters: `recorded` (accepted by `record`), `written` (delivered to the
        database, own and adopted), `replayed` (of those, from dead processes' spools),
        `spooled_pending` (accepted, not delivered yet), `spool_bytes`, `dropped` (spool
        full or log closed), `record_errors` (an entry that could not be encoded or
        written), `db_errors` (failed delivery attempts), `rejected` (rows the database
        refused), `corrupt` (unreadable spool lines), `batches` (transactions), `purged`."""
        with self._lock:
            return {
                "recorded": self._recorded,
                "written": self._written,
                "replayed": self._replayed,
                "spooled_pending": self._recorded - self._settled,
                "spool_bytes": self._spool_bytes + self._foreign_bytes,
                "dropped": self._dropped,
                "record_errors": self._record_errors,
                "db_errors": self._db_errors,
                "rejected": self._rejected,
                "corrupt": self._corrupt,
                "batches": self._batches,
                "purged": self._purged,
            }

    # the delivery thread ----------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        next_scan = next_purge = 0.0
        while True:
            stopping = self._stop.is_set()
            if not stopping and time.monotonic() >= next_scan:
                try:
                    self._scan()
                except Exception as exc:
                    self._warn("scan", "prediction log: looking for spools failed: %s", exc)
                self._scanned.set()
                next_scan = time.monotonic() + ADOPT_SECONDS
            try:
                self._connect()
                self._deliver()
                if self._retention is not None and time.monotonic() >= next_purge:
                    cutoff = datetime.now(UTC) - self._retention
                    self._purged += _purge(self._connect(), cutoff)
                    next_purge = time.monotonic() + PURGE_SECONDS
                failures = 0
            except Exception as exc:
                failures += 1
                self._db_errors += 1
                self._schema = False  # the table may be gone: check again next time
                self._warn("db", "prediction log: cannot deliver, spooling (%s)", _brief(exc))
                self._sync_spool()
            finally:
                self._housekeeping(stopping)
            if stopping:
                break
            if failures:
                delay = min(self._max_backoff, 0.05 * 2 ** min(failures, 20))
                self._kick.wait(delay * random.uniform(0.5, 1.0))
                self._kick.clear()
            else:
                self._wake.wait(self._flush_interval)
                self._wake.clear()
                with self._lock:
                    self._wake_sent = False
        self._shutdown()

    def _connect(self) -> Engine:
        if self._engine is not None and self._file is not None and self._file_gone():
            self._warn("file", "prediction log: %s was deleted or replaced: opening it"
                       " again, undelivered rows follow", self._file)  # fmt: skip
            self._engine.dispose()  # (checkpoints into the old file, never the new one)
            self._engine, self._file_id = None, None
        if self._engine is None:
            engine = _engine(self.url, self._synchronous)
            self._inserter = _Inserter(engine.dialect.name)
            self._engine = engine
            self._schema = False
        if not self._schema:
            _create_table(self._engine)
            self._schema = True
            if self._file is not None:
                self._file_id = file_id(self._file)
        return self._engine

    def _file_gone(self) -> bool:
        """The SQLite file is no longer the one the connections have open."""
        return self._file is not None and file_id(self._file) != self._file_id

    def _deliver(self) -> None:
        """Everything in the spool, batch by batch; raises if the database fails."""
        while True:
            rows, marks = self._next_batch()
            if not marks:
                return
            rejected = self._store(rows) if rows else 0
            replayed = own_lines = 0
            for segment, end, lines, delivered, bad in marks:
                segment.done = end
                self._corrupt += bad
                if segment.owner is None:
                    own_lines += lines
                else:
                    replayed += delivered
            self._written += len(rows) - rejected
            self._replayed += replayed
            with self._lock:
                self._settled += own_lines
            self._remove_delivered()

    def _store(self, rows: list[dict[str, Any]]) -> int:
        """One transaction; rows the database refuses are found by halving the batch
        and set aside. Returns how many were; raises if the database failed."""
        assert self._engine is not None and self._inserter is not None
        try:
            with writer(self._engine).begin() as conn:
                self._inserter(conn, rows)
            if self._file_gone():  # committed to a deleted file: not delivered, again
                raise FileNotFoundError(f"{self._file} was deleted or replaced")
            self._batches += 1
            return 0
        except Exception as exc:
            if not _refused(exc):
                raise
            if len(rows) == 1:
                self._reject(rows[0], exc)
                return 1
            half = len(rows) // 2
            return self._store(rows[:half]) + self._store(rows[half:])

    def _reject(self, row: dict[str, Any], exc: BaseException) -> None:
        self._rejected += 1
        logger.warning(
            "prediction log: the database refused request %s (%s); kept in %s",
            row.get("request_id"),
            _brief(exc),
            self.spool_dir / REJECTED_FILE,
        )
        doc = {**row, "ts": row["ts"].isoformat(), "refused": _brief(exc)}
        fd = os.open(
            self.spool_dir / REJECTED_FILE,
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
            0o600,
        )
        try:
            os.write(fd, (_LENIENT.encode(doc) + "\n").encode())
        finally:
            os.close(fd)

    def _shutdown(self) -> None:
        """After the last attempt: releases the spool folders and the database connections."""
        self._release_spools()
        if self._engine is not None:
            self._engine.dispose()
