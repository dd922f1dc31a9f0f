"""Soak benchmark: `bentoml serve` of the published bento, prediction log on, fed mixed
traffic at a steady rate for minutes: single records, 100-record batches, refused bodies
and feedback. The resident memory of the whole server tree (the arbiter and its workers)
is sampled every few seconds. The serving process freezes its start-up heap and raises
the collector's thresholds (`freeze_startup_heap` in nbship.serving.service); this is
what shows that memory still stays flat.

    uv run python -m benchmarks.soak [--bento bentos/penguins_classifier] [--minutes 2]
        [--rate 60] [--sample-seconds 5]

Reported: RSS after the warm-up (the first minute, or the first half of a shorter run)
and at the end, its growth in % and per 10,000 requests; p99 latency of the last
minute over that of the first minute (and of the minute after the warm-up); and every
request is a row of the log. Targets:
growth <= 5 % after the warm-up, p99 drift <= 1.2x.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil

from nbship.prediction_log import count, url_for_sqlite
from tests.support import PROJECT, free_port, start, stop, wait_http

BENTOML = str(Path(sys.executable).with_name("bentoml"))
ISLANDS, SEXES = ["Biscoe", "Dream", "Torgersen"], ["female", "male", None]
# the traffic mix: kind -> share of requests
MIX = {"single": 0.70, "batch": 0.15, "bad": 0.10, "feedback": 0.05}
BATCH = 100


def record(rng: random.Random) -> dict[str, object]:
    """A valid record, different each time (the live metrics and drift see a spread)."""
    return {
        "island": rng.choice(ISLANDS),
        "bill_length_mm": round(rng.uniform(32, 59), 1),
        "bill_depth_mm": round(rng.uniform(13, 21), 1),
        "flipper_length_mm": rng.randint(172, 231),
        "body_mass_g": rng.randint(2700, 6300),
        "sex": rng.choice(SEXES),
    }


def request_for(kind: str, rng: random.Random) -> tuple[str, object, int]:
    """(path, JSON body, the status it must be answered with)."""
    if kind == "single":
        return "/predict", record(rng), 200
    if kind == "batch":
        return "/predict", [record(rng) for _ in range(BATCH)], 200
    if kind == "bad":
        return "/predict", {**record(rng), "island": "Atlantis"}, 400
    return "/feedback", {"items": [{"record": record(rng), "label": "Gentoo"}]}, 200


@dataclass
class Run:
    started: float
    done: list[tuple[float, float, str, int]] = field(default_factory=list)  # t, s, kind, status
    unexpected: list[tuple[str, object]] = field(default_factory=list)
    rss: list[tuple[float, int, int]] = field(default_factory=list)  # t, bytes, requests


def tree_rss(pid: int) -> int:
    """Resident bytes of the server process and all its descendants."""
    try:
        parent = psutil.Process(pid)
        procs = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):  # a worker that just exited
            total += proc.memory_info().rss
    return total


async def traffic(url: str, pid: int, seconds: float, rate: float, sample: float) -> Run:
    rng = random.Random(16)
    kinds, weights = list(MIX), list(MIX.values())
    run = Run(started=time.monotonic())
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def one(kind: str) -> None:
            path, body, expected = request_for(kind, rng)
            t0 = time.monotonic()
            try:
                response = await client.post(path, json=body)
                status = response.status_code
            except httpx.HTTPError as exc:
                status, response = 0, None
                run.unexpected.append((kind, type(exc).__name__))
            if response is not None and status != expected:
                run.unexpected.append((kind, f"{status}: {response.text[:200]}"))
            run.done.append((t0 - run.started, time.monotonic() - t0, kind, status))

        async def sampler() -> None:
            while time.monotonic() - run.started < seconds:
                rss = await asyncio.to_thread(tree_rss, pid)
                run.rss.append((time.monotonic() - run.started, rss, len(run.done)))
                await asyncio.sleep(sample)

        sampling = asyncio.create_task(sampler())
        tasks: set[asyncio.Task[None]] = set()
        interval, n = 1 / rate, 0
        while (elapsed := time.monotonic() - run.started) < seconds:
            # a steady rate: the n-th request goes out at n / rate, however long others take
            if elapsed >= n * interval:
                task = asyncio.create_task(one(rng.choices(kinds, weights)[0]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
            else:
                await asyncio.sleep(min(interval, n * interval - elapsed))
        await asyncio.gather(*tasks)
        await sampling
    run.rss.append((time.monotonic() - run.started, tree_rss(pid), len(run.done)))
    return run


def p99(run: Run, start: float, end: float) -> float:
    ms = [s * 1000 for t, s, kind, _ in run.done if start <= t < end and kind != "batch"]
    return float(np.percentile(ms, 99)) if ms else float("nan")


def report(run: Run, seconds: float, logged: int) -> dict[str, float]:
    warmup = min(60.0, seconds / 2)
    after = [(t, rss, n) for t, rss, n in run.rss if t >= warmup]
    (_, rss0, n0), (_, rss1, n1) = after[0], after[-1]
    window = min(60.0, seconds / 2)
    first, last = p99(run, 0, window), p99(run, seconds - window, seconds)
    requests = n1 - n0
    predict = sum(1 for _, _, kind, _ in run.done if kind != "feedback")
    return {
        "requests": len(run.done),
        "rate_rps": len(run.done) / seconds,
        "unexpected": len(run.unexpected),
        "rss_start_mb": run.rss[0][1] / 1e6,
        "rss_after_warmup_mb": rss0 / 1e6,
        "rss_end_mb": rss1 / 1e6,
        "rss_growth_pct": (rss1 - rss0) / rss0 * 100,
        "rss_growth_mb_per_10k": (rss1 - rss0) / 1e6 / max(requests, 1) * 10_000,
        "p99_first_ms": first,
        "p99_last_ms": last,
        "p99_drift": last / first,
        # the first minute holds the warm-up: the minute after it, for a stricter ratio
        "p99_drift_after_warmup": last / p99(run, warmup, warmup + window),
        # /predict requests (answered or refused) and feedback items are rows
        "logged_over_sent": logged / len(run.done),
        "predict_requests": predict,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bento", type=Path, default=PROJECT / "bentos" / "penguins_classifier")
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=60.0, help="requests per second")
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    args = parser.parse_args()
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="nbship-soak-") as tmp:
        folder = Path(tmp)
        port = free_port()
        db = url_for_sqlite(folder / "log.db")
        env = {"BENTOML_HOME": str(folder / "home"), "NBSHIP_LOG_URL": db,
               "NBSHIP_LOG_SPOOL": str(folder / "spool")}  # fmt: skip
        cmd = [BENTOML, "serve", str(args.bento), "--host", "127.0.0.1", "--port", str(port)]
        proc = start(cmd, folder / "serve.log", env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/readyz", proc, timeout=90)
            run = asyncio.run(traffic(url, proc.pid, seconds, args.rate, args.sample_seconds))
        finally:
            stop(proc)  # SIGTERM: the log delivers what it holds on the way out
        figures = report(run, seconds, count(db))
    for key, value in figures.items():
        print(f"{key:>24}: {value:,.3f}" if isinstance(value, float) else f"{key:>24}: {value}")
    print("RSS samples (s, MB, requests):")
    print("  " + "  ".join(f"{t:.0f}:{rss / 1e6:.0f}:{n}" for t, rss, n in run.rss))
    growth_ok = figures["rss_growth_pct"] <= 5
    drift_ok = figures["p99_drift"] <= 1.2
    print(f"targets: RSS growth <= 5% {'ok' if growth_ok else 'MISSED'};"
          f" p99 drift <= 1.2x {'ok' if drift_ok else 'MISSED'}")  # fmt: skip
    for kind, what in run.unexpected[:10]:
        print(f"unexpected answer to {kind}: {what}")
    if run.unexpected or not (growth_ok and drift_ok):
        sys.exit(1)


if __name__ == "__main__":
    main()
