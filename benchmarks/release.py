"""Release benchmark: POST /predict latency and throughput with no release, with a shadow
predicting every request, and with a canary answering a share of them, on one server in
one run.

    uv run python -m benchmarks.release [--requests 3000] [--concurrency 8] [--share 0.2]

A throwaway copy of the project is built twice (benchmarks.swap), so its registry holds
two versions of one model. One `bentoml serve` of the published bento follows the
registry (every 0.2 s); the same load (single records, keep-alive connections) runs with
no release, with the second version as a shadow of every request, and as a canary.
Prints req/s, p50 and p99 per phase and the ratios to the steady phase. The target: a
shadow costs the champion's p99 at most 1.3x. Shadow answers logged vs dropped say
whether the shadow kept up.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time

import httpx
import yaml

from benchmarks.serve import load, records
from benchmarks.swap import following_server
from nbship.registry.versions import Registry
from tests.support import stop, wait_http, wait_until

NAME = "penguins_classifier"


def follow(url: str, kind: str | None) -> None:
    """Waits until the server runs a release of `kind` (None: no release)."""

    def check() -> bool:
        release = httpx.get(f"{url}/info", timeout=10).json()["release"]
        return release is None if kind is None else (release or {}).get("kind") == kind

    if not wait_until(check, 30):
        raise RuntimeError(f"the server did not follow the {kind} release")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--share", type=float, default=0.2, help="the canary's share")
    args = parser.parse_args()

    scratch, registry_url, url, first, second, server = following_server("nbship-bench-release-")
    project = scratch / "project"
    phases = {}
    try:
        wait_http(f"{url}/readyz", server, timeout=120)
        columns = yaml.safe_load((project / "env.yaml").read_text())["features"]
        rows = records([*columns["numeric"], *columns["categorical"]], args.requests)
        asyncio.run(load(url, rows[:300], args.concurrency))  # warm-up
        phases["steady"] = asyncio.run(load(url, rows, args.concurrency))
        with Registry(registry_url) as registry:
            registry.start_release(second, "shadow", 1.0, actor="benchmark", reason="bench")
        follow(url, "shadow")
        asyncio.run(load(url, rows[:300], args.concurrency))  # the shadow model warms up
        phases["with shadow"] = asyncio.run(load(url, rows, args.concurrency))
        time.sleep(1)  # what the shadow still had queued
        shadow = httpx.get(f"{url}/info", timeout=10).json()["release"]["shadow"]
        with Registry(registry_url) as registry:
            registry.start_release(second, "canary", args.share, actor="benchmark", reason="b")
        follow(url, "canary")
        phases[f"canary {args.share:.0%}"] = asyncio.run(load(url, rows, args.concurrency))
        with Registry(registry_url) as registry:
            registry.end_release(NAME, "aborted", actor="benchmark", reason="done")
        follow(url, None)
        phases["steady again"] = asyncio.run(load(url, rows, args.concurrency))
    finally:
        stop(server)
    steady = phases["steady"]
    print(f"champion {first}, release {second}; {args.requests} requests per phase, "
          f"c={args.concurrency}")  # fmt: skip
    print(f"{'phase':<14}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'fail':>6}"
          f"{'p99 ÷ steady':>14}{'req/s ÷ steady':>16}")  # fmt: skip
    for name, r in phases.items():
        print(f"{name:<14}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
              f"{r['failures']:>6}{r['p99_ms'] / steady['p99_ms']:>14.2f}"
              f"{r['rps'] / steady['rps']:>16.2f}")  # fmt: skip
    print(f"shadow: {shadow['ok']} answers logged, {shadow['dropped']} dropped (queue full),"
          f" {shadow['error']} errors")  # fmt: skip
    ratio = phases["with shadow"]["p99_ms"] / steady["p99_ms"]
    print(f"p99 with a shadow ÷ steady: {ratio:.2f} (target <= 1.3)")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
