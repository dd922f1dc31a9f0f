"""Retraining on labelled feedback, in a process of its own.

`start` launches `python -m nbship.operate.retrain <project> <run id>`: a separate process
(never the serving one), in its own session and at a lower CPU priority, so serving on
the same machine keeps its cores. That process re-runs the whole pipeline (`build`
with force): the `feedback` task exports the labelled feedback from the prediction
log, `split` adds it to train and test, the candidates are trained again and
`package` registers the winner as challenger, runs the gates against the champion,
and promotes it only when they pass; either way the verdict is recorded with the
version. Predict servers follow the champion by themselves (see serving.Reloader).

Each run keeps a state file and a log under `.nbship/retrain/`: `<run id>.json`
(state `running`, `succeeded` or `failed`, the trigger, the new model tag, whether it
was promoted, the gates, the feedback it learnt from) and `<run id>.log`. A failed run
changes nothing that serves: registration and publishing come last.

Triggers (`watch`, from env.yaml `retrain:`): every `every_labels` new feedback items,
every `every_hours`, and each `POST /admin/retrain` a server recorded in the log.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from nbship.common.artifacts import read_json, write_json
from nbship.config import RetrainSettings
from nbship.project import STATE_DIR, Project

RUNS_DIR = f"{STATE_DIR}/retrain"
NICE = 10  # below serving processes on the same machine


def runs_dir(project: Path) -> Path:
    return project.resolve() / RUNS_DIR


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def runs(project: Path) -> list[dict[str, Any]]:
    """Every run's state, newest first; a `running` run whose process is gone (killed)
    shows as `died`."""
    found = []
    for path in runs_dir(project).glob("*.json"):
        try:
            state = read_json(path)
        except (OSError, ValueError):
            continue  # being replaced right now
        if state.get("state") == "running" and not _alive(int(state.get("pid") or 0)):
            state["state"] = "died"
        found.append(state)
    return sorted(found, key=lambda s: s.get("started", ""), reverse=True)


def start(project: Path, *, trigger: str = "manual", wait: bool = False) -> dict[str, Any]:
    """Launches a retrain run; returns its first state (with `wait`, its last one)."""
    project = project.resolve()
    run_id = new_run_id()
    folder = runs_dir(project)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"{run_id}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nbship.operate.retrain", str(project), run_id, trigger],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=project,
            start_new_session=True,  # a Ctrl-C or a dying parent does not stop it halfway
        )
    state_path = folder / f"{run_id}.json"
    if wait:
        proc.wait()
    else:  # until the run wrote its state, say what we know
        deadline = time.monotonic() + 10
        while not state_path.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    if state_path.exists():
        return read_json(state_path)
    return {"run_id": run_id, "pid": proc.pid, "state": "starting", "log": str(log)}


def _feedback_summary(project: Project) -> dict[str, Any]:
    """What the last export of feedback took in (the feedback task's summary)."""
    path = project.product("feedback", "summary")
    return read_json(path) if path.exists() else {}


def run(project: Path, run_id: str, trigger: str) -> int:
    """The retrain process itself: the pipeline with every task re-run, its outcome
    written to the run's state file. Returns the exit status."""
    from nbship.pipeline.checks import build_project
    from nbship.pipeline.dag import failure_cause

    project = project.resolve()
    with contextlib.suppress(OSError):
        os.nice(NICE)
    path = runs_dir(project) / f"{run_id}.json"
    state: dict[str, Any] = {
        "run_id": run_id,
        "pid": os.getpid(),
        "trigger": trigger,
        "state": "running",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "log": str(path.with_suffix(".log")),
    }
    write_json(state, path)
    try:
        build_project(project, force=True)
        loaded = Project.load(project)
    except Exception as exc:
        cause = failure_cause(str(exc)) or f"{type(exc).__name__}: {exc}"
        state.update(state="failed", error=cause)
        print(f"retrain failed: {cause}\nWhat serves is unchanged.", file=sys.stderr)
    else:
        package = read_json(loaded.product("package", "summary"))
        state.update(
            state="succeeded",
            model_tag=package["model_tag"],
            promoted=package["promoted"],
            previous_champion=package["previous_champion"],
            gates=package["gates"],
            feedback=_feedback_summary(loaded),
        )
        verdict = "promoted to champion" if package["promoted"] else "not promoted (gates)"
        print(f"retrain {run_id}: {package['model_tag']} {verdict}")
    state["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_json(state, path)
    return 0 if state["state"] == "succeeded" else 1


def due(
    project: Path,
    settings: RetrainSettings,
    log_url: str,
    *,
    since: datetime,
    now: datetime | None = None,
) -> str | None:
    """Why a retrain should start now (None: it should not). `since` is when the last
    run started, or when watching began."""
    from nbship.operate.feedback import new_labels
    from nbship.prediction_log import RETRAIN_REQUEST_KIND, count

    now = now or datetime.now(UTC)
    if count(log_url, kind=RETRAIN_REQUEST_KIND, since=since):
        return "admin request"
    if settings.every_labels:
        exported = _feedback_summary(Project.load(project))
        until = exported.get("until")
        after = datetime.fromisoformat(until) + timedelta(microseconds=1) if until else None
        fresh = new_labels(log_url, after)
        if fresh >= settings.every_labels:
            return f"{fresh} new labels (every {settings.every_labels})"
    if settings.every_hours and now - since >= timedelta(hours=settings.every_hours):
        return f"schedule (every {settings.every_hours} h)"
    return None


def watch(
    project: Path,
    settings: RetrainSettings,
    log_url: str,
    *,
    stop: threading.Event | None = None,
    echo: Callable[[str], None] = print,
) -> None:
    """Checks the triggers every `poll_seconds` and runs a retrain (one at a time, in
    its own process) when one fires; returns when `stop` is set."""
    stop = stop or threading.Event()
    since = datetime.now(UTC)
    while not stop.is_set():
        reason = due(project, settings, log_url, since=since)
        if reason is not None:
            since = datetime.now(UTC)
            echo(f"retrain: {reason}")
            state = start(project, trigger=reason, wait=True)
            outcome = state.get("error") or (
                f"{state.get('model_tag')} promoted={state.get('promoted')}"
            )
            echo(f"retrain {state['run_id']} {state['state']}: {outcome}")
        stop.wait(settings.poll_seconds)


if __name__ == "__main__":  # the process `start` launches
    sys.exit(run(Path(sys.argv[1]), sys.argv[2], sys.argv[3]))
