"""What a pickled object refers to: every class and function it names, by module.

A fitted model pickles its estimators, numpy's array constructors, a project's own
transformer, a function given to a FunctionTransformer, ... by module and name.
Unpickling it with an unpickler that records each name gives the list. Code defined in
a notebook is pickled under `__main__`, which no other process can import: the train
task refuses it at once, and packaging again before any bento is built.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import pickle
from collections.abc import Collection
from pathlib import Path
from typing import Any

# what code defined in a notebook (or a script run as a program) is pickled under
MAIN_MODULES = ("__main__", "__mp_main__")


class ModelCodeError(ValueError):
    """The model refers to code that cannot ship with it."""


class _Unresolved:
    """Stands for a class or function this process cannot import, so that the scan of a
    pickle goes on and names everything it refers to."""

    def __new__(cls, *_args: Any, **_kwargs: Any) -> _Unresolved:
        return object.__new__(cls)

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    def __call__(self, *_args: Any, **_kwargs: Any) -> _Unresolved:
        return _Unresolved()

    def __setstate__(self, _state: Any) -> None:
        pass


class _Recorder(pickle.Unpickler):
    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file)
        self.found: dict[tuple[str, str], Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            obj = super().find_class(module, name)
        except (ImportError, AttributeError):
            obj = _Unresolved
        self.found[(module, name)] = obj
        return obj


def referenced_globals(model: Any) -> dict[tuple[str, str], Any]:
    """{(module, name): object} of every class and function the pickled `model` names
    (the object is a stand-in when this process cannot import it)."""
    try:
        data = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # lambdas, local functions, open handles, ...
        raise ModelCodeError(
            f"the model cannot be pickled, so it cannot ship: {exc}. A lambda or a function"
            " defined inside another one cannot be pickled: define it at the top of a module"
            " of the project and import it from there"
        ) from exc
    recorder = _Recorder(io.BytesIO(data))
    # an unresolved stand-in may break the rebuild: the names met until then are recorded
    with contextlib.suppress(Exception):
        recorder.load()
    return recorder.found


def notebook_code(found: dict[tuple[str, str], Any]) -> list[tuple[str, str, Any]]:
    """The (module, name, object) of `referenced_globals` defined in a notebook."""
    return sorted((m, n, obj) for (m, n), obj in found.items() if m in MAIN_MODULES)


def notebook_code_message(names: Collection[tuple[str, str, Any]], project: Path) -> str:
    """What to tell the user whose model uses classes or functions of the notebook."""
    listed = ", ".join(
        f"{name} ({'class' if inspect.isclass(obj) else 'function'})"
        if obj is not _Unresolved
        else name
        for _, name, obj in sorted(names, key=lambda t: (t[0], t[1]))
    )
    packages = sorted(
        p.parent.name for p in (project / "src").glob("*/__init__.py") if p.parent.name != "nbship"
    )
    package = packages[0] if packages else "<project>"
    return (
        f"the model uses code defined in the notebook itself (__main__): {listed}. A server"
        " cannot import a notebook: move each of them to a module of the project, e.g."
        f" src/{package}/features.py, and import it from there in the notebook"
        f" (from {package}.features import ...)"
    )


def check_no_notebook_code(model: Any, project: Path) -> None:
    """Raises ModelCodeError naming the notebook's classes and functions `model` uses."""
    if found := notebook_code(referenced_globals(model)):
        raise ModelCodeError(notebook_code_message(found, project))
