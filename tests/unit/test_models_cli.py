"""`nbship models ...` through click on a project folder with its own SQLite registry."""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from nbship.cli.common import table
from nbship.cli.models import models
from nbship.registry.versions import Registry
from tests.support import PROJECT

pytestmark = pytest.mark.unit


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("NBSHIP_REGISTRY_URL", raising=False)
    folder = tmp_path / "project"
    folder.mkdir()
    env = yaml.safe_load((PROJECT / "env.yaml").read_text())  # the worked example's
    env["registry"] = {"url": "sqlite:///state/registry.db"}
    (folder / "env.yaml").write_text(yaml.safe_dump(env))
    with Registry(f"sqlite:///{folder / 'state' / 'registry.db'}") as reg:
        base = {
            "params": {"C": 1.0},
            "metrics": {"test": {"accuracy": 0.95}},
            "versions": {"scikit-learn": "1.9.1"},
            "data_fingerprint": "sha256:aaa",
            "definition_hash": "sha256:def",
            "selection": {"metric": "f1_macro", "value": 0.91},
        }
        reg.register("clf:v1", {**base, "candidate": "logreg"})
        reg.register(
            "clf:v2",
            {**base, "candidate": "forest", "params": {"C": 2.0}, "git_commit": "abc"},
            bento_tag="clf_bento:b2",
        )
        verdict = {"gate": "min_accuracy", "passed": True, "message": "0.91 >= 0.9"}
        reg.record_gates("clf:v2", [verdict])
    return folder


def run(project: Path, *args: str) -> Result:
    return CliRunner().invoke(models, [*args, "--project", str(project)])


def ok(project: Path, *args: str) -> str:
    result = run(project, *args)
    assert result.exit_code == 0, result.output
    return result.output


def test_list_and_show(project: Path) -> None:
    lines = ok(project, "list").splitlines()
    assert lines[0].split() == ["TAG", "ALIASES", "CANDIDATE", "CREATED", "SELECTION"]
    assert lines[2].startswith("clf:v2") and "forest" in lines[2] and "f1_macro=0.91" in lines[2]
    assert lines[3].startswith("clf:v1")
    # columns are aligned: every row's CANDIDATE starts under the header's
    column = lines[0].index("CANDIDATE")
    assert lines[2][column:].startswith("forest") and lines[3][column:].startswith("logreg")
    assert "No model versions registered for nope." in ok(project, "list", "--name", "nope")

    shown = ok(project, "show", "clf:v2")
    assert "clf_bento:b2" in shown
    assert "params.C" in shown and "metrics.test.accuracy" in shown
    assert "gate min_accuracy" in shown and "pass: 0.91 >= 0.9" in shown


def test_promote_rollback_history(project: Path) -> None:
    # Champion promotions run the gates on real models (tests/integration/test_promotion.py);
    # here the champions are set through the API and the rest goes through the CLI.
    with Registry(f"sqlite:///{project / 'state' / 'registry.db'}") as reg:
        reg.promote("clf:v1", actor=getpass.getuser(), reason="first")
        reg.promote("clf:v2", actor=getpass.getuser(), reason="better", forced=True)
    assert "champion" in ok(project, "list").splitlines()[2]
    ok(project, "promote", "clf:v1", "--alias", "challenger", "-r", "shadow")

    out = ok(project, "rollback", "clf", "--reason", "v2 misbehaves")
    assert out == "rolled back clf: champion is clf:v1 again (was clf:v2)\n"

    lines = ok(project, "history", "clf").splitlines()
    assert lines[0].split() == [
        "AT", "ALIAS", "ACTION", "TAG", "PREVIOUS", "ACTOR", "FORCED", "REASON"
    ]  # fmt: skip
    assert len(lines) == 2 + 4
    newest = lines[2].split()
    assert newest[3:] == ["champion", "rollback", "clf:v1", "clf:v2", getpass.getuser(), "no",
                          "v2", "misbehaves"]  # fmt: skip
    assert lines[4].split()[3:9] == [
        "champion", "promote", "clf:v2", "clf:v1", getpass.getuser(), "yes"
    ]  # fmt: skip
    with Registry(f"sqlite:///{project / 'state' / 'registry.db'}") as reg:
        assert reg.alias("clf", "champion").tag == "clf:v1"  # type: ignore[union-attr]
        assert reg.history("clf")[0].reason == "v2 misbehaves"


def test_history_interleaves_releases(project: Path) -> None:
    with Registry(f"sqlite:///{project / 'state' / 'registry.db'}") as reg:
        reg.promote("clf:v1", actor="alice", reason="first")
        reg.start_release("clf:v2", "shadow", 1.0, actor="alice", reason="watch it")
        reg.start_release("clf:v2", "canary", 0.1, actor="alice", reason="answer some")
        reg.end_release("clf", "rolled_back", actor="guard", reason="error rate 0.4 > 0.05")
        reg.promote("clf:v2", actor="bob", reason="fixed")

    lines = ok(project, "history", "clf").splitlines()
    assert lines[0].split() == [
        "AT", "ALIAS", "ACTION", "TAG", "PREVIOUS", "ACTOR", "FORCED", "REASON"
    ]  # fmt: skip
    # newest first: promotion, rollback of the canary, canary, shadow (replaced), promotion
    rows = [line.split()[3:] for line in lines[2:]]
    assert rows == [
        ["champion", "promote", "clf:v2", "clf:v1", "bob", "no", "fixed"],
        ["-", "release", "ended", "(rolled_back)", "clf:v2", "clf:v1", "guard", "-",
         "error", "rate", "0.4", ">", "0.05"],
        ["-", "release", "canary", "10%", "clf:v2", "clf:v1", "alice", "-", "answer", "some"],
        ["-", "release", "ended", "(replaced)", "clf:v2", "clf:v1", "alice", "-",
         "replaced", "by", "a", "canary", "of", "clf:v2"],
        ["-", "release", "shadow", "100%", "clf:v2", "clf:v1", "alice", "-", "watch", "it"],
        ["champion", "promote", "clf:v1", "-", "alice", "no", "first"],
    ]  # fmt: skip
    # every row's columns line up under the header's
    column = lines[0].index("TAG")
    assert all(line[column:].startswith("clf:v") for line in lines[2:])


def test_diff(project: Path) -> None:
    lines = ok(project, "diff", "clf:v1", "clf:v2").splitlines()
    assert lines[0].split() == ["KEY", "clf:v1", "clf:v2"]
    assert lines[2].split() == ["params.C", "1", "2"]
    assert len(lines) == 3
    assert "same params" in ok(project, "diff", "clf:v1", "clf:v1")


@pytest.mark.parametrize(
    "args",
    [
        ("show", "clf:nope"),
        ("promote", "clf:nope", "--reason", "r"),
        ("diff", "clf:v1", "clf:nope"),
    ],
)
def test_unknown_tag_is_one_clear_line(project: Path, args: tuple[str, ...]) -> None:
    result = run(project, *args)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        "Error: unknown model version 'clf:nope'; known: clf:v2, clf:v1"
    ]


def test_registry_errors_are_clean(project: Path) -> None:
    result = run(project, "rollback", "clf", "--reason", "r")
    assert result.exit_code == 1
    assert result.output == "Error: clf has no earlier champion to roll back to\n"
    assert run(project, "promote", "clf:v1").exit_code == 2  # --reason is required
    assert "No promotions recorded for nobody." in ok(project, "history", "nobody")


def test_unreachable_database_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBSHIP_REGISTRY_URL", "postgresql+psycopg://nbship@127.0.0.1:1/none")
    (tmp_path / "env.yaml").write_text((PROJECT / "env.yaml").read_text())
    result = CliRunner().invoke(models, ["list", "--project", str(tmp_path)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert result.output.startswith("Error: registry postgresql+psycopg://nbship@127.0.0.1:1/none")


def test_table_aligns() -> None:
    assert table(["A", "BB"], [["xxx", None], ["y", 2]]).splitlines() == [
        "A    BB",
        "---  --",
        "xxx",
        "y    2",
    ]
