"""Prediction log benchmark: what `PredictionLog.record()` costs the request path and how
fast the background thread delivers to SQLite, each divided by a baseline measured in
the same run.

    uv run python -m benchmarks.prediction_log [--entries 50000] [--request-us 250 1000]

* per call: `record()` against calling a no-op and against `list.append` (the cheapest
  way to keep an entry), with delivery paused and with delivery running alongside;
* delivery: entries/s from the spool into SQLite, against plain `sqlite3` executemany of
  the same rows in transactions of the same size (no spool, no SQLAlchemy);
* 1,000-record requests (raw JSON, ~215 KB a spool line, as the service logs a batch):
  record() per call, and what delivering one costs the delivery thread (CPU) and other
  Python threads (time they waited for the GIL), against plain `sqlite3` inserting the
  same text;
* a simulated service: requests that each cost a fixed amount of pure-Python CPU (what
  holds the GIL, as the model call does) plus building and recording the entry, with
  delivery to SQLite running in the same process: throughput logging on ÷ off (the
  issue's target is >= 0.9), with the defaults and two variants (SQLite fsync on every
  commit; small frequent batches) that show why the defaults are what they are.

The request loop never waits, unlike the real event loop (which lets go of the GIL in
epoll between requests), so this is the worst case for the delivery thread's share.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nbship.prediction_log import (
    LogEntry,
    PredictionLog,
    RawJSON,
    new_request_id,
    url_for_sqlite,
)

RECORD = {  # one penguin, as the service receives it
    "species": None,
    "island": "Torgersen",
    "bill_length_mm": 39.1,
    "bill_depth_mm": 18.7,
    "flipper_length_mm": 181.0,
    "body_mass_g": 3750.0,
    "sex": "male",
    "year": 2007,
}
OUTPUT = {"label": "Adelie", "probabilities": {"Adelie": 0.91, "Chinstrap": 0.06, "Gentoo": 0.03}}


def make_entry(i: int) -> LogEntry:
    return LogEntry(
        request_id=new_request_id(),
        ts=datetime.now(UTC),
        kind="predict",
        model_tag="penguins_classifier:benchmark",
        inputs=[{**RECORD, "year": 2007 + i % 3}],
        outputs=[OUTPUT],
        latency_ms=1.234,
        status="ok",
        http_status=200,
        n_records=1,
    )


def per_call(fn: Callable[[LogEntry], Any], entries: list[LogEntry]) -> tuple[float, float]:
    """µs per call over chunks of 2000 calls: (median, best) of the chunks."""
    chunks = []
    for start in range(0, len(entries), 2000):
        chunk = entries[start : start + 2000]
        started = time.perf_counter()
        for item in chunk:
            fn(item)
        chunks.append((time.perf_counter() - started) / len(chunk) * 1e6)
    return statistics.median(chunks), min(chunks)


def ready(log: PredictionLog) -> None:
    """The log is connected and its table made (one entry delivered), so what is timed
    next is not its start-up."""
    log.record(make_entry(0))
    assert log.flush(60), log.stats


def call_costs(entries: list[LogEntry], folder: Path) -> dict[str, tuple[float, float]]:
    kept: list[LogEntry] = []

    def nothing(_entry: LogEntry) -> None:
        return None

    costs = {
        "no-op call": per_call(nothing, entries),
        "list.append": per_call(kept.append, entries),
    }
    paused = PredictionLog(
        url_for_sqlite(folder / "paused.db"), folder / "spool-paused",
        flush_interval=3600, batch_size=10**9,
    ).start()  # fmt: skip
    ready(paused)
    costs["record(), delivery paused"] = per_call(paused.record, entries)
    paused.close()
    with PredictionLog(url_for_sqlite(folder / "live.db"), folder / "spool-live") as live:
        ready(live)
        costs["record(), delivery running"] = per_call(live.record, entries)
        live.flush(300)
    return costs


def delivery(entries: list[LogEntry], url: str, folder: Path, batch: int) -> dict[str, float]:
    """entries/s: draining a spool left while the database was unavailable, and with
    delivery running from the first record to the last row committed."""
    folder.mkdir(parents=True)
    blocker = folder / "blocker"
    blocker.write_text("where the unavailable database's folder would be")
    spool = folder / "spool"
    down = PredictionLog(f"sqlite:///{blocker / 'down.db'}", spool, max_backoff=3600).start()
    for item in entries:
        down.record(item)
    down.close(timeout=5)
    with PredictionLog(url, folder / "spool-warm") as warm:  # the table exists before timing
        ready(warm)
    started = time.perf_counter()
    with PredictionLog(url, spool, batch_size=batch) as log:
        assert log.flush(600), log.stats
        assert log.stats["replayed"] == len(entries), log.stats
        drain = len(entries) / (time.perf_counter() - started)

    fresh = [make_entry(i) for i in range(len(entries))]
    with PredictionLog(url, spool, batch_size=batch) as log:
        ready(log)
        started = time.perf_counter()
        for item in fresh:
            log.record(item)
        assert log.flush(600), log.stats
        live = len(fresh) / (time.perf_counter() - started)
    return {"drain": drain, "live": live}


def plain_sqlite(entries: list[LogEntry], path: Path, batch: int) -> float:
    """rows/s of sqlite3 executemany, `batch` rows a transaction, WAL: the floor."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(
        "CREATE TABLE log (id INTEGER PRIMARY KEY, request_id TEXT UNIQUE, ts TEXT, kind TEXT,"
        " model_tag TEXT, inputs TEXT, outputs TEXT, latency_ms REAL, status TEXT,"
        " http_status INTEGER, error_class TEXT, error_message TEXT, n_records INTEGER)"
    )
    rows = [
        (
            e.request_id, e.ts.isoformat(), e.kind, e.model_tag, json.dumps(e.inputs),
            json.dumps(e.outputs), e.latency_ms, e.status, e.http_status, e.error_class,
            e.error_message, e.n_records,
        )
        for e in entries
    ]  # fmt: skip
    sql = "INSERT OR IGNORE INTO log VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    started = time.perf_counter()
    for i in range(0, len(rows), batch):
        db.execute("BEGIN IMMEDIATE")
        db.executemany(sql, rows[i : i + batch])
        db.execute("COMMIT")
    rate = len(rows) / (time.perf_counter() - started)
    db.close()
    return rate


def large_entries(n: int) -> list[LogEntry]:
    """1,000-record requests as the service's middleware logs them: raw JSON bytes."""
    body = json.dumps([{**RECORD, "year": 2007 + i % 3} for i in range(1000)]).encode()
    answer = json.dumps([OUTPUT] * 1000, separators=(",", ":")).encode()
    return [
        LogEntry(
            request_id=new_request_id(), ts=datetime.now(UTC), kind="predict",
            model_tag="penguins_classifier:benchmark", inputs=RawJSON(body),
            outputs=RawJSON(answer), latency_ms=9.0, status="ok", http_status=200,
            n_records=1000,
        )
        for _ in range(n)
    ]  # fmt: skip


class GILWait:
    """A thread that wakes every 0.5 ms to run a little Python: how long past its time it
    got to run adds up what other threads' holding of the GIL cost the rest."""

    def __init__(self) -> None:
        self.late = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            time.sleep(0.0005)
            late = time.perf_counter() - t0 - 0.0005
            if late > 0.0002:  # (a wake-up is never exact; only count real waits)
                self.late += late

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.late


def large(n: int, folder: Path, rounds: int = 5) -> dict[str, float]:
    """Per 1,000-record entry: record() µs; the delivery thread's CPU ms and how long a
    Python thread beside it waited (ms), `rounds` deliveries of `n` entries each; and the
    CPU ms plain sqlite3 spends inserting the same text, `n` rows a transaction."""
    entries = large_entries(n)
    spool = folder / "large-spool"
    log = PredictionLog(
        url_for_sqlite(folder / "large.db"), spool, flush_interval=3600, batch_size=10**9
    ).start()
    ready(log)
    thread = log._thread  # (to read its CPU clock)
    assert thread is not None and thread.ident is not None
    clock = time.pthread_getcpuclockid(thread.ident)
    record_us, cpu_ms, wait_ms = [], [], []
    for _ in range(rounds):
        time.sleep(0.2)  # the thread is asleep (flush_interval: 1 h) until flush wakes it
        cpu = time.clock_gettime(clock)
        started = time.perf_counter()
        for item in entries:
            log.record(replace(item, request_id=new_request_id()))
        record_us.append((time.perf_counter() - started) / n * 1e6)
        waits = GILWait()
        assert log.flush(300)
        cpu_ms.append((time.clock_gettime(clock) - cpu) / n * 1000)
        wait_ms.append(waits.stop() / n * 1000)
    log.close()

    db = sqlite3.connect(folder / "large-plain.db", isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("CREATE TABLE log (request_id TEXT UNIQUE, inputs TEXT, outputs TEXT)")
    plain = []
    for _ in range(rounds):
        rows = [(new_request_id(), e.inputs.decode(), e.outputs.decode()) for e in entries]
        cpu = time.thread_time()
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT OR IGNORE INTO log VALUES (?, ?, ?)", rows)
        db.execute("COMMIT")
        plain.append((time.thread_time() - cpu) / n * 1000)
    db.close()
    return {
        "record_us": statistics.median(record_us),
        "cpu_ms": statistics.median(cpu_ms),
        "wait_ms": statistics.median(wait_ms),
        "plain_cpu_ms": statistics.median(plain),
        "line_kb": (len(entries[0].inputs) + len(entries[0].outputs)) / 1024,
    }


def cpu_work(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def calibrate(micros: float) -> int:
    """Loop length of `cpu_work` that takes `micros` µs here."""
    n = 20_000
    best = min(timed(lambda: cpu_work(n)) for _ in range(20))
    return max(1, round(n * micros / (best * 1e6)))


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "sqlite FULL": {"sqlite_synchronous": "FULL"},  # fsync every commit
}


def requests_loop(requests: int, work: int, log: PredictionLog | None) -> None:
    for _ in range(requests):
        t0 = time.perf_counter()
        cpu_work(work)
        if log is None:
            continue
        log.record(
            LogEntry(
                request_id=new_request_id(),
                ts=datetime.now(UTC),
                kind="predict",
                model_tag="penguins_classifier:benchmark",
                inputs=[RECORD],
                outputs=[OUTPUT],
                latency_ms=(time.perf_counter() - t0) * 1000,
                status="ok",
                http_status=200,
                n_records=1,
            )
        )


def service(requests: int, work: int, folder: Path, variant: str, pairs: int) -> dict[str, float]:
    """Alternating blocks of `requests` requests without logging and with an entry built
    and recorded per request (the clock stops once the block's entries are all in
    SQLite, delivered by the same process's thread). Each pair gives a ratio (so a
    machine getting busier or quieter cancels out); the median ratio is kept, for
    wall-clock throughput and for CPU time (both threads) per request."""
    wall, cpu = [], []
    place = folder / f"service-{work}-{variant.replace(' ', '-')}"
    settings = VARIANTS[variant]
    with PredictionLog(url_for_sqlite(place / "log.db"), place / "spool", **settings) as log:
        ready(log)
        for _ in range(pairs):
            times = []
            for logged in (False, True):
                started, cpu_started = time.perf_counter(), time.process_time()
                requests_loop(requests, work, log if logged else None)
                if logged:
                    assert log.flush(300)
                times.append((time.perf_counter() - started, time.process_time() - cpu_started))
            (off, off_cpu), (on, on_cpu) = times
            wall.append(off / on)
            cpu.append(on_cpu / off_cpu)
        assert log.stats["written"] == pairs * requests + 1
    return {"throughput": statistics.median(wall), "cpu": statistics.median(cpu)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=50_000, help="for the per-call costs")
    parser.add_argument("--deliver", type=int, default=30_000, help="for the delivery rates")
    parser.add_argument("--batch", type=int, default=5000, help="rows per transaction")
    parser.add_argument(
        "--request-us", type=float, nargs="+", default=[250.0, 1000.0],
        help="CPU cost of a simulated request",
    )  # fmt: skip
    parser.add_argument("--large", type=int, default=100, help="1,000-record entries")
    parser.add_argument("--block-seconds", type=float, default=2.0, help="simulated service")
    parser.add_argument("--pairs", type=int, default=5, help="simulated service")
    parser.add_argument("--postgres-url", help="also deliver to this PostgreSQL database")
    args = parser.parse_args()
    # the delivery benchmark makes an unavailable database on purpose
    logging.getLogger("nbship.prediction_log").setLevel(logging.ERROR)

    folder = Path(tempfile.mkdtemp(prefix="nbship-bench-log-"))
    entries = [make_entry(i) for i in range(args.entries)]
    line = len(json.dumps(entries[0].inputs)) + len(json.dumps(entries[0].outputs))

    costs = call_costs(entries, folder)
    base = costs["list.append"][0]
    print(f"record() per call, {args.entries} entries (~{line + 200} bytes a spool line)")
    print(f"{'path':<30}{'µs/call':>9}{'best':>8}{'calls/s':>12}{'÷ list.append':>15}")
    for name, (micros, best) in costs.items():
        print(f"{name:<30}{micros:>9.2f}{best:>8.2f}{1e6 / micros:>12.0f}{base / micros:>15.4f}")

    deliver = [make_entry(i) for i in range(args.deliver)]
    floor = plain_sqlite(deliver, folder / "plain.db", args.batch)
    rates = delivery(deliver, url_for_sqlite(folder / "deliver.db"), folder / "sqlite", args.batch)
    print(f"\ndelivery to SQLite, {len(deliver)} entries, {args.batch} per transaction")
    print(f"{'path':<42}{'entries/s':>11}{'÷ plain':>9}")
    lines = {
        "plain sqlite3 executemany (floor)": floor,
        "spool drain (left while the db was down)": rates["drain"],
        "record + deliver (first record to commit)": rates["live"],
    }
    if args.postgres_url:
        pg = delivery(deliver, args.postgres_url, folder / "postgresql", args.batch)
        lines["PostgreSQL: spool drain"] = pg["drain"]
        lines["PostgreSQL: record + deliver"] = pg["live"]
    for name, rate in lines.items():
        print(f"{name:<42}{rate:>11.0f}{rate / floor:>9.2f}")

    big = large(args.large, folder)
    print(
        f"\n1,000-record requests (raw JSON, ~{big['line_kb']:.0f} KB a line),"
        f" {args.large} per delivery"
    )
    print(f"  record() per call{big['record_us']:>28.1f} µs")
    print(f"  delivery thread CPU per entry{big['cpu_ms']:>16.2f} ms")
    print(f"  plain sqlite3 CPU per entry (floor){big['plain_cpu_ms']:>10.2f} ms")
    print(f"  a Python thread beside it waited{big['wait_ms']:>13.2f} ms per entry")

    # the entries above are many long-lived objects: the garbage collector would walk
    # them over and over while the loops below allocate, and bill that to the log
    del entries, deliver
    gc.collect()
    print(
        f"\nsimulated service: {args.pairs} pairs of ~{args.block_seconds:g} s blocks"
        " (no logging / logging), delivery to SQLite in-process"
    )
    print(f"{'request CPU':<13}{'settings':<14}{'throughput on ÷ off':>21}{'CPU on ÷ off':>14}")
    for micros in args.request_us:
        work = calibrate(micros)
        requests = max(1000, round(args.block_seconds / (micros * 1e-6)))
        for name in VARIANTS:
            result = service(requests, work, folder, name, args.pairs)
            ratio = result["throughput"]
            verdict = "ok" if ratio >= 0.9 else "below 0.9"
            print(
                f"{f'{micros:.0f} µs':<13}{name:<14}{ratio:>11.3f} ({verdict:>9})"
                f"{result['cpu']:>14.3f}"
            )
    print("target: throughput with logging on ÷ off >= 0.9")


if __name__ == "__main__":
    main()
