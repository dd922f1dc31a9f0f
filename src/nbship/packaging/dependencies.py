"""What code a fitted model needs where it is served, found before any bento is built.

A pickled model names every class and function it is made of by module (scikit-learn's
estimators, numpy's array constructors, a project's own transformer, a function given to
a FunctionTransformer, ...). Unpickling it with an unpickler that records each name gives
the list; each module then falls in one of these:

- the standard library and nbship itself (the bento ships nbship's serving modules):
  nothing to do;
- `__main__`, that is code defined in the notebook: refused, naming each class and
  function, since no server can import a notebook;
- a module of the project (a file under the project folder, e.g. `src/<pkg>/features.py`,
  or a top-level package the project holds): its whole top-level package is copied into
  the bento's build context, so it imports at serving time;
- anything else is a third-party package: its distribution becomes one of the roots of
  the bento's requirements (`packaging.requirements`), which refuses one it cannot pin,
  naming the package (and the `uv add --group serve ...` for a project with that group).

Packaging fails here, with every problem listed, rather than a server failing at start.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import shutil
import site
import sys
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbship.common import pickled

# top-level names that are never a project's package: the bento's own folders and nbship
RESERVED_TOP_LEVEL = ("nbship", "expectations")
_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


class PackagingError(RuntimeError):
    pass


def referenced_globals(model: Any) -> dict[tuple[str, str], Any]:
    """`common.pickled.referenced_globals`, failing as packaging does."""
    try:
        return pickled.referenced_globals(model)
    except pickled.ModelCodeError as exc:
        raise PackagingError(str(exc)) from exc


def requirement_names(requirements: str) -> set[str]:
    """The canonical distribution names of a requirements.txt's lines."""
    names = set()
    for line in requirements.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        if match := _REQUIREMENT_NAME.match(line):
            names.add(canonical(match.group(1)))
    return names


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class CodeDependencies:
    """What the model needs beyond the standard library, by kind."""

    modules: list[str]  # every module the model refers to, sorted
    # the project's code the bento ships: path in the build context -> source file
    project_files: dict[str, Path] = field(default_factory=dict)
    project_packages: list[str] = field(default_factory=list)  # their top-level names
    third_party: dict[str, list[str]] = field(default_factory=dict)  # import name -> dists

    @property
    def distributions(self) -> list[str]:
        """The third-party distributions the model needs, sorted: roots of its pins."""
        return sorted({dist for dists in self.third_party.values() for dist in dists})

    @property
    def include(self) -> list[str]:
        """bentofile `include` patterns of the project's code."""
        return sorted(self.project_files)

    def summary(self) -> str:
        parts = [f"third-party: {', '.join(sorted(self.third_party)) or 'none'}"]
        parts.append(f"project code shipped: {', '.join(self.project_packages) or 'none'}")
        return "model code: " + "; ".join(parts)


def _environment_dirs() -> list[Path]:
    """Where installed (not project) code lives: the interpreter's and the environment's."""
    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    dirs += [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    return [Path(d).resolve() for d in dict.fromkeys(dirs) if d]


def _is_within(path: Path, roots: Iterable[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def _module_file(module: str) -> Path | None:
    try:
        loaded = sys.modules.get(module) or importlib.import_module(module)
    except Exception:
        return None
    file = getattr(loaded, "__file__", None)
    return Path(file).resolve() if file else None


def _project_source(top: str, project: Path) -> Path | None:
    """The package folder or module named `top` among the project's sources, if any."""
    for root in (project / "src", project):
        if (root / top / "__init__.py").is_file():
            return root / top
        if (root / f"{top}.py").is_file():
            return root / f"{top}.py"
    return None


def _root_of(file: Path, module: str) -> Path:
    """The sys.path folder `module` (whose file is `file`) is imported from."""
    depth = module.count(".") + (1 if file.name == "__init__.py" else 0)
    return file.parents[depth]


def _package_files(source: Path) -> dict[str, Path]:
    """Every .py file of a top-level package folder (or the one module), relative to the
    folder the package imports from."""
    if source.is_file():
        return {source.name: source}
    return {
        path.relative_to(source.parent).as_posix(): path
        for path in sorted(source.rglob("*.py"))
        if not any(p.startswith((".", "__pycache__")) for p in path.relative_to(source).parts)
    }


def _owners(module: str, file: Path | None, candidates: Iterable[str]) -> list[str]:
    """The distributions that hold `module`: the one whose files include its file when
    several share its top-level name (a namespace package), else all of them."""
    dists = sorted(dict.fromkeys(candidates))
    if len(dists) <= 1 or file is None:
        return dists
    for name in dists:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if any(Path(str(dist.locate_file(f))).resolve() == file for f in dist.files or []):
            return [name]
    return dists


def find_dependencies(
    model: Any,
    *,
    project_dir: str | Path,
    requirements: str | None = None,
    nbship_modules: Collection[str] = (),
) -> CodeDependencies:
    """Checks every module the fitted `model` refers to (see the module doc); returns what
    ships, or raises PackagingError listing each problem.

    `requirements`, when given, is a requirements.txt every third-party distribution must
    be in (packaging checks its own pins instead); `nbship_modules`, when given, the
    dotted names of the nbship modules a bento ships (a model referring to another one is
    refused)."""
    project = Path(project_dir).resolve()
    found = referenced_globals(model)
    modules = sorted({module for module, _ in found})
    pinned = None if requirements is None else requirement_names(requirements)
    environment = _environment_dirs()
    distributions = importlib.metadata.packages_distributions()
    from_main = pickled.notebook_code(found)
    problems: list[str] = []
    if from_main:
        problems.append(pickled.notebook_code_message(from_main, project))
    project_files: dict[str, Path] = {}
    project_packages: list[str] = []
    third_party: dict[str, list[str]] = {}
    for module in modules:
        top = module.split(".", 1)[0]
        if module in pickled.MAIN_MODULES or top in sys.stdlib_module_names or top == "builtins":
            continue
        if top == "nbship":
            if nbship_modules and module not in nbship_modules:
                problems.append(
                    f"the model uses {module}, which bentos do not ship (only nbship's serving"
                    " modules): use a class of the project's own modules instead"
                )
            continue
        if top in project_packages or (top in third_party and len(distributions[top]) == 1):
            continue
        file = _module_file(module)
        source = None if top in RESERVED_TOP_LEVEL else _project_source(top, project)
        if (
            source is None
            and top not in RESERVED_TOP_LEVEL
            and file is not None
            and file.is_relative_to(project)
            and not _is_within(file, environment)
        ):  # e.g. a namespace package of the project, or a module on a path of its own
            root = _root_of(file, module)
            source = root / top if (root / top).is_dir() else root / f"{top}.py"
        if source is not None:
            project_packages.append(top)
            project_files.update(_package_files(source))
            continue
        dists = _owners(module, file, distributions.get(top, []))
        if not dists:
            where = f" (imported from {file})" if file else " (not importable here)"
            problems.append(
                f"the model uses module {module}{where}, which is neither a file of the project"
                f" at {project} nor part of an installed distribution: move it into the"
                " project's package (src/<project>/) or install it as a package from an index"
            )
            continue
        if pinned is not None and not {canonical(d) for d in dists} & pinned:
            problems.append(
                f"the model uses the package {top!r} (distribution {' / '.join(dists)}), which"
                " is not in the bento's requirements: add it to the `serve` dependency group"
                f" (uv add --group serve {dists[0]}) so that uv.lock pins it"
            )
            continue
        third_party[top] = sorted({*third_party.get(top, []), *dists})
    if problems:
        raise PackagingError(
            "the model cannot be served as it is:\n" + "\n".join(f"- {p}" for p in problems)
        )
    return CodeDependencies(
        modules=modules,
        project_files=project_files,
        project_packages=sorted(project_packages),
        third_party=third_party,
    )


def stage_project_code(files: Mapping[str, Path], staging: Path) -> list[str]:
    """Copies the project's code into the build context; returns what it wrote."""
    for relative, source in files.items():
        dest = staging / relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest)
    return sorted(files)


_MISSING_ON_MAIN = re.compile(r"Can't get attribute '([^']+)' on <module '([^']*__(?:mp_)?main__)'")


def explain_load_error(exc: BaseException, path: str | Path) -> PackagingError | None:
    """A PackagingError that says what to do when a saved model cannot be read because it
    refers to notebook code (or to a module this process cannot import); None otherwise."""
    text = str(exc)
    if match := _MISSING_ON_MAIN.search(text):
        return PackagingError(
            f"the model at {path} uses {match.group(1)}, defined in the notebook that trained"
            " it (__main__). A server cannot import a notebook: move it to a module of the"
            " project, e.g. src/<project>/features.py, and import it from there in the notebook"
        )
    if isinstance(exc, ModuleNotFoundError):
        return PackagingError(
            f"the model at {path} needs module {exc.name!r}, which is not importable here: put"
            " it in the project's package (src/<project>/) or add its package to the"
            " dependencies"
        )
    return None
