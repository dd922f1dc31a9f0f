"""`nbship release canary|ab` start the watcher of the guard rails on the prediction log
by themselves: a real detached process on a project folder with its own SQLite registry
and log, which rolls a worse canary back with nobody running `nbship release check`, and
ends once its release does. `--no-guard`, `check_seconds: null` and a shadow start none."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from nbship.cli.release import release
from nbship.operate.release_guard import WATCHERS_DIR
from nbship.prediction_log import url_for_sqlite
from nbship.registry.versions import Registry
from tests.support import PROJECT, wait_until
from tests.unit.test_release_guard import CLASSES, write_log

pytestmark = pytest.mark.integration

NAME = "penguins_classifier"  # the worked example's bento.name: the registry's model name
V1, V2 = f"{NAME}:v1", f"{NAME}:v2"
TIMEOUT = 90  # a fresh interpreter importing pandas and SQLAlchemy on a busy machine


def write_env(folder: Path, guard: dict) -> None:
    env = yaml.safe_load((PROJECT / "env.yaml").read_text())  # the worked example's
    env["registry"] = {"url": "sqlite:///state/registry.db"}
    env["prediction_log"] = {**env["prediction_log"], "url": "sqlite:///state/log.db"}
    env["monitoring"] = {**env["monitoring"], "sinks": [{"type": "log"}]}
    env["release"] = {**env["release"], "guard": {**env["release"]["guard"], **guard}}
    (folder / "env.yaml").write_text(yaml.safe_dump(env))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for variable in ("NBSHIP_REGISTRY_URL", "NBSHIP_LOG_URL"):  # the child inherits these
        monkeypatch.delenv(variable, raising=False)
    folder = tmp_path / "project"
    (folder / "state").mkdir(parents=True)
    write_env(folder, {"check_seconds": 0.2})
    with Registry(registry_url(folder)) as reg:
        for tag in (V1, V2):
            reg.register(tag, {"candidate": "c", "task": "classification", "classes": CLASSES})
        reg.promote(V1, actor="t", reason="first")
    return folder


def registry_url(project: Path) -> str:
    return f"sqlite:///{project / 'state' / 'registry.db'}"


def log_url(project: Path) -> str:
    return url_for_sqlite(project / "state" / "log.db")


def exited(pid: int) -> bool:
    """Whether our child `pid` has ended (reaped here, or already by subprocess)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid


@pytest.fixture
def watchers() -> Iterator[list[int]]:
    """The watcher processes a test started: killed at the end if still running."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if not exited(pid):
            os.killpg(pid, signal.SIGKILL)  # its own session: its group is its pid
            os.waitpid(pid, 0)


def start(project: Path, *args: str) -> str:
    result = CliRunner().invoke(release, [*args, "--project", str(project)])
    assert result.exit_code == 0, result.output
    return result.output


def watcher_pid(output: str) -> int:
    found = re.search(r"run every \S+ s in process (\d+) \((\S+)\)", output)
    assert found is not None, output
    return int(found.group(1))


def test_a_canary_starts_a_watcher_that_rolls_it_back_by_itself(project, watchers):
    out = start(project, "canary", V2, "--share", "0.5")
    pid = watcher_pid(out)
    watchers.append(pid)
    assert f"running; guard watcher pid {pid}" in start(project, "status")
    with Registry(registry_url(project)) as reg:
        (started,) = reg.releases(NAME)
        log = project / WATCHERS_DIR / f"{started.id}.log"
        shown = f"in process {pid} ({log.relative_to(project)}); `nbship release check` runs"
        assert shown in out
        write_log(log_url(project), project / "state" / "spool", {"champion": V1, "canary": V2},
                  {"champion": 0.95, "canary": 0.6})  # fmt: skip

        def ended() -> bool:
            return not reg.releases(NAME)[0].active

        assert wait_until(ended, TIMEOUT), log.read_text()
        (rolled_back,) = reg.releases(NAME)
    assert rolled_back.outcome == "rolled_back", rolled_back
    assert rolled_back.end_actor is not None
    assert rolled_back.end_actor.startswith("nbship release guard (")
    assert (rolled_back.end_reason or "").startswith("worse on labelled feedback")
    assert wait_until(lambda: exited(pid), 30), "the watcher outlived its release"
    assert not (project / WATCHERS_DIR / f"{started.id}.pid").exists()  # removed as it ended
    text = log.read_text()
    assert f"guarding release {started.id} of {NAME} every 0.2 s" in text
    assert "ALERT release_guard:canary" in text  # monitoring.sinks: a log line
    assert f"release {started.id} is no longer running: rolled_back by nbship release" in text


def test_an_ab_test_s_watcher_ends_when_a_shadow_replaces_it(project, watchers):
    pid = watcher_pid(start(project, "ab", V2))
    watchers.append(pid)
    out = start(project, "shadow", V2)
    assert "in process" not in out  # a shadow answers nobody: nothing to guard
    assert wait_until(lambda: exited(pid), TIMEOUT), "the A/B test's watcher kept running"
    with Registry(registry_url(project)) as reg:
        shadow, ab = reg.releases(NAME)
    assert (ab.kind, ab.outcome, shadow.kind, shadow.active) == ("ab", "replaced", "shadow", True)
    assert "is no longer running: replaced" in (project / WATCHERS_DIR / f"{ab.id}.log").read_text()


def test_no_watcher_with_no_guard_or_check_seconds_null(project):
    assert "in process" not in start(project, "canary", V2, "--share", "0.1", "--no-guard")
    assert "running; guard watcher not running" in start(project, "status")
    assert "in process" not in start(project, "ab", V2, "--no-guard")
    write_env(project, {"check_seconds": None})
    assert "in process" not in start(project, "canary", V2, "--share", "0.1")
    assert not (project / WATCHERS_DIR).exists()


def test_check_seconds_must_be_positive(project):
    write_env(project, {"check_seconds": 0})
    result = CliRunner().invoke(
        release, ["canary", V2, "--share", "0.1", "--project", str(project)]
    )
    assert result.exit_code == 1
    assert "release.guard.check_seconds" in result.output, result.output
