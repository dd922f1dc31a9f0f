"""Serving benchmark: single-record POST /predict against `bentoml serve` of the
published bento, at several concurrency levels, each divided by the in-process rate
of the same model on the same records measured in the same run.

    uv run python -m benchmarks.serve [--bento bentos/penguins_classifier] [--requests 2000]

The in-process floor is `model.predict_proba` on a ready one-row DataFrame (no JSON,
no HTTP, no validation): what a user calling their own pipeline row by row pays.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import joblib
import numpy as np
import pandas as pd

from tests.support import PROJECT, free_port, start, stop, wait_http


def records(columns: list[str], n: int) -> list[dict]:
    import palmerpenguins

    df = palmerpenguins.load_penguins()[columns]
    rows = json.loads(df.to_json(orient="records"))
    return [rows[i % len(rows)] for i in range(n)]


def in_process(model, columns: list[str], rows: list[dict]) -> dict[str, float]:
    frames = [pd.DataFrame([r], columns=columns) for r in rows]
    for frame in frames[:50]:
        model.predict_proba(frame)
    times = []
    started = time.perf_counter()
    for frame in frames:
        t0 = time.perf_counter()
        model.predict_proba(frame)
        times.append(time.perf_counter() - t0)
    total = time.perf_counter() - started
    return summarise(times, total, failures=0)


def summarise(times: list[float], total: float, failures: int) -> dict[str, float]:
    ms = np.array(times) * 1000
    return {
        "rps": len(times) / total,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "failures": failures,
    }


async def load(url: str, rows: list[dict], concurrency: int) -> dict[str, float]:
    """`concurrency` keep-alive workers share the rows; bounded by their count."""
    queue: asyncio.Queue[dict] = asyncio.Queue()
    for row in rows:
        queue.put_nowait(row)
    times: list[float] = []
    failures = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal failures
            while not queue.empty():
                row = queue.get_nowait()
                t0 = time.perf_counter()
                response = await client.post("/predict", json=row)
                times.append(time.perf_counter() - t0)
                failures += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        total = time.perf_counter() - started
    return summarise(times, total, failures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bento", type=Path, default=PROJECT / "bentos" / "penguins_classifier")
    parser.add_argument("--requests", type=int, default=2000, help="per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()

    config = json.loads((args.bento / "src" / "serving.json").read_text())
    name, version = config["model_tag"].split(":")
    model = joblib.load(args.bento / "models" / name / version / "saved_model.pkl")
    columns = config["columns"]
    rows = records(columns, args.requests)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="nbship-bench-")) / "serve.log"
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    server = start(
        [bentoml, "serve", str(args.bento), "--host", "127.0.0.1", "--port", str(port)], log
    )
    try:
        wait_http(f"{url}/readyz", server, timeout=90)
        asyncio.run(load(url, rows[:200], 4))  # warm-up
        floor = in_process(model, columns, rows)
        results = {c: asyncio.run(load(url, rows, c)) for c in args.concurrency}
    finally:
        stop(server)

    print(f"model {config['model_tag']}, {args.requests} single-record requests per level")
    print(f"{'path':<26}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'fail':>6}{'÷ in-process':>14}")
    print(
        f"{'in-process predict_proba':<26}{floor['rps']:>9.0f}{floor['p50_ms']:>9.2f}"
        f"{floor['p99_ms']:>9.2f}{0:>6}{1.0:>14.2f}"
    )
    for c, r in results.items():
        print(
            f"{'bentoml serve, c=' + str(c):<26}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}"
            f"{r['p99_ms']:>9.2f}{r['failures']:>6}{r['rps'] / floor['rps']:>14.2f}"
        )
    print(
        f"median ratio: {statistics.median(r['rps'] / floor['rps'] for r in results.values()):.2f}"
    )


if __name__ == "__main__":
    main()
