"""Which model a server serves, and how it follows the registry: the champion (fetched
from the shared store and verified, else the bento's own model), and the running
release's version beside it (nbship.serving.releases). The Reloader checks both every
`NBSHIP_RELOAD_SECONDS` and on POST /admin/reload, off the request path.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbship.common.sqlite import database_file, file_id
from nbship.project import MODEL_STORE_ENV, REGISTRY_URL_ENV
from nbship.registry import model_store
from nbship.registry.versions import CHAMPION, ModelVersion, Registry, RegistryError, Release
from nbship.serving.compiled import CompiledModel, UnsupportedModel, compile_model
from nbship.serving.releases import ServedRelease, guard_alert, send_alert
from nbship.tasks import CLASSIFICATION, Task
from nbship.tasks import recorded as recorded_task

if TYPE_CHECKING:
    from nbship.serving.service import ModelServer

# under "bentoml" so the server's own log configuration shows it (INFO and up)
logger = logging.getLogger("bentoml.nbship")


def config_task(config: dict[str, Any]) -> Task:
    """The task a bento serves: serving.json's "task", else its metadata's, else
    classification (bentos built before regression say neither)."""
    return recorded_task(config.get("task") or (config.get("metadata") or {}).get("task"))


@dataclass(frozen=True)
class ServedModel:
    tag: str
    model: Any
    source: str  # "registry" (the champion, fetched) or "bento" (the bento's own model)
    reason: str  # why this one, for /info and the start-up log
    metadata: dict[str, Any]
    # the numpy plan when the package step verified it for this model, else None
    plan: CompiledModel | None = None
    inference: str = "scikit-learn"

    @property
    def classes(self) -> list[str]:
        """A classifier's classes (a regressor has none: only classification asks)."""
        return [str(c) for c in self.model.classes_]


def with_plan(
    served: ServedModel,
    verified: dict[str, Any] | None,
    columns: list[str],
    task: Task = CLASSIFICATION,
) -> ServedModel:
    """Attaches the compiled plan when packaging verified it against scikit-learn for
    this very model (`verified` is that report) and it does the bento's `task`;
    otherwise serves scikit-learn."""
    if not verified or not verified.get("compiled"):
        why = (verified or {}).get("reason", "no verified plan recorded")
        return replace(served, inference=f"scikit-learn ({why})")
    try:
        plan = compile_model(served.model, columns)
    except UnsupportedModel as exc:  # verified at packaging, so only a library change
        return replace(served, inference=f"scikit-learn ({exc})")
    if plan.task != task.kind:
        why = f"the plan does {plan.task}, the bento serves {task.kind}"
        return replace(served, inference=f"scikit-learn ({why})")
    return replace(served, plan=plan, inference=plan.description)


def version_metadata(version: ModelVersion) -> dict[str, Any]:
    """What /info shows of a registered version: the metadata the bento would carry."""
    extra = {k: v for k, v in version.extra.items() if k not in ("artifact", "drift_profile")}
    return {
        **extra,
        "candidate": version.candidate,
        "params": version.params,
        "metrics": version.metrics,
        "data_fingerprint": version.data_fingerprint,
        "definition_hash": version.definition_hash,
        "versions": version.versions,
        "git_commit": version.git_commit,
        "train_seconds": version.train_seconds,
        "predict_ms": version.predict_ms,
        "reports": version.reports,
    }


def registry_url(config: dict[str, Any]) -> str | None:
    return os.environ.get(REGISTRY_URL_ENV) or config.get("registry_url")


@dataclass(frozen=True)
class RegistryView:
    """What a server follows in the registry: the champion, the running release and its
    version; `readable` False (and everything None) when the registry cannot be read."""

    champion: ModelVersion | None
    reason: str  # why this champion, or why none
    release: Release | None = None
    trial: ModelVersion | None = None  # the release's version
    readable: bool = True


class RegistryFollower:
    """Reads what a server follows (see RegistryView) from one Registry kept open across
    reads: opening one per read (engine, connection and its PRAGMAs, dialect) cost the
    serving process 1-3% of its GIL at a 0.2 s reload interval. It opens the registry
    again when the configured URL changed, after a failed read, and when its SQLite file
    was deleted or replaced. Not thread-safe: the Reloader reads under its lock."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.registry: Registry | None = None
        self._file: Path | None = None
        self._file_id: tuple[int, int] | None = None

    def __enter__(self) -> RegistryFollower:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.registry is not None:
            self.registry.close()
        self.registry, self._file, self._file_id = None, None, None

    def read(self) -> RegistryView:
        """The registry's champion and release for this bento's model name."""
        url = registry_url(self.config)
        if not url:
            self.close()
            return RegistryView(None, "no registry configured", readable=False)
        name = self.config["bento_name"]
        try:
            registry = self._open(url)
            champion = registry.alias(name, CHAMPION)
            release = registry.active_release(name)
            trial = registry.get(release.tag) if release is not None else None
        # Any failure to read the registry (missing file, server down, driver missing) must
        # not stop the server: it serves the model it was built with and says why. The
        # next read starts from a fresh engine, whatever state this one was left in.
        except Exception as exc:
            self.close()
            why = f"registry unavailable ({type(exc).__name__}: {str(exc).splitlines()[0]})"
            return RegistryView(None, why, readable=False)
        if champion is None:
            return RegistryView(None, "the registry has no champion yet")
        return RegistryView(champion, "registry champion", release, trial)

    def _open(self, url: str) -> Registry:
        if self.registry is not None and (self.registry.url != url or self._file_moved()):
            self.close()
        if self.registry is None:
            file = database_file(url)
            # taken before the first connection: a file replaced in between is then seen
            # at the next read, while one taken after could name the new file and keep
            # the old one's connections for good
            opened = file_id(file) if file is not None else None
            self.registry = Registry(url, create=False)
            self._file, self._file_id = file, opened
        return self.registry

    def _file_moved(self) -> bool:
        """The SQLite file is no longer the one the open connections read: SQLite would
        go on reading a deleted or replaced file, never the one at the path now."""
        return self._file is not None and file_id(self._file) != self._file_id


def read_registry(config: dict[str, Any]) -> RegistryView:
    """The registry's champion and release for this bento's model name, read once."""
    with RegistryFollower(config) as follower:
        return follower.read()


def registry_champion(config: dict[str, Any]) -> tuple[ModelVersion | None, str]:
    """The registry's champion for this bento's model name, or None and why not."""
    view = read_registry(config)
    return view.champion, view.reason


class RefusedModel(RuntimeError):
    """A champion this bento cannot serve: other columns, or artefacts that fail checks."""


def own_model(config: dict[str, Any], reason: str) -> ServedModel:
    """The model the bento was built with, verified against serving.json's digests."""
    own_tag = config["model_tag"]
    folder = model_store.local_dir(own_tag)
    if folder is None:
        raise model_store.MissingArtifactError(f"the bento's model {own_tag} is not in its store")
    model = model_store.load_dir(folder, config.get("model_files") or {}, own_tag)
    served = ServedModel(own_tag, model, "bento", reason, config["metadata"])
    return with_plan(served, config.get("compiled"), config["columns"], config_task(config))


def load_champion(
    champion: ModelVersion, config: dict[str, Any], role: str = CHAMPION
) -> ServedModel:
    """A registered version, ready to serve as `role` (the champion, or a release's
    version); RefusedModel when it cannot be."""
    if champion.tag == config["model_tag"]:
        return own_model(config, f"registry {role} (the bento's own model)")
    features = champion.extra.get("features")
    if features != config["columns"]:
        raise RefusedModel(
            f"{role} {champion.tag} takes columns {features}, this bento serves {config['columns']}"
        )
    task = config_task(config)
    champion_task = recorded_task(champion.extra.get("task")).kind
    if champion_task != task.kind:
        raise RefusedModel(
            f"{role} {champion.tag} does {champion_task}, this bento serves {task.kind}"
        )
    artifact = dict(champion.extra.get("artifact") or {})
    if store := os.environ.get(MODEL_STORE_ENV):
        artifact["uri"] = model_store.archive_uri(store, champion.tag)
    try:
        model = model_store.load_verified(champion.tag, artifact)
    except (model_store.TamperedArtifactError, model_store.MissingArtifactError) as exc:
        raise RefusedModel(f"{role} {champion.tag} refused: {exc}") from exc
    served = ServedModel(
        champion.tag, model, "registry", f"registry {role}", version_metadata(champion)
    )
    return with_plan(served, champion.extra.get("compiled"), config["columns"], task)


def resolve_model(config: dict[str, Any]) -> ServedModel:
    """The registry's champion when it can be loaded and verified, else the bento's own
    model (verified against the digests in serving.json); a bento whose own model fails
    its check refuses to start."""
    champion, reason = registry_champion(config)
    if champion is not None:
        try:
            return load_champion(champion, config)
        except RefusedModel as exc:
            logger.error("refusing champion %s: %s", champion.tag, exc)
            reason = str(exc)
    return own_model(config, reason)


class Reloader:
    """Follows the registry's champion: every `interval` seconds (and on /admin/reload)
    it asks for the champion and, when it changed, loads and verifies it off the request
    path and swaps it in with one reference assignment. A model that cannot be loaded is
    refused and remembered (not retried until the champion changes again); the current
    one keeps serving."""

    def __init__(self, server: ModelServer, config: dict[str, Any], interval: float) -> None:
        self.server = server
        self.config = config
        self.interval = interval
        self.refused: dict[str, str] = {}
        self.refused_releases: dict[int, str] = {}  # release id -> why its model was refused
        self.rolled_back: set[int] = set()  # releases this server's guard rails ended
        # the last check's outcome and when, for /info: a registry that cannot be read
        # shows there, while the current model keeps serving
        self.last: dict[str, Any] | None = None
        self.lock = threading.Lock()  # one check at a time (timer and admin route)
        self.follower = RegistryFollower(config)  # used under the lock
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        if self.interval > 0:
            self.thread = threading.Thread(target=self.run, name="champion-reload", daemon=True)
            self.thread.start()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.check()
            # the thread must outlive any one bad check, or reloads stop for good
            except Exception as exc:
                why = f"champion check failed ({type(exc).__name__}: {exc})"
                self.last = {"at": datetime.now(UTC).isoformat(), "changed": False, "reason": why}
                logger.exception("champion check failed; retrying in %.1f s", self.interval)
        self.close()

    def close(self) -> None:
        """Stops the timer and closes the registry it follows; waits for a check in
        progress to end."""
        self.stop.set()
        with self.lock:
            self.follower.close()

    def check(self) -> dict[str, Any]:
        """One check (see the class); its outcome is also kept as `last`."""
        result = self._check()
        self.last = {"at": datetime.now(UTC).isoformat(), **result}
        return result

    def _check(self) -> dict[str, Any]:
        with self.lock:
            view = self.follower.read()
            if self.stop.is_set():  # a check after close (an admin reload at shutdown)
                self.follower.close()  # must not leave the registry open
            result = self._follow_champion(view)
            if view.readable:  # an unreadable registry changes nothing
                result["release"] = self._follow_release(view)
            return result

    def _follow_champion(self, view: RegistryView) -> dict[str, Any]:
        current = self.server.current
        champion, why = view.champion, view.reason
        if champion is not None:  # a refusal holds while that version stays champion
            self.refused = {t: r for t, r in self.refused.items() if t == champion.tag}
        if champion is None or champion.tag == current.tag:
            return {"model_tag": current.tag, "changed": False, "reason": why}
        if champion.tag in self.refused:
            return {"model_tag": current.tag, "changed": False,
                    "reason": self.refused[champion.tag]}  # fmt: skip
        try:
            new = load_champion(champion, self.config)
        except (RefusedModel, model_store.TamperedArtifactError,
                model_store.MissingArtifactError) as exc:  # fmt: skip
            self.refused[champion.tag] = str(exc)
            logger.error("refusing champion %s, still serving %s: %s", champion.tag,
                         current.tag, exc)  # fmt: skip
            return {"model_tag": current.tag, "changed": False, "reason": str(exc)}
        self.server.swap(new)
        logger.info("now serving %s (was %s; %s)", new.tag, current.tag, new.inference)
        return {"model_tag": new.tag, "changed": True, "previous": current.tag}

    def _follow_release(self, view: RegistryView) -> dict[str, Any] | None:
        """Starts, keeps (checking its guard rails) or ends this server's part in the
        registry's release; a release whose version cannot be loaded is refused (and
        remembered, as a champion is), and so is one this server rolled back."""
        running, wanted = self.server.release, view.release
        if wanted is None or wanted.id in self.rolled_back:
            if running is not None:
                logger.info("release %s of %s ended", running.release.kind, running.release.tag)
                self.server.set_release(None)
            return None
        if running is not None and running.release.id == wanted.id:
            if running.splits_traffic and (why := self.server.guard_breach()) is not None:
                self._roll_back(running.release, why)
                return {"id": wanted.id, "rolled_back": why}
            return self.server.release_info()
        if wanted.id in self.refused_releases:
            return {"id": wanted.id, "refused": self.refused_releases[wanted.id]}
        try:
            if view.trial is None:  # read with the release: only a registry changed by hand
                raise RefusedModel(f"release {wanted.id}: {wanted.tag} is not registered")
            model = load_champion(view.trial, self.config, role=wanted.kind)
        except (RefusedModel, model_store.TamperedArtifactError,
                model_store.MissingArtifactError) as exc:  # fmt: skip
            self.refused_releases[wanted.id] = str(exc)
            logger.error("refusing the %s of %s: %s", wanted.kind, wanted.tag, exc)
            self.server.set_release(None)
            return {"id": wanted.id, "refused": str(exc)}
        self.server.set_release(ServedRelease(wanted, model))
        logger.info("release %s of %s started (share %g; %s)", wanted.kind, wanted.tag,
                    wanted.share, model.inference)  # fmt: skip
        return self.server.release_info()

    def _roll_back(self, release: Release, why: str) -> None:
        """A guard rail fired: this server stops routing to the trial at once, ends the
        release in the registry (so every server follows) and alerts. When another
        server ended it first, that one has alerted."""
        self.server.set_release(None)
        self.rolled_back.add(release.id)
        logger.error("rolling back the %s of %s: %s", release.kind, release.tag, why)
        url = registry_url(self.config)
        try:
            with Registry(str(url), create=False) as registry:
                registry.end_release(
                    release.name, "rolled_back", reason=why, release_id=release.id,
                    actor=f"guard rail ({socket.gethostname()}:{os.getpid()})",
                )  # fmt: skip
        except RegistryError:
            return  # already ended, by another server's guard rail or by hand
        # the registry cannot record it: this server has rolled back; say so loudly
        except Exception:
            logger.exception("could not record the rollback of release %s", release.id)
        send_alert(self.server.release_config, guard_alert(release, why, self.server.guard))
