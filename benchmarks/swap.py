"""Hot-swap benchmark: latency of POST /predict while the server switches models, against
the same server's steady state measured in the same run.

    uv run python -m benchmarks.swap [--requests 3000] [--concurrency 8] [--every 1.0]

A throwaway copy of the project is built twice (the normal candidates, then the
winner's estimator with other hyperparameters), so its registry holds two versions. One
`bentoml serve` of the published bento follows the registry's champion (polling every
0.2 s). The same load (single records, keep-alive connections) runs steady, then while
the champion flips between the two versions every `--every` seconds, then while
`nbship retrain` runs the whole pipeline in the background on the same machine. Prints
p50/p99 for each phase, the ratios to steady (the target: p99 during swaps within 2x
steady), failures (target 0), and how many swaps the server made.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from benchmarks.serve import load, records, source_rows
from nbship.registry.versions import Registry
from tests.support import copy_sources, free_port, start, stop, wait_http

OTHER = {"knn": {"n_neighbors": 5}, "logreg": {"C": 0.5}, "forest": {"max_depth": 5},
         "hist_gb": {"max_iter": 80}}  # fmt: skip


def built_copy(dest: Path, env: dict[str, str]) -> tuple[str, str]:
    """Builds a copy of the project twice; returns the two registered model tags."""
    copy_sources(dest)
    nbship = str(Path(sys.executable).with_name("nbship"))
    tags = []
    for again in (False, True):
        if again:  # the same estimator as the first winner, other hyperparameters
            cfg = yaml.safe_load((dest / "env.yaml").read_text())
            winner = json.loads((dest / "build" / "winner.json").read_text())["winner"]
            cfg["candidates"] = [winner]
            cfg["hyperparams"][winner] = {**cfg["hyperparams"][winner], **OTHER[winner]}
            (dest / "env.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        subprocess.run([nbship, "build"], cwd=dest, env=env, check=True, capture_output=True)
        tags.append(json.loads((dest / "build" / "package.json").read_text())["model_tag"])
    return tags[0], tags[1]


def flip(registry_url: str, tags: tuple[str, str], every: float, done: threading.Event) -> int:
    """Makes each tag champion in turn until `done`; returns how many times."""
    flips = 0
    with Registry(registry_url) as registry:
        while not done.wait(every):
            tag = tags[(flips + 1) % 2]  # the other one
            registry.promote(tag, actor="benchmark", reason="swap benchmark", forced=True)
            flips += 1
    return flips


def run_state(project: Path, run_id: str, key: str = "state") -> str | None:
    from nbship.operate.retrain import runs

    return next((r.get(key) for r in runs(project) if r["run_id"] == run_id), "starting")


def request_rows(project: Path, n: int) -> list[dict]:
    """`n` single-record request bodies: the project's source rows, its features only."""
    columns = yaml.safe_load((project / "env.yaml").read_text())["features"]
    return records(source_rows(project, [*columns["numeric"], *columns["categorical"]]), n)


def following_server(prefix: str) -> tuple[Path, str, str, str, str, subprocess.Popen[bytes]]:
    """A scratch copy of the project built twice (`built_copy`) and one `bentoml serve` of
    its published bento following its registry every 0.2 s, with a prediction log:
    (scratch folder, registry URL, server URL, first tag (champion), second tag, server)."""
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    project = scratch / "project"
    env = {"BENTOML_HOME": str(scratch / "bentoml")}
    first, second = built_copy(project, {**os.environ, **env})
    registry_url = f"sqlite:///{project / 'registry.db'}"
    with Registry(registry_url) as registry:
        if registry.alias("penguins_classifier", "champion").tag != first:
            registry.promote(first, actor="benchmark", reason="start", forced=True)
    port = free_port()
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    server = start(
        [bentoml, "serve", str(project / "bentos" / "penguins_classifier"), "--host",
         "127.0.0.1", "--port", str(port)], scratch / "serve.log",
        env={**env, "NBSHIP_REGISTRY_URL": registry_url, "NBSHIP_RELOAD_SECONDS": "0.2",
             "NBSHIP_MODEL_STORE": str(project / "model-store"),
             "NBSHIP_LOG_URL": f"sqlite:///{scratch / 'log.db'}",
             "NBSHIP_LOG_SPOOL": str(scratch / "spool")},
        cwd=project,
    )  # fmt: skip
    return scratch, registry_url, f"http://127.0.0.1:{port}", first, second, server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--every", type=float, default=1.0, help="seconds between swaps")
    args = parser.parse_args()

    scratch, registry_url, url, first, second, server = following_server("nbship-bench-swap-")
    project = scratch / "project"
    log = scratch / "serve.log"
    try:
        wait_http(f"{url}/readyz", server, timeout=120)
        rows = request_rows(project, args.requests)
        asyncio.run(load(url, rows[:300], args.concurrency))  # warm-up
        steady = asyncio.run(load(url, rows, args.concurrency))
        swaps_before = log.read_text().count("now serving")
        done = threading.Event()
        flips: list[int] = []
        flipper = threading.Thread(
            target=lambda: flips.append(flip(registry_url, (first, second), args.every, done))
        )
        flipper.start()
        swapping = asyncio.run(load(url, rows, args.concurrency))
        done.set()
        flipper.join()
        swaps = log.read_text().count("now serving") - swaps_before
        # a retrain (the whole pipeline, niced) on the same two cores as server and load
        from nbship.operate.retrain import start as start_retrain

        run = start_retrain(project)
        started = time.monotonic()
        retraining = asyncio.run(load(url, rows * 10, args.concurrency))
        load_seconds = time.monotonic() - started
        while run_state(project, run["run_id"]) in ("starting", "running"):
            time.sleep(0.5)
        overlapped = run_state(project, run["run_id"], "finished")
        retrain_seconds = time.monotonic() - started
    finally:
        stop(server)
    print(f"models {first} <-> {second}; {args.requests} requests per phase, "
          f"c={args.concurrency}, a swap every {args.every} s")  # fmt: skip
    print(f"{'phase':<16}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'fail':>6}")
    for name, r in (("steady", steady), ("during swaps", swapping),
                    ("during retrain", retraining)):  # fmt: skip
        print(f"{name:<16}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
              f"{r['failures']:>6}")  # fmt: skip
    print(f"champion changed {flips[0]} times; the server swapped {swaps} times")
    print(f"p99 during swaps ÷ steady: {swapping['p99_ms'] / steady['p99_ms']:.2f} (target <= 2)")
    print(f"p99 during a retrain ÷ steady: {retraining['p99_ms'] / steady['p99_ms']:.2f}"
          f" ({10 * args.requests} requests in {load_seconds:.1f} s; the retrain"
          f" finished at {overlapped}, {retrain_seconds:.1f} s after it started)")  # fmt: skip
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
