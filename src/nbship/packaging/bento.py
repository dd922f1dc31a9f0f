"""From a chosen model to a published bento.

1. the model goes into the BentoML model store with its metadata;
2. a build folder is staged with only what serving needs (the serving modules, the
   expectations suite, `serving.json`, exact pins of what serving and the model import,
   from the project's uv.lock or its environment: `packaging.requirements`);
3. `bentoml build` runs in a subprocess from that folder, so the staged serving code
   is what gets imported and packaged, not this installed package;
4. the bento is exported as a folder and published under `bentos/` by swapping a
   symlink, so a failure at any step leaves the previous bento serving.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from nbship.common.artifacts import read_model
from nbship.config import (
    ENV_FILE,
    BatchSettings,
    BentoSettings,
    ConfigError,
    PredictionLogSettings,
    ReleaseSettings,
    read_raw,
    validate_section,
)
from nbship.packaging.dependencies import PackagingError, find_dependencies, stage_project_code
from nbship.packaging.requirements import (
    BATCH_DISTRIBUTIONS,
    DASK_DISTRIBUTIONS,
    ServingRequirements,
    serving_requirements,
)
from nbship.pipeline.training import Features
from nbship.project import log_settings, model_store_url
from nbship.project import registry_url as project_registry_url

__all__ = [
    "PackagingError",
    "ServingRequirements",
    "package_winner",
    "publish",
    "serving_requirements",
]

# What of this package a bento ships: its top-level (core) modules and these stages,
# each whole; a test imports the service from a staged folder to show nothing is missing.
SERVED_SUBPACKAGES = ("common", "compat", "pipeline", "registry", "prediction_log", "serving")
# shipped too when env.yaml schedules batch scoring (`batch.schedule`): the CronJob runs
# `python -m nbship.batch` from the server's own image
BATCH_SUBPACKAGE = "batch"
# Distributions whose exact versions are recorded with every model.
RECORDED_VERSIONS = ("scikit-learn", "pandas", "numpy", "scipy", "bentoml", "pydantic", "nbship")
# Files whose content defines a run: hashed into the model's metadata.
DEFINITION_FILES = ("pipeline.yaml", "env.yaml", "uv.lock", "notebooks/*.py", "expectations/*.json")
KEEP_PUBLISHED = 3
# Env vars baked into the bento so the container and any `bentoml serve` stay offline.
BENTO_ENVS = {
    "BENTOML_DO_NOT_TRACK": "true",
    "PLOOMBER_STATS_ENABLED": "false",
    "PLOOMBER_VERSION_CHECK_DISABLED": "1",
}


def library_versions(names: Sequence[str] = RECORDED_VERSIONS) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def definition_hash(project_dir: str | Path, patterns: Sequence[str] = DEFINITION_FILES) -> str:
    """sha256 over the pipeline definition, config, lock, notebooks and suites."""
    root = Path(project_dir)
    digest = hashlib.sha256()
    for pattern in patterns:
        for path in sorted(root.glob(pattern)):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return f"sha256:{digest.hexdigest()}"


def git_commit(project_dir: str | Path) -> str | None:
    """HEAD's commit (with `-dirty` when the tree has changes), or None outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=project_dir,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"],
            cwd=project_dir,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head}-dirty" if dirty else head


def model_signatures(classification: bool) -> dict[str, dict[str, bool]]:
    """What the saved model answers: predict, and predict_proba for a classifier."""
    methods = ("predict", "predict_proba") if classification else ("predict",)
    return {method: {"batchable": False} for method in methods}


def save_model(
    model: Any,
    name: str,
    metadata: Mapping[str, Any],
    labels: Mapping[str, str],
    *,
    classification: bool = True,
) -> str:
    """Saves to the BentoML model store; returns the explicit `name:version` tag."""
    import bentoml

    ref = bentoml.sklearn.save_model(
        name,
        model,
        metadata=dict(metadata),
        labels=dict(labels),
        signatures=model_signatures(classification),
    )
    return str(ref.tag)


def served_modules(batch: bool = False) -> list[Path]:
    """The files of this package a bento ships, relative to the package folder; `batch`:
    a bento that also scores batches."""
    package_dir = Path(__file__).resolve().parents[1]
    files = sorted(package_dir.glob("*.py"))
    for name in (*SERVED_SUBPACKAGES, *((BATCH_SUBPACKAGE,) if batch else ())):
        files += sorted((package_dir / name).rglob("*.py"))
    return [path.relative_to(package_dir) for path in files]


def served_module_names(batch: bool = False) -> list[str]:
    """The dotted names of the nbship modules a bento ships."""
    names = []
    for module in served_modules(batch):
        parts = module.with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        names.append(".".join(("nbship", *parts)))
    return names


def copy_served_package(dest: Path, batch: bool = False) -> None:
    package_dir = Path(__file__).resolve().parents[1]
    for module in served_modules(batch):
        (dest / module).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(package_dir / module, dest / module)


def stage_build_context(
    staging: Path,
    *,
    suite_path: Path,
    config: Mapping[str, Any],
    requirements: str,
    model_tag: str,
    labels: Mapping[str, str],
    project_files: Mapping[str, Path] | None = None,
    batch: bool = False,
) -> None:
    """Writes the bento's source folder and its bentofile.yaml; `project_files` (path in
    the bento -> source) is the project's own code the model needs; `batch`: the bento
    also scores batches (nbship.batch ships)."""
    copy_served_package(staging / "nbship", batch)
    shipped = stage_project_code(project_files or {}, staging)
    (staging / "expectations").mkdir()
    shutil.copy2(suite_path, staging / "expectations" / suite_path.name)
    (staging / "serving.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    (staging / "requirements.txt").write_text(requirements)
    bentofile = {
        "service": "nbship.serving.bento_service:ModelService",
        "name": config["bento_name"],
        "labels": dict(labels),
        "include": ["nbship/**/*.py", "expectations/*.json", "serving.json", *shipped],
        "python": {"requirements_txt": "requirements.txt", "lock_packages": False},
        "models": [model_tag],
        "envs": [{"name": k, "value": v} for k, v in BENTO_ENVS.items()],
    }
    (staging / "bentofile.yaml").write_text(yaml.safe_dump(bentofile, sort_keys=False))


def build_bento(staging: Path) -> str:
    """`bentoml build` in a subprocess; returns the bento tag."""
    result = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", str(staging), "--output", "tag"],
        cwd=staging,
        capture_output=True,
        text=True,
        env={**os.environ, **BENTO_ENVS},
    )
    if result.returncode != 0:
        raise PackagingError(f"bentoml build failed:\n{result.stdout}\n{result.stderr}")
    # --output tag prints `__tag__:name:version` as its last line
    tag = result.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    return tag


def export_bento(bento_tag: str, link: str | Path) -> Path:
    """Exports the bento as a folder beside `link` (which it does not touch): the step of
    publishing that can fail, done before anything changes. Returns the folder."""
    import bentoml

    link = Path(link).absolute()  # BentoML's export reads a relative path as from "/"
    link.parent.mkdir(parents=True, exist_ok=True)
    version_dir = link.parent / bento_tag.replace(":", "-")
    staging = Path(tempfile.mkdtemp(prefix=f".{version_dir.name}.", dir=link.parent))
    try:
        # fsspec copies *into* an existing folder, so export to one that does not exist yet
        exported = staging / "bento"
        bentoml.bentos.get(bento_tag).export(f"{exported}/", output_format="folder")
        if not (exported / "bento.yaml").is_file():
            raise PackagingError(f"exporting {bento_tag} produced no bento.yaml")
        if version_dir.exists():
            shutil.rmtree(version_dir)
        exported.rename(version_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return version_dir


def point_link(link: str | Path, version_dir: Path) -> Path:
    """Points `link` at an exported bento folder beside it, atomically; prunes old ones."""
    link = Path(link).absolute()
    if link.exists() and not link.is_symlink():
        shutil.rmtree(link)  # an older layout kept a plain folder here
    tmp_link = link.parent / f".{link.name}.link"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(version_dir.name)
    os.replace(tmp_link, link)
    _prune(link, keep=KEEP_PUBLISHED)
    return version_dir


def publish(bento_tag: str, link: str | Path) -> Path:
    """Exports the bento as a folder beside `link` and points `link` at it atomically."""
    return point_link(link, export_bento(bento_tag, link))


def discard_export(link: str | Path, version_dir: Path) -> None:
    """Removes an exported folder that was not published (`link` does not point at it)."""
    link = Path(link).absolute()
    if not (link.is_symlink() and link.resolve() == version_dir.resolve()):
        shutil.rmtree(version_dir, ignore_errors=True)


def _prune(link: Path, keep: int) -> None:
    current = link.resolve()
    published = sorted(
        (p for p in link.parent.glob(f"{link.name}-*") if p.is_dir() and p != current),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in published[keep - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def load_model(path: str | Path) -> Any:
    """The fitted model of a train task; a model that refers to notebook code (or to a
    module not importable here) is a PackagingError that says what to move where."""
    from nbship.packaging.dependencies import explain_load_error

    try:
        return read_model(path)
    except (AttributeError, ImportError) as exc:
        explained = explain_load_error(exc, path)
        if explained is None:
            raise
        raise explained from exc


def max_request_bytes(project: Path) -> int:
    """env.yaml's `bento.max_request_mb` in bytes, what the server reads of a request at
    most (the setting's default for a folder without an env.yaml)."""
    from nbship.serving.request_limits import DEFAULT_MAX_REQUEST_MB, mb_to_bytes

    if not (project / ENV_FILE).is_file():
        return mb_to_bytes(DEFAULT_MAX_REQUEST_MB)
    bento = validate_section(BentoSettings, read_raw(project).get("bento"), "bento")
    return mb_to_bytes(bento.max_request_mb)


def _written_config(project: Path) -> dict[str, Any]:
    """env.yaml as written; nothing for a folder without one (every section's defaults)."""
    return read_raw(project) if (project / ENV_FILE).is_file() else {}


def release_settings(project: Path, columns: list[str]) -> dict[str, Any]:
    """env.yaml's `release:` for the server, with the webhooks of `monitoring.sinks` its
    guard rails alert (the section's defaults for a folder without an env.yaml)."""
    raw = _written_config(project)
    settings = validate_section(ReleaseSettings, raw.get("release") or {}, "release")
    if settings.key_field is not None and settings.key_field not in columns:
        raise ConfigError(
            f"release.key_field: {settings.key_field!r} is not a request field"
            f" (one of {', '.join(columns)})"
        )
    sinks = (raw.get("monitoring") or {}).get("sinks") or []
    webhooks = [dict(s) for s in sinks if isinstance(s, dict) and s.get("type") == "webhook"]
    return {**settings.model_dump(mode="json"), "webhooks": webhooks}


def batch_settings(project: Path, section: Mapping[str, Any] | None = None) -> BatchSettings:
    """`section` (pipeline.yaml passes env.yaml's `batch:`, so a new schedule re-runs the
    package task), else env.yaml's, else the defaults."""
    if section is None:
        section = _written_config(project).get("batch") or {}
    return validate_section(BatchSettings, section, "batch")


def batch_distributions(batch: BatchSettings) -> tuple[str, ...]:
    """What a bento scoring batches installs beyond serving: none unless scheduled."""
    if not batch.scheduled:
        return ()
    return (*BATCH_DISTRIBUTIONS, *(DASK_DISTRIBUTIONS if batch.dask else ()))


def package_winner(
    *,
    model_path: str | Path,
    candidate: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    choice: Mapping[str, Any],
    split_summary: Mapping[str, Any],
    suite_path: str | Path,
    features: Mapping[str, Sequence[str]],
    target: str,
    bento_name: str,
    max_batch: int,
    project_dir: str | Path,
    reports_dir: str | Path,
    publish_to: str | Path,
    registry_url: str,
    golden_path: str | Path,
    gates: Mapping[str, Any] | None = None,
    model_store: str | None = None,
    train_path: str | Path | None = None,
    test_path: str | Path | None = None,
    cards_dir: str | Path | None = None,
    prediction_log: Mapping[str, Any] | None = None,
    task: str | None = None,
    batch: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Store and build the chosen model, check it, gate it against the champion, then
    register it and publish its bento only when it becomes champion; returns what was
    done.

    Everything that can fail runs before anything changes: the model's code (what it
    imports must ship or be pinned), the bento build, the parity check of the built bento
    in a fresh process, the gates, the model card and the bento's export. Only then is
    the version registered (challenger, champion when its gates passed) and the published
    link moved, so a failed run leaves the registry, its aliases and the published bento
    as they were (BentoML's local store may keep the unused model and bento).

    `task` ("classification" / "regression") is what the model does; None reads it from
    the fitted model (`nbship.tasks.of_model`)."""
    import bentoml
    import pandas as pd

    from nbship import tasks
    from nbship.drift import reference_profile
    from nbship.packaging.parity import check_bento_parity
    from nbship.registry import model_store as store
    from nbship.registry.promotion import commit_version, gate_new_version, render_version_card
    from nbship.registry.versions import Registry
    from nbship.serving.compiled import compile_and_verify

    project = Path(project_dir).resolve()
    url = project_registry_url(project, registry_url)
    store_url = model_store_url(project, model_store)

    model = load_model(model_path)
    kind = tasks.get(task) if task not in (None, "", "auto") else tasks.of_model(model)
    feature_set = Features.from_params(features)
    columns = feature_set.columns
    batch_section = batch_settings(project, batch)
    code = find_dependencies(
        model, project_dir=project, nbship_modules=served_module_names(batch_section.scheduled)
    )
    print(code.summary())
    pins = serving_requirements(project, code.distributions, batch_distributions(batch_section))
    print(pins.describe())
    # the compiled plan ships only when it matches scikit-learn on the held-out rows
    golden = pd.read_parquet(golden_path)
    test = pd.read_parquet(test_path) if test_path else None
    _, compiled = compile_and_verify(model, columns, [f for f in (test, golden) if f is not None])
    print(f"inference path: {compiled['message']}")
    train = pd.read_parquet(train_path) if train_path else None
    # the training reference that live traffic is compared with (drift, prediction mix)
    profile = None
    target_range = None
    if train is not None:
        numeric, categorical = feature_set.numeric, feature_set.categorical
        if kind.is_classification:
            profile = reference_profile(train, numeric, categorical, target=target)
        else:
            target_range = [float(train[target].min()), float(train[target].max())]
            predictions = kind.predict(model, train[columns])
            profile = reference_profile(
                train, numeric, categorical, target=target, predictions=predictions, task=kind.kind
            )
    selection_metric = kind.check_metric(choice["metric"])
    metadata: dict[str, Any] = {
        "candidate": candidate["candidate"],
        "params": candidate["params"],
        "metrics": {"test": evaluation["test"], "train": candidate["train_metrics"]},
        "selection": {"metric": selection_metric, "value": choice["value"]},
        "predict_ms": evaluation["predict_ms"],
        "data_fingerprint": split_summary["fingerprints"]["train"],
        "data_fingerprints": split_summary["fingerprints"],
        # the labelled feedback this version learnt from (BentoML metadata holds no None)
        "feedback": {
            k: v for k, v in (split_summary.get("feedback") or {}).items() if v is not None
        },
        "definition_hash": definition_hash(project_dir),
        "versions": library_versions(),
        "reports": str(Path(reports_dir).resolve()),
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "features": columns,
        "target": target,
        "task": kind.kind,
    }
    if candidate.get("train_seconds") is not None:  # unknown for a model fitted by hand
        metadata["train_seconds"] = candidate["train_seconds"]
    if kind.is_classification:
        metadata["classes"] = [str(c) for c in model.classes_]
    elif target_range is not None:
        metadata["target_range"] = target_range
    if code.project_files:
        metadata["project_code"] = sorted(code.project_files)
    if commit := git_commit(project_dir):  # BentoML metadata cannot hold None
        metadata["git_commit"] = commit
    labels = {"candidate": candidate["candidate"], "target": target}
    model_tag = save_model(
        model, bento_name, metadata, labels, classification=kind.is_classification
    )
    # what the server checks its model against; the shared store gets the model later,
    # once every check passed
    files = store.file_digests(Path(bentoml.models.get(model_tag).path))
    suite_path = Path(suite_path)
    config = {
        "bento_name": bento_name,
        "model_tag": model_tag,
        "task": kind.kind,
        "columns": columns,
        "target": target,
        "suite": f"expectations/{suite_path.name}",
        "max_batch": int(max_batch),
        "max_request_bytes": max_request_bytes(project),
        "release": release_settings(project, columns),
        "batch": batch_section.scheduled,  # ships `python -m nbship.batch` (a CronJob runs it)
        "metadata": metadata,
        # the server checks its own model against these before unpickling it, and asks
        # the registry for the champion at start (NBSHIP_REGISTRY_URL overrides)
        "model_files": files,
        "compiled": compiled,
        "drift_profile": profile,
        "prediction_log": log_settings(
            project, validate_section(PredictionLogSettings, prediction_log or {}, "prediction_log")
        ),
        "registry_url": url,
        "model_store": store_url,
    }
    with tempfile.TemporaryDirectory(prefix="nbship-bento-") as tmp:
        staging = Path(tmp) / "ctx"
        stage_build_context(
            staging,
            suite_path=suite_path,
            config=config,
            requirements=pins.text,
            model_tag=model_tag,
            labels={**labels, "model_tag": model_tag.replace(":", "-"), "pins": pins.route},
            project_files=code.project_files,
            batch=batch_section.scheduled,
        )
        bento_tag = build_bento(staging)
    parity = check_bento_parity(
        model=model, rows=golden, task=kind, bento_tag=bento_tag, model_tag=model_tag,
        columns=columns,
    )  # fmt: skip
    print(f"parity: the bento's model answers the {parity['rows']} golden rows as the fitted one")
    registered = {
        **metadata,
        "artifact": {"uri": store.archive_uri(store_url, model_tag), "files": files},
        "compiled": compiled,
        "drift_profile": profile,
        "parity": parity,
    }
    exported: Path | None = None
    with Registry(url) as registry:
        pending = gate_new_version(
            registry=registry, tag=model_tag, bento_tag=bento_tag, metadata=registered,
            model=model, golden=golden, columns=columns,
            gate_config={**(gates or {}), "metric": selection_metric}, test=test, target=target,
        )  # fmt: skip
        card = None
        if cards_dir and train is not None and test is not None:
            card = render_version_card(
                registry, pending.version, model=model, target=target, cards_dir=cards_dir,
                train=train, test=test, compare_with=pending.previous_champion,
                aliases=pending.aliases_after(registry),
            )  # fmt: skip
        try:
            if pending.promoted:
                exported = export_bento(bento_tag, publish_to)
            # the first change: the model in the shared store (unused until registered)
            artifact = store.push(model_tag, store_url)
        except BaseException:  # nothing of this run stays: its export, its card
            if exported is not None:
                discard_export(publish_to, exported)
            if card is not None:
                card.unlink(missing_ok=True)
            raise
        try:
            extra = {"card": str(card)} if card else {}
            verdict = commit_version(registry, pending, artifact=artifact, **extra)
        except BaseException:  # the version may be registered (with its card): not published
            if exported is not None:
                discard_export(publish_to, exported)
            raise
    if exported is not None:
        point_link(publish_to, exported)
    return {
        "model_tag": model_tag,
        "bento_tag": bento_tag,
        "task": kind.kind,
        "card": str(card) if card else None,
        "compiled": compiled["compiled"],
        "parity": parity,
        "project_code": sorted(code.project_files),
        # where the bento's pins came from: serve-group | lock | environment
        "requirements": pins.route,
        "promoted": verdict.promoted,
        "previous_champion": verdict.previous_champion,
        "gates": {g["gate"]: g["passed"] for g in verdict.gates},
        # what `bentoml serve bentos/<name>` serves now: this bento only if promoted
        "published_bento_dir": str(Path(publish_to).resolve()),
    }
