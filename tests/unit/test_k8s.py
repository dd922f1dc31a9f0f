"""Kubernetes manifests: checked against the API's JSON schemas, since no cluster runs here;
written unchecked, and saying so, when the optional schemas are not installed."""

from __future__ import annotations

import copy
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from nbship.cli.main import main
from nbship.deploy import k8s
from nbship.deploy.k8s import DeploymentSettings
from tests.support import PROJECT

pytestmark = pytest.mark.unit

# Kubernetes' own patterns: label values, and RFC 1123 labels for resource names.
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@pytest.fixture
def settings() -> DeploymentSettings:
    return DeploymentSettings(
        name="penguins_classifier",
        image="registry.example.com/penguins_classifier:v7abc",
        model_tag="penguins_classifier:xk3p2ubvqkpqhxyz",
        git_commit="0123456789abcdef0123456789abcdef01234567",
    )


@pytest.fixture
def docs(settings: DeploymentSettings) -> list[dict]:
    return k8s.manifests(settings)


def by_kind(docs: list[dict]) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in docs}


def container(docs: list[dict]) -> dict:
    (only,) = by_kind(docs)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def test_manifests_are_deployment_service_hpa_and_validate(docs: list[dict]) -> None:
    assert [(d["apiVersion"], d["kind"]) for d in docs] == [
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ]
    k8s.validate(docs)
    # The default version's schemas are really shipped (no silent fallback).
    assert k8s.KUBERNETES_VERSION in k8s.schemas().all_versions()


def test_names_are_dns_safe(docs: list[dict]) -> None:
    for doc in docs:
        assert doc["metadata"]["name"] == "penguins-classifier"
    assert DNS_LABEL.match(container(docs)["name"])


def test_deployment_probes_port_resources_security(
    docs: list[dict], settings: DeploymentSettings
) -> None:
    c = container(docs)
    assert c["image"] == settings.image
    assert c["ports"] == [{"name": "http", "containerPort": 3000, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["readinessProbe"]["initialDelaySeconds"] <= 5
    assert c["resources"] == {
        "requests": {"cpu": "500m", "memory": "512Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    assert c["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert {"name": "BENTOML_DO_NOT_TRACK", "value": "true"} in c["env"]

    deployment = by_kind(docs)["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 30


def test_labels_and_annotations(docs: list[dict], settings: DeploymentSettings) -> None:
    deployment = by_kind(docs)["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    version = pod_labels["app.kubernetes.io/version"]
    assert version == "penguins_classifier-xk3p2ubvqkpqhxyz"
    assert LABEL_VALUE.match(version)
    annotations = deployment["metadata"]["annotations"]
    assert annotations["nbship/model-tag"] == settings.model_tag
    assert annotations["nbship/git-commit"] == settings.git_commit
    # The selector must match the pods and stay the same across model versions.
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "penguins-classifier"}
    assert selector.items() <= pod_labels.items()


def test_no_git_commit_no_annotation(settings: DeploymentSettings) -> None:
    settings = DeploymentSettings(name="m", image="i:1", model_tag="m:1")
    deployment = k8s.manifests(settings)[0]
    assert "nbship/git-commit" not in deployment["metadata"]["annotations"]
    k8s.validate(k8s.manifests(settings))


def test_hpa_targets_the_deployment(docs: list[dict]) -> None:
    kinds = by_kind(docs)
    spec = kinds["HorizontalPodAutoscaler"]["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": kinds["Deployment"]["metadata"]["name"],
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 10)
    (metric,) = spec["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}


def test_service_selects_the_pods_on_the_named_port(docs: list[dict]) -> None:
    kinds = by_kind(docs)
    spec = kinds["Service"]["spec"]
    pod_labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert spec["type"] == "ClusterIP"
    assert spec["selector"].items() <= pod_labels.items()
    (port,) = spec["ports"]
    assert port["port"] == 80
    assert port["targetPort"] == container(docs)["ports"][0]["name"] == "http"


def test_replicas_as_string_is_rejected(docs: list[dict]) -> None:
    broken = copy.deepcopy(docs)
    broken[0]["spec"]["replicas"] = "two"
    with pytest.raises(ValueError, match=r"Deployment/penguins-classifier: spec\.replicas"):
        k8s.validate(broken)


def test_unknown_container_field_is_rejected(docs: list[dict]) -> None:
    broken = copy.deepcopy(docs)
    probe = broken[0]["spec"]["template"]["spec"]["containers"][0].pop("readinessProbe")
    broken[0]["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = probe
    with pytest.raises(ValueError, match="Deployment") as caught:
        k8s.validate(broken)
    assert "readinesProbe" in str(caught.value)


def test_every_invalid_document_is_listed(docs: list[dict]) -> None:
    broken = copy.deepcopy(docs)
    broken[1]["spec"]["type"] = 3
    broken[2]["spec"]["maxReplicas"] = "ten"
    with pytest.raises(ValueError) as caught:
        k8s.validate(broken)
    message = str(caught.value)
    assert "Service/penguins-classifier" in message
    assert "HorizontalPodAutoscaler/penguins-classifier" in message
    assert "Deployment/" not in message


def test_unknown_kind_is_an_error_not_a_pass() -> None:
    doc = {"apiVersion": "example.com/v1", "kind": "Gizmo", "metadata": {"name": "g"}}
    with pytest.raises(ValueError, match="Gizmo/g"):
        k8s.validate([doc])


def test_write_round_trips(tmp_path, settings: DeploymentSettings, docs: list[dict]) -> None:
    target = tmp_path / "build" / "k8s" / "penguins_classifier.yaml"
    assert k8s.write(settings, target) == k8s.Written(target, not_validated=None)
    text = target.read_text()
    assert text.count("\n---\n") == 2
    assert "&id" not in text  # no YAML anchors/aliases
    assert list(yaml.safe_load_all(text)) == docs


def test_long_model_tag_gives_a_valid_label() -> None:
    tag = "penguins_classifier:" + "v" * 80
    other = "penguins_classifier:" + "v" * 79 + "w"
    labels = []
    for model_tag in (tag, other):
        docs = k8s.manifests(DeploymentSettings(name="p", image="i:1", model_tag=model_tag))
        k8s.validate(docs)
        label = docs[0]["metadata"]["labels"]["app.kubernetes.io/version"]
        assert len(label) <= 63
        assert LABEL_VALUE.match(label)
        assert docs[0]["metadata"]["annotations"]["nbship/model-tag"] == model_tag
        labels.append(label)
    assert labels[0] != labels[1]  # the hash keeps them apart


@pytest.mark.parametrize("text", ["a:b", "__x__", "tag/with spaces!", "-" * 3 + "z" * 70])
def test_label_value_is_always_valid(text: str) -> None:
    value = k8s.label_value(text)
    assert len(value) <= 63
    assert LABEL_VALUE.match(value)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="min_replicas"):
        DeploymentSettings(name="p", image="i", model_tag="t", min_replicas=5, max_replicas=2)
    with pytest.raises(ValueError, match="Kubernetes name"):
        k8s.manifests(DeploymentSettings(name="___", image="i", model_tag="t"))


def test_invalid_manifests_are_not_written(
    tmp_path: Path, settings: DeploymentSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = k8s.manifests

    def broken(s: DeploymentSettings) -> list[dict]:
        docs = real(s)
        docs[0]["spec"]["replicas"] = "two"
        return docs

    monkeypatch.setattr(k8s, "manifests", broken)
    target = tmp_path / "k8s.yaml"
    with pytest.raises(ValueError, match=r"spec\.replicas"):
        k8s.write(settings, target)
    assert not target.exists()


# --- without the optional extra (nbship[k8s]) ----------------------------------------


@pytest.fixture
def no_schemas(monkeypatch: pytest.MonkeyPatch) -> None:
    """kubernetes-validate as if not installed: importing it fails as a missing one does."""
    for name in [m for m in sys.modules if m.split(".")[0] == k8s.VALIDATOR]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, k8s.VALIDATOR, None)


@pytest.mark.usefixtures("no_schemas")
def test_without_schemas_validate_says_how_to_get_them(docs: list[dict]) -> None:
    with pytest.raises(k8s.SchemasUnavailable, match=re.escape("pip install 'nbship[k8s]'")):
        k8s.validate(docs)


@pytest.mark.usefixtures("no_schemas")
def test_without_schemas_the_manifests_are_written_unvalidated(
    tmp_path: Path, settings: DeploymentSettings, docs: list[dict]
) -> None:
    target = tmp_path / "k8s" / "m.yaml"
    written = k8s.write(settings, target)
    assert written.path == target
    assert written.not_validated is not None
    assert "not validated" in written.not_validated
    assert "nbship[k8s]" in written.not_validated
    assert list(yaml.safe_load_all(target.read_text())) == docs


def test_a_broken_install_is_not_taken_for_a_missing_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only kubernetes-validate's own absence means "not installed": a missing dependency
    of it is a broken install, shown as it is rather than skipping the check quietly."""
    for name in [m for m in sys.modules if m.split(".")[0] == k8s.VALIDATOR]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # kubernetes-validate imports it
    with pytest.raises(ModuleNotFoundError) as caught:
        k8s.schemas()
    assert caught.value.name == "jsonschema"


# --- `nbship k8s` ------------------------------------------------------------------------


@pytest.fixture
def published(tmp_path: Path) -> Path:
    """A project whose published bento is only what `nbship k8s` reads of one."""
    for name in ("env.yaml", "pipeline.yaml"):
        shutil.copy2(PROJECT / name, tmp_path / name)
    shutil.copytree(PROJECT / "expectations", tmp_path / "expectations")
    version = tmp_path / "bentos" / "penguins_classifier-v7abc"
    (version / "src").mkdir(parents=True)
    (version / "bento.yaml").write_text("name: penguins_classifier\n")
    serving = {
        "bento_name": "penguins_classifier",
        "model_tag": "penguins_classifier:xk3p2ubvqkpqhxyz",
        "metadata": {"git_commit": "0123abc"},
    }
    (version / "src" / "serving.json").write_text(json.dumps(serving))
    (tmp_path / "bentos" / "penguins_classifier").symlink_to(version.name)
    return tmp_path


def _k8s(project: Path) -> tuple[int, str, str, Path]:
    result = CliRunner().invoke(main, ["k8s", "--project", str(project)])
    return (
        result.exit_code,
        result.stdout,
        result.stderr,
        project / "build/k8s/penguins_classifier.yaml",
    )


def test_cli_writes_validated_manifests(published: Path) -> None:
    code, out, err, target = _k8s(published)
    assert code == 0, out + err
    assert out.strip() == str(target)
    assert err == ""
    deployment = next(yaml.safe_load_all(target.read_text()))
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "localhost/penguins_classifier:v7abc"
    )


@pytest.mark.usefixtures("no_schemas")
def test_cli_without_schemas_writes_and_warns_in_one_line(published: Path) -> None:
    code, out, err, target = _k8s(published)
    assert code == 0, out + err
    assert out.strip() == str(target)
    assert target.is_file()
    assert err.strip().splitlines() == [
        "warning: not validated against the Kubernetes schemas: kubernetes-validate is not "
        "installed (pip install 'nbship[k8s]')"
    ]


def test_cli_refuses_bad_settings_in_one_line(published: Path) -> None:
    env = published / "env.yaml"
    config = yaml.safe_load(env.read_text())
    config["kubernetes"] = {
        **(config.get("kubernetes") or {}),
        "min_replicas": 5,
        "max_replicas": 2,
    }
    env.write_text(yaml.safe_dump(config, sort_keys=False))
    code, out, err, target = _k8s(published)
    assert code == 1
    assert "Traceback" not in out + err
    assert err.strip().splitlines() == ["Error: need 1 <= min_replicas (5) <= max_replicas (2)"]
    assert not target.exists()
