"""The parity check: the built bento's model, loaded in a fresh process that can import
only what the bento ships, answers the golden rows as the fitted model does here.

The process runs `python -I -S` with an explicit `sys.path`: the bento's source folder
(nbship's serving modules and the project's code it ships) and then the environment's
site-packages folders, whose `.pth` files are not run. So the project's own package, which
this environment reaches through an editable install's `.pth`, imports only if the bento
ships it: a module missing from the bento fails here, at packaging, not when a server
starts. One process, one load, one prediction of the golden rows.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import site
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nbship.packaging.dependencies import PackagingError
from nbship.tasks import Task

# classification: probabilities may differ by this much (labels must be equal);
# regression: predictions by this much relative to the expected value
PROBABILITY_TOLERANCE = 1e-9
RELATIVE_TOLERANCE = 1e-9
ABSOLUTE_TOLERANCE = 1e-12
SHOWN_ROWS = 10
TIMEOUT_SECONDS = 300

# What the fresh process runs: argv[1] is a JSON of paths (see `_run`).
_PROBE = r"""
import json, pickle, sys, traceback
args = json.loads(sys.argv[1])
sys.path[:0] = args["first"]
sys.path.extend(args["then"])
try:
    import joblib
    import numpy as np
    model = joblib.load(args["model_file"])
    with open(args["rows"], "rb") as f:
        rows = pickle.load(f)
    if args["classification"]:
        proba = np.asarray(model.predict_proba(rows), dtype=float)
        classes = [str(c) for c in model.classes_]
        out = {"classes": classes, "probabilities": proba.tolist(),
               "labels": [classes[i] for i in np.argmax(proba, axis=1)]}
    else:
        out = {"predictions": np.asarray(model.predict(rows), dtype=float).ravel().tolist()}
except BaseException:
    out = {"error": traceback.format_exc(limit=8)}
with open(args["out"], "w") as f:
    json.dump(out, f)
"""


def site_packages() -> list[str]:
    """This environment's site-packages folders (not their `.pth` additions)."""
    dirs = [*site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


def bento_model_file(bento_tag: str, model_tag: str) -> tuple[Path, Path]:
    """The bento's source folder and its model's saved file, in the local BentoML store."""
    import bentoml

    bento = Path(bentoml.bentos.get(bento_tag).path)
    name, version = model_tag.split(":", 1)
    candidates = [bento / "models" / name / version / "saved_model.pkl"]
    # not in the local model store: the bento's own copy or nothing
    with contextlib.suppress(Exception):
        candidates.append(Path(bentoml.models.get(model_tag).path) / "saved_model.pkl")
    for file in candidates:
        if file.is_file():
            return bento / "src", file
    raise PackagingError(f"no saved model of {model_tag} in bento {bento_tag} at {bento}")


def expected_outputs(model: Any, rows: Any, task: Task) -> dict[str, Any]:
    if task.is_classification:
        proba = np.asarray(model.predict_proba(rows), dtype=float)
        classes = [str(c) for c in model.classes_]
        return {
            "classes": classes,
            "probabilities": proba.tolist(),
            "labels": [classes[i] for i in np.argmax(proba, axis=1)],
        }
    return {"predictions": np.asarray(model.predict(rows), dtype=float).ravel().tolist()}


def _run(src_dir: Path, model_file: Path, rows: Any, task: Task, python: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="nbship-parity-") as tmp:
        rows_file, out_file = Path(tmp) / "rows.pkl", Path(tmp) / "out.json"
        rows_file.write_bytes(pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL))
        args = {
            "first": [str(src_dir)],
            "then": site_packages(),
            "model_file": str(model_file),
            "rows": str(rows_file),
            "out": str(out_file),
            "classification": task.is_classification,
        }
        try:
            result = subprocess.run(
                [python, "-I", "-S", "-c", _PROBE, json.dumps(args)],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=TIMEOUT_SECONDS,
            )
        except subprocess.TimeoutExpired as exc:
            raise PackagingError(
                f"parity check: the bento's model did not answer within {TIMEOUT_SECONDS} s"
            ) from exc
        if not out_file.is_file():
            raise PackagingError(
                f"parity check: the fresh process failed (exit {result.returncode}):\n"
                f"{result.stderr[-4000:]}"
            )
        out: dict[str, Any] = json.loads(out_file.read_text())
    if "error" in out:
        raise PackagingError(
            "parity check: the bento's model does not load or predict with only what the bento"
            " ships (is a module of the project missing from it?):\n" + out["error"]
        )
    return out


def differences(expected: dict[str, Any], got: dict[str, Any], task: Task) -> list[dict[str, Any]]:
    """The rows whose answers differ: {row, expected, got}."""
    rows: list[dict[str, Any]] = []
    if task.is_classification:
        if expected["classes"] != got["classes"]:
            return [{"row": "classes", "expected": expected["classes"], "got": got["classes"]}]
        exp_p, got_p = np.asarray(expected["probabilities"]), np.asarray(got["probabilities"])
        if exp_p.shape != got_p.shape:
            return [{"row": "shape", "expected": exp_p.shape, "got": got_p.shape}]
        for i, (a, b) in enumerate(zip(expected["labels"], got["labels"], strict=True)):
            gap = float(np.max(np.abs(exp_p[i] - got_p[i]))) if exp_p.size else 0.0
            if a != b or not gap <= PROBABILITY_TOLERANCE:
                rows.append(
                    {
                        "row": i,
                        "expected": {"label": a, "probabilities": exp_p[i].round(6).tolist()},
                        "got": {"label": b, "probabilities": got_p[i].round(6).tolist()},
                    }
                )
        return rows
    exp, out = np.asarray(expected["predictions"]), np.asarray(got["predictions"])
    if exp.shape != out.shape:
        return [{"row": "shape", "expected": exp.shape, "got": out.shape}]
    close = np.isclose(out, exp, rtol=RELATIVE_TOLERANCE, atol=ABSOLUTE_TOLERANCE, equal_nan=True)
    return [
        {"row": i, "expected": float(exp[i]), "got": float(out[i])} for i in np.flatnonzero(~close)
    ]


def check_parity(
    *,
    model: Any,
    rows: Any,
    task: Task,
    src_dir: str | Path,
    model_file: str | Path,
    python: str = sys.executable,
) -> dict[str, Any]:
    """Loads `model_file` in a fresh process whose imports are `src_dir` and site-packages
    only, predicts `rows` (the golden feature columns) and compares with `model` here;
    PackagingError with the differing rows (or the import error) otherwise. Returns
    {rows, passed, ...} for the build's summary."""
    expected = expected_outputs(model, rows, task)
    got = _run(Path(src_dir), Path(model_file), rows, task, python)
    differing = differences(expected, got, task)
    if differing:
        shown = "\n".join(
            f"- row {d['row']}: expected {d['expected']}, got {d['got']}"
            for d in differing[:SHOWN_ROWS]
        )
        more = (
            f"\n... and {len(differing) - SHOWN_ROWS} more" if len(differing) > SHOWN_ROWS else ""
        )
        raise PackagingError(
            f"parity check: the bento's model answers {len(differing)} of {len(rows)} golden"
            f" row(s) differently from the fitted model:\n{shown}{more}"
        )
    return {"passed": True, "rows": len(rows), "task": task.kind}


def check_bento_parity(
    *, model: Any, rows: Any, task: Task, bento_tag: str, model_tag: str, columns: Sequence[str]
) -> dict[str, Any]:
    """`check_parity` on a built bento of the local BentoML store."""
    src_dir, model_file = bento_model_file(bento_tag, model_tag)
    return check_parity(
        model=model, rows=rows[list(columns)], task=task, src_dir=src_dir, model_file=model_file
    )
