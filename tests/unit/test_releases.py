"""Releases without a server: their registry state, how a server routes, windows and
guard rails, the shadow runner, the answer's arm in the request log, the config."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from nbship.config import ConfigError, GuardSettings
from nbship.packaging.bento import release_settings
from nbship.prediction_log import SHADOW_KIND, SHADOW_SUFFIX, LogEntry
from nbship.registry.versions import Registry, RegistryError, Release
from nbship.serving import shadow
from nbship.serving.following import ServedModel
from nbship.serving.predicting import Predictor
from nbship.serving.releases import (
    ArmWindow,
    ReleaseConfig,
    breach,
    takes_trial,
)
from nbship.serving.request_log import entry_for
from nbship.serving.shadow import ShadowBatch, ShadowRunner, ShadowWorker

pytestmark = pytest.mark.unit


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    for tag in ("clf:v1", "clf:v2", "clf:v3"):
        reg.register(tag, {"candidate": "c", "params": {}, "metrics": {}})
    reg.promote("clf:v1", actor="t", reason="first")
    try:
        yield reg
    finally:
        reg.close()


def release(kind: str = "canary", share: float = 0.2, tag: str = "clf:v2") -> Release:
    return Release(id=1, name="clf", kind=kind, tag=tag, champion_tag="clf:v1", share=share,
                   actor="t", reason="r", started_at=datetime.now(UTC))  # fmt: skip


def test_a_release_starts_beside_the_champion_and_a_new_one_replaces_it(registry: Registry):
    shadow = registry.start_release("clf:v2", "shadow", 1.0, actor="ann", reason="try it")
    assert (shadow.champion_tag, shadow.active, shadow.arms) == (
        "clf:v1",
        True,
        ("champion", "shadow"),
    )
    canary = registry.start_release("clf:v2", "canary", 0.1, actor="ann", reason="widen")
    assert registry.active_release("clf") == canary
    first = registry.releases("clf")[-1]
    assert first.outcome == "replaced" and "canary of clf:v2" in (first.end_reason or "")
    ab = registry.start_release("clf:v3", "ab", 0.5, actor="ann", reason="test")
    assert ab.arms == ("a", "b")
    ended = registry.end_release("clf", "aborted", actor="bob", reason="enough")
    assert (ended.id, ended.outcome, ended.end_actor) == (ab.id, "aborted", "bob")
    assert registry.active_release("clf") is None
    assert [r.kind for r in registry.releases("clf")] == ["ab", "canary", "shadow"]


def test_release_errors_name_the_rule(registry: Registry):
    with pytest.raises(RegistryError, match="champion: release another version"):
        registry.start_release("clf:v1", "canary", 0.1, actor="a", reason="r")
    with pytest.raises(RegistryError, match="must be one of shadow, canary, ab"):
        registry.start_release("clf:v2", "blue-green", 0.1, actor="a", reason="r")
    with pytest.raises(RegistryError, match="more than 0 and at most 1"):
        registry.start_release("clf:v2", "canary", 1.5, actor="a", reason="r")
    with pytest.raises(LookupError, match="clf:v9"):
        registry.start_release("clf:v9", "canary", 0.1, actor="a", reason="r")
    with pytest.raises(RegistryError, match="no release of clf is running"):
        registry.end_release("clf", "aborted", actor="a", reason="r")


def test_only_one_server_ends_a_release(registry: Registry):
    # two guard rails fire at once: the second is told the release already ended
    started = registry.start_release("clf:v2", "canary", 0.1, actor="a", reason="r")
    registry.end_release("clf", "rolled_back", actor="s1", reason="x", release_id=started.id)
    with pytest.raises(RegistryError, match=f"release {started.id} of clf"):
        registry.end_release("clf", "rolled_back", actor="s2", reason="x", release_id=started.id)


def test_a_registry_made_before_releases_has_none(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    with Registry(url) as reg:
        reg.register("clf:v1", {})
    import sqlite3

    with sqlite3.connect(tmp_path / "old.db") as conn:
        conn.execute("DROP TABLE model_releases")
    with Registry(url, create=False) as reg:
        assert reg.active_release("clf") is None and reg.releases("clf") == []


def test_routing_shares_traffic_within_a_binomial_bound_and_keys_stick():
    canary = release(share=0.2)
    n = 20_000
    random_hits = sum(takes_trial(canary, None) for _ in range(n))
    keyed_hits = sum(takes_trial(canary, f"user-{i}") for i in range(n))
    sd = (n * 0.2 * 0.8) ** 0.5
    for hits in (random_hits, keyed_hits):
        assert abs(hits - n * 0.2) < 5 * sd
    assert all(takes_trial(canary, "user-7") == takes_trial(canary, "user-7") for _ in range(20))
    # raising the share keeps every caller the canary already had
    wider = release(share=0.5)
    assert all(
        takes_trial(wider, f"user-{i}") for i in range(2000) if takes_trial(canary, f"user-{i}")
    )


def window(requests: int, errors: int, latency_ms: float) -> dict[str, Any]:
    arm = ArmWindow(60)
    for i in range(requests):
        arm.add(latency_ms, ok=i >= errors)
    return arm.summary()


def test_guard_rails_fire_on_errors_and_latency_only_once_there_is_evidence():
    guard = GuardSettings(min_requests=20, max_error_rate=0.05, max_p90_ratio=3.0, max_p99_ms=None)
    champion = window(100, 0, 10.0)
    assert breach(guard, window(19, 19, 10.0), champion) is None  # too few to say
    failing = breach(guard, window(40, 10, 10.0), champion)
    assert failing is not None and failing.startswith("error rate 0.250 > 0.05 over its last 40")
    slow = breach(guard, window(40, 0, 45.0), champion)
    assert slow is not None and "3 x the champion's 10.0 ms" in slow
    assert breach(guard, window(40, 1, 20.0), champion) is None
    # two pauses of the process that hit both arms alike are 4% of a small canary's answers
    # and 1% of the champion's: its p99 looks 9x worse, its p90 is the same
    canary, champ = ArmWindow(60), ArmWindow(60)
    for arm, n in ((canary, 50), (champ, 200)):
        for i in range(n):
            arm.add(100.0 if i < 2 else 10.0, ok=True)
    assert canary.summary()["p99_ms"] > 3 * champ.summary()["p99_ms"]
    assert breach(guard, canary.summary(), champ.summary()) is None
    absolute = GuardSettings(min_requests=5, max_p99_ms=30.0, max_p90_ratio=None)
    assert "p99 45.0 ms > 30 ms" in (breach(absolute, window(5, 0, 45.0), window(0, 0, 0)) or "")


def test_a_window_forgets_what_is_older_than_its_length():
    arm = ArmWindow(0.05)
    arm.add(1.0, ok=False)
    time.sleep(0.06)
    arm.add(2.0, ok=True)
    assert arm.summary() == {"requests": 1, "errors": 0, "error_rate": 0.0, "p90_ms": 2.0,
                             "p99_ms": 2.0}  # fmt: skip


class Log:
    def __init__(self) -> None:
        self.entries: list[LogEntry] = []

    def record_many(self, entries: list[LogEntry]) -> int:
        self.entries += entries
        return len(entries)


class Values:
    """A regressor that answers each record's `x`, or fails on a negative one."""

    def predict(self, frame: Any) -> list[float]:
        if (frame["x"] < 0).any():
            raise ValueError("shadow failed")
        return list(frame["x"])


PREDICTOR = Predictor(("x",), frozenset({"x"}), classification=False)


def served(tag: str = "reg:v2") -> ServedModel:
    return ServedModel(tag, Values(), "registry", "test", {})


class Child:
    """Stands in for the shadow's process: takes each batch once the gate opens."""

    def __init__(self) -> None:
        self.batches: list[ShadowBatch] = []
        self.gate = threading.Event()
        self.gate.set()
        self.counts = [0, 0, 0]
        self.state = "running"
        self.pid = 1
        self.spec = SimpleNamespace(predictor=PREDICTOR)

    def send(self, batch: ShadowBatch) -> bool:
        self.gate.wait(5)
        self.batches.append(batch)
        return True

    def close(self) -> None:
        pass


def record(x: float) -> Any:
    return SimpleNamespace(x=x)


def runner_of(child: Child, capacity: int) -> ShadowRunner:
    return ShadowRunner(child, capacity, max_rows=100)  # type: ignore[arg-type]


def wait_for(check: Any) -> None:
    deadline = time.time() + 5
    while not check() and time.time() < deadline:
        time.sleep(0.01)


def test_the_shadow_runner_never_blocks_and_drops_what_does_not_fit(monkeypatch):
    monkeypatch.setattr(shadow, "SHADOW_LINGER_SECONDS", 0.0)  # batches made by the gate
    child = Child()
    child.gate.clear()
    runner = runner_of(child, capacity=3)
    model = served()
    t0 = time.perf_counter()
    runner.offer(model, "r0", [record(0)])  # taken by the thread, which waits on the gate
    time.sleep(0.05)
    for i in range(1, 6):  # three fit in the queue, two are dropped
        runner.offer(model, f"r{i}", [record(i), record(i)])
    assert time.perf_counter() - t0 < 0.5  # offer never waited for the child
    child.gate.set()
    wait_for(lambda: len(child.batches) == 2)
    first, second = child.batches
    assert (first.tag, first.requests, first.columns) == ("reg:v2", [("r0", 1)], {"x": [0]})
    # the queued three in one batch, as columns
    assert second.requests == [("r1", 2), ("r2", 2), ("r3", 2)]
    assert second.columns == {"x": [1, 1, 2, 2, 3, 3]}
    assert runner.stats()["dropped"] == 2
    runner.stop()
    runner.thread.join(2)
    assert not runner.thread.is_alive()


def test_the_shadow_runner_gathers_requests_into_one_batch_per_model():
    child = Child()
    runner = runner_of(child, capacity=100)
    v2, v3 = served("reg:v2"), served("reg:v3")
    for i in range(10):  # arriving one by one, as single-record requests do
        runner.offer(v2, f"r{i}", [record(i)])
    runner.offer(v3, "r10", [record(10)])  # the shadow changed: a batch of its own
    wait_for(lambda: sum(len(b.requests) for b in child.batches) == 11)
    assert [(b.tag, len(b.requests)) for b in child.batches] == [("reg:v2", 10), ("reg:v3", 1)]
    runner.stop()


def test_a_runner_whose_child_cannot_take_a_batch_counts_it_dropped():
    child = Child()
    child.send = lambda batch: False  # type: ignore[method-assign]
    runner = runner_of(child, capacity=100)
    runner.offer(served(), "r0", [record(0)])
    wait_for(lambda: runner.stats()["dropped"] == 1)
    assert runner.stats()["dropped"] == 1
    runner.stop()


def test_the_shadow_worker_logs_an_answer_or_the_error_per_request():
    log, counts = Log(), [0, 0, 0]
    worker = ShadowWorker(PREDICTOR, log, counts)  # type: ignore[arg-type]
    worker.handle(served(), ShadowBatch("reg:v2", [("r0", 1), ("r1", 2)], {"x": [0, 1, 2]}))
    first, second = log.entries
    assert (first.request_id, first.kind, first.model_tag, first.status) == (
        f"r0{SHADOW_SUFFIX}", SHADOW_KIND, "reg:v2", "ok",
    )  # fmt: skip
    assert first.outputs == [{"prediction": 0.0}]
    assert second.outputs == [{"prediction": 1.0}, {"prediction": 2.0}]
    assert second.n_records == 2
    worker.handle(served(), ShadowBatch("reg:v2", [("r2", 1)], {"x": [-1]}))
    failed = log.entries[-1]
    assert (failed.status, failed.error_class, failed.outputs) == ("error", "ValueError", None)
    assert failed.error_message == "shadow failed" and failed.http_status == 500
    assert counts == [2, 1, 0]


@pytest.mark.skipif(sys.platform != "linux", reason="a thread's own priority: Linux only")
def test_the_shadow_thread_runs_at_the_lowest_cpu_priority():
    def nice(thread_id: int) -> int:
        return os.getpriority(os.PRIO_PROCESS, thread_id)

    before = nice(threading.get_native_id())
    runner = runner_of(Child(), capacity=1)
    deadline = time.time() + 5  # the thread lowers its own priority as it starts
    while nice(runner.thread.native_id or 0) != shadow.LOWEST_NICE and time.time() < deadline:
        time.sleep(0.01)
    assert nice(runner.thread.native_id or 0) == shadow.LOWEST_NICE
    assert nice(threading.get_native_id()) == before  # the caller's (the answers') is kept
    runner.stop()


def test_the_request_log_reads_the_arm_of_an_answer():
    body = (
        b'{"model":"clf:v2","arm":"canary","predictions":[{"label":"A","probabilities":{"A":1.0}}]}'
    )
    entry = entry_for(request_id="r1", started=datetime.now(UTC), latency_ms=1.0, kind="predict",
                      status=200, request_body=b'{"x": 1}', response_body=body,
                      model_tag="clf:v1")  # fmt: skip
    assert entry.model_tag == "clf:v2" and entry.n_records == 1
    assert bytes(entry.outputs) == b'[{"label":"A","probabilities":{"A":1.0}}]'


def test_release_settings_come_from_env_yaml_and_name_a_bad_key(tmp_path: Path, monkeypatch):
    webhook = {"type": "webhook", "url": "http://h/x"}
    raw = {"release": {"key_field": "island", "guard": {"min_requests": 5}},
           "monitoring": {"sinks": [{"type": "log"}, webhook]}}  # fmt: skip
    (tmp_path / "env.yaml").write_text(yaml.safe_dump(raw))
    settings = release_settings(tmp_path, ["island", "mass"])
    assert settings["guard"]["min_requests"] == 5 and settings["key_header"] == "x-nbship-key"
    assert settings["webhooks"] == [webhook]
    monkeypatch.setenv("NBSHIP_ALERT_WEBHOOK", "http://127.0.0.1:9/a")
    config = ReleaseConfig.from_config(settings)
    assert config.guard.min_requests == 5 and len(config.webhooks) == 2
    assert ReleaseConfig.from_config(None).guard == GuardSettings()  # a bento built before releases
    unknown = r"release.key_field: 'island' is not a request field \(one of mass\)"
    with pytest.raises(ConfigError, match=unknown):
        release_settings(tmp_path, ["mass"])
    (tmp_path / "env.yaml").write_text(
        yaml.safe_dump({"release": {"guard": {"max_error_rate": 2}}})
    )
    with pytest.raises(ConfigError, match=r"release.guard.max_error_rate"):
        release_settings(tmp_path, ["mass"])
