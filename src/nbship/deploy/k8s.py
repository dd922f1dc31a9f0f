"""Kubernetes manifests for the bento's OCI image: a Deployment, a Service and an HPA.

No cluster runs here, so the manifests are checked offline against the Kubernetes API's
JSON schemas shipped by `kubernetes-validate` (strict: unknown fields are errors, as a
typo such as `readinesProbe` would otherwise be dropped silently by `kubectl apply`).
Schemas do not check name and label formats, so those are made safe here by construction.

Those schemas take about 100 MB that only this check needs, so `kubernetes-validate`
is an optional extra (`nbship[k8s]`): without it the manifests are written unchecked and
`Written.not_validated` says so.
"""

from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import yaml

from nbship.config import BatchSettings, KubernetesSettings

_DEFAULTS = KubernetesSettings()

# The newest schemas kubernetes-validate 1.37 ships are for 1.37; 1.31 is the oldest
# Kubernetes minor still widely supported by managed offerings, so manifests that
# validate against it apply to any current cluster.
KUBERNETES_VERSION = "1.31.0"
MAX_LABEL = 63  # Kubernetes label values and DNS-1123 labels are at most 63 characters
PORT_NAME = "http"
SERVICE_PORT = 80
ANNOTATION_PREFIX = "nbship"
VALIDATOR = "kubernetes_validate"
INSTALL_VALIDATOR = "pip install 'nbship[k8s]'"

_LABEL_BAD = re.compile(r"[^A-Za-z0-9._-]+")
_DNS_BAD = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class DeploymentSettings:
    """What varies between deployments of one bento image; the rest is fixed policy."""

    name: str  # e.g. the bento name; made DNS-safe for resource names ('_' -> '-')
    image: str  # e.g. localhost/<bento name>:<bento version> pushed to a registry
    model_tag: str  # "<model>:<version>", shown in a label (shortened) and an annotation
    git_commit: str | None = None
    # the rest is env.yaml's `kubernetes:`, its defaults defined once in nbship.config
    replicas: int = _DEFAULTS.replicas
    port: int = _DEFAULTS.port  # the port `bentoml serve` listens on inside the container
    cpu_request: str = _DEFAULTS.cpu_request
    cpu_limit: str = _DEFAULTS.cpu_limit
    memory_request: str = _DEFAULTS.memory_request
    memory_limit: str = _DEFAULTS.memory_limit
    min_replicas: int = _DEFAULTS.min_replicas
    max_replicas: int = _DEFAULTS.max_replicas
    target_cpu_utilization: int = _DEFAULTS.target_cpu_utilization  # % of the CPU request
    image_pull_policy: str = _DEFAULTS.image_pull_policy

    def __post_init__(self) -> None:
        # Catch nonsense here with a clear message rather than as a schema path later.
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError(
                f"need 1 <= min_replicas ({self.min_replicas}) <= max_replicas "
                f"({self.max_replicas})"
            )
        if self.replicas < 1:
            raise ValueError(f"replicas must be at least 1, got {self.replicas}")
        if not 1 <= self.target_cpu_utilization <= 100:
            raise ValueError(
                f"target_cpu_utilization is a percentage, got {self.target_cpu_utilization}"
            )
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port out of range: {self.port}")


def label_value(text: str) -> str:
    """`text` as a valid label value: `[A-Za-z0-9._-]`, alphanumeric at both ends, <= 63.

    A value that has to be shortened keeps its start and gets a short hash of the whole
    text, so two long tags that share a prefix still get different labels.
    """
    value = _LABEL_BAD.sub("-", text).strip("._-")
    if len(value) > MAX_LABEL:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        value = value[: MAX_LABEL - len(digest) - 1].rstrip("._-") + "-" + digest
    return value


def dns_label(text: str) -> str:
    """`text` as an RFC 1123 label (lowercase alphanumerics and '-'), which resource,
    container and port names must be; bento names use '_', which is not allowed."""
    value = _DNS_BAD.sub("-", text.lower()).strip("-")
    if len(value) > MAX_LABEL:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        value = value[: MAX_LABEL - len(digest) - 1].rstrip("-") + "-" + digest
    if not value or not value[0].isalpha():
        # Service names must start with a letter (RFC 1035).
        raise ValueError(f"cannot make a Kubernetes name out of {text!r}")
    return value


def _probe(path: str, **timing: int) -> dict:
    return {"httpGet": {"path": path, "port": PORT_NAME}, "timeoutSeconds": 2, **timing}


def manifests(settings: DeploymentSettings, batch: BatchSettings | None = None) -> list[dict]:
    """The Deployment, Service and HorizontalPodAutoscaler, in the order to apply them;
    with `batch`, the CronJob of batch scoring after them."""
    name = dns_label(settings.name)
    # The selector is immutable once applied, so it holds only the stable name; the
    # version label goes on the pods, so each rollout's pods can be told apart.
    selector = {"app.kubernetes.io/name": name}
    labels = {
        **selector,
        "app.kubernetes.io/version": label_value(settings.model_tag),
        "app.kubernetes.io/managed-by": "nbship",
    }
    annotations = {f"{ANNOTATION_PREFIX}/model-tag": settings.model_tag}
    if settings.git_commit:
        annotations[f"{ANNOTATION_PREFIX}/git-commit"] = settings.git_commit

    # Every use of labels/annotations below gets its own dict: a dict shared between two
    # places would be dumped as a YAML anchor and alias, which reads badly.
    container = {
        "name": name,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "ports": [{"name": PORT_NAME, "containerPort": settings.port, "protocol": "TCP"}],
        "env": [{"name": "BENTOML_DO_NOT_TRACK", "value": "true"}],
        "resources": {
            "requests": {"cpu": settings.cpu_request, "memory": settings.memory_request},
            "limits": {"cpu": settings.cpu_limit, "memory": settings.memory_limit},
        },
        # Loading the model can take a while on a cold node: the startup probe allows
        # up to 2 minutes before liveness (which would restart the pod) takes over.
        "startupProbe": _probe("/readyz", periodSeconds=2, failureThreshold=60),
        "readinessProbe": _probe("/readyz", initialDelaySeconds=1, periodSeconds=5),
        "livenessProbe": _probe(
            "/livez", initialDelaySeconds=10, periodSeconds=10, failureThreshold=3
        ),
        # Endpoints are removed asynchronously after a pod starts terminating; sleeping
        # before SIGTERM lets load balancers stop sending it traffic and in-flight
        # requests finish. The image is Debian-based, so `sleep` exists.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}},
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            # BentoML writes to its home (logs, tmp); a read-only root would need volumes.
            "readOnlyRootFilesystem": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {
            "replicas": settings.replicas,
            "selector": {"matchLabels": dict(selector)},
            # Never drop below the wanted capacity during a rollout: start a new pod,
            # wait until it is ready, then retire an old one.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {"labels": dict(labels), "annotations": dict(annotations)},
                "spec": {
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {
            "type": "ClusterIP",
            "selector": dict(selector),
            "ports": [
                {
                    "name": PORT_NAME,
                    "port": SERVICE_PORT,
                    "targetPort": PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": settings.min_replicas,
            "maxReplicas": settings.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": settings.target_cpu_utilization,
                        },
                    },
                }
            ],
        },
    }
    docs = [deployment, service, hpa]
    if batch is not None:
        docs.append(cronjob(settings, batch, container))
    return docs


# The image's bento and where its own model store is: the batch job loads the bento's model
# from there (the server finds it by itself; a plain Python process reads BENTOML_HOME).
BENTO_DIR = "/home/bento/bento"
# a run still going when the next is due is skipped, not run twice at once
CONCURRENCY_POLICY = "Forbid"


def batch_command(batch: BatchSettings) -> list[str]:
    """`nbship predict` without a project: the bento's own entry point."""
    assert batch.input is not None and batch.output is not None  # BatchSettings' own check
    args = ["python", "-m", "nbship.batch", BENTO_DIR, batch.input, "--output", batch.output,
            "--chunk-rows", str(batch.chunk_rows)]  # fmt: skip
    if batch.rejects:
        args += ["--rejects", batch.rejects]
    if batch.dask:
        args += ["--dask", batch.dask]
    return args


def batch_job(section: BatchSettings) -> BatchSettings | None:
    """env.yaml's `batch:` when it schedules a CronJob, else None."""
    return section if section.scheduled else None


def cronjob(settings: DeploymentSettings, batch: BatchSettings, serving: dict) -> dict:
    """A CronJob running batch scoring from the Deployment's image on a schedule: same
    image, resources and security as the server's container, no ports or probes."""
    name = dns_label(f"{settings.name}-batch")
    labels = {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/component": "batch",
        "app.kubernetes.io/version": label_value(settings.model_tag),
        "app.kubernetes.io/managed-by": "nbship",
    }
    env = [
        {"name": "BENTOML_DO_NOT_TRACK", "value": "true"},
        {"name": "BENTOML_HOME", "value": BENTO_DIR},
        {"name": "PYTHONPATH", "value": f"{BENTO_DIR}/src"},
        # a batch run is not a served request: it writes scores, not the prediction log
        {"name": "NBSHIP_LOG_URL", "value": "off"},
    ]
    container = {
        "name": name,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": batch_command(batch),
        "env": env,
        "resources": copy.deepcopy(serving["resources"]),
        "securityContext": copy.deepcopy(serving["securityContext"]),
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name, "labels": labels,
                     "annotations": {f"{ANNOTATION_PREFIX}/model-tag": settings.model_tag}},
        "spec": {
            "schedule": batch.schedule,
            "concurrencyPolicy": CONCURRENCY_POLICY,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "backoffLimit": 2,
                    "template": {
                        "metadata": {"labels": dict(labels)},
                        "spec": {
                            # a failed run's pod is retried by the Job (backoffLimit)
                            "restartPolicy": "Never",
                            "securityContext": {
                                "runAsNonRoot": True,
                                "seccompProfile": {"type": "RuntimeDefault"},
                            },
                            "containers": [container],
                        },
                    },
                },
            },
        },
    }  # fmt: skip


def to_yaml(docs: list[dict]) -> str:
    """Multi-document YAML, keys in the order written (kind first reads best)."""
    return yaml.safe_dump_all(docs, sort_keys=False)


def _describe(doc: object) -> str:
    if not isinstance(doc, dict):
        return f"<not a mapping: {type(doc).__name__}>"
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return f"{doc.get('kind', '<no kind>')}/{name or '<no name>'}"


class SchemasUnavailable(RuntimeError):
    """`kubernetes-validate`, the optional extra with the schemas, is not installed."""


def schemas() -> ModuleType:
    """kubernetes-validate's `utils`, imported only when manifests are checked."""
    try:
        from kubernetes_validate import utils
    except ModuleNotFoundError as exc:
        # Only its own absence means "not installed"; a broken install shows as it is.
        if exc.name != VALIDATOR:
            raise
        raise SchemasUnavailable(
            "not validated against the Kubernetes schemas: kubernetes-validate is not "
            f"installed ({INSTALL_VALIDATOR})"
        ) from None
    return utils


def validate(docs: list[dict], kubernetes_version: str = KUBERNETES_VERSION) -> None:
    """Check every document against the Kubernetes schemas, rejecting unknown fields.

    Raises ValueError listing each invalid document (kind/name) with its error, and
    SchemasUnavailable when kubernetes-validate is not installed.
    """
    kv = schemas()
    errors = []
    for doc in docs:
        where = _describe(doc)
        try:
            kv.validate(doc, kubernetes_version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.absolute_path) or "<root>"
            errors.append(f"{where}: {path}: {e.message}")
        except (kv.SchemaNotFoundError, kv.VersionNotSupportedError) as e:
            # An unknown kind or version is a failure here, not a warning: nothing
            # would have been checked.
            errors.append(f"{where}: {e.message}")
        except (KeyError, TypeError, AttributeError) as e:
            errors.append(f"{where}: not a Kubernetes object ({e!r})")
    if errors:
        raise ValueError(
            f"invalid Kubernetes manifests (schemas {kubernetes_version}):\n  "
            + "\n  ".join(errors)
        )


@dataclass(frozen=True)
class Written:
    path: Path
    not_validated: str | None = None  # why the schemas did not check them; None: they did


def write(
    settings: DeploymentSettings, path: str | Path, batch: BatchSettings | None = None
) -> Written:
    """Validate the manifests for `settings` when the schemas are installed (invalid ones
    raise ValueError and are not written), then write them to `path` as YAML."""
    docs = manifests(settings) if batch is None else manifests(settings, batch)
    try:
        validate(docs)
        not_validated = None
    except SchemasUnavailable as exc:
        not_validated = str(exc)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_yaml(docs))
    return Written(path, not_validated)
