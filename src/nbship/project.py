"""A project on disk: its folders, the products its pipeline declares, and the URLs of its
registry, model store and prediction log (each with its environment override).

Product locations come from the project's own pipeline.yaml (`product(task, key)`), so a
project that moves its products moves them for nbship too.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from nbship import config as config_module
from nbship.config import ConfigError, PredictionLogSettings, ProjectConfig

PIPELINE_FILE = "pipeline.yaml"
# environment overrides of env.yaml where a model is built or served
REGISTRY_URL_ENV = "NBSHIP_REGISTRY_URL"
MODEL_STORE_ENV = "NBSHIP_MODEL_STORE"
LOG_URL_ENV = "NBSHIP_LOG_URL"  # "off": no log
LOG_SPOOL_ENV = "NBSHIP_LOG_SPOOL"
# nbship's own state inside a project (locks, retrain runs, the log spool)
STATE_DIR = ".nbship"
REGISTRY_FILE = "registry.db"
MODEL_STORE_DIR = "model-store"

_PLACEHOLDER = re.compile(r"\{\{\s*([\w.]+)\s*\}\}")


def resolve_sqlite(url: str, base: Path) -> str:
    """A SQLAlchemy URL with a relative SQLite file taken from `base`."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    database = parsed.database
    if (
        parsed.get_backend_name() == "sqlite"
        and database
        and database != ":memory:"
        and not database.startswith("file:")
        and not Path(database).is_absolute()
    ):
        parsed = parsed.set(database=str(base / database))
    return parsed.render_as_string(hide_password=False)


def registry_url(project_dir: Path, url: str | None) -> str:
    """`$NBSHIP_REGISTRY_URL`, else `url` (env.yaml's `registry.url`), else a SQLite file
    in the project; a relative SQLite path is taken from the project folder."""
    root = Path(project_dir).resolve()
    chosen = os.environ.get(REGISTRY_URL_ENV) or url or f"sqlite:///{root / REGISTRY_FILE}"
    return resolve_sqlite(chosen, root)


def model_store_url(project_dir: Path, url: str | None) -> str:
    """`$NBSHIP_MODEL_STORE`, else `url` (env.yaml's `model_store.url`), else
    `model-store/`: any fsspec URL, or a folder taken from the project."""
    chosen = os.environ.get(MODEL_STORE_ENV) or url or MODEL_STORE_DIR
    return chosen if "://" in chosen else str((Path(project_dir) / chosen).resolve())


def log_settings(project_dir: Path, settings: PredictionLogSettings) -> dict[str, Any]:
    """env.yaml's `prediction_log` with its SQLite file and spool made absolute, as the
    bento's server reads them (the environment overrides apply at serve time)."""
    root = Path(project_dir).resolve()
    spool = Path(settings.spool)
    return {
        "url": resolve_sqlite(settings.url, root),
        "spool": str(spool if spool.is_absolute() else root / spool),
        "retention_days": settings.retention_days,
    }


def log_url(project_dir: Path, url: str) -> str:
    """The prediction log a project's servers write to: `$NBSHIP_LOG_URL` when set (as it
    is for them), else `url` (env.yaml's), a relative SQLite file taken from the project."""
    return os.environ.get(LOG_URL_ENV) or resolve_sqlite(url, Path(project_dir).resolve())


@dataclass(frozen=True)
class Project:
    """A project folder and its checked env.yaml."""

    path: Path
    config: ProjectConfig = field(repr=False)

    @classmethod
    def load(cls, path: str | Path = ".") -> Project:
        path = Path(path).resolve()
        return cls(path=path, config=config_module.load(path))

    @property
    def root(self) -> Path:
        """Where every product of a run goes (env.yaml `root`)."""
        return self.path / self.config.root

    @property
    def bentos(self) -> Path:
        return self.path / self.config.bentos

    @property
    def published_bento(self) -> Path:
        """The current bento: `<bentos>/<bento name>`, a symlink to its version folder."""
        return self.bentos / self.config.bento.name

    @property
    def state_dir(self) -> Path:
        return self.path / STATE_DIR

    @property
    def cards_dir(self) -> Path:
        return self.root / "cards"

    @cached_property
    def _pipeline(self) -> dict[str, Any]:
        path = self.path / PIPELINE_FILE
        spec = yaml.safe_load(path.read_text()) or {}
        return {str(t.get("name")): t for t in spec.get("tasks") or [] if isinstance(t, dict)}

    def product(self, task: str, key: str) -> Path:
        """A product a task of pipeline.yaml declares, its placeholders filled from
        env.yaml (e.g. `product("split", "test")` -> build/data/test.parquet)."""
        spec = self._pipeline.get(task)
        products = (spec or {}).get("product")
        value = products.get(key) if isinstance(products, dict) else None
        if not isinstance(value, str):
            raise ConfigError(f"{PIPELINE_FILE}: task {task!r} declares no product {key!r}")
        raw = config_module.read_raw(self.path)

        def fill(match: re.Match[str]) -> str:
            found: Any = raw
            for part in match.group(1).split("."):
                if not isinstance(found, dict) or part not in found:
                    raise ConfigError(f"{PIPELINE_FILE}: {match.group(0)} is not in env.yaml")
                found = found[part]
            return str(found)

        return self.path / _PLACEHOLDER.sub(fill, value)

    def registry_url(self) -> str:
        return registry_url(self.path, self.config.registry.url)

    def model_store_url(self) -> str:
        return model_store_url(self.path, self.config.model_store.url)

    def log_settings(self) -> dict[str, Any]:
        return log_settings(self.path, self.config.prediction_log)

    def log_url(self) -> str:
        return log_url(self.path, self.config.prediction_log.url)
