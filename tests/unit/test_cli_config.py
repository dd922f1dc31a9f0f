"""A wrong env.yaml stops every command at once: exit 1, one line naming the key, no
traceback, nothing built."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from nbship.cli.main import main
from tests.support import PROJECT

pytestmark = pytest.mark.unit


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name in ("env.yaml", "pipeline.yaml"):
        shutil.copy2(PROJECT / name, tmp_path / name)
    shutil.copytree(PROJECT / "expectations", tmp_path / "expectations")
    return tmp_path


def _edit(project: Path, old: str, new: str) -> None:
    env = project / "env.yaml"
    text = env.read_text()
    assert old in text
    env.write_text(text.replace(old, new))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("  max_latency_factor: 3.0", "  max_latency: 3.0",
         "env.yaml: gates.max_latency: unknown setting (allowed: metric_tolerance,"),
        ("{column: sex,", "{column: sexe,",
         "env.yaml: gates.invariance[0].column: column 'sexe' is not in data source"),
        ("target: species", "target: specie",
         "env.yaml: target: column 'specie' is not in data source 'palmerpenguins:load_penguins'"),
        ("suite: expectations/penguins.json", "suite: expectations/nope.json",
         "env.yaml: suite: no such file"),
        ("    - {name: errors, metric: error_rate,", "    - {name: errors, metric: error_rat,",
         "monitoring.alerts[1].metric: unknown metric 'error_rat'"),
    ],
)  # fmt: skip
def test_build_stops_before_any_task(project: Path, old: str, new: str, message: str):
    _edit(project, old, new)
    result = CliRunner().invoke(main, ["build", "--project", str(project)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (project / "build").exists()  # no task ran


@pytest.mark.parametrize("command", [["models", "list"], ["log", "show"], ["k8s"], ["serve"]])
def test_every_command_checks_the_config(project: Path, command: list[str]):
    _edit(project, "retrain:\n", "retrain:\n  every_label: 3\n")
    result = CliRunner().invoke(main, [*command, "--project", str(project)])
    assert result.exit_code == 1, result.output
    assert "env.yaml: retrain.every_label: unknown setting" in result.output
    assert "Traceback" not in result.output
