"""Every module src/nbship imports is the standard library, nbship itself, or a declared
dependency: installed from its wheel into a fresh environment, nbship finds what it
imports (undeclared imports worked here only because the dev group brought them in)."""

from __future__ import annotations

import ast
import functools
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "src" / "nbship"
# what `nbship init` writes into a project runs in that project, not as part of nbship
NOT_NBSHIP_CODE = SOURCE / "templates"


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _imports_by_file() -> dict[str, set[str]]:
    return {
        str(path.relative_to(ROOT)): _imported_modules(path)
        for path in sorted(SOURCE.rglob("*.py"))
        if NOT_NBSHIP_CODE not in path.parents
    }


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    optional = {
        canonicalize_name(Requirement(r).name)
        for extra in project.get("optional-dependencies", {}).values()
        for r in extra
    }
    return required, optional


@functools.cache
def _module_to_distributions() -> dict[str, list[str]]:
    # a scan of every installed distribution's files: once, not per import
    return packages_distributions()


def _distributions(module: str) -> set[str]:
    return {canonicalize_name(d) for d in _module_to_distributions().get(module, [])}


def test_the_scan_sees_third_party_imports():
    # the scan itself: it finds a module known to be imported, and maps it to its wheel
    imports = set().union(*_imports_by_file().values())
    assert {"click", "bentoml", "sklearn"} <= imports
    assert _distributions("sklearn") == {"scikit-learn"}


def test_every_import_of_nbship_is_declared():
    required, optional = _declared()
    undeclared: dict[str, list[str]] = {}
    for file, modules in _imports_by_file().items():
        for module in modules:
            if module in sys.stdlib_module_names or module in {"nbship", "__future__"}:
                continue
            distributions = _distributions(module)
            if not distributions & (required | optional):
                undeclared.setdefault(module, []).append(file)
    assert not undeclared, (
        "imported but not declared in [project] dependencies (or an extra): "
        + "; ".join(f"{m} in {', '.join(files)}" for m, files in sorted(undeclared.items()))
    )


def test_an_optional_dependency_is_imported_only_where_it_is_used():
    # an extra's package imported at a module's top would break `import nbship...` for a
    # user without the extra: it is imported inside the function that needs it
    required, optional = _declared()
    only_optional = optional - required
    at_top: list[str] = []
    for path in sorted(SOURCE.rglob("*.py")):
        if NOT_NBSHIP_CODE in path.parents:
            continue
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                modules = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                )
                for module in modules:
                    if _distributions(module.split(".")[0]) & only_optional:
                        at_top.append(f"{path.relative_to(ROOT)}: {module}")
    assert not at_top, at_top
