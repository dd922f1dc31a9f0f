"""Release benchmark: POST /predict latency and throughput with no release, with a shadow
predicting every request, and with a canary answering a share of them, on one server in
one run.

    uv run python -m benchmarks.release [--requests 2000] [--concurrency 8] [--share 0.2]
                                        [--rounds 3] [--pace 0.6] [--python-ms 20]

A throwaway copy of the project is built twice (benchmarks.swap), so its registry holds
two versions of one model. One `bentoml serve` of the published bento follows the
registry (every 0.2 s); the same load (single records, keep-alive connections) runs with
no release, with the second version as a shadow of every request, and as a canary, in
`--rounds` interleaved rounds (the machine's drift hits every phase alike). Those phases
run the server at its capacity (closed loop: each connection sends its next request as
its answer arrives), where any work added shows as queueing; the `paced` phases send
requests at a fixed rate, `--pace` times that round's steady req/s (open loop, latency
counted from when each request was due), as a service below its capacity sees them.
The `python shadow` phases shadow with the second version wrapped in a model that also
computes in pure Python for `--python-ms` every call, holding the GIL all that time (a
user's own Python step): a shadow in a thread of the server would stall its answers.
Prints the median req/s, p50 and p99 per phase and their ratios to the steady phase of
the same loop. The target: a shadow costs the champion's p99 at most 1.3x. Shadow
answers logged vs dropped say whether the shadow kept up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
from pathlib import Path

import httpx

from benchmarks.serve import load, paced_load
from benchmarks.swap import following_server, request_rows
from nbship.registry.versions import Registry
from tests.support import PROJECT, register_like, stop, wait_http, wait_until

NAME = "penguins_classifier"


def follow(url: str, kind: str | None, tag: str | None = None) -> None:
    """Waits until the server runs a release of `kind` (None: no release) of `tag`."""

    def check() -> bool:
        release = httpx.get(f"{url}/info", timeout=10).json()["release"]
        if kind is None:
            return release is None
        return (release or {}).get("kind") == kind and tag in (None, release.get("tag"))

    if not wait_until(check, 60):
        raise RuntimeError(f"the server did not follow the {kind} release")


def python_bound(registry_url: str, store: Path, like: str, seconds: float) -> str:
    """Registers `like`'s model wrapped to compute in Python for `seconds` every call."""
    import bentoml

    from tests.release_models import Busy

    busy = Busy(bentoml.sklearn.load_model(like), seconds)
    return register_like(registry_url, str(store), like, busy, "python-bound")


def resident(pid: int | None) -> str:
    """A process's resident memory, in words (Linux's /proc; elsewhere unknown)."""
    status = Path(f"/proc/{pid}/status")
    if pid is None or not status.exists():
        return "memory unknown"
    kib = next(int(line.split()[1]) for line in status.read_text().splitlines()
               if line.startswith("VmRSS:"))  # fmt: skip
    return f"{kib / 1024:.0f} MiB resident"


def start_release(registry_url: str, url: str, tag: str, kind: str, share: float) -> None:
    with Registry(registry_url) as registry:
        registry.start_release(tag, kind, share, actor="benchmark", reason="b")
    follow(url, kind, tag)


def end_release(registry_url: str, url: str) -> None:
    with Registry(registry_url) as registry:
        registry.end_release(NAME, "aborted", actor="benchmark", reason="done")
    follow(url, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--share", type=float, default=0.2, help="the canary's share")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of phases")
    parser.add_argument("--pace", type=float, default=0.6,
                        help="the paced phases' rate, a share of the steady req/s")  # fmt: skip
    parser.add_argument("--python-ms", type=float, default=20.0,
                        help="the python shadow's pure-Python time per call")  # fmt: skip
    args = parser.parse_args()

    # the server unpickles the python-bound model from tests/release_models.py
    paths = [str(PROJECT), os.environ.get("PYTHONPATH")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    scratch, registry_url, url, first, second, server = following_server("nbship-bench-release-")
    project = scratch / "project"
    os.environ["BENTOML_HOME"] = str(scratch / "bentoml")  # the builds' store, for the wrap
    busy = python_bound(registry_url, project / "model-store", second, args.python_ms / 1000)
    canary = f"canary {args.share:.0%}"
    names = ["steady", "with shadow", canary, "python shadow", "steady, paced",
             "shadow, paced", "python, paced"]  # fmt: skip
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
            start_release(registry_url, url, second, "shadow", 1.0)
            runs["with shadow"].append(asyncio.run(load(url, rows, args.concurrency)))
            runs["shadow, paced"].append(asyncio.run(paced_load(url, rows, rate)))
            start_release(registry_url, url, busy, "shadow", 1.0)
            runs["python shadow"].append(asyncio.run(load(url, rows, args.concurrency)))
            runs["python, paced"].append(asyncio.run(paced_load(url, rows, rate)))
            start_release(registry_url, url, second, "canary", args.share)
            runs[canary].append(asyncio.run(load(url, rows, args.concurrency)))
            end_release(registry_url, url)
        start_release(registry_url, url, second, "shadow", 1.0)  # the shadow's counters
        shadow = httpx.get(f"{url}/info", timeout=10).json()["release"]["shadow"]
        rss = resident(shadow["pid"])
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
          f" (queue full), {shadow['error']} errors; its process: {rss}")  # fmt: skip
    for loop, (with_shadow, steady_name) in {
        "at capacity": ("with shadow", "steady"),
        f"paced at {args.pace:g} x capacity": ("shadow, paced", "steady, paced"),
        f"python-bound ({args.python_ms:g} ms a call), at capacity": ("python shadow", "steady"),
        f"python-bound, paced at {args.pace:g} x": ("python, paced", "steady, paced"),
    }.items():
        ratio = phases[with_shadow]["p99_ms"] / phases[steady_name]["p99_ms"]
        print(f"p99 with a shadow ÷ steady, {loop}: {ratio:.2f} (target <= 1.3)")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
