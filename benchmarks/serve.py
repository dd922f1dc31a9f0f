"""Serving benchmark: POST /predict against `bentoml serve` of the published bento
(prediction log on, then off, then on without httptools and uvloop) and against a bare
BentoML service of the same model:
single records at several concurrency levels and 1,000-record batches, each divided by
the in-process rate of the same model on the same records measured in the same run.

    uv run python -m benchmarks.serve [--bento bentos/penguins_classifier] [--requests 2000]
    uv run python -m benchmarks.serve --example diabetes   # or adelie: tests/projects/

`--example` first builds that test project in a scratch folder (a regression model; a
user-written pipeline with a transformer of the project's own, which the compiled plan
cannot take, so scikit-learn serves it) and benchmarks its bento. The in-process floor is
the model's `predict_proba` (a classifier) or `predict` (a regressor) on a ready one-row
DataFrame (no JSON, no HTTP, no validation): what a user calling their own pipeline row
by row pays.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import joblib
import numpy as np
import pandas as pd

from tests.support import PROJECT, free_port, start, stop, wait_http


def source_rows(project: Path, columns: list[str]) -> list[dict]:
    """The records of the project's data source (env.yaml `data.source`)."""
    from nbship.config import load
    from nbship.pipeline.data import load_source

    source = load(project).data.source
    if Path(source).suffix in (".csv", ".parquet") and not Path(source).is_absolute():
        source = str(project / source)
    df = load_source(source)[columns]
    return json.loads(df.to_json(orient="records"))


def records(rows: list[dict], n: int) -> list[dict]:
    return [rows[i % len(rows)] for i in range(n)]


def predictor(model, task: str):
    """What the in-process floor and the bare service call: a classifier's probabilities,
    a regressor's values."""
    return model.predict_proba if task == "classification" else model.predict


def in_process(predict, columns: list[str], rows: list[dict]) -> dict[str, float]:
    frames = [pd.DataFrame([r], columns=columns) for r in rows]
    for frame in frames[:50]:
        predict(frame)
    times = []
    started = time.perf_counter()
    for frame in frames:
        t0 = time.perf_counter()
        predict(frame)
        times.append(time.perf_counter() - t0)
    total = time.perf_counter() - started
    return summarise(times, total, failures=0)


JSON_HEADERS = {"Content-Type": "application/json"}


def summarise(times: list[float], total: float, failures: int) -> dict[str, float]:
    ms = np.array(times) * 1000
    return {
        "rps": len(times) / total,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "failures": failures,
    }


def session(url: str, connections: int) -> aiohttp.ClientSession:
    """Keep-alive connections to `url`, at most `connections` at once."""
    connector = aiohttp.TCPConnector(limit=connections)
    return aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(30))


async def answered(client: aiohttp.ClientSession, path: str, payload: bytes) -> bool:
    """POSTs one JSON body; whether it was answered 200."""
    try:
        async with client.post(path, data=payload, headers=JSON_HEADERS) as r:
            await r.read()
            return r.status == 200
    except aiohttp.ClientError:
        return False


async def load(
    url: str,
    bodies: list[object],
    concurrency: int,
    wrap: str | None = None,
    path: str = "/predict",
) -> dict[str, float]:
    """`concurrency` keep-alive connections share the bodies; bounded by their count.
    `wrap` sends `{wrap: [records]}` (the bare reference's and MLflow's inputs) instead of
    the body, to `path`.

    aiohttp with bodies encoded up front: an httpx client costs more CPU per request
    than the server under test and capped what this measured (about 600 req/s)."""
    payloads = [
        json.dumps({wrap: body if isinstance(body, list) else [body]} if wrap else body).encode()
        for body in bodies
    ]
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for payload in payloads:
        queue.put_nowait(payload)
    times: list[float] = []
    failures = 0
    async with session(url, concurrency) as client:

        async def worker() -> None:
            nonlocal failures
            while not queue.empty():
                payload = queue.get_nowait()
                t0 = time.perf_counter()
                # awaited apart: `failures += await ...` reads failures before the await
                ok = await answered(client, path, payload)
                failures += not ok
                times.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        total = time.perf_counter() - started
    return summarise(times, total, failures)


async def paced_load(url: str, bodies: list[object], rate: float, connections: int = 32,
                     path: str = "/predict") -> dict[str, float]:  # fmt: skip
    """Open loop: a request every 1/`rate` s whatever the pace of the answers (what a
    service below its capacity sees; `load` runs it at its capacity), over at most
    `connections` keep-alive connections. A latency counts from when its request was
    due, so a pause of the server counts for every request it held back too."""
    payloads = [json.dumps(body).encode() for body in bodies]
    times: list[float] = []
    failures = 0
    async with session(url, connections) as client:

        async def one(payload: bytes, due: float) -> None:
            nonlocal failures
            await asyncio.sleep(due - time.perf_counter())
            ok = await answered(client, path, payload)
            failures += not ok
            times.append(time.perf_counter() - due)

        started = time.perf_counter()
        await asyncio.gather(*(one(p, started + i / rate) for i, p in enumerate(payloads)))
        total = time.perf_counter() - started
    return summarise(times, total, failures)


def in_process_batch(predict, columns: list[str], rows: list[dict], size: int) -> float:
    """Rows per second of the model on ready `size`-row DataFrames."""
    frame = pd.DataFrame(rows[:size], columns=columns)
    predict(frame)
    repeats = 20
    started = time.perf_counter()
    for _ in range(repeats):
        predict(frame)
    return repeats * size / (time.perf_counter() - started)


def build_example(name: str) -> tuple[Path, dict[str, str]]:
    """tests/projects/<name> built in a scratch folder; its project folder and the
    environment (BentoML home, PYTHONPATH) to serve it with."""
    from tests.conftest import build, overlay_project

    scratch = Path(tempfile.mkdtemp(prefix=f"nbship-bench-{name}-"))
    project = build(overlay_project(name, scratch / "project", scratch / "bentoml-home"))
    return project.path, {"BENTOML_HOME": project.env["BENTOML_HOME"]}


def without_server_speedups() -> Path:
    """A folder whose `httptools` and `uvloop` fail to import: on PYTHONPATH, uvicorn's
    "auto" choice falls back to h11 and asyncio, as when they are not installed."""
    folder = Path(tempfile.mkdtemp(prefix="nbship-bench-h11-"))
    for name in ("httptools", "uvloop"):
        (folder / name).mkdir()
        (folder / name / "__init__.py").write_text(f"raise ImportError('{name} hidden')\n")
    return folder


def serve(cmd: list[str], url: str, env: dict[str, str] | None = None):
    log = Path(tempfile.mkdtemp(prefix="nbship-bench-")) / "serve.log"
    server = start(cmd, log, env=env)
    wait_http(f"{url}/readyz", server, timeout=90)
    return server


def measure(
    url: str,
    rows: list[dict],
    levels: list[int],
    batches: list[list[dict]],
    wrap: str | None = None,
    path: str = "/predict",
):
    asyncio.run(load(url, rows[:200], 4, wrap, path))  # warm-up
    single = {c: asyncio.run(load(url, rows, c, wrap, path)) for c in levels}
    asyncio.run(load(url, batches[:3], 1, wrap, path))  # the first large request costs more
    batch = asyncio.run(load(url, batches, 1, wrap, path))
    rows_per_s = batch["rps"] * len(batches[0])
    return single, rows_per_s, batch["failures"]


def measure_mlflow(model, rows, levels, batches):
    """`mlflow models serve` of the same model (one worker, MLflow's scoring server), or
    None when MLflow is not installed: `uv run --group bench-mlflow python -m ...`."""
    try:
        import mlflow.sklearn
    except ImportError:
        print("mlflow models serve: skipped (run with `uv run --group bench-mlflow`)")
        return None
    folder = Path(tempfile.mkdtemp(prefix="nbship-bench-mlflow-")) / "model"
    # cloudpickle: MLflow's default for scikit-learn is skops, which mlflow-skinny lacks
    mlflow.sklearn.save_model(model, folder, serialization_format="cloudpickle")
    venv_bin = Path(sys.executable).parent
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start(
        [str(venv_bin / "mlflow"), "models", "serve", "-m", str(folder), "--env-manager",
         "local", "-w", "1", "-h", "127.0.0.1", "-p", str(port)],
        folder.parent / "serve.log",
        # it starts uvicorn through the shell, found on PATH; no telemetry
        env={"PATH": f"{venv_bin}:{os.environ['PATH']}", "MLFLOW_DISABLE_TELEMETRY": "true",
             "DO_NOT_TRACK": "true"},
    )  # fmt: skip
    try:
        wait_http(f"{url}/ping", server, timeout=120)
        return measure(url, rows, levels, batches, wrap="dataframe_records", path="/invocations")
    finally:
        stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bento", type=Path, default=PROJECT / "bentos" / "penguins_classifier")
    parser.add_argument("--example", help="build tests/projects/<name> and benchmark its bento")
    parser.add_argument("--requests", type=int, default=2000, help="per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    # a few seconds of them: the log's thread delivers once a second, and a full garbage
    # collection every so often costs a large request ~0.1 s; 30 requests (0.3 s) saw
    # either or neither, and the ratios swung by 0.25 from one run to the next
    parser.add_argument("--batches", type=int, default=300, help="1,000-record requests")
    args = parser.parse_args()

    project, serve_env = PROJECT, {}
    if args.example:
        project, serve_env = build_example(args.example)
        from nbship.project import Project

        args.bento = Project.load(project).published_bento
    sys.path.insert(0, str(project / "src"))  # a project's own code: its model, its loader
    config = json.loads((args.bento / "src" / "serving.json").read_text())
    name, version = config["model_tag"].split(":")
    model_file = args.bento / "models" / name / version / "saved_model.pkl"
    model = joblib.load(model_file)
    task = config.get("task", "classification")
    predict = predictor(model, task)
    columns = config["columns"]
    source = source_rows(project, columns)
    rows = records(source, args.requests)
    batches = [records(source, 1000)] * args.batches  # (records() gives the same rows)
    floor = in_process(predict, columns, rows)
    floor_batch = in_process_batch(predict, columns, batches[0], 1000)

    bentoml = str(Path(sys.executable).with_name("bentoml"))
    results = {}
    scratch = Path(tempfile.mkdtemp(prefix="nbship-bench-log-"))
    logging_on = {
        "NBSHIP_LOG_URL": f"sqlite:///{scratch / 'log.db'}",
        "NBSHIP_LOG_SPOOL": str(scratch / "spool"),
    }
    logging_off = {"NBSHIP_LOG_URL": "off"}
    # what every bento served with before nbship required httptools and uvloop: uvicorn's
    # pure-Python h11 parser on asyncio's own loop
    hidden = os.pathsep.join(filter(None, [str(without_server_speedups()),
                                           os.environ.get("PYTHONPATH")]))  # fmt: skip
    pure_python = {**logging_on, "PYTHONPATH": hidden}
    runs = (("nbship", logging_on), ("nbship, log off", logging_off),
            ("nbship, h11 + asyncio", pure_python))  # fmt: skip
    for label, env in runs:
        env = {**serve_env, **env}
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [bentoml, "serve", str(args.bento), "--host", "127.0.0.1", "--port", str(port)]
        server = serve(cmd, url, env=env)
        try:
            results[label] = measure(url, rows, args.concurrency, batches)
            inference = httpx.get(f"{url}/info").json().get("inference", "?")
        finally:
            stop(server)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = serve(
        [
            bentoml,
            "serve",
            "benchmarks.bare_service:Bare",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        url,
        env={
            "NBSHIP_BENCH_MODEL": str(model_file),
            "NBSHIP_BENCH_TASK": task,
            **({"PYTHONPATH": str(project / "src")} if (project / "src").is_dir() else {}),
        },
    )
    try:
        results["bare BentoML"] = measure(url, rows, args.concurrency, batches, wrap="records")
    finally:
        stop(server)
    if mlflow_peer := measure_mlflow(model, rows, args.concurrency, batches):
        results["mlflow models serve"] = mlflow_peer

    print(
        f"model {config['model_tag']} ({task}; {inference});"
        f" {args.requests} single-record requests per level"
    )
    print(f"{'path':<28}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'fail':>6}{'÷ in-process':>14}")
    print(
        f"{'in-process, one row':<28}{floor['rps']:>9.0f}{floor['p50_ms']:>9.2f}"
        f"{floor['p99_ms']:>9.2f}{0:>6}{1.0:>14.2f}"
    )
    for name_, (single, _, _) in results.items():
        for c, r in single.items():
            print(
                f"{name_ + ', c=' + str(c):<28}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}"
                f"{r['p99_ms']:>9.2f}{r['failures']:>6}{r['rps'] / floor['rps']:>14.2f}"
            )
    print(f"\n1,000-record batches: in-process {floor_batch:,.0f} rows/s")
    for name_, (_, rows_per_s, failures) in results.items():
        print(
            f"{name_:<28}{rows_per_s:>12,.0f} rows/s  fail {failures}"
            f"  ÷ in-process {rows_per_s / floor_batch:.2f}"
        )
    ours, bare = results["nbship"][0], results["bare BentoML"][0]
    peer = results.get("mlflow models serve", (None,))[0]
    quiet = results["nbship, log off"][0]
    pure = results["nbship, h11 + asyncio"][0]
    for c in args.concurrency:
        print(
            f"c={c}: nbship ÷ bare BentoML {ours[c]['rps'] / bare[c]['rps']:.2f},"
            f" logging on ÷ off {ours[c]['rps'] / quiet[c]['rps']:.2f},"
            f" httptools + uvloop ÷ h11 + asyncio {ours[c]['rps'] / pure[c]['rps']:.2f}"
            + (f", nbship ÷ mlflow {ours[c]['rps'] / peer[c]['rps']:.2f}" if peer else "")
        )


if __name__ == "__main__":
    main()
