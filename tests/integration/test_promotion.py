"""The registry in the pipeline: each run registers its model; a challenger that fails
the gates is recorded with its verdicts and never reaches the published bento."""

from pathlib import Path

import pytest

from nbship.registry.versions import Registry
from tests.conftest import Project, WorseBuild

pytestmark = pytest.mark.integration


def _registry(project: Project) -> Registry:
    return Registry(f"sqlite:///{project.path / 'registry.db'}")


def test_first_run_registers_the_champion_with_its_metadata(built_project: Project):
    summary = built_project.summary
    champion = _registry(built_project).alias("penguins_classifier", "champion")
    assert champion is not None and champion.tag == summary["model_tag"]
    assert summary["promoted"] is True
    assert champion.data_fingerprint and champion.definition_hash
    assert champion.metrics["test"]["f1_macro"] > 0.9
    assert champion.gates, "the gate verdicts are stored with the version"
    (event,) = _registry(built_project).history("penguins_classifier")[:1]
    assert event.tag == champion.tag and event.actor and event.reason


def test_a_worse_challenger_is_recorded_but_not_promoted_or_published(worse_build: WorseBuild):
    project, summary = worse_build.project, worse_build.challenger

    assert summary["promoted"] is False
    assert summary["gates"]["metric"] is False
    registry = _registry(project)
    champion_before = worse_build.champion["model_tag"]
    assert registry.alias("penguins_classifier", "champion").tag == champion_before
    assert registry.alias("penguins_classifier", "challenger").tag == summary["model_tag"]
    failed = [g for g in registry.get(summary["model_tag"]).gates if not g["passed"]]
    assert {g["gate"] for g in failed} >= {"metric"}
    assert project.bento.resolve() == worse_build.published


def test_promote_by_hand_runs_the_gates_and_records_a_force_and_rollback_restores(
    tmp_path, worse_build: WorseBuild
):
    build = worse_build.copy_to(tmp_path / "copy")
    project, worse, published = build.project, build.challenger, build.published
    champion = build.champion["model_tag"]

    refused = project.run("models", "promote", worse["model_tag"], "--reason", "try")
    assert refused.returncode != 0
    assert "metric" in refused.stderr and "--force" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert _registry(project).alias("penguins_classifier", "champion").tag == champion

    forced = project.run("models", "promote", worse["model_tag"], "-r", "demo", "--force")
    assert forced.returncode == 0, forced.stderr
    registry = _registry(project)
    assert registry.alias("penguins_classifier", "champion").tag == worse["model_tag"]
    assert registry.history("penguins_classifier")[0].forced is True
    assert project.bento.resolve().name.endswith(worse["bento_tag"].split(":")[1])

    back = project.run("models", "rollback", "penguins_classifier", "--reason", "undo")
    assert back.returncode == 0, back.stderr
    assert _registry(project).alias("penguins_classifier", "champion").tag == champion
    assert project.bento.resolve() == published


def test_each_run_writes_a_model_card_recorded_in_the_registry(built_project: Project):
    summary = built_project.summary
    version = _registry(built_project).get(summary["model_tag"])
    card = Path(version.extra["card"])
    assert card == Path(summary["card"]) and card.parent == built_project.root / "cards"
    page = card.read_text()
    assert summary["model_tag"] in page and page.count("<svg") >= 3
    assert "Confusion matrix" in page and "Gate results" in page


def test_models_card_rewrites_a_card_against_the_champion(tmp_path, worse_build: WorseBuild):
    build = worse_build.copy_to(tmp_path / "copy")  # the card is written in the project
    project, worse = build.project, build.challenger
    champion = _registry(project).alias("penguins_classifier", "champion")

    result = project.run("models", "card", worse["model_tag"])

    assert result.returncode == 0, result.stderr
    page = Path(result.stdout.strip()).read_text()
    assert f"champion {champion.tag}" in page and "FAILED" in page
    unknown = project.run("models", "card", "penguins_classifier:nope")
    assert unknown.returncode != 0 and "unknown model version" in unknown.stderr


def test_a_tampered_artefact_is_refused_by_promote(tmp_path, worse_build: WorseBuild):
    build = worse_build.copy_to(tmp_path / "copy")  # a promote that went through changes it
    project, worse = build.project, build.challenger
    # the BentoML home is shared: the artefact is restored below, whatever happens
    name, version = worse["model_tag"].split(":")
    pkl = Path(project.env["BENTOML_HOME"]) / "models" / name / version / "saved_model.pkl"
    original = pkl.read_bytes()
    pkl.write_bytes(original + b"\0")
    try:
        result = project.run("models", "promote", worse["model_tag"], "-r", "t", "--force")
    finally:
        pkl.write_bytes(original)
    assert result.returncode != 0
    assert "saved_model.pkl: sha256" in result.stderr and "refusing to load it" in result.stderr
    assert "Traceback" not in result.stderr
    assert _registry(project).alias(name, "champion").tag != worse["model_tag"]
