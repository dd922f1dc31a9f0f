"""package_winner without a bento build (BentoML's build and the bento's export are faked,
the rest is real: model store, shared store, registry, gates, published link): what it
writes per task, and that a failure at any checking step changes nothing."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import pytest
import yaml
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from nbship import tasks
from nbship.packaging import bento as package
from nbship.packaging import parity, release
from nbship.packaging.bento import PackagingError
from nbship.registry import promotion
from nbship.registry.versions import Registry
from tests.support import PROJECT
from tests.unit.test_packaging_dependencies import frame

pytestmark = pytest.mark.unit

FEATURES = {"numeric": ["x1", "x2"], "categorical": ["c"]}
X = ["x1", "x2", "c"]
# the request contract the bento's service is built from
SUITE = {
    "name": "s",
    "expectations": [
        *(
            {"type": "expect_column_values_to_be_of_type",
             "kwargs": {"column": c, "type_": "float"}}
            for c in ("x1", "x2")
        ),
        {"type": "expect_column_values_to_be_in_set",
         "kwargs": {"column": "c", "value_set": ["a", "b", "c"]}},
    ],
}  # fmt: skip


@dataclass
class Run:
    """A project folder and the inputs package_winner takes from its upstream tasks."""

    root: Path
    task: tasks.Task

    @property
    def link(self) -> Path:
        return self.root / "bentos" / "model"

    @property
    def registry(self) -> Registry:
        return Registry(f"sqlite:///{self.root / 'registry.db'}")

    def state(self) -> dict[str, Any]:
        """What a failed run must leave as it was."""
        with self.registry as registry:
            return {
                "versions": [v.tag for v in registry.list()],
                "aliases": registry.aliases("model"),
                "history": [(e.alias, e.tag) for e in registry.history("model")],
                "link": self.link.resolve() if self.link.is_symlink() else None,
                "store": sorted(p.name for p in (self.root / "model-store").rglob("*.bentomodel")),
                "published": sorted(p.name for p in self.link.parent.glob("*")),
            }

    def package(self, **overrides: Any) -> dict[str, Any]:
        model = joblib.load(self.root / "model.joblib")
        test = pd.read_parquet(self.root / "test.parquet")
        metric = "f1_macro" if self.task.is_classification else "auto"
        kwargs: dict[str, Any] = {
            "model_path": self.root / "model.joblib",
            "candidate": {"candidate": "own", "params": {"C": 1.0}, "train_seconds": 0.1,
                          "train_metrics": {}},
            "evaluation": {"test": self.task.score(model, test[X], test["y"]),
                           "predict_ms": {"p50": 1.0}},
            "choice": {"metric": metric, "value": 0.5},
            "split_summary": {"fingerprints": {"train": "t", "test": "u", "golden": "g"}},
            "suite_path": self.root / "suite.json",
            "features": FEATURES,
            "target": "y",
            "bento_name": "model",
            "max_batch": 10,
            "project_dir": self.root,
            "reports_dir": self.root / "reports",
            "publish_to": self.link,
            "registry_url": "sqlite:///registry.db",
            "model_store": "model-store",
            "golden_path": self.root / "golden.parquet",
            "train_path": self.root / "train.parquet",
            "test_path": self.root / "test.parquet",
        }  # fmt: skip
        return package.package_winner(**{**kwargs, **overrides})

    def copy_to(self, dest: Path) -> Run:
        shutil.copytree(self.root, dest, symlinks=True)
        return Run(dest, self.task)


def make_run(root: Path, task: tasks.Task, model: Any = None) -> Run:
    """A project folder with its splits and a fitted model (`model`, an unfitted pipeline
    taking x1, x2 and c, or a scaler and a linear model of the task)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", "uv.lock"):  # what the bento's pins are exported from
        shutil.copy2(PROJECT / name, root / name)
    (root / "suite.json").write_text(json.dumps(SUITE))
    data = frame(150)
    if task.is_classification:
        estimator: Any = LogisticRegression()
    else:
        data["y"] = data["x1"] * 3.0 - data["x2"] + (data["c"] == "a") * 2.0
        estimator = LinearRegression()
    columns = ColumnTransformer(
        [("num", StandardScaler(), ["x1", "x2"]), ("cat", OneHotEncoder(), ["c"])]
    )
    train, test, golden = data.iloc[:100], data.iloc[100:140], data.iloc[140:]
    model = model if model is not None else Pipeline([("columns", columns), ("model", estimator)])
    model.fit(train[X], train["y"])
    joblib.dump(model, root / "model.joblib")
    for name, part in (("train", train), ("test", test), ("golden", golden)):
        part.to_parquet(root / f"{name}.parquet")
    return Run(root, task)


@pytest.fixture
def fake_bento(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """`bentoml build` and the export replaced: the build records the staged context and
    returns a new tag; the export writes a folder beside the link as the real one does."""
    seen: dict[str, Any] = {"builds": 0}

    def build(staging: Path) -> str:
        seen["builds"] += 1
        seen["serving"] = json.loads((staging / "serving.json").read_text())
        seen["bentofile"] = yaml.safe_load((staging / "bentofile.yaml").read_text())
        return f"model:bento{seen['builds']}{id(seen) % 10_000}"

    def export(bento_tag: str, link: str | Path) -> Path:
        folder = Path(link).absolute().parent / bento_tag.replace(":", "-")
        folder.mkdir(parents=True)
        (folder / "bento.yaml").write_text(f"tag: {bento_tag}\n")
        return folder

    def bento_parity(*, model: Any, rows: Any, task: tasks.Task, **_: Any) -> dict[str, Any]:
        return {"passed": True, "rows": len(rows), "task": task.kind}

    monkeypatch.setattr(package, "build_bento", build)
    monkeypatch.setattr(package, "export_bento", export)
    monkeypatch.setattr(parity, "check_bento_parity", bento_parity)
    return seen


@pytest.fixture
def champion_run(
    tmp_path_factory: pytest.TempPathFactory, fake_bento: dict[str, Any]
) -> tuple[Run, dict[str, Any]]:
    run = make_run(tmp_path_factory.mktemp("winner") / "project", tasks.CLASSIFICATION)
    return run, run.package()


def test_a_first_classifier_is_registered_champion_and_published(
    champion_run: tuple[Run, dict[str, Any]], fake_bento: dict[str, Any]
):
    import bentoml

    run, summary = champion_run
    assert summary["promoted"] and summary["task"] == "classification"
    assert summary["parity"]["passed"]
    state = run.state()
    assert state["versions"] == [summary["model_tag"]]
    assert state["aliases"] == {
        "champion": summary["model_tag"],
        "challenger": summary["model_tag"],
    }
    assert state["link"] == run.link.parent / summary["bento_tag"].replace(":", "-")
    assert state["store"] == [f"{summary['model_tag'].split(':')[1]}.bentomodel"]
    serving = fake_bento["serving"]
    assert serving["task"] == "classification" and serving["metadata"]["task"] == "classification"
    assert serving["metadata"]["classes"] == ["No", "Yes"]
    assert "target_range" not in serving["metadata"]
    with run.registry as registry:
        version = registry.get(summary["model_tag"])
    assert version.extra["task"] == "classification" and version.extra["artifact"]["sha256"]
    assert version.extra["artifact"]["files"] == serving["model_files"]
    assert [g["gate"] for g in version.gates] == list(summary["gates"])
    signatures = bentoml.models.get(summary["model_tag"]).info.signatures
    assert set(signatures) == {"predict", "predict_proba"}


def test_a_regressor_records_its_task_target_range_and_only_predict(
    tmp_path: Path, fake_bento: dict[str, Any]
):
    import bentoml

    run = make_run(tmp_path / "project", tasks.REGRESSION)
    summary = run.package()
    assert summary["task"] == "regression" and summary["promoted"]
    serving = fake_bento["serving"]
    meta = serving["metadata"]
    assert serving["task"] == meta["task"] == "regression"
    assert "classes" not in meta
    train = pd.read_parquet(run.root / "train.parquet")
    assert meta["target_range"] == [train["y"].min(), train["y"].max()]
    assert meta["selection"]["metric"] == "rmse"  # "auto": the task's default
    assert "predictions" in serving["drift_profile"]
    assert set(bentoml.models.get(summary["model_tag"]).info.signatures) == {"predict"}
    with run.registry as registry:
        version = registry.get(summary["model_tag"])
    assert version.extra["target_range"] == meta["target_range"]
    assert release.gate_metric("auto", version) == "rmse"
    assert release.gate_metric("mae", version) == "mae"


def _card_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def render(*_: Any, **__: Any) -> Path:
        raise ValueError("None is not a valid value for align")

    monkeypatch.setattr(promotion, "render_version_card", render)


def _parity_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def check(**_: Any) -> dict[str, Any]:
        raise PackagingError("parity check: the bento's model answers 3 of 10 rows differently")

    monkeypatch.setattr(parity, "check_bento_parity", check)


def _export_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def export(bento_tag: str, link: str | Path) -> Path:
        raise PackagingError(f"exporting {bento_tag} produced no bento.yaml")

    monkeypatch.setattr(package, "export_bento", export)


def _push_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    from nbship.registry import model_store

    def push(tag: str, store: str) -> dict[str, Any]:
        raise OSError("shared store unreachable")

    monkeypatch.setattr(model_store, "push", push)


@pytest.mark.parametrize(
    "fail",
    [_card_fails, _parity_fails, _export_fails, _push_fails],
    ids=["card", "parity", "export", "shared-store"],
)
def test_a_failed_run_changes_neither_the_registry_nor_the_published_bento(
    champion_run: tuple[Run, dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fail: Callable[[pytest.MonkeyPatch], None],
):
    first, champion = champion_run
    run = first.copy_to(tmp_path / "again")
    before = run.state()
    assert before["aliases"]["champion"] == champion["model_tag"]
    fail(monkeypatch)
    with pytest.raises((PackagingError, ValueError, OSError)):
        run.package(cards_dir=run.root / "cards")
    assert run.state() == before
    assert not (run.root / "cards").exists() or not list((run.root / "cards").iterdir())


def test_the_card_is_written_before_the_version_is_registered_and_recorded(
    champion_run: tuple[Run, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    first, champion = champion_run
    run = first.copy_to(tmp_path / "again")
    seen: dict[str, Any] = {}

    def render(registry: Registry, version: Any, **kwargs: Any) -> Path:
        seen["registered"] = [v.tag for v in registry.list()]
        seen["version"], seen["aliases"] = version, kwargs["aliases"]
        path = Path(kwargs["cards_dir"]) / "card.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("<html></html>")
        return path

    monkeypatch.setattr(promotion, "render_version_card", render)
    summary = run.package(cards_dir=run.root / "cards")
    tag = summary["model_tag"]
    assert seen["registered"] == [champion["model_tag"]]  # not registered while rendering
    assert seen["version"].tag == tag and seen["version"].gates  # with its verdicts
    assert seen["aliases"]["challenger"] == tag
    assert seen["aliases"]["champion"] == (tag if summary["promoted"] else champion["model_tag"])
    with run.registry as registry:
        assert registry.get(tag).extra["card"] == summary["card"]
    assert summary["previous_champion"] == champion["model_tag"]
