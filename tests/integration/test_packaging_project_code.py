"""A model made of the project's own code, through a real `bentoml build`: the project's
package ships in the bento and the parity check passes; with the package missing from the
bento, packaging fails at the parity check and nothing changes (two builds in all)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nbship import tasks
from nbship.packaging import bento as package
from nbship.packaging.bento import PackagingError
from nbship.packaging.dependencies import CodeDependencies, find_dependencies
from tests.unit.test_packaging_dependencies import pipeline_with, write_project_package
from tests.unit.test_packaging_winner import Run, make_run

pytestmark = pytest.mark.integration

PKG = "shopcode"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Run, dict[str, Any]]]:
    """A project whose pipeline starts with its own transformer (src/shopcode/features.py,
    imported here as an editable install would make it), packaged once for real."""
    root = tmp_path_factory.mktemp("own-code") / "project"
    src = write_project_package(root, PKG)
    sys.path.insert(0, str(src))
    try:
        ratio = importlib.import_module(f"{PKG}.features").Ratio
        run = make_run(root, tasks.CLASSIFICATION, model=pipeline_with(ratio()))
        yield run, run.package()
    finally:
        sys.path.remove(str(src))
        for name in [m for m in sys.modules if m == PKG or m.startswith(f"{PKG}.")]:
            del sys.modules[name]


def test_the_project_code_ships_in_the_bento_and_parity_holds(built: tuple[Run, dict[str, Any]]):
    import bentoml

    run, summary = built
    assert summary["promoted"] and summary["parity"] == {
        "passed": True, "rows": 10, "task": "classification",
    }  # fmt: skip
    assert f"{PKG}/features.py" in summary["project_code"]
    assert f"{PKG}/util.py" in summary["project_code"]  # imported by features.py
    bento_src = Path(bentoml.bentos.get(summary["bento_tag"]).path) / "src"
    published = run.link / "src"
    for src in (bento_src, published):
        assert (src / PKG / "features.py").read_text() == (
            run.root / "src" / PKG / "features.py"
        ).read_text()
        assert (src / PKG / "__init__.py").is_file()
    with run.registry as registry:
        assert registry.aliases("model")["champion"] == summary["model_tag"]


def test_a_bento_without_the_project_module_fails_at_packaging_and_changes_nothing(
    built: tuple[Run, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    first, _ = built
    run = first.copy_to(tmp_path / "again")
    monkeypatch.syspath_prepend(str(run.root / "src"))
    before = run.state()

    def finder_that_misses_the_project(model: Any, **kwargs: Any) -> CodeDependencies:
        code = find_dependencies(model, **kwargs)
        assert code.project_packages == [PKG]
        return CodeDependencies(modules=code.modules, third_party=code.third_party)

    monkeypatch.setattr(package, "find_dependencies", finder_that_misses_the_project)
    with pytest.raises(PackagingError) as info:
        run.package()
    message = str(info.value)
    assert "parity check" in message and f"No module named '{PKG}'" in message
    assert run.state() == before
