"""Pipeline benchmark: a cold `nbship build` of a fresh copy of the project, divided by
the same notebook code run as plain Python scripts (one `python` process per task, in
dependency order, parameters injected) in the same run; then the no-op rebuild time,
with the build stamp and with Ploomber's own up-to-date check.

    uv run python -m benchmarks.pipeline
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nbship.pipeline.dag import STAMP_FILE, export_scripts
from tests.conftest import NBSHIP, copy_project


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="nbship-bench-pipeline-"))
    built = copy_project(work / "dag", work / "home-dag")
    scripted = copy_project(work / "scripts", work / "home-scripts")

    scripts = export_scripts(scripted.path, work / "exported")
    started = time.perf_counter()
    for script in scripts:
        subprocess.run(
            [sys.executable, str(script)],
            cwd=scripted.path,
            env=scripted.env,
            check=True,
            capture_output=True,
            text=True,
        )
    plain = time.perf_counter() - started

    cold = timed([NBSHIP, "build"], built.path, built.env)
    noop = timed([NBSHIP, "build"], built.path, built.env)
    (built.root / STAMP_FILE).unlink()
    noop_ploomber = timed([NBSHIP, "build"], built.path, built.env)

    print(f"{len(scripts)} tasks")
    print(f"plain scripts (one process per task): {plain:7.2f} s")
    print(
        f"cold nbship build (ploomber-engine):  {cold:7.2f} s   ratio {cold / plain:.2f}"
        " (target <= 1.0)"
    )
    print(f"no-op rebuild, build stamp:           {noop:7.2f} s   (target <= 1 s)")
    print(f"no-op rebuild, Ploomber's own check:  {noop_ploomber:7.2f} s")


if __name__ == "__main__":
    main()
