"""The guard rails a server cannot check alone, on the prediction log every server writes
to: the trial's answers against the champion's on the same traffic, and the trial's
metric on labelled feedback. A breach rolls the release back in the registry, which
every server follows, and alerts through `monitoring.sinks`. The servers check error
rate and latency themselves, at once (nbship.serving.releases).

`nbship release canary` and `ab` start a watcher, `python -m nbship.operate.release_guard
<project> <release id>` (`start_watcher`): a process of its own, in its own session, that
checks that one release every `release.guard.check_seconds` until it is no longer the
running one, its log in `.nbship/release-guard/<release id>.log`. `nbship release check`
runs the same check once (or every so many seconds) by hand."""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from nbship import tasks
from nbship.common.sqlite import database_file
from nbship.config import ConfigError, GuardSettings
from nbship.drift import DEFAULT_PVALUE_THRESHOLD
from nbship.operate.alert_rules import Alert, Sink, parse_config
from nbship.operate.alert_sinks import send
from nbship.operate.release_report import better, release_rows, report
from nbship.project import STATE_DIR, Project
from nbship.registry.versions import SHADOW, Registry, RegistryError, Release

logger = logging.getLogger("nbship.operate.release_guard")  # not __name__: `__main__` when run

WATCHERS_DIR = f"{STATE_DIR}/release-guard"  # beside retrain's runs (operate.retrain)


@dataclass(frozen=True)
class Breach:
    """One guard rail that fired: what it measured against what it allows."""

    metric: str
    value: float
    op: str
    threshold: float
    why: str


@dataclass(frozen=True)
class GuardCheck:
    release: Release | None  # the running release checked (None: nothing to check)
    breaches: list[Breach] = field(default_factory=list)
    rolled_back: bool = False
    report: dict[str, Any] | None = None


def breaches(summary: Mapping[str, Any], guard: GuardSettings) -> list[Breach]:
    """What `report`'s summary of a canary or A/B release breaks of `guard`."""
    champion_arm, trial_arm = summary["release"]["arms"]
    found = []
    drift = summary.get("answer_drift") or {}
    psi, pvalue = drift.get("psi"), drift.get("pvalue")
    if (
        guard.max_answer_psi is not None
        and psi is not None
        and psi >= guard.max_answer_psi
        and pvalue is not None
        and pvalue < DEFAULT_PVALUE_THRESHOLD
    ):
        found.append(Breach(
            "answer_psi", psi, ">=", guard.max_answer_psi,
            f"{trial_arm}'s answers unlike the champion's on the same traffic: PSI {psi:.3f}"
            f" >= {guard.max_answer_psi:g} (p = {pvalue:.2g})",
        ))  # fmt: skip
    test = summary.get("test") or {}
    if guard.on_worse_metric and summary.get("verdict") == better(champion_arm):
        difference = float(test["difference"])
        found.append(Breach(
            f"{test['metric']} {trial_arm} - {champion_arm}", difference,
            "<" if test["higher_is_better"] else ">", 0.0,
            f"worse on labelled feedback: {test['metric']} {trial_arm} - {champion_arm} ="
            f" {difference:+.4g}, always-valid p = {test['always_valid_p']:.2g}",
        ))  # fmt: skip
    return found


def check_release(
    registry: Registry,
    log_url: str,
    name: str,
    guard: GuardSettings,
    sinks: Iterable[Sink],
    *,
    actor: str,
    release_id: int | None = None,
) -> GuardCheck:
    """Checks model `name`'s running canary or A/B release; on a breach, ends it as
    rolled back (unless it ended meanwhile) and sends one alert per breach. With
    `release_id`, only that release: when another one runs, or none, there is nothing to
    check (a watcher of a replaced release must not judge its successor)."""
    running = registry.active_release(name)
    if running is not None and release_id is not None and running.id != release_id:
        return GuardCheck(None)
    if running is None or running.kind == SHADOW:  # a shadow answers nobody: nothing to guard
        return GuardCheck(running)
    task = tasks.recorded(registry.get(running.tag).extra.get("task")).kind
    summary = report(running, release_rows(log_url, running), task)
    found = breaches(summary, guard)
    if not found:
        return GuardCheck(running, report=summary)
    try:
        registry.end_release(name, "rolled_back", actor=actor, release_id=running.id,
                             reason="; ".join(b.why for b in found))  # fmt: skip
    except RegistryError:  # ended meanwhile (by hand, or by a server's guard rail)
        return GuardCheck(running, found, report=summary)
    now = datetime.now(UTC)
    send([Alert(rule=f"release_guard:{running.kind} {running.tag}", metric=b.metric, op=b.op,
                value=b.value, threshold=b.threshold, window_start=running.started_at,
                window_end=now) for b in found], sinks)  # fmt: skip
    return GuardCheck(running, found, rolled_back=True, report=summary)


def checker(command: str) -> str:
    """Who rolls a release back, as the registry records it: the command, its user and
    host (`nbship release check`, or the watcher)."""
    return f"{command} ({getpass.getuser()}@{socket.gethostname()})"


def _registry_gone(registry: Registry) -> bool:
    """A SQLite registry whose file is gone (its project deleted) holds no release any
    more: without this, a watcher would retry there forever."""
    database = database_file(registry.url)
    return database is not None and not database.exists()


def guard_release(
    registry: Registry,
    log_url: str,
    name: str,
    release_id: int,
    guard: GuardSettings,
    sinks: Iterable[Sink],
    *,
    actor: str,
    stop: threading.Event | None = None,
) -> GuardCheck:
    """Checks release `release_id` of model `name` (`check_release`) every
    `guard.check_seconds` for as long as it is the running release; returns the last
    check once it is not (ended by hand, promoted, rolled back by a server or by this
    check, replaced by another release, or a shadow, which has nothing to guard), or
    when `stop` is set. An error of the registry or of the log is logged and the next
    round tries again: a watcher that died at the first lost connection would leave the
    rest of the release unguarded, and nobody would notice."""
    every = guard.check_seconds
    if every is None:
        raise ValueError("release.guard.check_seconds is null: nothing to check every so often")
    sinks = tuple(sinks)  # sent to at every round's breach, not consumed by the first
    stop = stop or threading.Event()
    last, verdict, failing = GuardCheck(None), None, False
    while not stop.wait(every):  # nothing to see in the first instant of a release
        if _registry_gone(registry):
            logger.info("release %d: the registry %s is gone; stopping", release_id, registry)
            return GuardCheck(None)
        try:
            last = check_release(registry, log_url, name, guard, sinks, actor=actor,
                                 release_id=release_id)  # fmt: skip
        except Exception as exc:  # whatever the database or the log raised: try again
            cause = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            logger.warning("release %d: check failed (%s: %s); again in %g s", release_id,
                           type(exc).__name__, cause, every, exc_info=not failing)  # fmt: skip
            failing = True  # one traceback per run of failures, not one a round
            continue
        failing = False
        if last.release is None or last.rolled_back or last.release.kind == SHADOW:
            return last
        now = (last.report or {}).get("verdict")
        if now != verdict:  # the log says what changed, not the same line every round
            verdict = now
            kind, tag = last.release.kind, last.release.tag
            logger.info("release %d (%s of %s) within its guard rails; %s", release_id, kind,
                        tag, verdict or "no verdict yet")  # fmt: skip
    return last


@dataclass(frozen=True)
class Watcher:
    """A watcher process `start_watcher` launched."""

    release_id: int
    pid: int
    log: Path


def watcher_log(project: Path, release_id: int) -> Path:
    return project.resolve() / WATCHERS_DIR / f"{release_id}.log"


def watcher_pid_file(project: Path, release_id: int) -> Path:
    """Holds the watcher's process id while it runs (it removes the file as it ends)."""
    return watcher_log(project, release_id).with_suffix(".pid")


def running_watcher(project: Path, release_id: int) -> int | None:
    """The process id of release `release_id`'s watcher if it is running, else None (a
    file left by a watcher that was killed names a process that is gone)."""
    try:
        pid = int(watcher_pid_file(project, release_id).read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def start_watcher(project: Path, release_id: int) -> Watcher:
    """Launches the watcher of release `release_id` (see the module's docstring): in a
    session of its own, so that the command that started the release, and a Ctrl-C in
    its terminal, can end without ending it. It inherits the environment, so it reads
    the same registry and log as the command (`NBSHIP_REGISTRY_URL`, `NBSHIP_LOG_URL`)."""
    project = project.resolve()
    log = watcher_log(project, release_id)
    log.parent.mkdir(parents=True, exist_ok=True)
    # appended to: another registry (NBSHIP_REGISTRY_URL) may number its releases alike
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nbship.operate.release_guard", str(project), str(release_id)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=project,
            start_new_session=True,
        )
    watcher_pid_file(project, release_id).write_text(f"{proc.pid}\n")
    return Watcher(release_id, proc.pid, log)


def _ended(registry: Registry, name: str, release_id: int) -> str:
    """How release `release_id` ended, as the registry recorded it."""
    try:
        found = next((r for r in registry.releases(name) if r.id == release_id), None)
    except Exception as exc:  # only for the last line of the log
        return f"unknown ({type(exc).__name__})"
    if found is None:
        return "not in the registry"
    if found.active:
        return "still running"
    return f"{found.outcome} by {found.end_actor}: {found.end_reason}"


@contextlib.contextmanager
def _removed_at_exit(path: Path) -> Iterator[None]:
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def main(argv: Sequence[str]) -> int:
    """The watcher process: `<project folder> <release id>`. Returns the exit status."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    project_dir, release_id = Path(argv[0]), int(argv[1])
    # on every way out: a pid file left behind would say a watcher runs
    with _removed_at_exit(watcher_pid_file(project_dir, release_id)):
        return _guard(project_dir, release_id)


def _guard(project_dir: Path, release_id: int) -> int:
    try:
        project = Project.load(project_dir)
        sinks = parse_config(project.config.monitoring).sinks
    except ConfigError as exc:
        logger.error("release %d not guarded: env.yaml: %s", release_id, exc)
        return 2
    guard, name = project.config.release.guard, project.config.bento.name
    if guard.check_seconds is None:
        logger.error("release %d not guarded: release.guard.check_seconds is null", release_id)
        return 2
    log_url = project.log_url()
    if log_url == "off":  # NBSHIP_LOG_URL=off: the servers log nothing to check
        logger.error("release %d not guarded: the prediction log is off", release_id)
        return 2
    actor = checker("nbship release guard")
    try:  # create=False: a watcher must never make an empty SQLite registry
        registry = Registry(project.registry_url(), create=False)
    except RegistryError as exc:
        logger.error("release %d not guarded: %s", release_id, exc)
        return 2
    with registry:
        shown = make_url(log_url).render_as_string(hide_password=True)
        logger.info("guarding release %d of %s every %g s on %s (pid %d)", release_id, name,
                    guard.check_seconds, shown, os.getpid())  # fmt: skip
        guard_release(registry, log_url, name, release_id, guard, sinks, actor=actor)
        logger.info("release %d is no longer running: %s", release_id,
                    _ended(registry, name, release_id))  # fmt: skip
    return 0


if __name__ == "__main__":  # the process `start_watcher` launches
    sys.exit(main(sys.argv[1:]))
