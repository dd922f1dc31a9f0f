"""How a server follows the registry between polls: one Registry kept open (a new one per
poll cost the serving process 1-3% of its GIL), opened again when its SQLite file is
deleted or replaced, after a failed read, or when the URL changes."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from sqlalchemy import Engine, event

from nbship.project import REGISTRY_URL_ENV
from nbship.registry.versions import Registry
from nbship.serving.following import RegistryFollower, Reloader, read_registry

pytestmark = pytest.mark.unit

TAGS = ("clf:v1", "clf:v2", "clf:v3")


def make_registry(path: Path, champion: str | None = "clf:v1") -> str:
    url = f"sqlite:///{path}"
    with Registry(url) as registry:
        for tag in TAGS:
            registry.register(tag, {"candidate": "c", "params": {}, "metrics": {}})
        if champion is not None:
            registry.promote(champion, actor="t", reason="test")
    return url


def remove_registry(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def _no_url_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REGISTRY_URL_ENV, raising=False)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "registry.db"


@pytest.fixture
def url(path: Path) -> str:
    return make_registry(path)


@pytest.fixture
def follower(url: str) -> Iterator[RegistryFollower]:
    with RegistryFollower({"bento_name": "clf", "registry_url": url}) as follower:
        yield follower


@pytest.fixture
def connects() -> Iterator[list[object]]:
    """Every new database connection any engine makes while the test runs."""
    made: list[object] = []

    def count(dbapi_connection: object, _record: object) -> None:
        made.append(dbapi_connection)

    event.listen(Engine, "connect", count)
    try:
        yield made
    finally:
        event.remove(Engine, "connect", count)


def champion_tag(follower: RegistryFollower) -> str | None:
    view = follower.read()
    assert view.readable, view.reason
    return None if view.champion is None else view.champion.tag


def test_polls_reuse_one_open_registry_and_connection(
    follower: RegistryFollower, connects: list[object]
):
    views = [follower.read() for _ in range(5)]
    registry = follower.registry
    assert registry is not None
    assert all(v.readable and v.champion is not None for v in views)
    assert {v.champion.tag for v in views if v.champion is not None} == {"clf:v1"}
    assert len(connects) == 1  # one per poll before
    follower.read()
    assert follower.registry is registry and len(connects) == 1


def test_a_poll_reads_what_a_one_shot_read_does(url: str, follower: RegistryFollower):
    with Registry(url) as registry:
        registry.start_release("clf:v2", "canary", 0.2, actor="t", reason="try")
    view = follower.read()
    assert view == read_registry(follower.config)
    assert (view.reason, view.release and view.release.tag, view.trial and view.trial.tag) == (
        "registry champion",
        "clf:v2",
        "clf:v2",
    )


def test_a_new_champion_is_seen_at_the_next_poll(url: str, follower: RegistryFollower):
    assert champion_tag(follower) == "clf:v1"
    with Registry(url) as registry:
        registry.promote("clf:v2", actor="t", reason="better")
    assert champion_tag(follower) == "clf:v2"
    with Registry(url) as registry:
        registry.rollback("clf", actor="t", reason="worse")
    assert champion_tag(follower) == "clf:v1"


def test_no_registry_and_no_champion_say_so(tmp_path: Path):
    assert read_registry({"bento_name": "clf"}).reason == "no registry configured"
    assert not read_registry({"bento_name": "clf"}).readable
    url = make_registry(tmp_path / "empty.db", champion=None)
    with RegistryFollower({"bento_name": "clf", "registry_url": url}) as follower:
        view = follower.read()
    assert (view.readable, view.champion, view.reason) == (
        True,
        None,
        "the registry has no champion yet",
    )


def test_a_deleted_registry_is_unreadable_and_not_created_then_followed_again(
    path: Path, follower: RegistryFollower
):
    assert champion_tag(follower) == "clf:v1"
    remove_registry(path)
    view = follower.read()
    assert not view.readable and view.champion is None
    assert view.reason == f"registry unavailable (RegistryError: no registry at {path})"
    assert not path.exists() and follower.registry is None
    assert not follower.read().readable and not path.exists()  # nor at later polls
    make_registry(path, champion="clf:v3")
    assert champion_tag(follower) == "clf:v3"


def test_a_registry_replaced_between_polls_is_read_anew(
    path: Path, tmp_path: Path, follower: RegistryFollower
):
    assert champion_tag(follower) == "clf:v1"
    opened = follower.registry
    # SQLite would go on reading the old file through the connection it keeps open
    make_registry(tmp_path / "new.db", champion="clf:v2")
    remove_registry(path)
    os.replace(tmp_path / "new.db", path)
    assert champion_tag(follower) == "clf:v2"
    assert follower.registry is not opened


def test_a_failed_read_opens_the_registry_again(path: Path, url: str, follower: RegistryFollower):
    assert champion_tag(follower) == "clf:v1"
    opened = follower.registry
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE model_aliases")
    view = follower.read()
    assert not view.readable and view.champion is None
    assert view.reason.startswith("registry unavailable (OperationalError: ")
    assert "model_aliases" in view.reason
    assert follower.registry is None  # disposed: the next poll starts afresh
    with Registry(url) as registry:  # makes the missing table
        registry.promote("clf:v2", actor="t", reason="again")
    assert champion_tag(follower) == "clf:v2"
    assert follower.registry is not None and follower.registry is not opened


def test_a_registry_replaced_by_garbage_is_unreadable_until_fixed(
    path: Path, tmp_path: Path, follower: RegistryFollower
):
    assert champion_tag(follower) == "clf:v1"
    remove_registry(path)
    path.write_bytes(b"not a database, " * 512)
    view = follower.read()
    assert not view.readable and view.champion is None
    assert view.reason.startswith("registry unavailable (DatabaseError: ")
    assert not follower.read().readable  # stays unreadable, poll after poll
    path.unlink()
    make_registry(path, champion="clf:v2")
    assert champion_tag(follower) == "clf:v2"


def test_a_url_changed_in_the_environment_is_followed(
    tmp_path: Path, follower: RegistryFollower, monkeypatch: pytest.MonkeyPatch
):
    assert champion_tag(follower) == "clf:v1"
    other = make_registry(tmp_path / "other.db", champion="clf:v3")
    monkeypatch.setenv(REGISTRY_URL_ENV, other)
    assert champion_tag(follower) == "clf:v3"
    assert follower.registry is not None and follower.registry.url == other
    monkeypatch.delenv(REGISTRY_URL_ENV)
    assert champion_tag(follower) == "clf:v1"


def fake_server(tag: str) -> Any:
    """What a check asks of a server that serves `tag` and runs no release."""
    return cast(Any, SimpleNamespace(current=SimpleNamespace(tag=tag), release=None))


def test_the_reloader_keeps_one_registry_open_until_closed(url: str, connects: list[object]):
    reloader = Reloader(fake_server("clf:v1"), {"bento_name": "clf", "registry_url": url}, 0)
    for _ in range(3):
        assert reloader.check() == {
            "model_tag": "clf:v1",
            "changed": False,
            "reason": "registry champion",
            "release": None,
        }
    assert reloader.follower.registry is not None and len(connects) == 1
    reloader.close()
    assert reloader.stop.is_set() and reloader.follower.registry is None
    assert reloader.check()["reason"] == "registry champion"  # an admin reload at shutdown
    assert reloader.follower.registry is None


def test_the_reloader_thread_closes_the_registry_when_stopped(url: str):
    reloader = Reloader(fake_server("clf:v1"), {"bento_name": "clf", "registry_url": url}, 0.01)
    checked = threading.Event()
    check = reloader.check

    def counted() -> dict[str, Any]:
        result = check()
        checked.set()
        return result

    reloader.check = counted  # type: ignore[method-assign]
    reloader.start()
    assert reloader.thread is not None
    assert checked.wait(10)
    assert reloader.follower.registry is not None
    reloader.stop.set()  # what ModelServer.close does
    reloader.thread.join(10)
    assert not reloader.thread.is_alive()
    assert reloader.follower.registry is None
