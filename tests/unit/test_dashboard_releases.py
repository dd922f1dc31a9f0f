"""The dashboard's release panel on a real SQLite registry and prediction log: the running
release (shadow, canary, A/B) with each arm's requests, errors and p99 latency since it
started, the last releases that ended, and a registry made before releases existed."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from nbship.operate.dashboard import ENDED_RELEASES, _live, _page, build_summary, create_app
from nbship.prediction_log import (
    SHADOW_KIND,
    SHADOW_SUFFIX,
    LogEntry,
    PredictionLog,
    new_request_id,
    url_for_sqlite,
)
from nbship.registry.versions import Registry, Release

pytestmark = pytest.mark.unit

MODEL = "clf"
V1, V2, V3 = f"{MODEL}:v1", f"{MODEL}:v2", f"{MODEL}:v3"
MIN_ROWS = 5


def metadata(candidate: str) -> dict[str, Any]:
    return {
        "candidate": candidate,
        "params": {"C": 1.0},
        "metrics": {"test": {"accuracy": 0.95, "f1_macro": 0.9}},
        "selection": {"metric": "f1_macro", "value": 0.9},
    }


@pytest.fixture
def registry_url(tmp_path: Path) -> str:
    return url_for_sqlite(tmp_path / "registry.db")


@pytest.fixture
def registry(registry_url: str) -> Iterator[Registry]:
    with Registry(registry_url) as reg:
        for tag, candidate in ((V1, "logreg"), (V2, "forest"), (V3, "boost")):
            reg.register(tag, metadata(candidate))
        reg.promote(V1, actor="alice", reason="first model")
        yield reg


@pytest.fixture
def log_url(tmp_path: Path) -> str:
    return url_for_sqlite(tmp_path / "log.db")


def entry(
    tag: str,
    ts: datetime,
    *,
    failed: bool = False,
    latency: float = 5.0,
    kind: str = "predict",
    request_id: str | None = None,
) -> LogEntry:
    return LogEntry(
        request_id=request_id or new_request_id(),
        ts=ts,
        kind=kind,
        model_tag=tag,
        inputs=[{"x": 1.0}],
        outputs=None if failed else [{"label": "yes"}],
        latency_ms=latency,
        status="error" if failed else "ok",
        http_status=500 if failed else 200,
        error_class="RuntimeError" if failed else None,
        error_message="boom" if failed else None,
        n_records=1,
    )


def write(url: str, spool: Path, entries: list[LogEntry]) -> None:
    with PredictionLog(url, spool) as log:
        for e in entries:
            assert log.record(e)
        assert log.flush()


def answers(tag: str, start: datetime, n: int, errors: int = 0, latency: float = 5.0) -> list[Any]:
    """`n` requests answered by `tag` just after `start`, the first `errors` failed; the
    successful ones take `latency` ms."""
    return [
        entry(tag, start + timedelta(milliseconds=i + 1), failed=i < errors, latency=latency)
        for i in range(n)
    ]


def summarize(registry_url: str, log_url: str) -> dict[str, Any]:
    return build_summary(
        registry_url=registry_url,
        log_url=log_url,
        model_name=MODEL,
        min_rows=MIN_ROWS,
        window=timedelta(minutes=30),
        period=timedelta(hours=2),
        now=datetime.now(UTC) + timedelta(seconds=1),
    )


class _Tables(HTMLParser):
    """The cells' text of every table with an id: {id: [[cell, ...], ...]} (body rows)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in_body = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and dict(attrs).get("id"):
            self._table = dict(attrs)["id"]
            self.tables[str(self._table)] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._table and self._in_body:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table, self._in_body = None, False
        elif tag == "tbody":
            self._in_body = False
        elif tag == "tr" and self._row is not None and self._table:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def tables(html: str) -> dict[str, list[list[str]]]:
    parser = _Tables()
    parser.feed(html)
    return parser.tables


def section(html: str, anchor: str) -> str:
    start = html.index(f'<section id="{anchor}">')
    return html[start : html.index("</section>", start)]


def render(summary: dict[str, Any]) -> str:
    return _page(summary, _live(summary, 0.2), 30)


async def _get(app: Any, *paths: str) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        return [await client.get(path) for path in paths]


# the summary ----------------------------------------------------------------------------


def test_no_release_running(registry: Registry, registry_url: str, log_url: str) -> None:
    summary = summarize(registry_url, log_url)
    assert summary["release"] == {"active": None, "ended": []}
    html = render(summary)
    panel = section(html, "release-section")
    assert "<h2>Release</h2>" in panel and "no release running" in panel
    assert "No release has ended yet." in panel
    assert 'id="release-arms"' not in panel


def test_a_canary_counts_each_arm_since_it_started(
    registry: Registry, registry_url: str, log_url: str, tmp_path: Path
) -> None:
    release = registry.start_release(V2, "canary", 0.1, actor="alice", reason="try the forest")
    start = release.started_at
    before = answers(V1, start - timedelta(minutes=1), 7, errors=7)  # not the release's
    champion = answers(V1, start, 40, errors=2, latency=5.0)
    canary = answers(V2, start, 10, errors=3, latency=50.0)
    write(log_url, tmp_path / "spool", before + champion + canary)

    summary = summarize(registry_url, log_url)
    active = summary["release"]["active"]
    assert {k: active[k] for k in ("id", "kind", "tag", "champion_tag", "share", "actor")} == {
        "id": release.id, "kind": "canary", "tag": V2, "champion_tag": V1, "share": 0.1,
        "actor": "alice",
    }  # fmt: skip
    assert active["reason"] == "try the forest"
    assert active["started_at"] == start and active["counted_since"] == start
    assert list(active["arms"]) == ["champion", "canary"]
    assert active["arms"]["champion"] == {
        "tag": V1, "requests": 40, "errors": 2, "error_rate": 2 / 40, "latency_p99_ms": 5.0
    }  # fmt: skip
    assert active["arms"]["canary"] == {
        "tag": V2, "requests": 10, "errors": 3, "error_rate": 3 / 10, "latency_p99_ms": 50.0
    }  # fmt: skip
    assert active["shadow"] is None
    assert summary["release"]["ended"] == []
    assert summary["period"]["requests"] == 57  # the period still counts every request

    html = render(summary)
    panel = section(html, "release-section")
    assert 'data-kind="canary"' in panel and "try the forest" in panel and "alice" in panel
    assert "10% of the requests answered by the canary" in panel
    arms = tables(html)["release-arms"]
    assert arms == [
        ["champion", V1, "40", "2", "5.0%", "5.0 ms"],
        ["canary", V2, "10", "3", "30.0%", "50.0 ms"],
    ]
    assert "no release running" not in panel


def test_an_ab_release_names_its_arms_a_and_b(
    registry: Registry, registry_url: str, log_url: str, tmp_path: Path
) -> None:
    release = registry.start_release(V3, "ab", 0.5, actor="bob", reason="experiment")
    write(
        log_url,
        tmp_path / "spool",
        answers(V1, release.started_at, 6) + answers(V3, release.started_at, 3, errors=1),
    )
    arms = summarize(registry_url, log_url)["release"]["active"]["arms"]
    assert list(arms) == ["a", "b"]
    assert (arms["a"]["tag"], arms["a"]["requests"], arms["a"]["errors"]) == (V1, 6, 0)
    # under min_rows: the counts, but no rate or quantile (as in the alert rules)
    assert arms["b"] == {
        "tag": V3, "requests": 3, "errors": 1, "error_rate": None, "latency_p99_ms": None
    }  # fmt: skip
    rows = tables(render(summarize(registry_url, log_url)))["release-arms"]
    assert rows == [["a", V1, "6", "0", "0.0%", "5.0 ms"], ["b", V3, "3", "1", "—", "—"]]


def test_a_shadow_counts_its_shadow_rows(
    registry: Registry, registry_url: str, log_url: str, tmp_path: Path
) -> None:
    release = registry.start_release(V2, "shadow", 1.0, actor="carol", reason="watch it")
    start = release.started_at
    champion = answers(V1, start, 20, errors=2, latency=4.0)
    shadows = [
        entry(V2, e.ts, kind=SHADOW_KIND, request_id=e.request_id + SHADOW_SUFFIX,
              failed=i == 0, latency=9.0)
        for i, e in enumerate(champion[:15])
    ]  # fmt: skip
    stale = entry(V2, start - timedelta(minutes=1), kind=SHADOW_KIND)  # before it started
    other = entry(V3, start + timedelta(seconds=0.1), kind=SHADOW_KIND)  # not this release's
    write(log_url, tmp_path / "spool", [*champion, *shadows, stale, other])

    summary = summarize(registry_url, log_url)
    active = summary["release"]["active"]
    assert list(active["arms"]) == ["champion", "shadow"]
    assert active["arms"]["champion"]["requests"] == 20
    assert active["arms"]["shadow"]["requests"] == 0  # a shadow never answers
    assert active["shadow"] == {
        "tag": V2, "requests": 15, "errors": 1, "error_rate": 1 / 15, "latency_p99_ms": 9.0
    }  # fmt: skip
    assert summary["period"]["requests"] == 20  # shadow rows are not requests

    html = render(summary)
    assert tables(html)["release-arms"] == [
        ["champion", V1, "20", "2", "10.0%", "4.0 ms"],
        ["shadow", V2, "15", "1", "6.7%", "9.0 ms"],
    ]
    panel = section(html, "release-section")
    assert "never answered" in panel and 'data-kind="shadow"' in panel


def test_ended_releases_newest_first_and_at_most_five(
    registry: Registry, registry_url: str, log_url: str
) -> None:
    ended: list[Release] = []
    for i in range(ENDED_RELEASES + 2):
        registry.start_release(V2, "canary", 0.1, actor="alice", reason=f"try {i}")
        ended.append(registry.end_release(MODEL, "aborted", actor="alice", reason=f"stop {i}"))
    registry.start_release(V3, "canary", 0.2, actor="alice", reason="first canary of v3")
    registry.start_release(V3, "ab", 0.5, actor="bob", reason="now an experiment")
    why = "error rate 0.4 > 0.05"
    rolled = registry.end_release(MODEL, "rolled_back", actor="guard", reason=why)

    summary = summarize(registry_url, log_url)
    release = summary["release"]
    assert release["active"] is None
    assert len(release["ended"]) == ENDED_RELEASES
    newest, replaced = release["ended"][:2]
    assert newest == {
        "id": rolled.id, "kind": "ab", "tag": V3, "champion_tag": V1, "share": 0.5,
        "started_at": rolled.started_at, "ended_at": rolled.ended_at,
        "outcome": "rolled_back", "end_reason": "error rate 0.4 > 0.05", "end_actor": "guard",
    }  # fmt: skip
    assert (replaced["kind"], replaced["outcome"]) == ("canary", "replaced")
    assert replaced["end_reason"] == "replaced by a ab of clf:v3"
    assert [r["end_reason"] for r in release["ended"][2:]] == ["stop 6", "stop 5", "stop 4"]

    rows = tables(render(summary))["releases-ended"]
    assert len(rows) == ENDED_RELEASES
    assert rows[0][1:] == ["ab", V3, "rolled_back", "error rate 0.4 > 0.05", "guard"]
    assert rows[1][1:4] == ["canary", V3, "replaced"]
    assert "no release running" in render(summary)


def test_a_registry_made_before_releases_still_renders(
    registry: Registry, registry_url: str, log_url: str, tmp_path: Path
) -> None:
    registry.close()
    with sqlite3.connect(tmp_path / "registry.db") as db:
        db.execute("DROP TABLE model_releases")
    summary = summarize(registry_url, log_url)
    assert summary["release"] == {"active": None, "ended": []}
    assert summary["problems"] == []
    assert summary["champion"]["tag"] == V1
    assert "no release running" in section(render(summary), "release-section")
    with sqlite3.connect(tmp_path / "registry.db") as db:  # the dashboard created nothing
        tables_left = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    assert "model_releases" not in tables_left


def test_no_registry_yet(tmp_path: Path, log_url: str) -> None:
    missing = tmp_path / "none.db"
    summary = summarize(url_for_sqlite(missing), log_url)
    assert summary["release"] == {"active": None, "ended": []}
    assert "no release running" in render(summary)
    assert not missing.exists()


# the app --------------------------------------------------------------------------------


def test_the_page_the_fragment_and_the_json_show_the_release(
    registry: Registry, registry_url: str, log_url: str, tmp_path: Path
) -> None:
    hostile = "<img src=x onerror=alert(1)>"
    release = registry.start_release(V2, "canary", 0.25, actor="alice", reason=hostile)
    write(log_url, tmp_path / "spool", answers(V1, release.started_at, 5)
          + answers(V2, release.started_at, 2))  # fmt: skip
    app = create_app(registry_url=registry_url, log_url=log_url, model_name=MODEL, min_rows=1)
    page, fragment, api = asyncio.run(_get(app, "/", "/fragment", "/api/summary"))
    assert page.status_code == fragment.status_code == api.status_code == 200
    for html in (page.text, fragment.text):
        panel = section(html, "release-section")
        assert "25% of the requests answered by the canary" in panel
        assert hostile not in panel and "&lt;img src=x onerror=alert(1)&gt;" in panel
        assert [row[:3] for row in tables(html)["release-arms"]] == [
            ["champion", V1, "5"],
            ["canary", V2, "2"],
        ]
    # the panel sits in the live part, before the versions the e2e test reads
    assert page.text.index('id="release-section"') < page.text.index('id="versions"')
    data = api.json()["release"]
    assert data["active"]["tag"] == V2 and data["active"]["share"] == 0.25
    assert data["active"]["started_at"] == release.started_at.isoformat()
    assert data["active"]["arms"]["canary"]["requests"] == 2
    assert data["ended"] == []
