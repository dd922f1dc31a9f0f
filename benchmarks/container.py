"""Container benchmark, one run: image build time cold (no base image) and warm (base
cached, app image rebuilt), image size, start-to-ready time, and single-record
throughput of the container divided by `bentoml serve` of the same bento on this machine.

    uv run python -m benchmarks.container [--bento bentos/penguins_classifier] [--requests 1500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.serve import load, records, source_rows
from nbship.deploy.container import (
    ContainerSettings,
    base_image_ref,
    build_image,
    image_name,
    inspect,
    podman_env,
    run_container,
    stop_container,
)
from tests.support import PROJECT, free_port, start, stop, wait_http


def timed_build(bento: Path, settings: ContainerSettings) -> float:
    started = time.perf_counter()
    build_image(bento, settings)
    return time.perf_counter() - started


def ready_time(image: str, settings: ContainerSettings) -> float:
    port = free_port()
    started = time.perf_counter()
    container_id = run_container(image, port, settings)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=60)
        return time.perf_counter() - started
    finally:
        stop_container(container_id, settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bento", type=Path, default=PROJECT / "bentos" / "penguins_classifier")
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--keep-base", action="store_true", help="skip the cold build")
    args = parser.parse_args()

    env_yaml = yaml.safe_load((PROJECT / "env.yaml").read_text())
    settings = ContainerSettings.from_env(PROJECT, env_yaml.get("container"))
    env = podman_env(settings)
    image, config = image_name(args.bento)

    cold = None
    if not args.keep_base:
        subprocess.run(["podman", "rmi", "-f", image, base_image_ref(settings)], env=env,
                       capture_output=True)  # fmt: skip
        cold = timed_build(args.bento, settings)
    subprocess.run(["podman", "rmi", "-f", image], env=env, capture_output=True)
    subprocess.run(["podman", "image", "prune", "-f"], env=env, capture_output=True)
    warm = timed_build(args.bento, settings)
    size_mb = inspect(image, settings)["Size"] / 1e6
    base_mb = inspect(base_image_ref(settings), settings)["Size"] / 1e6
    ready = [ready_time(image, settings) for _ in range(3)]

    rows = records(source_rows(PROJECT, config["columns"]), args.requests)
    results: dict[str, dict[int, dict]] = {}
    port = free_port()
    container_id = run_container(image, port, settings)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/readyz", timeout=60)
        asyncio.run(load(url, rows[:200], 4))
        results["container"] = {c: asyncio.run(load(url, rows, c)) for c in args.concurrency}
    finally:
        stop_container(container_id, settings)
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="nbship-bench-")) / "serve.log"
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    server = start([bentoml, "serve", str(args.bento), "--host", "127.0.0.1", "--port", str(port)],
                   log)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/readyz", server, timeout=90)
        asyncio.run(load(url, rows[:200], 4))
        results["bentoml serve"] = {c: asyncio.run(load(url, rows, c)) for c in args.concurrency}
    finally:
        stop(server)

    print(f"image {image} (model {config['model_tag']})")
    print(f"size: {size_mb:.0f} MB (base {base_mb:.0f} MB; target <= 450 MB)")
    if cold is not None:
        print(f"build cold (base image made): {cold:.1f} s")
    print(f"build warm (base cached):     {warm:.1f} s")
    print(f"start to /readyz 200: {', '.join(f'{t:.2f}' for t in ready)} s "
          f"(median {statistics.median(ready):.2f}; target <= 3 s)")  # fmt: skip
    print(f"{'server':<16}{'c':>3}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'fail':>6}")
    for name, by_c in results.items():
        for c, r in by_c.items():
            print(f"{name:<16}{c:>3}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
                  f"{r['failures']:>6}")  # fmt: skip
    for c in args.concurrency:
        ratio = results["container"][c]["rps"] / results["bentoml serve"][c]["rps"]
        print(f"container / bentoml serve, c={c}: {ratio:.2f}")
    print(json.dumps({"size_mb": round(size_mb), "cold_s": cold, "warm_s": round(warm, 1)}))


if __name__ == "__main__":
    main()
