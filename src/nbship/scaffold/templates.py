"""The files `nbship init` writes: `nbship/templates/` in this package.

`templates/project/` is a project's shape, every file copied as it is except those in
RENDERED, whose `$name` placeholders (string.Template) are filled. `templates/notebooks/`
holds one train notebook per task. The generic task notebooks and pipeline.yaml are the
worked example's own (a unit test keeps the copies equal), so a new project runs the
pipeline the example runs.
"""

from __future__ import annotations

import string
from collections.abc import Iterator, Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import PurePosixPath

# files whose `$name` placeholders are filled; every other file is copied byte for byte
RENDERED = frozenset({"env.yaml", "pyproject.toml.in", "README.md", "bentos/README.md"})
# stored under other names, so that git and the linters do not take them as this repo's
RENAMED = {
    "gitignore": ".gitignore",
    "pyproject.toml.in": "pyproject.toml",
    "jupyterlab-overrides.json": ".jupyter/lab/settings/overrides.json",
}


def _root() -> Traversable:
    return resources.files("nbship") / "templates"


def _walk(
    folder: Traversable, prefix: PurePosixPath
) -> Iterator[tuple[PurePosixPath, Traversable]]:
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name == "__pycache__":
            continue
        path = prefix / entry.name
        if entry.is_dir():
            yield from _walk(entry, path)
        else:
            yield path, entry


def project_files(values: Mapping[str, str]) -> dict[str, bytes]:
    """Every file of a new project by its relative path, placeholders filled."""
    files: dict[str, bytes] = {}
    for path, entry in _walk(_root() / "project", PurePosixPath()):
        name = path.as_posix()
        content = entry.read_bytes()
        if name in RENDERED:
            # substitute, not safe_substitute: a placeholder left unfilled is a bug here
            content = string.Template(content.decode()).substitute(values).encode()
        files[RENAMED.get(name, name)] = content
    return files


def train_notebook(task_kind: str) -> bytes:
    """The train notebook a new project starts from, for a classification or regression."""
    return (_root() / "notebooks" / f"train_{task_kind}.py").read_bytes()
