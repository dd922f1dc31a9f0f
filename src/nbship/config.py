"""The one schema of a project's env.yaml, read once and passed down.

Every section is a pydantic model that forbids unknown keys, so a misspelt setting, a wrong
type or a missing required one fails at once with the key's path (`ConfigError`), and every
default is defined here, once. Ploomber renders the same file into pipeline.yaml's
placeholders; values a project's own notebooks need go under `params:`, free-form.

Environment variables that override a setting where the model is built or served
(`NBSHIP_REGISTRY_URL`, `NBSHIP_MODEL_STORE`, `NBSHIP_LOG_URL`, `NBSHIP_LOG_SPOOL`) are
resolved by `nbship.project`, which turns these settings into a project's paths and URLs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

ENV_FILE = "env.yaml"
M = TypeVar("M", bound=BaseModel)
# where products and bentos go unless env.yaml says otherwise
DEFAULT_ROOT = "build"
DEFAULT_BENTOS = "bentos"


class ConfigError(ValueError):
    """env.yaml is wrong; the message names the file and the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSettings(Section):
    source: str = Field(description="a .csv/.parquet path, or `module:function` returning a table")
    # columns read but never used (ids, leaks of the target): dropped as the table is loaded
    drop: list[str] = []
    sample_rows: PositiveInt | None = None  # a reproducible sample (tests use this)
    seed: int = 42


class FeatureSettings(Section):
    numeric: list[str] = []
    categorical: list[str] = []

    @model_validator(mode="after")
    def _some_and_disjoint(self) -> FeatureSettings:
        if not self.numeric and not self.categorical:
            raise ValueError("name at least one numeric or categorical column")
        both = sorted(set(self.numeric) & set(self.categorical))
        if both:
            raise ValueError(f"columns listed as numeric and categorical: {both}")
        return self

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]


class SplitSettings(Section):
    test_size: float = Field(0.25, gt=0, lt=1)
    # pinned rows the differential and invariance gates predict on
    golden_size: PositiveInt = 60
    seed: int = 42


class BentoSettings(Section):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")  # BentoML's tag rules
    max_batch: PositiveInt = 1000
    # the largest request body the server reads: a longer one is answered 413 before it
    # is parsed (NBSHIP_MAX_REQUEST_MB overrides it where the bento is served); a
    # 1,000-record batch is ~130 kB: 15x headroom
    max_request_mb: PositiveFloat = 2.0


class UrlSettings(Section):
    url: str | None = None


class PredictionLogSettings(Section):
    url: str = "sqlite:///prediction_log.db"
    spool: str = ".nbship/spool"
    retention_days: PositiveInt | PositiveFloat | None = 30


class InvarianceCheck(Section):
    column: str
    values: list[Any] = Field(min_length=1)
    max_changed_share: float = Field(ge=0, le=1)


class GateSettings(Section):
    """How much worse than the champion a challenger may be (see nbship.registry.gates)."""

    metric_tolerance: NonNegativeFloat = 0.01
    prob_tolerance: NonNegativeFloat = 0.05
    max_diff_share: NonNegativeFloat = 0.1
    # regression's differential gate: a golden row differs when |new - old| is more than
    # value_abs_tolerance + value_rel_tolerance * |old|
    value_abs_tolerance: NonNegativeFloat = 0.0
    value_rel_tolerance: NonNegativeFloat = 0.05
    max_latency_factor: PositiveFloat = 3.0
    max_train_factor: PositiveFloat = 5.0
    # a challenger that trained in less than this is never too slow to train: timing a
    # fit of a few milliseconds measures the machine's load, not the model (a 10 ms fit
    # took 57 ms on a busy CI runner, x5.7)
    min_train_seconds: NonNegativeFloat = 1.0
    latency_repeats: PositiveInt = 20
    invariance: tuple[InvarianceCheck, ...] = ()


class GuardSettings(Section):
    """When a server rolls a canary (or an A/B arm "b") back by itself: over its answers
    of the last `window_seconds`, once it has `min_requests` of them."""

    window_seconds: PositiveFloat = 60.0
    min_requests: PositiveInt = 20
    max_error_rate: float = Field(0.05, ge=0, le=1)
    max_p99_ms: PositiveFloat | None = None  # an absolute bound on the trial's p99
    # the trial's p90 against the champion's, in the same window on the same server: not
    # p99, which over an arm with a fifth of the answers is moved by one or two pauses of
    # the process that every arm shares (a benchmark's equal canary was rolled back so)
    max_p90_ratio: PositiveFloat | None = 3.0
    # checked on the prediction log (not by the servers), by the watcher a release starts
    # (`check_seconds`) or by `nbship release check`: the trial's answers unlike the
    # champion's on the same traffic (PSI, with a p-value under 0.01), and the
    # always-valid test on labelled feedback finding it worse
    max_answer_psi: PositiveFloat | None = 0.2
    on_worse_metric: bool = True
    # how often those two run while a canary or A/B release runs: `nbship release canary`
    # and `ab` start a watcher process that checks every this many seconds until the
    # release ends (a rollout nobody remembered to `check` would go unguarded on them);
    # None: only when `nbship release check` is run
    check_seconds: PositiveFloat | None = 60.0


class ReleaseSettings(Section):
    """Shadow, canary and A/B releases (`nbship release`)."""

    # a canary or A/B request goes to the same arm each time it carries the same key: the
    # value of this header, else of the request field `key_field`, else a random draw
    key_header: str = Field("x-nbship-key", pattern=r"^[A-Za-z0-9-]+$")
    key_field: str | None = None
    # requests waiting for the shadow model; when full, a request is not shadowed (and
    # counted as dropped): the shadow never holds an answer back
    shadow_queue: PositiveInt = 1000
    guard: GuardSettings = GuardSettings()


class RetrainSettings(Section):
    """`nbship retrain watch`'s triggers; None turns one off."""

    every_labels: PositiveInt | None = None
    every_hours: PositiveInt | PositiveFloat | None = None
    poll_seconds: PositiveFloat = 30.0


class ContainerSection(Section):
    state_dir: str = ".containers"
    base_image: str = "localhost/nbship-base:bookworm-py311"
    suite: str = "bookworm"
    mirror: str | None = None  # default: the host's Debian mirror
    # "host": the host's /usr/local/share/ca-certificates; or PEM files; [] for none
    extra_ca_certs: Literal["host"] | list[str] = "host"
    labels: dict[str, str] = {}


class KubernetesSettings(Section):
    replicas: PositiveInt = 2
    port: PositiveInt = 3000
    cpu_request: str = "500m"
    cpu_limit: str = "1"
    memory_request: str = "512Mi"
    memory_limit: str = "1Gi"
    min_replicas: PositiveInt = 2
    max_replicas: PositiveInt = 10
    target_cpu_utilization: int = Field(70, ge=1, le=100)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"


_CRON_FIELD = re.compile(r"^[\d*/,\-A-Za-z?LW#]+$")
_CRON_MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


class BatchSettings(Section):
    """`nbship predict` (batch scoring) and the CronJob `nbship k8s` writes for it."""

    # a dask.distributed scheduler (tcp://host:8786) to score on; None: this process
    dask: str | None = None
    chunk_rows: PositiveInt = 100_000  # rows held in memory at a time (per partition on Dask)
    # the CronJob (written by `nbship k8s` when `schedule` is set): a cron schedule and the
    # input, output and rejects as fsspec URLs the pod can reach (s3://..., gs://...)
    schedule: str | None = None
    input: str | None = None
    output: str | None = None
    rejects: str | None = None  # default: beside the output, <name>.rejects.<suffix>

    @field_validator("schedule")
    @classmethod
    def _cron(cls, schedule: str | None) -> str | None:
        # Kubernetes' schema only says "a string": a typo would be applied and never run
        if schedule is None:
            return None
        fields = schedule.split()
        if not (schedule.strip() in _CRON_MACROS
                or (len(fields) == 5 and all(_CRON_FIELD.match(f) for f in fields))):  # fmt: skip
            raise ValueError(
                f"{schedule!r} is not a cron schedule (five fields, e.g. '0 3 * * *', or a"
                " macro such as '@daily')"
            )
        return schedule

    @property
    def scheduled(self) -> bool:
        """A CronJob scores batches from the bento's image: the bento ships batch scoring
        (nbship.batch and pyarrow) and `nbship k8s` writes the CronJob."""
        return self.schedule is not None

    @model_validator(mode="after")
    def _cronjob_paths(self) -> BatchSettings:
        if self.schedule is not None and not (self.input and self.output):
            raise ValueError("a schedule needs `input` and `output` (the URLs it scores)")
        return self


class ProjectConfig(Section):
    """env.yaml."""

    root: str = DEFAULT_ROOT  # every product of a run goes under it
    bentos: str = DEFAULT_BENTOS  # where the published bento folder goes
    data: DataSettings
    suite: str
    target: str
    features: FeatureSettings
    split: SplitSettings = SplitSettings()
    candidates: list[str] = Field(min_length=1)
    hyperparams: dict[str, dict[str, Any]] = {}
    # classification, regression, or auto: inferred from the target (the split task says
    # what it inferred)
    task: Literal["auto", "classification", "regression"] = "auto"
    # auto: the task's default (f1_macro for classification, rmse for regression)
    selection_metric: str = "auto"
    bento: BentoSettings
    registry: UrlSettings = UrlSettings()
    model_store: UrlSettings = UrlSettings()
    prediction_log: PredictionLogSettings = PredictionLogSettings()
    # the alert rules and sinks are checked by nbship.operate.alert_rules.parse_config, which
    # knows the window metrics; `nbship.cli` runs it whenever it loads the config
    monitoring: dict[str, Any] | None = None
    gates: GateSettings = GateSettings()
    retrain: RetrainSettings = RetrainSettings()
    release: ReleaseSettings = ReleaseSettings()
    container: ContainerSection = ContainerSection()
    kubernetes: KubernetesSettings = KubernetesSettings()
    batch: BatchSettings = BatchSettings()
    params: dict[str, Any] = {}  # the project's own values for its notebooks

    @field_validator("selection_metric")
    @classmethod
    def _metric_of_task(cls, metric: str, info: ValidationInfo) -> str:
        from nbship import tasks

        if metric == "auto":
            return metric
        task = tasks.of_metric(metric)  # ValueError naming the known ones
        configured = info.data.get("task", "auto")
        if configured != "auto" and task.kind != configured:
            raise ValueError(
                f"{metric!r} is a {task.kind} metric, but task is {configured}: choose "
                f"from {sorted(tasks.get(configured).metrics)}"
            )
        return metric

    def check_columns(self, columns: Iterable[str], where: str = "the data") -> None:
        """Settings that name columns (features, target, invariance checks) against the
        columns the data has; raises ConfigError naming the setting."""
        have = set(columns)
        named = [(f"features.numeric[{i}]", c) for i, c in enumerate(self.features.numeric)]
        named += [
            (f"features.categorical[{i}]", c) for i, c in enumerate(self.features.categorical)
        ]
        named.append(("target", self.target))
        named += [(f"gates.invariance[{i}].column", c.column)
                  for i, c in enumerate(self.gates.invariance)]  # fmt: skip
        missing = [f"{key}: column {column!r} is not in {where}" for key, column in named
                   if column not in have]  # fmt: skip
        if self.target in self.features.columns:
            missing.append(f"target: {self.target!r} is also listed as a feature")
        if missing:
            raise ConfigError(f"{ENV_FILE}: " + "; ".join(missing)
                              + f" (columns: {sorted(have)})")  # fmt: skip


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _message(error: Mapping[str, Any], section: type[BaseModel], skip: int = 0) -> tuple[str, str]:
    """(the key's path, what is wrong with it)"""
    loc = tuple(error["loc"])
    where = _path(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        model = _model_at(section, loc[skip:-1])
        allowed = f" (allowed: {', '.join(model.model_fields)})" if model else ""
        return where, f"unknown setting{allowed}"
    if kind == "missing":
        return where, "missing (required)"
    message = str(error["msg"]).removeprefix("Value error, ")
    return where, f"{message}, got {error['input']!r}"


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The section model at a location, to list its keys when one is unknown."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        inner = [a for a in getattr(annotation, "__args__", ()) if isinstance(a, type)]
        candidates = [annotation, *inner]
        found = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not found:
            return None
        model = found[0]
    return model


def validate_section(model: type[M], raw: Any, where: str = "") -> M:
    """`raw` as `model`; ConfigError lists every wrong key, with its path below `where`."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        prefix = (where,) if where else ()
        lines: dict[str, list[str]] = {}
        for e in exc.errors():
            loc = (*prefix, *e["loc"])
            # a union's branches come as one error each, tagged after the field's path
            # (`int`, `list[str]`): a name that is no field of the section it is under
            parent = _model_at(model, tuple(e["loc"][:-1]))
            if (
                e["type"] not in ("extra_forbidden", "missing")
                and len(e["loc"]) > 1
                and isinstance(e["loc"][-1], str)
                and _model_at(model, tuple(e["loc"][:-2])) is not None
                and (parent is None or e["loc"][-1] not in parent.model_fields)
            ):
                loc = loc[:-1]
            where, message = _message({**e, "loc": loc}, model, len(prefix))
            lines.setdefault(where, []).append(message)
        raise ConfigError("; ".join(f"{w}: {' or '.join(m)}" for w, m in lines.items())) from None


def validate(raw: Any, source: str = ENV_FILE) -> ProjectConfig:
    """A parsed env.yaml as a ProjectConfig; ConfigError lists every wrong key."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(raw).__name__}")
    try:
        return validate_section(ProjectConfig, raw)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def read_raw(project_dir: Path) -> dict[str, Any]:
    """env.yaml as YAML, unchecked (Ploomber reads the same file for pipeline.yaml)."""
    path = Path(project_dir) / ENV_FILE
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (is this an nbship project?)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    return raw if raw is not None else {}


def load(project_dir: Path) -> ProjectConfig:
    """The project's env.yaml, checked."""
    return validate(read_raw(project_dir), source=str(Path(project_dir) / ENV_FILE))
