"""Session fixtures: one real pipeline build of a sample project in a temp folder, and
one more build of a worse model on a copy of it, shared by the integration and e2e tests
(builds are the slow part; a test that changes a project changes a copy of it)."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import yaml

from tests.support import PROJECT, copy_sources

# In-process tests that use BentoML's model store get a throwaway one, never ~/bentoml
# (BentoML reads BENTOML_HOME when it is first imported, which is after this).
_BENTOML_HOME = tempfile.mkdtemp(prefix="nbship-test-bentoml-")
os.environ["BENTOML_HOME"] = _BENTOML_HOME
atexit.register(shutil.rmtree, _BENTOML_HOME, True)

NBSHIP = str(Path(sys.executable).with_name("nbship"))

# Under pytest-xdist (scripts/test.sh runs two workers), the tests that share one of these
# session builds run on one worker, so each is built once; podman's image store is the
# host's, so every container test runs on one worker too.
SHARED_BUILDS = {
    "container_image": "container",
    "worse_build": "worse",
    "regression_project": "projects",
    "own_code_project": "projects",
}


# first: pytest-xdist turns the marks into node-id suffixes in its own hook of this name
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        group = next((g for f, g in SHARED_BUILDS.items() if f in fixtures), None)
        if group is None and item.get_closest_marker("container"):
            group = "container"
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


@dataclass(frozen=True)
class Project:
    path: Path
    env: dict[str, str]  # environment for subprocesses (own BentoML home)

    def run(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [NBSHIP, *args],
            cwd=self.path,
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=900,
        )

    @property
    def config(self) -> dict:
        return yaml.safe_load((self.path / "env.yaml").read_text())

    def write_config(self, config: dict) -> None:
        (self.path / "env.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    @property
    def bento(self) -> Path:
        cfg = self.config
        return self.path / cfg["bentos"] / cfg["bento"]["name"]

    @property
    def root(self) -> Path:
        return self.path / self.config["root"]

    @property
    def summary(self) -> dict:
        """What the last build's package task did (model and bento tags, gates, ...)."""
        return json.loads((self.root / "package.json").read_text())

    def copy_to(self, dest: Path) -> Project:
        """A copy of this built project (its own registry, model store and bentos) that a
        test may change; it shares the BentoML home."""
        shutil.copytree(self.path, dest, symlinks=True)
        return Project(path=dest, env=self.env)

    def build_worse_model(self) -> dict:
        """Builds again with only the `baseline` candidate (a dummy classifier, which
        fails the metric gate); returns that build's package summary."""
        cfg = self.config
        cfg["candidates"] = ["baseline"]
        self.write_config(cfg)
        result = self.run("build")
        assert result.returncode == 0, result.stdout + result.stderr
        return self.summary


@dataclass(frozen=True)
class WorseBuild:
    """A built project that then built a worse model (`Project.build_worse_model`): its
    registry holds the first build's champion and the refused challenger, and the
    champion's bento is still the published one."""

    project: Project
    champion: dict  # the first build's package summary
    challenger: dict  # the worse build's package summary (project.summary)
    published: Path  # the champion's bento folder, published before the worse build

    def copy_to(self, dest: Path) -> WorseBuild:
        """A copy that a test may change (promote, rollback, card, ...): copying is cheap,
        building is not. It shares the BentoML home, as `Project.copy_to`."""
        project = self.project.copy_to(dest)
        published = project.path / self.published.relative_to(self.project.path.resolve())
        return replace(self, project=project, published=published)


def copy_project(dest: Path, bentoml_home: Path) -> Project:
    copy_sources(dest)
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home)}
    return Project(path=dest, env=env)


def overlay_project(name: str, dest: Path, bentoml_home: Path) -> Project:
    """Another project made of the example's generic tasks and the files of
    tests/projects/<name> (its env.yaml, suite, train notebook, own package under src/):
    what a user's second project looks like. Its src/ is on the path, as an editable
    install of the project would put it."""
    project = copy_project(dest, bentoml_home)
    (dest / "expectations" / "penguins.json").unlink()
    shutil.copytree(PROJECT / "tests" / "projects" / name, dest, dirs_exist_ok=True)
    if (dest / "src").is_dir():
        project.env["PYTHONPATH"] = str(dest / "src")
    return project


def build(project: Project) -> Project:
    result = project.run("build")
    assert result.returncode == 0, result.stdout + result.stderr
    return project


SAMPLE_BATCH = {"schedule": "0 3 * * *", "input": "file:///data/rows.csv",
                "output": "file:///data/scores.parquet"}  # fmt: skip


def sample_config(project: Project) -> None:
    """A smaller, faster variant of the real env.yaml: same columns and rules."""
    cfg = project.config
    cfg["data"]["sample_rows"] = 240
    cfg["split"]["golden_size"] = 12
    cfg["hyperparams"]["forest"]["n_estimators"] = 30
    # a nightly batch scoring: the bento (and so the container image) scores batches too,
    # and `nbship k8s` writes its CronJob (tests/e2e/test_container.py runs that command)
    cfg["batch"] = dict(SAMPLE_BATCH)
    project.write_config(cfg)


@pytest.fixture(scope="session")
def bentoml_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bentoml-home")


@pytest.fixture(scope="session")
def built_project(tmp_path_factory: pytest.TempPathFactory, bentoml_home: Path) -> Project:
    project = copy_project(tmp_path_factory.mktemp("sample") / "project", bentoml_home)
    sample_config(project)
    result = project.run("build")
    assert result.returncode == 0, result.stdout + result.stderr
    return project


@pytest.fixture(scope="session")
def regression_project(tmp_path_factory: pytest.TempPathFactory, bentoml_home: Path) -> Project:
    """tests/projects/diabetes built: a regression target, two notebook-written models."""
    return build(
        overlay_project("diabetes", tmp_path_factory.mktemp("diabetes") / "p", bentoml_home)
    )


@pytest.fixture(scope="session")
def own_code_project(tmp_path_factory: pytest.TempPathFactory, bentoml_home: Path) -> Project:
    """tests/projects/adelie built: Yes/No labels, a model using the project's own class."""
    return build(overlay_project("adelie", tmp_path_factory.mktemp("adelie") / "p", bentoml_home))


@pytest.fixture(scope="session")
def worse_build(built_project: Project, tmp_path_factory: pytest.TempPathFactory) -> WorseBuild:
    """A copy of `built_project` that built a worse model, once per session. Read it only:
    a test that changes it (the registry, the published bento, its files) takes
    `worse_build.copy_to(...)`."""
    project = built_project.copy_to(tmp_path_factory.mktemp("worse") / "project")
    champion = project.summary
    published = project.bento.resolve()
    challenger = project.build_worse_model()
    return WorseBuild(project, champion=champion, challenger=challenger, published=published)


@pytest.fixture(scope="session")
def container_settings():
    """The project's own podman state: the base image is cached there across runs."""
    from nbship.deploy.container import ContainerSettings

    return ContainerSettings.from_env(PROJECT, yaml.safe_load((PROJECT / "env.yaml").read_text())
                                      .get("container"))  # fmt: skip


@pytest.fixture(scope="session")
def container_image(built_project: Project, container_settings):
    """The image of the sample project's bento, built once per session, removed after
    (the cached base image stays)."""
    import subprocess

    from nbship.deploy.container import build_image, podman_env

    image = build_image(built_project.bento, container_settings)
    yield image
    subprocess.run(["podman", "rmi", "-f", image.image], env=podman_env(container_settings),
                   capture_output=True)  # fmt: skip


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server on 127.0.0.1 for the session, stopped afterwards."""
    from tests.support import postgres_server

    with postgres_server() as url:
        yield url
