"""A bento's requirements.txt: what its serving code and its model import, pinned exactly.

The roots are the distributions the staged serving modules import (SERVING_DISTRIBUTIONS)
and the ones the fitted model refers to (`dependencies.find_dependencies`). Their pins come
from the user's own project, by the first route that applies:

- `serve-group`: a uv.lock and a `serve` dependency group in pyproject.toml: the group as
  uv exports it from the lock (the user chose those pins); every root must be in it;
- `lock`: a uv.lock without that group: the lock's pins of the roots' closure only;
- `environment`: no lock (pip, conda, ...): the roots' closure over the installed
  distributions, each pinned to its installed version.

The closure follows the installed distributions' Requires-Dist, extras included, markers
evaluated for this interpreter: the bento's image runs the same Python on Linux, and the
model was pickled against exactly these installs.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement

from nbship.packaging.dependencies import PackagingError, canonical, requirement_names

Route = Literal["serve-group", "lock", "environment"]

# What the staged serving code imports (tests/unit/test_serving_requirements.py checks it
# against every import of SERVED_SUBPACKAGES and the core modules), as requirements.
SERVING_DISTRIBUTIONS: tuple[str, ...] = (
    "bentoml",
    "fsspec",
    "joblib",
    "numpy",
    "pandas",
    "prometheus-client",
    # never imported by name: SQLAlchemy's driver for a PostgreSQL registry or log
    "psycopg[binary]",
    "pydantic",
    "pydantic-core",
    "pyyaml",
    "scikit-learn",
    "scipy",
    "sqlalchemy",
    "starlette",
)
# Never imported by name either: uvicorn (under `bentoml serve`) takes them when installed,
# the C HTTP parser and the libuv event loop, and without them parses every request in pure
# Python on asyncio's own loop (benchmarks/serve.py measured the difference). A `serve`
# group need not list them: what it lacks is pinned from the lock (nbship requires both).
SERVER_SPEEDUPS: tuple[str, ...] = ("httptools", "uvloop")
# Imports of the staged modules that only the build, the reports or the CLI run (inside
# functions serving never calls, or in modules the service never imports): not roots.
BUILD_ONLY_IMPORTS: frozenset[str] = frozenset(
    {"great_expectations", "jupytext", "matplotlib", "nbformat", "networkx", "ploomber", "pyarrow"}
)
# What a batch-capable bento adds (env.yaml schedules a CronJob: `batch.schedule`): the
# batch entry point reads and writes with pyarrow; on a Dask cluster (`batch.dask`) it
# needs the `dask` extra's packages too.
BATCH_DISTRIBUTIONS: tuple[str, ...] = ("pyarrow",)
DASK_DISTRIBUTIONS: tuple[str, ...] = ("dask", "distributed")
SERVE_GROUP = "serve"
_UV_EXPORT = ("export", "--frozen", "--no-hashes", "--no-emit-project", "--no-header",
              "--no-annotate")  # fmt: skip


@dataclass(frozen=True)
class ServingRequirements:
    """The bento's requirements.txt and where its pins came from."""

    text: str
    route: Route
    roots: tuple[str, ...]  # canonical names, sorted
    # what a `serve` group did not list but serving (SERVER_SPEEDUPS) or batch scoring
    # needs, pinned from the same lock
    from_lock: tuple[str, ...] = ()

    @property
    def names(self) -> set[str]:
        return requirement_names(self.text)

    def describe(self) -> str:
        count = len(self.names)
        where = {
            "serve-group": "uv.lock, the `serve` dependency group (uv export --only-group serve)",
            "lock": "uv.lock (no `serve` group): the packages serving and the model import,"
            " with what they require",
            "environment": "the installed versions (no uv.lock): the packages serving and the"
            " model import, with what they require",
        }[self.route]
        added = ""
        if self.from_lock:
            added = f"; not in the group, from uv.lock: {', '.join(self.from_lock)}"
        return f"serving requirements: {count} pins from {where}{added}"


def serving_requirements(
    project_dir: str | Path,
    model_distributions: Iterable[str] = (),
    batch_distributions: Iterable[str] = (),
) -> ServingRequirements:
    """The bento's pins (see the module doc); PackagingError names each root it lacks.

    `batch_distributions` (a bento that also scores batches: BATCH_DISTRIBUTIONS) are
    roots too. A `serve` group need not list them nor SERVER_SPEEDUPS: what it lacks of
    those is pinned from the lock, as the `lock` route would (nbship requires them, so a
    project's lock has them)."""
    project = Path(project_dir)
    model = sorted({canonical(d) for d in model_distributions})
    batch = sorted({canonical(d) for d in batch_distributions})
    implied = sorted({*SERVER_SPEEDUPS, *batch})
    roots = [*SERVING_DISTRIBUTIONS, *model, *implied]
    names = tuple(sorted({canonical(Requirement(r).name) for r in roots}))
    group = serve_group(project / "pyproject.toml")
    if (project / "uv.lock").is_file():
        if group is not None:
            text = uv_export(project, "--only-group", SERVE_GROUP)
            exported = requirement_names(text)
            missing = [n for n in names if n not in exported and n not in implied]
            if missing:
                raise PackagingError(_not_in_serve_group(missing, model))
            extra = [n for n in implied if n not in exported]
            if extra:
                found = _closure_or_fail(extra, installed_distributions())
                added = _from_lock(uv_export(project), {k: v for k, v in found.items()
                                                        if k not in exported})  # fmt: skip
                text = text.rstrip("\n") + "\n" + added
            return ServingRequirements(text, "serve-group", names, tuple(extra))
        found = _closure_or_fail(roots, installed_distributions())
        return ServingRequirements(_from_lock(uv_export(project), found), "lock", names)
    # without a lock, a declared serve group still says what else the user wants served
    found = _closure_or_fail([*roots, *(group or [])], installed_distributions())
    return ServingRequirements(environment_pins(found), "environment", names)


def serve_group(pyproject: Path) -> list[str] | None:
    """The requirements of pyproject.toml's `serve` dependency group (PEP 735, included
    groups expanded), or None when it declares none."""
    if not pyproject.is_file():
        return None
    try:
        groups = tomllib.loads(pyproject.read_text()).get("dependency-groups") or {}
    except tomllib.TOMLDecodeError as exc:
        raise PackagingError(f"{pyproject} is not valid TOML ({exc}): fix it") from exc
    by_name = {canonical(k): v for k, v in groups.items()}

    def expand(name: str, seen: frozenset[str]) -> list[str]:
        entries: list[Any] = by_name.get(name) or []
        out: list[str] = []
        for entry in entries:
            if isinstance(entry, str):
                out.append(entry)
            elif isinstance(entry, dict) and "include-group" in entry:
                included = canonical(str(entry["include-group"]))
                if included not in seen:
                    out += expand(included, seen | {included})
        return out

    return expand(SERVE_GROUP, frozenset({SERVE_GROUP})) if SERVE_GROUP in by_name else None


def uv_export(project: Path, *args: str) -> str:
    """`uv export --frozen` of the project's lock, as requirements.txt (no hashes)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    uv = shutil.which("uv", path=path)
    if uv is None:
        raise PackagingError("uv is not installed: it exports the bento's pins from uv.lock")
    result = subprocess.run([uv, *_UV_EXPORT, *args], cwd=project, capture_output=True, text=True)
    if result.returncode != 0:
        raise PackagingError(f"uv export failed in {project}:\n{result.stderr}")
    return result.stdout


def installed_distributions() -> dict[str, importlib.metadata.Distribution]:
    """Installed distributions by canonical name; the first on sys.path wins, as imports do."""
    found: dict[str, importlib.metadata.Distribution] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonical(name), dist)
    return found


@dataclass(frozen=True)
class Closure:
    found: dict[str, importlib.metadata.Distribution]  # canonical name -> its install
    problems: list[str]


def closure(
    roots: Iterable[str], installed: Mapping[str, importlib.metadata.Distribution]
) -> Closure:
    """The roots and everything they require, transitively, as installed: extras followed,
    markers evaluated for this interpreter. `problems` names what is missing or conflicts."""
    pending = [(Requirement(r), "the bento") for r in roots]
    expanded: dict[str, set[str]] = {}  # name -> extras whose requirements were followed
    found: dict[str, importlib.metadata.Distribution] = {}
    problems: list[str] = []
    while pending:
        requirement, wanted_by = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonical(requirement.name)
        dist = installed.get(name)
        if dist is None:
            problems.append(f"{requirement.name} (required by {wanted_by}) is not installed")
            expanded.setdefault(name, set())
            continue
        if not requirement.specifier.contains(dist.version, prereleases=True):
            problems.append(
                f"{name} {dist.version} is installed, but {wanted_by} requires"
                f" {requirement.name}{requirement.specifier}"
            )
        done = expanded.get(name)
        extras = set(requirement.extras) - (done or set())
        if done is not None and not extras:
            continue
        expanded[name] = (done or set()) | extras
        found[name] = dist
        # first visit: the plain requirements; later ones only add an extra's
        contexts = ([""] if done is None else []) + sorted(extras)
        for line in dist.requires or []:
            try:
                needed = Requirement(line)
            except InvalidRequirement:
                continue  # an install's metadata that pip itself would skip
            if _applies(needed.marker, contexts):
                needed.marker = None  # evaluated here, under the extra that asked for it
                pending.append((needed, name))
    return Closure(found=found, problems=sorted(set(problems)))


def _applies(marker: Marker | None, contexts: Collection[str]) -> bool:
    if marker is None:
        return "" in contexts  # a plain requirement belongs to the first visit only
    return any(marker.evaluate({"extra": extra}) for extra in contexts)


def _closure_or_fail(
    roots: Iterable[str], installed: Mapping[str, importlib.metadata.Distribution]
) -> dict[str, importlib.metadata.Distribution]:
    result = closure(roots, installed)
    if result.problems:
        raise PackagingError(
            "the bento's requirements cannot be pinned from this environment:\n"
            + "\n".join(f"- {p}" for p in result.problems)
            + "\ninstall what is missing (e.g. `pip install X` or `uv sync`) and package again"
        )
    return result.found


def environment_pins(found: Mapping[str, importlib.metadata.Distribution]) -> str:
    """`name==installed version` per distribution, sorted; PackagingError for one installed
    from a local folder, which an image cannot install."""
    lines: list[str] = []
    local: list[str] = []
    for name in sorted(found):
        dist = found[name]
        origin = _direct_url(dist)
        if origin is None:
            lines.append(f"{name}=={dist.version}")
        elif "dir_info" in origin or str(origin.get("url", "")).startswith("file:"):
            local.append(f"{name} ({origin.get('url', 'a local folder')})")
        else:  # a VCS checkout or an archive URL: pip installs the same reference
            lines.append(f"{name} @ {origin['url']}")
    if local:
        raise PackagingError(
            "the bento cannot pin packages installed from local files: "
            + ", ".join(local)
            + ": install them from an index (or a URL), or lock the project with uv"
        )
    return "".join(f"{line}\n" for line in lines)


def _direct_url(dist: importlib.metadata.Distribution) -> dict[str, Any] | None:
    text = dist.read_text("direct_url.json")
    if not text:
        return None
    origin = json.loads(text)
    return origin if isinstance(origin, dict) and "url" in origin else None


def _from_lock(exported: str, found: Mapping[str, importlib.metadata.Distribution]) -> str:
    """The lines of `uv export` of the whole project that pin the closure, sorted (a
    package the lock resolves per platform or Python keeps each of its lines)."""
    kept: dict[str, list[str]] = {}
    for line in exported.splitlines():
        names = requirement_names(line)
        if len(names) == 1 and (name := next(iter(names))) in found:
            kept.setdefault(name, []).append(line.strip())
    missing = sorted(set(found) - set(kept))
    if missing:
        raise PackagingError(
            f"uv.lock does not pin {', '.join(missing)}, which the bento needs: add the"
            f" package to the project (`uv add {missing[0]}`), or run `uv sync` if this"
            " environment is not the lock's"
        )
    return "".join(f"{line}\n" for name in sorted(kept) for line in kept[name])


def _not_in_serve_group(missing: Collection[str], model: Collection[str]) -> str:
    problems = []
    for name in missing:
        by = "the model uses it" if name in model else "the bento's serving code imports it"
        problems.append(f"- {name} ({by}): `uv add --group {SERVE_GROUP} {name}`")
    return (
        "the `serve` dependency group of pyproject.toml does not pin what the bento needs:\n"
        + "\n".join(problems)
    )
