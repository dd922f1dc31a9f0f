"""The model registry on a real SQLite file. The tests that take `registry` run on a real
PostgreSQL server too, in tests/integration/test_registry_postgres.py (a server: not a
unit test)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from nbship import config
from nbship.config import ConfigError
from nbship.project import registry_url
from nbship.registry.versions import ModelVersion, Registry, RegistryError, UnknownModelError
from tests.support import PROJECT

pytestmark = pytest.mark.unit


def metadata(candidate: str = "logreg", c: float = 1.0, accuracy: float = 0.95) -> dict[str, Any]:
    """Shaped like what package.py records with a model."""
    return {
        "candidate": candidate,
        "params": {"C": c, "max_iter": 1000},
        "metrics": {"test": {"accuracy": accuracy, "f1_macro": 0.9}, "train": {"accuracy": 1.0}},
        "selection": {"metric": "f1_macro", "value": 0.9},
        "train_seconds": 0.25,
        "predict_ms": {"single": 1.5, "batch_100": 4.0},
        "data_fingerprint": "sha256:aaa",
        "definition_hash": "sha256:def",
        "versions": {"python": "3.11.9", "scikit-learn": "1.9.1"},
        "reports": "/tmp/reports",
        "trained_at": "2026-01-01T00:00:00+00:00",
        "git_commit": "abc123",
    }


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        yield reg
    finally:
        reg.close()


def test_register_stores_metadata_and_is_idempotent(registry: Registry) -> None:
    first = registry.register("clf:v1", metadata(), bento_tag=None)
    assert isinstance(first, ModelVersion)
    assert (first.tag, first.name, first.version) == ("clf:v1", "clf", "v1")
    assert first.candidate == "logreg"
    assert first.params == {"C": 1.0, "max_iter": 1000}
    assert first.metrics["test"]["accuracy"] == 0.95
    assert first.data_fingerprint == "sha256:aaa"
    assert first.definition_hash == "sha256:def"
    assert first.versions["scikit-learn"] == "1.9.1"
    assert first.git_commit == "abc123"
    assert first.train_seconds == 0.25
    assert first.predict_ms == {"single": 1.5, "batch_100": 4.0}
    assert first.reports == "/tmp/reports"
    assert first.gates == []
    assert first.extra["selection"] == {"metric": "f1_macro", "value": 0.9}
    assert first.created_at.tzinfo is not None
    assert abs((datetime.now(UTC) - first.created_at).total_seconds()) < 60

    again = registry.register("clf:v1", metadata(candidate="other"), bento_tag="clf_bento:b1")
    assert again.created_at == first.created_at
    assert again.candidate == "logreg"  # the first registration stands
    assert again.bento_tag == "clf_bento:b1"
    assert len(registry.list()) == 1
    assert registry.get("clf:v1") == again


def test_git_commit_is_optional(registry: Registry) -> None:
    meta = metadata()
    del meta["git_commit"]
    assert registry.register("clf:v1", meta).git_commit is None


def test_bad_tag_is_refused(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="name:version"):
        registry.register("no-version", metadata())


def test_unknown_tag_names_it_and_lists_known(registry: Registry) -> None:
    with pytest.raises(UnknownModelError, match="registry is empty"):
        registry.get("clf:nope")
    registry.register("clf:v1", metadata())
    registry.register("clf:v2", metadata())
    with pytest.raises(UnknownModelError) as info:
        registry.get("clf:nope")
    message = str(info.value)
    assert "'clf:nope'" in message
    assert "clf:v2, clf:v1" in message
    with pytest.raises(UnknownModelError, match="clf:nope"):
        registry.promote("clf:nope", actor="ann", reason="r")
    with pytest.raises(UnknownModelError, match="clf:nope"):
        registry.record_gates("clf:nope", [])


def test_list_newest_first_and_by_name(registry: Registry) -> None:
    for tag in ("clf:v1", "other:v1", "clf:v2", "clf:v3"):
        registry.register(tag, metadata())
    assert [v.tag for v in registry.list()] == ["clf:v3", "clf:v2", "other:v1", "clf:v1"]
    assert [v.tag for v in registry.list("clf")] == ["clf:v3", "clf:v2", "clf:v1"]
    assert registry.list("missing") == []


def test_promote_rollback_and_history(registry: Registry) -> None:
    for tag in ("clf:a", "clf:b", "clf:c", "clf:d"):
        registry.register(tag, metadata())
    assert registry.alias("clf", "champion") is None
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback("clf", actor="ann", reason="oops")

    first = registry.promote("clf:a", actor="ann", reason="first model")
    assert (first.tag, first.previous_tag, first.alias, first.forced) == (
        "clf:a",
        None,
        "champion",
        False,
    )
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback("clf", actor="ann", reason="oops")
    registry.promote("clf:b", actor="bob", reason="better f1")
    forced = registry.promote("clf:c", actor="cid", reason="hotfix", forced=True)
    assert (forced.previous_tag, forced.forced, forced.actor) == ("clf:b", True, "cid")
    assert registry.alias("clf", "champion").tag == "clf:c"  # type: ignore[union-attr]
    with pytest.raises(RegistryError, match="already"):
        registry.promote("clf:c", actor="cid", reason="again")

    back = registry.rollback("clf", actor="dan", reason="c is broken")
    assert (back.tag, back.previous_tag, back.rollback, back.actor, back.reason) == (
        "clf:b",
        "clf:c",
        True,
        "dan",
        "c is broken",
    )
    assert registry.alias("clf", "champion").tag == "clf:b"  # type: ignore[union-attr]
    # rolling back again undoes the promotion before: to a, never back to c
    assert registry.rollback("clf", actor="dan", reason="b too").tag == "clf:a"
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback("clf", actor="dan", reason="nothing left")
    registry.promote("clf:d", actor="eve", reason="new")
    assert registry.rollback("clf", actor="eve", reason="undo d").tag == "clf:a"

    events = registry.history("clf")
    assert [(e.tag, e.previous_tag, e.rollback) for e in events] == [
        ("clf:a", "clf:d", True),
        ("clf:d", "clf:a", False),
        ("clf:a", "clf:b", True),
        ("clf:b", "clf:c", True),
        ("clf:c", "clf:b", False),
        ("clf:b", "clf:a", False),
        ("clf:a", None, False),
    ]
    assert [e.actor for e in events][-3:] == ["cid", "bob", "ann"]
    assert [e.reason for e in events][-1] == "first model"
    assert [e.forced for e in events] == [False, False, False, False, True, False, False]
    assert all(e.at.tzinfo is not None for e in events)
    assert events[0].at >= events[-1].at
    assert registry.history("missing") == []


def test_aliases_are_per_name_and_need_actor_and_reason(registry: Registry) -> None:
    registry.register("clf:v1", metadata())
    registry.register("clf:v2", metadata())
    registry.register("other:v1", metadata())
    registry.promote("clf:v1", actor="ann", reason="r")
    challenger = registry.set_alias("clf:v2", "challenger", actor="ann", reason="try it")
    assert (challenger.alias, challenger.previous_tag) == ("challenger", None)
    assert registry.alias("clf", "champion").tag == "clf:v1"  # type: ignore[union-attr]
    assert registry.alias("clf", "challenger").tag == "clf:v2"  # type: ignore[union-attr]
    assert registry.alias("other", "champion") is None
    assert registry.aliases("clf") == {"champion": "clf:v1", "challenger": "clf:v2"}
    # a challenger change does not count as a champion promotion for rollback
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback("clf", actor="ann", reason="r")
    with pytest.raises(RegistryError, match="reason"):
        registry.promote("clf:v2", actor="ann", reason="  ")


def test_record_gates_appends(registry: Registry) -> None:
    registry.register("clf:v1", metadata())
    registry.record_gates("clf:v1", [{"gate": "min_accuracy", "passed": True, "value": 0.95}])
    registry.record_gates("clf:v1", [{"gate": "latency", "passed": False, "detail": "slow"}])
    gates = registry.get("clf:v1").gates
    assert [g["gate"] for g in gates] == ["min_accuracy", "latency"]
    assert gates[1] == {"gate": "latency", "passed": False, "detail": "slow"}


def test_diff_only_differences(registry: Registry) -> None:
    registry.register("clf:v1", metadata())
    other = metadata(candidate="forest", c=2.0, accuracy=0.97)
    other["versions"] = {"python": "3.11.9", "scikit-learn": "1.9.2", "pandas": "3.1.1"}
    other["data_fingerprint"] = "sha256:bbb"
    registry.register("clf:v2", other)
    assert registry.diff("clf:v1", "clf:v2") == {
        "params.C": (1.0, 2.0),
        "metrics.test.accuracy": (0.95, 0.97),
        "versions.pandas": (None, "3.1.1"),
        "versions.scikit-learn": ("1.9.1", "1.9.2"),
        "data_fingerprint": ("sha256:aaa", "sha256:bbb"),
    }
    assert registry.diff("clf:v1", "clf:v1") == {}
    with pytest.raises(UnknownModelError, match="clf:v9"):
        registry.diff("clf:v1", "clf:v9")


def test_two_registries_share_a_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'registry.db'}"  # the folder is created
    with Registry(url) as one, Registry(url) as two:
        one.register("clf:v1", metadata())
        assert two.get("clf:v1").candidate == "logreg"
        two.register("clf:v2", metadata())
        two.promote("clf:v2", actor="ann", reason="r")
        assert one.alias("clf", "champion").tag == "clf:v2"  # type: ignore[union-attr]
        assert [v.tag for v in one.list()] == ["clf:v2", "clf:v1"]
    with create_engine(url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


WRITER = """
import sys
from nbship.registry.versions import Registry
url, worker = sys.argv[1], sys.argv[2]
reg = Registry(url)
for i in range(15):
    tag = f"clf:w{worker}-{i}"
    reg.register(tag, {"candidate": "knn", "params": {"i": i}})
    reg.record_gates(tag, [{"gate": "g", "passed": True}])
    reg.set_alias(tag, f"lane{worker}", actor=f"w{worker}", reason="load")
"""


def test_several_processes_write_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, url, str(n)],
            cwd=PROJECT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    with Registry(url) as reg:
        assert len(reg.list("clf")) == 60
        assert len(reg.history("clf")) == 60
        assert all(v.gates == [{"gate": "g", "passed": True}] for v in reg.list())
        assert reg.alias("clf", "lane3").tag == "clf:w3-14"  # type: ignore[union-attr]


def test_registry_url_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NBSHIP_REGISTRY_URL", raising=False)
    assert registry_url(tmp_path, None) == f"sqlite:///{tmp_path}/registry.db"
    relative = "sqlite:///state/models.db"
    assert registry_url(tmp_path, relative) == f"sqlite:///{tmp_path}/state/models.db"
    absolute = "sqlite:////srv/models.db"
    assert registry_url(tmp_path, absolute) == "sqlite:////srv/models.db"
    pg = "postgresql+psycopg://user:secret@db.example:5432/models"
    assert registry_url(tmp_path, pg) == pg
    # a relative project folder is made absolute
    monkeypatch.chdir(tmp_path)
    assert registry_url(Path("."), None) == f"sqlite:///{tmp_path}/registry.db"

    monkeypatch.setenv("NBSHIP_REGISTRY_URL", "sqlite:///from-env.db")
    assert registry_url(tmp_path, relative) == f"sqlite:///{tmp_path}/from-env.db"
    monkeypatch.setenv("NBSHIP_REGISTRY_URL", pg)
    assert registry_url(tmp_path, relative) == pg
    # env.yaml's `registry` is a mapping ({url: ...}), checked with the rest of the config
    raw = config.read_raw(PROJECT)
    with pytest.raises(ConfigError, match="registry: Input should be a valid dictionary"):
        config.validate({**raw, "registry": "sqlite:///x.db"})


def test_default_url_opens_in_the_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NBSHIP_REGISTRY_URL", raising=False)
    with Registry(registry_url(tmp_path, None)) as reg:
        reg.register("clf:v1", metadata())
    assert (tmp_path / "registry.db").is_file()
