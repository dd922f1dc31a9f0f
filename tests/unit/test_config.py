"""env.yaml's one schema: every wrong key named with its path, defaults defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from nbship import config
from nbship.config import ConfigError, ProjectConfig, RetrainSettings
from nbship.registry.gates import GateConfig
from tests.support import PROJECT

pytestmark = pytest.mark.unit

EXAMPLE = yaml.safe_load((PROJECT / "env.yaml").read_text())


def _with(change: dict[str, Any]) -> dict[str, Any]:
    raw = yaml.safe_load((PROJECT / "env.yaml").read_text())
    for dotted, value in change.items():
        *parents, key = dotted.split(".")
        section = raw
        for part in parents:
            section = section.setdefault(part, {})
        if value is None:
            del section[key]
        else:
            section[key] = value
    return raw


def test_the_worked_example_is_valid_and_keeps_its_values():
    loaded = config.load(PROJECT)
    assert loaded.target == "species" and loaded.bento.name == "penguins_classifier"
    assert loaded.features.columns == [*EXAMPLE["features"]["numeric"],
                                       *EXAMPLE["features"]["categorical"]]  # fmt: skip
    assert loaded.gates.max_latency_factor == EXAMPLE["gates"]["max_latency_factor"]
    assert loaded.gates.invariance[0].column == "sex"
    assert loaded.retrain.every_labels == EXAMPLE["retrain"]["every_labels"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"candidate": ["knn"]}, r"candidate: unknown setting \(allowed: root, bentos, data"),
        ({"gates.max_latency": 2}, r"gates\.max_latency: unknown setting \(allowed: "),
        ({"gates.max_latency_factor": -1}, r"gates\.max_latency_factor: .*greater than 0, got -1"),
        ({"split.test_size": "a"}, r"split\.test_size: .*valid number.*got 'a'"),
        ({"split.test_size": 1.5}, r"split\.test_size: .*less than 1"),
        ({"target": None}, r"target: missing \(required\)"),
        ({"bento.name": None}, r"bento\.name: missing \(required\)"),
        ({"candidates": []}, r"candidates: .*at least 1 item"),
        ({"features": {"numeric": [], "categorical": []}}, r"features: name at least one"),
        ({"features.categorical": ["island", "bill_length_mm"]},
         r"features: columns listed as numeric and categorical: \['bill_length_mm'\]"),
        ({"gates.invariance": [{"column": "sex", "values": ["male"]}]},
         r"gates\.invariance\[0\]\.max_changed_share: missing \(required\)"),
        ({"retrain.every_hours": -1}, r"retrain\.every_hours: .*greater than 0"),
        ({"retrain.every_label": 5}, r"retrain\.every_label: unknown setting"),
        ({"container.extra_ca_certs": "hots"},
         r"container\.extra_ca_certs: Input should be 'host'"),
        ({"kubernetes.replica": 3}, r"kubernetes\.replica: unknown setting"),
        ({"prediction_log.retention_days": 0}, r"prediction_log\.retention_days: .*greater than 0"),
    ],
)  # fmt: skip
def test_a_wrong_setting_is_named_with_its_path(change: dict[str, Any], message: str):
    with pytest.raises(ConfigError, match=message) as caught:
        config.validate(_with(change))
    assert str(caught.value).startswith("env.yaml: ")


def test_every_wrong_key_is_listed_at_once():
    with pytest.raises(ConfigError) as caught:
        config.validate(_with({"gates.tolerance": 1, "split.seed": "x", "target": None}))
    text = str(caught.value)
    assert "gates.tolerance" in text and "split.seed" in text and "target: missing" in text


def test_a_file_that_is_not_yaml_or_missing_names_the_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path)
    (tmp_path / "env.yaml").write_text("root: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(tmp_path)
    (tmp_path / "env.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        config.load(tmp_path)


def test_defaults_are_defined_once():
    minimal = {k: EXAMPLE[k] for k in ("data", "suite", "target", "features", "candidates",
                                       "bento")}  # fmt: skip
    loaded = ProjectConfig.model_validate(minimal)
    assert loaded.root == config.DEFAULT_ROOT and loaded.bentos == config.DEFAULT_BENTOS
    # the gates read their defaults from the schema: one value, wherever it is read
    assert GateConfig().max_latency_factor == loaded.gates.max_latency_factor
    assert GateConfig().max_train_factor == loaded.gates.max_train_factor
    assert RetrainSettings() == loaded.retrain


def test_settings_that_name_columns_are_checked_against_the_data():
    loaded = config.validate(_with({"gates.invariance": [
        {"column": "sexe", "values": ["male"], "max_changed_share": 0.1}]}))  # fmt: skip
    columns = [*loaded.features.columns, loaded.target]
    with pytest.raises(ConfigError, match=r"gates\.invariance\[0\]\.column: column 'sexe' is not"):
        loaded.check_columns(columns, "the data")
    with pytest.raises(ConfigError, match=r"features\.numeric\[0\]: column 'bill_length_mm'"):
        loaded.check_columns(columns[1:], "the data")
    loaded = config.validate(_with({"target": "island"}))
    with pytest.raises(ConfigError, match="target: 'island' is also listed as a feature"):
        loaded.check_columns(columns, "the data")


def test_gate_settings_from_a_mapping_name_the_key():
    with pytest.raises(ValueError, match=r"gates\.tolerance: unknown setting"):
        GateConfig.from_mapping({"tolerance": 0.1, "metric": "f1_macro"})
