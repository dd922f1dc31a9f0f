"""This project's own tests: its settings, its data against its contract, and the model
the last `nbship build` chose. Run them with `pytest` from the project folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from nbship.pipeline import data
from nbship.pipeline.contract import validate_frame
from nbship.project import Project

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(monkeypatch: pytest.MonkeyPatch) -> Project:
    monkeypatch.chdir(PROJECT)  # env.yaml's paths are relative to the project
    return Project.load(PROJECT)


def test_settings_are_valid(project: Project) -> None:
    assert project.config.target not in project.config.features.columns


def test_data_meets_the_contract(project: Project) -> None:
    settings = project.config.data
    raw = data.load_source(settings.source, drop=settings.drop)
    project.config.check_columns(raw.columns)
    assert validate_frame(raw, project.config.suite).success


def test_chosen_model_beats_the_baseline(project: Project) -> None:
    """The winner of the last build predicts the test split better than a constant."""
    if not os.path.exists(project.product("choose", "winner")):
        pytest.skip("no build yet: run `nbship build`")
    from sklearn.dummy import DummyClassifier, DummyRegressor

    from nbship import tasks
    from nbship.common.artifacts import read_model

    winner = json.loads(project.product("choose", "winner").read_text())["winner"]
    split = json.loads(project.product("split", "summary").read_text())
    task = tasks.get(split["task"])
    train = pd.read_parquet(project.product("split", "train"))
    test = pd.read_parquet(project.product("split", "test"))
    columns, target = project.config.features.columns, project.config.target
    # the winner's train products (a grid's products carry an index: candidates/<name>-0.*)
    (summary,) = [
        p for p in (project.root / "candidates").glob("*.json")
        if json.loads(p.read_text())["candidate"] == winner
    ]  # fmt: skip
    model = read_model(summary.with_suffix(".joblib"))
    baseline = DummyClassifier() if task.kind == "classification" else DummyRegressor()
    baseline.fit(train[columns], train[target])
    metric = task.default_metric
    ours = task.score(model, test[columns], test[target])[metric]
    floor = task.score(baseline, test[columns], test[target])[metric]
    assert ours > floor if task.higher_is_better(metric) else ours < floor
