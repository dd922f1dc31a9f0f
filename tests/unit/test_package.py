"""Packaging helpers: definition hash, git commit, versions, exported pins, staging."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nbship.packaging import bento as package
from tests.support import PROJECT

pytestmark = pytest.mark.unit

SRC = PROJECT / "src" / "nbship"
SUITE = PROJECT / "expectations" / "penguins.json"
REQUIREMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!_-]+$")
JUPYTER_AND_PIPELINE = (
    "jupyterlab",
    "jupyter-server",
    "notebook",
    "ploomber",
    "ploomber-engine",
    "papermill",
    "great-expectations",
    "nbconvert",
    "ipykernel",
    "matplotlib",
    "jupytext",
)


# --- definition_hash ------------------------------------------------------------------


@pytest.fixture
def definition(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "notebooks").mkdir(parents=True)
    (root / "expectations").mkdir()
    (root / "pipeline.yaml").write_text("tasks: []\n")
    (root / "env.yaml").write_text("root: build\n")
    (root / "uv.lock").write_text("version = 1\n")
    (root / "notebooks" / "load.py").write_text("x = 1\n")
    (root / "expectations" / "s.json").write_text('{"name": "s", "expectations": []}\n')
    return root


def test_definition_hash_is_stable_and_prefixed(definition: Path):
    first = package.definition_hash(definition)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", first)
    assert package.definition_hash(definition) == first


@pytest.mark.parametrize(
    "changed",
    [
        "env.yaml",
        "pipeline.yaml",
        "uv.lock",
        "notebooks/load.py",
        "expectations/s.json",
    ],
)
def test_definition_hash_changes_with_each_definition_file(definition: Path, changed: str):
    before = package.definition_hash(definition)
    path = definition / changed
    path.write_text(path.read_text() + "\n")
    assert package.definition_hash(definition) != before


def test_definition_hash_changes_when_a_notebook_is_added_or_renamed(definition: Path):
    before = package.definition_hash(definition)
    (definition / "notebooks" / "extra.py").write_text("y = 2\n")
    added = package.definition_hash(definition)
    assert added != before
    (definition / "notebooks" / "extra.py").rename(definition / "notebooks" / "other.py")
    assert package.definition_hash(definition) not in (before, added)


def test_definition_hash_ignores_unrelated_files(definition: Path):
    before = package.definition_hash(definition)
    (definition / "README.md").write_text("notes\n")
    (definition / "build").mkdir()
    (definition / "build" / "raw.parquet").write_bytes(b"\0" * 64)
    (definition / "notebooks" / "scratch.ipynb").write_text("{}")
    (definition / "notebooks" / "sub").mkdir()
    (definition / "notebooks" / "sub" / "deep.py").write_text("z = 3\n")
    assert package.definition_hash(definition) == before


def test_definition_hash_does_not_depend_on_the_folder(definition: Path, tmp_path: Path):
    import shutil

    copy = tmp_path / "elsewhere" / "proj"
    shutil.copytree(definition, copy)
    assert package.definition_hash(copy) == package.definition_hash(definition)


# --- git_commit -----------------------------------------------------------------------


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        [
            "git",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.invalid",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_git_commit_is_none_outside_git(tmp_path: Path):
    assert package.git_commit(tmp_path) is None


def test_git_commit_is_none_for_a_missing_folder(tmp_path: Path):
    assert package.git_commit(tmp_path / "does-not-exist") is None


def test_git_commit_reports_head_and_dirty(tmp_path: Path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "env.yaml").write_text("root: build\n")
    git(repo, "add", "env.yaml")
    git(repo, "commit", "-q", "-m", "first")
    head = git(repo, "rev-parse", "HEAD")

    clean = package.git_commit(repo)
    assert clean == head
    assert re.fullmatch(r"[0-9a-f]{40}", clean)

    (repo / "env.yaml").write_text("root: elsewhere\n")
    assert package.git_commit(repo) == f"{head}-dirty"

    git(repo, "commit", "-q", "-am", "second")
    second = package.git_commit(repo)
    assert re.fullmatch(r"[0-9a-f]{40}", second)
    assert second != head

    (repo / "untracked.txt").write_text("new\n")
    assert package.git_commit(repo) == f"{second}-dirty"


# --- versions and pins ----------------------------------------------------------------


def test_library_versions_records_the_installed_libraries():
    versions = package.library_versions()
    assert re.fullmatch(r"3\.11\.\d+", versions["python"])
    for name in ("scikit-learn", "bentoml", "pandas", "pydantic"):
        assert versions[name] == importlib.metadata.version(name)


def test_library_versions_skips_what_is_not_installed():
    versions = package.library_versions(("scikit-learn", "surely-not-installed-dist"))
    assert set(versions) == {"python", "scikit-learn"}


@pytest.fixture(scope="module")
def serving_pins() -> dict[str, str]:
    result = package.serving_requirements(PROJECT, ["scikit-learn"])
    assert result.route == "serve-group"  # this repo locks and declares a serve group
    pins: dict[str, str] = {}
    for line in result.text.splitlines():
        requirement = line.split("#", 1)[0].split(";", 1)[0].strip()
        if not requirement:
            continue
        assert REQUIREMENT.fullmatch(requirement), f"not an exact pin: {line!r}"
        name, version = requirement.split("==")
        pins[name.lower()] = version
    return pins


def test_serving_requirements_pins_the_installed_serving_libraries(serving_pins: dict):
    for name in ("scikit-learn", "pandas", "bentoml", "pydantic", "numpy"):
        assert serving_pins[name] == importlib.metadata.version(name), name


def test_serving_requirements_leave_out_the_notebook_and_pipeline_stack(serving_pins: dict):
    assert set(JUPYTER_AND_PIPELINE).isdisjoint(serving_pins)
    assert "nbship" not in serving_pins  # the bento ships the serving modules, not the package


def test_serving_requirements_without_a_lock_pin_the_environment_and_lock_nothing(
    tmp_path: Path,
):
    # a project definition without its lock file: its environment, never a new lock
    (tmp_path / "pyproject.toml").write_text((PROJECT / "pyproject.toml").read_text())
    result = package.serving_requirements(tmp_path, ["scikit-learn"])
    assert result.route == "environment"
    assert f"bentoml=={importlib.metadata.version('bentoml')}" in result.text.splitlines()
    assert not (tmp_path / "uv.lock").exists()


# --- stage_build_context --------------------------------------------------------------


@pytest.fixture
def staged(tmp_path: Path) -> tuple[Path, dict]:
    staging = tmp_path / "ctx"
    config = {
        "bento_name": "penguins_classifier",
        "model_tag": "penguins_classifier:abc123",
        "columns": ["bill_length_mm", "island"],
        "target": "species",
        "suite": "expectations/penguins.json",
        "max_batch": 10,
        "metadata": {"candidate": "logreg", "classes": ["Adelie", "Gentoo"]},
    }
    package.stage_build_context(
        staging,
        suite_path=SUITE,
        config=config,
        requirements="bentoml==1.4.39\nscikit-learn==1.9.1\n",
        model_tag="penguins_classifier:abc123",
        labels={"candidate": "logreg", "model_tag": "penguins_classifier-abc123"},
    )
    return staging, config


def test_stage_build_context_writes_only_what_serving_needs(staged: tuple[Path, dict]):
    staging, _ = staged
    files = {p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()}
    assert files == {f"nbship/{m.as_posix()}" for m in package.served_modules()} | {
        "expectations/penguins.json",
        "serving.json",
        "requirements.txt",
        "bentofile.yaml",
    }
    for module in ("__init__.py", "pipeline/contract.py", "serving/service.py"):
        assert (staging / "nbship" / module).read_bytes() == (SRC / module).read_bytes()
    shipped = {m.parts[0] for m in package.served_modules() if len(m.parts) > 1}
    assert shipped == {"common", "compat", "pipeline", "registry", "prediction_log", "serving"}


def test_the_staged_package_is_all_the_service_imports(staged: tuple[Path, dict]):
    """The service imports from the staged folder alone: a module a subpackage needs but the
    bento lacks would fail here, before any bento is built."""
    staging, _ = staged
    probe = (
        "import sys, nbship.serving.bento_service, json; "
        "print(json.dumps(sorted(m.__file__ for n, m in sys.modules.items() "
        "if n.startswith('nbship') and getattr(m, '__file__', None))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=staging, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(staging)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    files = json.loads(result.stdout)
    assert files and all(Path(f).is_relative_to(staging) for f in files), files
    assert (staging / "expectations" / "penguins.json").read_bytes() == SUITE.read_bytes()
    assert (staging / "requirements.txt").read_text() == "bentoml==1.4.39\nscikit-learn==1.9.1\n"


def test_stage_build_context_writes_serving_json(staged: tuple[Path, dict]):
    staging, config = staged
    assert json.loads((staging / "serving.json").read_text()) == config


def test_stage_build_context_bentofile(staged: tuple[Path, dict]):
    staging, _ = staged
    bentofile = yaml.safe_load((staging / "bentofile.yaml").read_text())
    assert bentofile["service"] == "nbship.serving.bento_service:ModelService"
    assert bentofile["name"] == "penguins_classifier"
    assert bentofile["models"] == ["penguins_classifier:abc123"]
    assert bentofile["python"] == {"requirements_txt": "requirements.txt", "lock_packages": False}
    assert bentofile["labels"] == {"candidate": "logreg", "model_tag": "penguins_classifier-abc123"}
    envs = {e["name"]: e["value"] for e in bentofile["envs"]}
    assert envs == {
        "BENTOML_DO_NOT_TRACK": "true",
        "PLOOMBER_STATS_ENABLED": "false",
        "PLOOMBER_VERSION_CHECK_DISABLED": "1",
    }
    assert set(bentofile["include"]) == {"nbship/**/*.py", "expectations/*.json", "serving.json"}


def test_stage_build_context_refuses_a_used_folder(staged: tuple[Path, dict]):
    staging, config = staged
    with pytest.raises(FileExistsError):
        package.stage_build_context(
            staging,
            suite_path=SUITE,
            config=config,
            requirements="",
            model_tag="penguins_classifier:abc123",
            labels={},
        )
