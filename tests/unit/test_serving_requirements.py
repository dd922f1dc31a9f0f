"""A bento's pins come from the user's project: its uv.lock's `serve` group, its uv.lock
alone, or its installed environment; and cover only what serving and the model import."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from nbship.packaging import requirements as reqs
from nbship.packaging.bento import PackagingError, served_modules
from nbship.packaging.dependencies import canonical, requirement_names
from tests.support import PROJECT

pytestmark = pytest.mark.unit

SRC = PROJECT / "src" / "nbship"
# what the build, notebooks and reports need and a bento never does
NOT_SERVED = ("jupyterlab", "notebook", "ploomber", "great-expectations", "papermill",
              "matplotlib", "jupytext", "ipykernel", "pyarrow")  # fmt: skip
ROOTS = {canonical(Requirement(r).name) for r in reqs.SERVING_DISTRIBUTIONS}


def pins(text: str) -> dict[str, str]:
    """name -> version of `name==version` lines (markers dropped)."""
    found = {}
    for line in text.splitlines():
        name, _, version = line.split(";")[0].strip().partition("==")
        found[canonical(name)] = version.strip()
    return found


def installed(name: str) -> str:
    return importlib.metadata.version(name)


# --- the roots: what the staged serving code imports ---------------------------------


def staged_imports(
    modules: list[Path] | None = None, top_level_only: bool = False
) -> dict[str, set[str]]:
    """Third-party top-level import name -> the staged modules importing it, at any depth
    (module level or inside a function), or at module level only."""
    found: dict[str, set[str]] = {}
    for module in served_modules() if modules is None else modules:
        tree = ast.parse((SRC / module).read_text())
        for node in tree.body if top_level_only else ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("nbship", "__future__"):
                    found.setdefault(top, set()).add(module.as_posix())
    return found


def test_the_serving_roots_are_exactly_what_the_staged_modules_import():
    imports = staged_imports()
    owners = importlib.metadata.packages_distributions()
    served = {top: mods for top, mods in imports.items() if top not in reqs.BUILD_ONLY_IMPORTS}
    uncovered = {
        top: sorted(mods)
        for top, mods in served.items()
        if not {canonical(d) for d in owners.get(top, [])} & ROOTS
    }
    assert not uncovered, f"imported by the bento's code but not a root: {uncovered}"
    imported_dists = {canonical(d) for top in served for d in owners[top]}
    # psycopg is SQLAlchemy's driver, loaded by URL, never imported by name
    assert ROOTS - imported_dists == {"psycopg"}
    # every build-only import is real (a stale entry would hide a new serving import)
    assert set(imports) >= reqs.BUILD_ONLY_IMPORTS


def test_the_service_imports_without_the_build_only_packages(tmp_path: Path):
    """What serving loads at start never needs a build-only package: each is made
    unimportable and the service module (and its whole import graph) still imports."""
    blocked = sorted(reqs.BUILD_ONLY_IMPORTS)
    probe = textwrap.dedent(f"""
        import sys
        for name in {blocked!r}:
            sys.modules[name] = None  # `import name` now raises ImportError
        import nbship.serving.service, nbship.registry.model_store, nbship.serving.compiled
        print("imported")
    """)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "imported"


# --- route 1: uv.lock and a `serve` group --------------------------------------------


@pytest.fixture(scope="module")
def with_serve_group(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("serve-group")
    for name in ("pyproject.toml", "uv.lock"):
        shutil.copy2(PROJECT / name, project / name)
    return project


def test_a_serve_group_is_exported_as_the_user_pinned_it(with_serve_group: Path):
    result = reqs.serving_requirements(with_serve_group, ["scikit-learn"])
    assert result.route == "serve-group"
    assert "`serve` dependency group" in result.describe()
    exported = reqs.uv_export(with_serve_group, "--only-group", "serve")
    # the group as exported, then what it left to the lock (the next test)
    assert result.text.startswith(exported)
    found = pins(result.text)
    for name in ("bentoml", "scikit-learn", "pandas", "numpy", "pydantic", "sqlalchemy"):
        assert found[name] == installed(name), name
    assert set(found) >= ROOTS
    assert not set(NOT_SERVED) & set(found)


def test_the_server_speedups_are_pinned_from_the_lock_when_the_serve_group_lacks_them(
    with_serve_group: Path,
):
    """The example's group does not list httptools and uvloop (nothing imports them by
    name: uvicorn takes them when installed); every bento gets them from the lock."""
    group = reqs.uv_export(with_serve_group, "--only-group", "serve")
    assert not {"httptools", "uvloop"} & set(pins(group))
    result = reqs.serving_requirements(with_serve_group, ["scikit-learn"])
    assert result.from_lock == reqs.SERVER_SPEEDUPS
    for name in reqs.SERVER_SPEEDUPS:
        assert pins(result.text)[name] == installed(name), name
    assert "not in the group, from uv.lock: httptools, uvloop" in result.describe()


def test_a_root_missing_from_the_serve_group_is_named_with_its_fix(with_serve_group: Path):
    # pyarrow is installed (the build needs it) but not in this project's serve group
    with pytest.raises(PackagingError) as info:
        reqs.serving_requirements(with_serve_group, ["scikit-learn", "pyarrow"])
    message = str(info.value)
    assert "pyarrow (the model uses it): `uv add --group serve pyarrow`" in message
    assert "scikit-learn" not in message


def test_a_batch_scoring_bento_pins_pyarrow_from_the_lock_beside_the_serve_group(
    with_serve_group: Path,
):
    """env.yaml schedules batch scoring: the group need not list pyarrow (nbship requires
    it, so the lock has it); its pin comes from the same lock, the rest is the group's."""
    result = reqs.serving_requirements(with_serve_group, ["scikit-learn"], reqs.BATCH_DISTRIBUTIONS)
    group = reqs.uv_export(with_serve_group, "--only-group", "serve")
    assert result.route == "serve-group"
    assert result.from_lock == ("httptools", "pyarrow", "uvloop")
    assert result.text.startswith(group.rstrip("\n"))
    assert pins(result.text)["pyarrow"] == installed("pyarrow")
    assert set(pins(result.text)) - set(pins(group)) == {"httptools", "pyarrow", "uvloop"}


def test_the_batch_roots_are_what_the_batch_modules_import():
    """A batch-capable bento ships nbship.batch: what it imports at module level is a
    serving or batch root; Dask is imported only inside functions (the `--dask` route)."""
    batch_roots = ROOTS | {canonical(d) for d in reqs.BATCH_DISTRIBUTIONS}
    owners = importlib.metadata.packages_distributions()
    added = sorted(set(served_modules(batch=True)) - set(served_modules()))
    assert added, "nbship.batch ships with a batch-capable bento"
    for top, modules in staged_imports(added, top_level_only=True).items():
        dists = {canonical(d) for d in owners.get(top, [])}
        assert dists & batch_roots, f"{sorted(modules)} import {top}: not a root"


def test_a_serving_import_missing_from_the_serve_group_is_named(
    with_serve_group: Path, monkeypatch: pytest.MonkeyPatch
):
    exported = reqs.uv_export(with_serve_group, "--only-group", "serve")
    without = "".join(line + "\n" for line in exported.splitlines()
                      if not line.startswith(("sqlalchemy==", "prometheus-client==")))  # fmt: skip
    monkeypatch.setattr(reqs, "uv_export", lambda project, *args: without)
    with pytest.raises(PackagingError) as info:
        reqs.serving_requirements(with_serve_group)
    message = str(info.value)
    assert "prometheus-client (the bento's serving code imports it)" in message
    assert "`uv add --group serve sqlalchemy`" in message


def test_a_broken_lock_is_a_packaging_error_naming_uv_export(tmp_path: Path):
    shutil.copy2(PROJECT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "uv.lock").write_text("not a lock\n")
    with pytest.raises(PackagingError, match="uv export failed"):
        reqs.serving_requirements(tmp_path)


# --- route 2: uv.lock without a serve group ------------------------------------------


def without_serve_group(pyproject: str) -> str:
    lines, skipping = [], False
    for line in pyproject.splitlines():
        if line.startswith("serve = ["):
            skipping = True
        if not skipping:
            lines.append(line)
        if skipping and line == "]":
            skipping = False
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def lock_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("lock-only")
    (project / "pyproject.toml").write_text(
        without_serve_group((PROJECT / "pyproject.toml").read_text())
    )
    shutil.copy2(PROJECT / "uv.lock", project / "uv.lock")
    assert reqs.serve_group(project / "pyproject.toml") is None
    return project


def test_a_lock_without_serve_group_pins_only_the_roots_closure(lock_only: Path):
    result = reqs.serving_requirements(lock_only, ["scikit-learn"])
    assert result.route == "lock" and "no `serve` group" in result.describe()
    whole = reqs.uv_export(lock_only)
    assert set(NOT_SERVED) <= requirement_names(whole)  # the lock has the whole project
    lines = result.text.splitlines()
    assert lines and set(lines) <= {line.strip() for line in whole.splitlines()}
    assert lines == sorted(lines, key=lambda line: canonical(line.split("==")[0]))
    found = pins(result.text)
    assert not set(NOT_SERVED) & set(found)
    assert set(found) >= ROOTS
    for name in ("bentoml", "scikit-learn", "scipy", "starlette", "uvicorn"):
        assert found[name] == installed(name), name
    # the same packages a serve group of those roots pins (uv's resolution agrees), and
    # the server speed-ups the group leaves to the lock
    with_group = reqs.uv_export(PROJECT, "--only-group", "serve")
    universal_only = {"cffi", "pycparser"}  # PyPy-only lines of the universal lock
    expected = requirement_names(with_group) - universal_only | set(reqs.SERVER_SPEEDUPS)
    assert set(found) == expected


def test_a_package_the_lock_does_not_pin_is_named(lock_only: Path,
                                                  monkeypatch: pytest.MonkeyPatch):  # fmt: skip
    whole = reqs.uv_export(lock_only)
    lines = [line for line in whole.splitlines() if not line.startswith("joblib==")]
    monkeypatch.setattr(reqs, "uv_export", lambda project, *args: "\n".join(lines))
    with pytest.raises(PackagingError, match=r"uv\.lock does not pin joblib.*uv add joblib"):
        reqs.serving_requirements(lock_only)


# --- route 3: no lock: the environment -----------------------------------------------


def test_without_a_lock_the_installed_closure_is_pinned(tmp_path: Path):
    result = reqs.serving_requirements(tmp_path, ["scikit-learn"])
    assert result.route == "environment" and "installed versions" in result.describe()
    assert not (tmp_path / "uv.lock").exists()  # nothing was locked
    names = [line.split("==")[0] for line in result.text.splitlines()]
    assert names == sorted(names)
    found = pins(result.text)
    for name, version in found.items():
        assert version == installed(name), name
    # bentoml's own requirements (those of this platform, no extras) are all there
    for line in importlib.metadata.requires("bentoml") or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            assert canonical(requirement.name) in found, line
    assert "psycopg-binary" in found  # an extra of a root is followed
    assert not set(NOT_SERVED) & set(found)
    assert "nbship" not in found  # the bento ships the serving modules, not the package
    assert reqs.serving_requirements(tmp_path, ["scikit-learn"]).text == result.text


def test_without_a_lock_a_declared_serve_group_is_served_too(tmp_path: Path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "p"\nversion = "0"\n'
        '[dependency-groups]\nextra = ["pyarrow"]\nserve = [{include-group = "extra"}]\n'
    )
    assert reqs.serve_group(tmp_path / "pyproject.toml") == ["pyarrow"]
    result = reqs.serving_requirements(tmp_path)
    assert result.route == "environment"
    assert pins(result.text)["pyarrow"] == installed("pyarrow")


def test_without_a_lock_a_model_package_not_installed_is_named(tmp_path: Path):
    with pytest.raises(PackagingError) as info:
        reqs.serving_requirements(tmp_path, ["surely-not-installed-dist"])
    assert "surely-not-installed-dist (required by the bento) is not installed" in str(info.value)
    assert "\n" in str(info.value) and "Traceback" not in str(info.value)


# --- the closure, on made-up distributions -------------------------------------------


class FakeDist(importlib.metadata.Distribution):
    def __init__(self, name: str, version: str, requires: tuple[str, ...] = (),
                 direct_url: dict | None = None):  # fmt: skip
        lines = [f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
        self._files = {"METADATA": "\n".join(lines) + "\n"}
        if direct_url is not None:
            self._files["direct_url.json"] = json.dumps(direct_url)

    def read_text(self, filename: str) -> str | None:
        return self._files.get(filename)

    def locate_file(self, path: object) -> Path:
        return Path(str(path))


def fakes(*dists: FakeDist) -> dict[str, importlib.metadata.Distribution]:
    return {canonical(d.metadata["Name"]): d for d in dists}


WORLD = fakes(
    FakeDist("App", "1.0", ("Lib>=2", "Old; python_version < '3'", 'Web[fast]; extra == "web"')),
    FakeDist("lib", "2.1", ("Tiny_Thing",)),
    FakeDist("tiny-thing", "0.3"),
    FakeDist("Old", "1.0"),
    FakeDist("web", "5.0", ('speedups; extra == "fast"', 'Never; extra == "slow"')),
    FakeDist("speedups", "1.1"),
    FakeDist("never", "9"),
)


def test_the_closure_follows_requirements_and_evaluates_markers():
    result = reqs.closure(["app"], WORLD)
    assert result.problems == []
    assert sorted(result.found) == ["app", "lib", "tiny-thing"]
    assert reqs.environment_pins(result.found) == "app==1.0\nlib==2.1\ntiny-thing==0.3\n"


def test_the_closure_follows_the_extras_asked_for_and_theirs():
    assert sorted(reqs.closure(["app[web]"], WORLD).found) == [
        "app", "lib", "speedups", "tiny-thing", "web",
    ]  # fmt: skip
    # an extra asked for later still adds its requirements
    assert "web" in reqs.closure(["app", "app[web]"], WORLD).found


def test_the_closure_names_what_is_missing_or_conflicts():
    world = {**WORLD, **fakes(FakeDist("lib", "1.5", ("Gone",)))}
    problems = reqs.closure(["app"], world).problems
    assert problems == [
        "Gone (required by lib) is not installed",
        "lib 1.5 is installed, but app requires Lib>=2",
    ]


def test_packages_installed_from_a_local_folder_cannot_be_pinned():
    world = fakes(
        FakeDist("here", "0.1", direct_url={"url": "file:///src/here", "dir_info": {}}),
        FakeDist("vcs", "1.0", direct_url={"url": "git+https://example.org/vcs@abc",
                                           "vcs_info": {"vcs": "git", "commit_id": "abc"}}),
    )  # fmt: skip
    assert reqs.environment_pins({"vcs": world["vcs"]}) == "vcs @ git+https://example.org/vcs@abc\n"
    with pytest.raises(PackagingError, match=r"local files: here \(file:///src/here\)"):
        reqs.environment_pins(world)
