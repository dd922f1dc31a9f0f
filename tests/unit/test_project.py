"""A project's folders, declared products and URLs, with their environment overrides."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from nbship.config import ConfigError, PredictionLogSettings
from nbship.project import (
    LOG_URL_ENV,
    MODEL_STORE_ENV,
    REGISTRY_URL_ENV,
    Project,
    log_settings,
    model_store_url,
    registry_url,
)
from tests.support import PROJECT

pytestmark = pytest.mark.unit


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    for name in (REGISTRY_URL_ENV, MODEL_STORE_ENV, LOG_URL_ENV):
        monkeypatch.delenv(name, raising=False)
    for name in ("env.yaml", "pipeline.yaml"):
        shutil.copy2(PROJECT / name, tmp_path / name)
    return Project.load(tmp_path)


def test_products_come_from_the_pipeline_with_env_placeholders(project: Project):
    assert project.product("split", "test") == project.path / "build/data/test.parquet"
    assert project.product("package", "summary") == project.path / "build/package.json"
    # a project that moves its products moves them for nbship too
    raw = yaml.safe_load((project.path / "env.yaml").read_text())
    raw["root"] = "out"
    (project.path / "env.yaml").write_text(yaml.safe_dump(raw))
    moved = Project.load(project.path)
    assert moved.product("split", "test") == project.path / "out/data/test.parquet"
    assert moved.root == project.path / "out"
    with pytest.raises(ConfigError, match="task 'split' declares no product 'nope'"):
        moved.product("split", "nope")


def test_published_bento_and_folders(project: Project):
    assert project.published_bento == project.path / "bentos" / "penguins_classifier"
    assert project.cards_dir == project.path / "build" / "cards"


def test_registry_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(REGISTRY_URL_ENV, raising=False)
    assert registry_url(tmp_path, None) == f"sqlite:///{tmp_path}/registry.db"
    assert registry_url(tmp_path, "sqlite:///state/m.db") == f"sqlite:///{tmp_path}/state/m.db"
    assert registry_url(tmp_path, "sqlite:////srv/m.db") == "sqlite:////srv/m.db"
    pg = "postgresql+psycopg://u:p@127.0.0.1:5432/reg"
    assert registry_url(tmp_path, pg) == pg
    monkeypatch.chdir(tmp_path)
    assert registry_url(Path("."), None) == f"sqlite:///{tmp_path}/registry.db"
    monkeypatch.setenv(REGISTRY_URL_ENV, "sqlite:///from-env.db")
    assert registry_url(tmp_path, pg) == f"sqlite:///{tmp_path}/from-env.db"


def test_model_store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(MODEL_STORE_ENV, raising=False)
    assert model_store_url(tmp_path, None) == str(tmp_path / "model-store")
    assert model_store_url(tmp_path, "shared") == str(tmp_path / "shared")
    assert model_store_url(tmp_path, "s3://b/m") == "s3://b/m"
    monkeypatch.setenv(MODEL_STORE_ENV, "gs://bucket/models")
    assert model_store_url(tmp_path, "x") == "gs://bucket/models"


def test_log_settings_and_url(project: Project, monkeypatch: pytest.MonkeyPatch):
    settings = log_settings(project.path, PredictionLogSettings())
    assert settings == {
        "url": f"sqlite:///{project.path}/prediction_log.db",
        "spool": str(project.path / ".nbship" / "spool"),
        "retention_days": 30,
    }
    assert project.log_url() == settings["url"]
    monkeypatch.setenv(LOG_URL_ENV, "sqlite:////tmp/elsewhere.db")
    assert project.log_url() == "sqlite:////tmp/elsewhere.db"
