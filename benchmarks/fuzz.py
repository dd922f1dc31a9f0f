"""Fuzzing the served API against its own OpenAPI document with schemathesis: every
operation of /docs.json (the model routes, /info, /admin/*, BentoML's health and metrics
routes), valid and invalid inputs (coverage and fuzzing phases), every built-in check
(server errors, response schema, status codes, content types, schema-valid bodies
accepted, invalid ones refused, ...) and one of ours: no Python traceback in a body.

    uv run python -m benchmarks.fuzz [--bento bentos/penguins_classifier]   # ~500 cases
    uv run python -m benchmarks.fuzz --long                                # thousands

The bento is served by `bentoml serve` with the prediction log on (a scratch SQLite
file) and an admin token, so the admin routes are fuzzed past their 401 too. The run is
the `st` command line (all its phases), bounded by `--examples` per operation and
`--seconds` in all; tests/e2e/test_fuzz.py runs it against the session's bento.
This module is also the run's hooks module (SCHEMATHESIS_HOOKS): it registers the check.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import schemathesis

from nbship.prediction_log import url_for_sqlite
from tests.support import PROJECT, free_port, start, stop, wait_http

ST = str(Path(sys.executable).with_name("st"))
BENTOML = str(Path(sys.executable).with_name("bentoml"))
TOKEN = "fuzz-admin-token"
SHORT = {"examples": 60, "seconds": 50}  # ~500 cases in ~15 s on 2 cores
LONG = {"examples": 1500, "seconds": 900}


@schemathesis.check
def no_traceback_in_body(ctx: Any, response: Any, case: Any) -> bool | None:
    """A body never carries a Python traceback (nor a server's internals with it)."""
    if b"Traceback (most recent call last)" in response.content:
        raise AssertionError(f"a traceback in the {response.status_code} body")
    return None


@dataclass
class FuzzReport:
    cases: int  # test cases generated and sent
    seconds: float
    exit_code: int
    operations: int  # operations tested
    failures: list[dict[str, Any]] = field(default_factory=list)  # one per unique failure
    errors: list[Any] = field(default_factory=list)  # schemathesis's own (schema, network)
    output: str = ""  # the run's console output, for a failure's reproduction

    @property
    def server_errors(self) -> int:
        return sum(f.get("count", 1) for f in self.failures if f.get("type") == "ServerError")

    def summary(self) -> str:
        kinds = ", ".join(f"{f.get('code')} {f.get('title')} x{f.get('count', 1)}"
                          for f in self.failures) or "none"  # fmt: skip
        return (
            f"{self.cases} cases on {self.operations} operations in {self.seconds:.1f} s:"
            f" failures {kinds}; errors {len(self.errors)}; exit {self.exit_code}"
        )


def fuzz(
    url: str, *, examples: int, seconds: float, workdir: Path, token: str | None = TOKEN,
    seed: int | None = None,
) -> FuzzReport:  # fmt: skip
    """Runs schemathesis (`st run`) against the service at `url`; its JSON report read."""
    report = workdir / "schemathesis.json"
    cmd = [ST, "run", f"{url}/docs.json", "--checks", "all", "--mode", "all",
           "--max-examples", str(examples), "--max-time", str(int(seconds)), "--no-color",
           "--request-timeout", "30",
           "--report", "json", "--report-json-path", str(report)]  # fmt: skip
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    env = {"SCHEMATHESIS_HOOKS": __name__, "PYTHONPATH": str(PROJECT)}
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir,
                          env={**os.environ, **env}, timeout=seconds + 120)  # fmt: skip
    elapsed = time.monotonic() - started
    if not report.is_file():
        raise RuntimeError(f"schemathesis wrote no report:\n{done.stdout}\n{done.stderr}")
    data = json.loads(report.read_text())
    return FuzzReport(
        cases=data["test_cases"]["generated"],
        seconds=elapsed,
        exit_code=done.returncode,
        operations=data["operations"]["tested"],
        failures=data["failures"],
        errors=data["errors"],
        output=done.stdout[-8000:],
    )


@contextmanager
def served(bento: Path, folder: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """`bentoml serve` of `bento` on 127.0.0.1 with the log on in `folder` and the admin
    token set; yields its URL, stops it (by pid) after."""
    port = free_port()
    settings = {
        "BENTOML_HOME": str(folder / "home"),
        "NBSHIP_LOG_URL": url_for_sqlite(folder / "log.db"),
        "NBSHIP_LOG_SPOOL": str(folder / "spool"),
        "NBSHIP_ADMIN_TOKEN": TOKEN,
        **(env or {}),
    }
    cmd = [BENTOML, "serve", str(bento), "--host", "127.0.0.1", "--port", str(port)]
    proc = start(cmd, folder / "serve.log", env=settings)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc, timeout=90)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bento", type=Path, default=PROJECT / "bentos" / "penguins_classifier")
    parser.add_argument("--long", action="store_true", help="thousands of cases")
    parser.add_argument("--examples", type=int, help="per operation and phase")
    parser.add_argument("--seconds", type=float, help="time budget of the whole run")
    parser.add_argument("--seed", type=int)
    args = parser.parse_args()
    bounds = LONG if args.long else SHORT
    examples = args.examples or int(bounds["examples"])
    seconds = args.seconds or float(bounds["seconds"])
    with tempfile.TemporaryDirectory(prefix="nbship-fuzz-") as tmp:
        folder = Path(tmp)
        with served(args.bento, folder) as url:
            report = fuzz(url, examples=examples, seconds=seconds, workdir=folder, seed=args.seed)
        tracebacks = (folder / "serve.log").read_text().count("Traceback")
    print(report.summary())
    print(f"server errors: {report.server_errors}; tracebacks in the server log: {tracebacks}")
    print(f"cases per second: {report.cases / report.seconds:.0f}")
    if report.failures or report.errors:
        print(report.output)
        sys.exit(1)


if __name__ == "__main__":
    main()
