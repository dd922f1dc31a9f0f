"""The model registry: every packaged model version, its aliases and their history.

A version is a BentoML model tag (`name:version`) with the metadata `package.py` records
(params, metrics, data fingerprint, definition hash, library versions, ...). Aliases
(`champion` serves, `challenger` is on trial) point at one version of a model name; every
change of an alias is an append-only promotion event (who, when, why, previous holder,
forced or not), and `rollback` walks that history back.

Storage is SQLAlchemy: a SQLite file in the project by default (WAL + busy timeout, so
several processes can share it), or any other URL, e.g. PostgreSQL.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    create_engine,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from nbship.common.sqlite import sqlite_engine, writer
from nbship.common.timeutil import utc as _utc

CHAMPION = "champion"
CHALLENGER = "challenger"
# how a release shares traffic between the champion and another version (see Release)
SHADOW, CANARY, AB = "shadow", "canary", "ab"
RELEASE_KINDS = (SHADOW, CANARY, AB)
# how a release ended: by hand (promoted, aborted), by a guard rail (rolled_back), or by
# another release started in its place (replaced)
RELEASE_OUTCOMES = ("promoted", "aborted", "rolled_back", "replaced")
# Sections compared by `Registry.diff`; dict sections are flattened to dotted keys.
DIFF_SECTIONS = ("params", "metrics", "versions", "data_fingerprint", "definition_hash")
# Metadata keys stored in their own columns; the rest goes to `extra`.
_COLUMNS = (
    "candidate",
    "params",
    "metrics",
    "data_fingerprint",
    "definition_hash",
    "versions",
    "git_commit",
    "train_seconds",
    "predict_ms",
    "reports",
)


class UnknownModelError(LookupError):
    """No model version with that tag."""

    def __str__(self) -> str:  # LookupError would quote a single argument like KeyError
        return str(self.args[0]) if self.args else ""


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (bad tag, nothing to roll back to, ...)."""


@dataclass(frozen=True)
class ModelVersion:
    tag: str
    name: str
    version: str
    created_at: datetime
    candidate: str | None
    params: dict[str, Any]
    metrics: dict[str, Any]
    data_fingerprint: str | None
    definition_hash: str | None
    versions: dict[str, Any]
    git_commit: str | None
    train_seconds: float | None
    predict_ms: dict[str, Any]
    reports: str | None
    bento_tag: str | None
    gates: list[dict[str, Any]]
    # the remaining metadata keys (selection, trained_at, features, target, classes, ...)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PromotionEvent:
    id: int
    name: str
    alias: str
    tag: str
    previous_tag: str | None
    actor: str
    reason: str
    forced: bool
    at: datetime
    rollback: bool = False  # this event undid the alias's latest promotion


@dataclass(frozen=True)
class Release:
    """A version on trial beside the champion, as registry state that every server sharing
    the registry follows: `shadow` (predicts `share` of the requests off the request path,
    never answers), `canary` (answers `share` of them), `ab` (an experiment: answers
    `share`, arm "b"; the champion is arm "a"). Active while `ended_at` is None."""

    id: int
    name: str
    kind: str
    tag: str
    champion_tag: str  # the champion when it started: what the trial is compared with
    share: float
    actor: str
    reason: str
    started_at: datetime
    ended_at: datetime | None = None
    outcome: str | None = None  # one of RELEASE_OUTCOMES once ended
    end_reason: str | None = None
    end_actor: str | None = None

    @property
    def active(self) -> bool:
        return self.ended_at is None

    @property
    def arms(self) -> tuple[str, str]:
        """The names of (the champion's, the trial version's) answers."""
        return ("a", "b") if self.kind == AB else (CHAMPION, self.kind)


class _Base(DeclarativeBase):
    pass


class _Version(_Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tag: Mapped[str] = mapped_column(String(255), unique=True)
    name: Mapped[str] = mapped_column(String(255), index=True)
    version: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    candidate: Mapped[str | None] = mapped_column(String(255))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    data_fingerprint: Mapped[str | None] = mapped_column(String(255))
    definition_hash: Mapped[str | None] = mapped_column(String(255))
    versions: Mapped[dict[str, Any]] = mapped_column(JSON)
    git_commit: Mapped[str | None] = mapped_column(String(255))
    train_seconds: Mapped[float | None] = mapped_column(Float)
    predict_ms: Mapped[dict[str, Any]] = mapped_column(JSON)
    reports: Mapped[str | None] = mapped_column(String(4096))
    bento_tag: Mapped[str | None] = mapped_column(String(255))
    gates: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON)


class _Alias(_Base):
    __tablename__ = "model_aliases"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    tag: Mapped[str] = mapped_column(ForeignKey("model_versions.tag"))


class _Event(_Base):
    __tablename__ = "model_promotions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255), index=True)
    alias: Mapped[str] = mapped_column(String(64))
    tag: Mapped[str] = mapped_column(ForeignKey("model_versions.tag"))
    previous_tag: Mapped[str | None] = mapped_column(String(255))
    actor: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(String(4096))
    forced: Mapped[bool]
    rollback: Mapped[bool]
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _Release(_Base):
    __tablename__ = "model_releases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    tag: Mapped[str] = mapped_column(ForeignKey("model_versions.tag"))
    champion_tag: Mapped[str] = mapped_column(String(255))
    share: Mapped[float] = mapped_column(Float)
    actor: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(String(4096))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[str | None] = mapped_column(String(32))
    end_reason: Mapped[str | None] = mapped_column(String(4096))
    end_actor: Mapped[str | None] = mapped_column(String(255))


def _release(row: _Release) -> Release:
    return Release(
        id=row.id, name=row.name, kind=row.kind, tag=row.tag, champion_tag=row.champion_tag,
        share=row.share, actor=row.actor, reason=row.reason, started_at=_utc(row.started_at),
        ended_at=_utc(row.ended_at) if row.ended_at else None, outcome=row.outcome,
        end_reason=row.end_reason, end_actor=row.end_actor,
    )  # fmt: skip


def split_tag(tag: str) -> tuple[str, str]:
    name, sep, version = tag.partition(":")
    if not sep or not name or not version or ":" in version:
        raise RegistryError(f"not a model tag: {tag!r} (expected name:version)")
    return name, version


def _jsonable(value: Any) -> Any:
    """Plain JSON types only (numpy scalars, paths and tuples become numbers, str, lists)."""

    def default(obj: Any) -> Any:
        if hasattr(obj, "item"):  # numpy scalar
            return obj.item()
        if hasattr(obj, "tolist"):  # numpy array
            return obj.tolist()
        return str(obj)

    return json.loads(json.dumps(value, default=default))


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"test": {"accuracy": 1}} -> {"test.accuracy": 1}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _version(row: _Version) -> ModelVersion:
    return ModelVersion(
        tag=row.tag,
        name=row.name,
        version=row.version,
        created_at=_utc(row.created_at),
        candidate=row.candidate,
        params=dict(row.params or {}),
        metrics=dict(row.metrics or {}),
        data_fingerprint=row.data_fingerprint,
        definition_hash=row.definition_hash,
        versions=dict(row.versions or {}),
        git_commit=row.git_commit,
        train_seconds=row.train_seconds,
        predict_ms=dict(row.predict_ms or {}),
        reports=row.reports,
        bento_tag=row.bento_tag,
        gates=[dict(g) for g in row.gates or []],
        extra=dict(row.extra or {}),
    )


def _event(row: _Event) -> PromotionEvent:
    return PromotionEvent(
        id=row.id,
        name=row.name,
        alias=row.alias,
        tag=row.tag,
        previous_tag=row.previous_tag,
        actor=row.actor,
        reason=row.reason,
        forced=bool(row.forced),
        at=_utc(row.at),
        rollback=bool(row.rollback),
    )


class Registry:
    """Model versions, aliases and promotion history in one SQL database."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        """`create=False` opens an existing registry only (a predict server reading the
        champion must not make an empty SQLite file where the registry is missing)."""
        self.url = url
        self._sqlite = make_url(url).get_backend_name() == "sqlite"
        if not create and self._sqlite:
            database = make_url(url).database or ""
            if database and database != ":memory:" and not Path(database).is_file():
                raise RegistryError(f"no registry at {database}")
        self._engine = sqlite_engine(url) if self._sqlite else create_engine(url)
        self._writer = writer(self._engine)
        # DDL through the writer (BEGIN IMMEDIATE on SQLite): a deferred transaction that
        # reads the schema and then upgrades to write is refused at once ("database is
        # locked", no busy wait) when another process is creating the tables too.
        if not create:
            return
        try:
            _Base.metadata.create_all(self._writer)
        except OperationalError:  # another process created the tables at the same time
            _Base.metadata.create_all(self._writer)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({make_url(self.url).render_as_string(hide_password=True)!r})"

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self._engine) as session, session.begin():
            yield session

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with Session(self._writer, expire_on_commit=False) as session, session.begin():
            yield session

    # versions ---------------------------------------------------------------------------

    def register(
        self, tag: str, metadata: Mapping[str, Any], bento_tag: str | None = None
    ) -> ModelVersion:
        """Records a model version; registering a known tag again returns it unchanged
        (except that a given `bento_tag` is stored)."""
        name, version = split_tag(tag)
        meta = _jsonable(dict(metadata))
        try:
            with self._write() as session:
                row = session.scalar(select(_Version).where(_Version.tag == tag))
                if row is None:
                    row = self._new_version(tag, name, version, meta, bento_tag)
                    session.add(row)
                elif bento_tag is not None and row.bento_tag != bento_tag:
                    row.bento_tag = bento_tag
                return _version(row)
        except IntegrityError:  # registered concurrently by another process
            return self.get(tag)

    @staticmethod
    def _new_version(
        tag: str, name: str, version: str, meta: dict[str, Any], bento_tag: str | None
    ) -> _Version:
        train_seconds = meta.get("train_seconds")
        return _Version(
            tag=tag,
            name=name,
            version=version,
            created_at=datetime.now(UTC),
            candidate=meta.get("candidate"),
            params=meta.get("params") or {},
            metrics=meta.get("metrics") or {},
            data_fingerprint=meta.get("data_fingerprint"),
            definition_hash=meta.get("definition_hash"),
            versions=meta.get("versions") or {},
            git_commit=meta.get("git_commit"),
            train_seconds=None if train_seconds is None else float(train_seconds),
            predict_ms=meta.get("predict_ms") or {},
            reports=meta.get("reports"),
            bento_tag=bento_tag,
            gates=[],
            extra={k: v for k, v in meta.items() if k not in _COLUMNS},
        )

    def get(self, tag: str) -> ModelVersion:
        with self._read() as session:
            row = session.scalar(select(_Version).where(_Version.tag == tag))
            if row is None:
                raise self._unknown(session, tag)
            return _version(row)

    def _unknown(self, session: Session, tag: str, shown: int = 5) -> UnknownModelError:
        name = tag.partition(":")[0]
        query = select(_Version.tag).order_by(_Version.created_at.desc(), _Version.id.desc())
        same = session.scalars(query.where(_Version.name == name).limit(shown + 1)).all()
        known = same or session.scalars(query.limit(shown + 1)).all()
        if not known:
            return UnknownModelError(f"unknown model version {tag!r}: the registry is empty")
        listed = ", ".join(known[:shown]) + (", ..." if len(known) > shown else "")
        return UnknownModelError(f"unknown model version {tag!r}; known: {listed}")

    def record_gates(self, tag: str, verdicts: Sequence[Mapping[str, Any]]) -> None:
        """Appends gate verdicts (plain JSON dicts) to the version's record."""
        with self._write() as session:
            row = session.scalar(select(_Version).where(_Version.tag == tag).with_for_update())
            if row is None:
                raise self._unknown(session, tag)
            row.gates = [*(row.gates or []), *_jsonable([dict(v) for v in verdicts])]

    def annotate(self, tag: str, **values: Any) -> None:
        """Adds or replaces keys of the version's extra metadata (e.g. its card's path)."""
        with self._write() as session:
            row = session.scalar(select(_Version).where(_Version.tag == tag).with_for_update())
            if row is None:
                raise self._unknown(session, tag)
            row.extra = {**(row.extra or {}), **_jsonable(values)}

    def diff(self, a: str, b: str) -> dict[str, tuple[Any, Any]]:
        """What differs between two versions: `{key: (a_value, b_value)}`, keys dotted by
        section ("params.C", "metrics.test.accuracy", "versions.pandas",
        "data_fingerprint", "definition_hash"); a side without the key has None."""
        left, right = self.get(a), self.get(b)
        changes: dict[str, tuple[Any, Any]] = {}
        for section in DIFF_SECTIONS:
            x, y = getattr(left, section), getattr(right, section)
            if isinstance(x, dict) or isinstance(y, dict):
                fx, fy = flatten(x or {}, f"{section}."), flatten(y or {}, f"{section}.")
                for key in sorted(fx.keys() | fy.keys()):
                    if fx.get(key) != fy.get(key):
                        changes[key] = (fx.get(key), fy.get(key))
            elif x != y:
                changes[section] = (x, y)
        return changes

    # aliases ----------------------------------------------------------------------------

    def alias(self, name: str, alias: str) -> ModelVersion | None:
        """The version holding `alias` for model `name`, or None."""
        with self._read() as session:
            row = session.scalar(
                select(_Version)
                .join(_Alias, _Alias.tag == _Version.tag)
                .where(_Alias.name == name, _Alias.alias == alias)
            )
            return None if row is None else _version(row)

    def aliases(self, name: str) -> dict[str, str]:
        """{alias: tag} for model `name`."""
        with self._read() as session:
            rows = session.execute(select(_Alias.alias, _Alias.tag).where(_Alias.name == name))
            return {alias: tag for alias, tag in rows}

    def set_alias(
        self, tag: str, alias: str, *, actor: str, reason: str, forced: bool = False
    ) -> PromotionEvent:
        """Points `alias` of the tag's model at `tag` and records who, why and what it
        replaced."""
        if not alias.strip():
            raise RegistryError("an alias needs a name")
        with self._write() as session:
            row = session.scalar(select(_Version).where(_Version.tag == tag))
            if row is None:
                raise self._unknown(session, tag)
            return self._move(session, row.name, alias, tag, actor, reason, forced, False)

    def promote(self, tag: str, *, actor: str, reason: str, forced: bool = False) -> PromotionEvent:
        """Makes `tag` the champion (what serves). Gate checks belong to the caller: this
        records the decision, with `forced` telling whether failed gates were overridden."""
        return self.set_alias(tag, CHAMPION, actor=actor, reason=reason, forced=forced)

    def rollback(self, name: str, *, actor: str, reason: str) -> PromotionEvent:
        """The champion goes back to the one before the current promotion. Rollbacks undo
        promotions in turn (like an undo stack): rolling back twice after promoting
        A, B, C gives A, never C again."""
        with self._write() as session:
            events = session.scalars(
                select(_Event)
                .where(_Event.name == name, _Event.alias == CHAMPION)
                .order_by(_Event.id)
            ).all()
            stack: builtins.list[_Event] = []
            for past in events:
                if past.rollback:
                    if stack:
                        stack.pop()
                else:
                    stack.append(past)
            if not stack or stack[-1].previous_tag is None:
                raise RegistryError(f"{name} has no earlier champion to roll back to")
            target = stack[-1].previous_tag
            return self._move(session, name, CHAMPION, target, actor, reason, False, True)

    def _move(
        self,
        session: Session,
        name: str,
        alias: str,
        tag: str,
        actor: str,
        reason: str,
        forced: bool,
        rollback: bool,
    ) -> PromotionEvent:
        if not actor.strip() or not reason.strip():
            raise RegistryError("a promotion needs an actor and a reason")
        current = session.scalar(
            select(_Alias).where(_Alias.name == name, _Alias.alias == alias).with_for_update()
        )
        previous = None if current is None else current.tag
        if previous == tag:
            raise RegistryError(f"{tag} already is the {alias} of {name}")
        if current is None:
            session.add(_Alias(name=name, alias=alias, tag=tag))
        else:
            current.tag = tag
        row = _Event(
            name=name,
            alias=alias,
            tag=tag,
            previous_tag=previous,
            actor=actor,
            reason=reason,
            forced=forced,
            rollback=rollback,
            at=datetime.now(UTC),
        )
        session.add(row)
        try:
            session.flush()
        except IntegrityError as exc:  # another process set this alias first
            raise RegistryError(f"{alias} of {name} changed concurrently; try again") from exc
        return _event(row)

    def history(self, name: str) -> builtins.list[PromotionEvent]:
        """Every alias change of model `name`, newest first."""
        with self._read() as session:
            rows = session.scalars(
                select(_Event).where(_Event.name == name).order_by(_Event.id.desc())
            ).all()
            return [_event(r) for r in rows]

    def list(self, name: str | None = None) -> builtins.list[ModelVersion]:
        """Versions (of one model name, or all), newest first."""
        query = select(_Version).order_by(_Version.created_at.desc(), _Version.id.desc())
        if name is not None:
            query = query.where(_Version.name == name)
        with self._read() as session:
            return [_version(r) for r in session.scalars(query).all()]

    # releases ---------------------------------------------------------------------------

    def start_release(
        self, tag: str, kind: str, share: float, *, actor: str, reason: str
    ) -> Release:
        """Puts `tag` on trial beside its model's champion (see Release). A release already
        running for that model ends as "replaced" in the same transaction: changing a
        release (a canary's share, shadow to canary) is starting the new one."""
        if kind not in RELEASE_KINDS:
            known = ", ".join(RELEASE_KINDS)
            raise RegistryError(f"release kind {kind!r}: must be one of {known}")
        if not 0 < share <= 1:
            raise RegistryError(f"share {share!r}: must be more than 0 and at most 1")
        if not actor.strip() or not reason.strip():
            raise RegistryError("a release needs an actor and a reason")
        with self._write() as session:
            row = session.scalar(select(_Version).where(_Version.tag == tag))
            if row is None:
                raise self._unknown(session, tag)
            champion = session.scalar(
                select(_Alias.tag).where(_Alias.name == row.name, _Alias.alias == CHAMPION)
            )
            if champion is None:
                raise RegistryError(f"{row.name} has no champion to release {tag} beside")
            if champion == tag:
                raise RegistryError(f"{tag} is the champion: release another version")
            now = datetime.now(UTC)
            running = self._running(session, row.name)
            if running is not None:
                running.ended_at, running.outcome, running.end_actor = now, "replaced", actor
                running.end_reason = f"replaced by a {kind} of {tag}"
            new = _Release(
                name=row.name, kind=kind, tag=tag, champion_tag=champion, share=float(share),
                actor=actor, reason=reason, started_at=now,
            )  # fmt: skip
            session.add(new)
            session.flush()
            return _release(new)

    @staticmethod
    def _running(session: Session, name: str) -> _Release | None:
        return session.scalar(
            select(_Release)
            .where(_Release.name == name, _Release.ended_at.is_(None))
            .order_by(_Release.id.desc())
        )

    def active_release(self, name: str) -> Release | None:
        """The release running for model `name`, or None (also for a registry made before
        releases existed, which has no table for them)."""
        try:
            with self._read() as session:
                row = self._running(session, name)
                return None if row is None else _release(row)
        except OperationalError as exc:
            if "model_releases" in str(exc):
                return None
            raise

    def end_release(
        self, name: str, outcome: str, *, actor: str, reason: str, release_id: int | None = None
    ) -> Release:
        """Ends the running release of `name` (only release `release_id`, when given: of
        several servers whose guard rails fire at once, one ends it and the others are
        told it already ended)."""
        if outcome not in RELEASE_OUTCOMES:
            known = ", ".join(RELEASE_OUTCOMES)
            raise RegistryError(f"outcome {outcome!r}: must be one of {known}")
        with self._write() as session:
            row = self._running(session, name)
            if row is None or (release_id is not None and row.id != release_id):
                which = f"release {release_id}" if release_id is not None else "release"
                raise RegistryError(f"no {which} of {name} is running (it has ended)")
            row.ended_at, row.outcome = datetime.now(UTC), outcome
            row.end_actor, row.end_reason = actor, reason
            session.flush()
            return _release(row)

    def releases(self, name: str) -> builtins.list[Release]:
        """Every release of model `name`, newest first (none for an older registry)."""
        try:
            with self._read() as session:
                rows = session.scalars(
                    select(_Release).where(_Release.name == name).order_by(_Release.id.desc())
                ).all()
                return [_release(r) for r in rows]
        except OperationalError as exc:
            if "model_releases" in str(exc):
                return []
            raise
