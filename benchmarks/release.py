"""Release benchmark: POST /predict latency and throughput with no release, with a shadow
predicting every request, and with a canary answering a share of them, on one server in
one run.

    uv run python -m benchmarks.release [--requests 2000] [--concurrency 8] [--share 0.2]
                                        [--rounds 3] [--pace 0.6]

A throwaway copy of the project is built twice (benchmarks.swap), so its registry holds
two versions of one model. One `bentoml serve` of the published bento follows the
registry (every 0.2 s); the same load (single records, keep-alive connections) runs with
no release, with the second version as a shadow of every request, and as a canary, in
`--rounds` interleaved rounds (the machine's drift hits every phase alike). Those phases
run the server at its capacity (closed loop: each connection sends its next request as
its answer arrives), where any work added shows as queueing; the `paced` phases send
requests at a fixed rate, `--pace` times that round's steady req/s (open loop, latency
counted from when each request was due), as a service below its capacity sees them.
Prints the median req/s, p50 and p99 per phase and their ratios to the steady phase of
the same loop. The target: a shadow costs the champion's p99 at most 1.3x. Shadow
answers logged vs dropped say whether the shadow kept up.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics

import httpx

from benchmarks.serve import load, paced_load
from benchmarks.swap import following_server, request_rows
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
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--share", type=float, default=0.2, help="the canary's share")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of phases")
    parser.add_argument("--pace", type=float, default=0.6,
                        help="the paced phases' rate, a share of the steady req/s")  # fmt: skip
    args = parser.parse_args()

    scratch, registry_url, url, first, second, server = following_server("nbship-bench-release-")
    project = scratch / "project"
    canary = f"canary {args.share:.0%}"
    names = ["steady", "with shadow", canary, "steady, paced", "shadow, paced"]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    try:
        wait_http(f"{url}/readyz", server, timeout=120)
        rows = request_rows(project, args.requests)
        asyncio.run(load(url, rows[:300], args.concurrency))  # warm-up
        # the phases interleaved, `rounds` times: the machine's drift hits them all alike
        for _ in range(args.rounds):
            runs["steady"].append(asyncio.run(load(url, rows, args.concurrency)))
            rate = args.pace * runs["steady"][-1]["rps"]
            runs["steady, paced"].append(asyncio.run(paced_load(url, rows, rate)))
            with Registry(registry_url) as registry:
                registry.start_release(second, "shadow", 1.0, actor="benchmark", reason="b")
            follow(url, "shadow")
            runs["with shadow"].append(asyncio.run(load(url, rows, args.concurrency)))
            runs["shadow, paced"].append(asyncio.run(paced_load(url, rows, rate)))
            with Registry(registry_url) as registry:
                registry.start_release(second, "canary", args.share, actor="benchmark",
                                       reason="b")  # fmt: skip
            follow(url, "canary")
            runs[canary].append(asyncio.run(load(url, rows, args.concurrency)))
            with Registry(registry_url) as registry:
                registry.end_release(NAME, "aborted", actor="benchmark", reason="done")
            follow(url, None)
        with Registry(registry_url) as registry:  # the last shadow's counters
            registry.start_release(second, "shadow", 1.0, actor="benchmark", reason="b")
        follow(url, "shadow")
        shadow = httpx.get(f"{url}/info", timeout=10).json()["release"]["shadow"]
    finally:
        stop(server)
    phases = {
        name: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for name, results in runs.items()
    }
    print(f"champion {first}, release {second}; {args.requests} requests per phase, "
          f"c={args.concurrency} (paced: {args.pace:g} x steady req/s, up to 32 "
          f"connections), medians of {args.rounds} interleaved rounds")  # fmt: skip
    print(f"{'phase':<15}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'fail':>6}"
          f"{'p99 ÷ steady':>14}{'req/s ÷ steady':>16}")  # fmt: skip
    for name, r in phases.items():
        steady = phases["steady, paced" if "paced" in name else "steady"]
        print(f"{name:<15}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
              f"{r['failures']:>6.0f}{r['p99_ms'] / steady['p99_ms']:>14.2f}"
              f"{r['rps'] / steady['rps']:>16.2f}")  # fmt: skip
    print(f"shadow (cumulative): {shadow['ok']} answers logged, {shadow['dropped']} dropped"
          f" (queue full), {shadow['error']} errors")  # fmt: skip
    for loop, (with_shadow, steady_name) in {
        "at capacity": ("with shadow", "steady"),
        f"paced at {args.pace:g} x capacity": ("shadow, paced", "steady, paced"),
    }.items():
        ratio = phases[with_shadow]["p99_ms"] / phases[steady_name]["p99_ms"]
        print(f"p99 with a shadow ÷ steady, {loop}: {ratio:.2f} (target <= 1.3)")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
