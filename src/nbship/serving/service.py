"""The BentoML service that serves a packaged model.

`create_service(root)` builds the service class from a bento's `src/` folder: its
`serving.json` (model tag, features, task, metadata) and the expectations suite
shipped beside it. The task (`serving.json["task"]`, "classification" when absent, as
in bentos built before regression) decides what /predict answers and /feedback takes:
a label and class probabilities, or a number. Importing this module reads nothing;
`bento_service.py`, the module the bentofile names, is what calls the factory. Nothing
here imports the training stack.

Annotations are evaluated (no `from __future__ import annotations`): BentoML resolves an
API method's string annotations against the module's globals, where the models built
per service (the feedback item) do not live.
"""

import asyncio
import gc
import hmac
import json
import logging
import os
import random
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

import bentoml
import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, to_json
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nbship.compat.bentoml_private import ROOT_FIELD, request_error_logger, root_input_base
from nbship.pipeline.contract import Contract, load_suite, record_model
from nbship.prediction_log import (
    FEEDBACK_KIND,
    RETRAIN_REQUEST_KIND,
    LogEntry,
    PredictionLog,
    new_request_id,
)
from nbship.project import LOG_SPOOL_ENV, LOG_URL_ENV
from nbship.registry.versions import (
    Registry,
    RegistryError,
    UnknownModelError,
)
from nbship.serving.batching import MicroBatcher
from nbship.serving.following import (
    Reloader,
    ServedModel,
    config_task,
    registry_url,
    resolve_model,
)
from nbship.serving.live_metrics import LiveMetrics
from nbship.serving.openapi import OpenAPIDocument, amend
from nbship.serving.predicting import Predictor
from nbship.serving.releases import (
    ARM_HEADER,
    RELEASE_ANSWERS,
    ArmWindow,
    ReleaseConfig,
    ServedRelease,
    breach,
    takes_trial,
)
from nbship.serving.request_limits import MAX_JSON_DEPTH, RequestLimits, max_request_bytes
from nbship.serving.request_log import (
    CURRENT_REQUEST,
    RECORD_KEYS,
    CurrentRequest,
    RequestLogMiddleware,
)
from nbship.serving.request_timeout import cancel_request_timers
from nbship.serving.shadow import ShadowProcess, ShadowRunner, ShadowSpec
from nbship.tasks import Task

CONFIG_FILE = "serving.json"
RELOAD_ENV = "NBSHIP_RELOAD_SECONDS"  # how often to ask the registry; 0 = never
ADMIN_TOKEN_ENV = "NBSHIP_ADMIN_TOKEN"  # required by /admin/*; unset = admin routes off
MAX_FEEDBACK_ITEMS = 1000
# how long a thread holds the GIL while another waits for it (Python's default: 5 ms)
SWITCH_INTERVAL_S = 0.001
# under "bentoml" so the server's own log configuration shows it (INFO and up)
logger = logging.getLogger("bentoml.nbship")


def bento_root() -> Path:
    """The bento's `src/` folder: this file lives in `src/nbship/serving/`."""
    return Path(__file__).resolve().parents[2]


def load_config(root: Path) -> dict[str, Any]:
    return json.loads((root / CONFIG_FILE).read_text())


def open_log(config: dict[str, Any]) -> tuple[PredictionLog | None, str]:
    """The prediction log of this process, or None when it is off or cannot start (the
    service then answers without logging: it says so once, at start, in its log and in
    /info, not per request); and that state, in words."""
    settings = config.get("prediction_log") or {}
    url = os.environ.get(LOG_URL_ENV) or settings.get("url")
    spool = os.environ.get(LOG_SPOOL_ENV) or settings.get("spool")
    if not url or url == "off" or not spool:
        logger.warning("prediction log off (%s=%r)", LOG_URL_ENV, url)
        return None, f"off ({LOG_URL_ENV}={url!r})"
    retention = settings.get("retention_days")
    try:
        log = PredictionLog(
            url, spool, retention=timedelta(days=retention) if retention else None
        ).start()
    # a log that cannot start must not stop the service from answering
    except Exception as exc:
        state = f"off: cannot start it at {spool} ({type(exc).__name__}: {exc})"
        logger.error("prediction log %s", state)
        return None, state
    logger.info("prediction log: %s (spool %s)", log, spool)
    return log, f"on (spool {spool})"


def response_model(task: Task, classes: list[str] | None) -> type[BaseModel]:
    """The documented (OpenAPI) /predict answer of a task: per record, the predicted
    class (one of `classes`) and the probability of each, or the predicted number."""
    if task.is_classification:
        # a type only known at run time: a value to mypy, checked by pydantic
        label_type: Any = Literal[tuple(classes)] if classes else str

        class Prediction(BaseModel):
            label: label_type = Field(description="the predicted class")
            probabilities: dict[str, float] = Field(description="probability of each class")

        prediction: type[BaseModel] = Prediction
    else:

        class RegressionPrediction(BaseModel):
            prediction: float = Field(description="the predicted value of the target")

        prediction = RegressionPrediction
    item: Any = prediction

    class PredictResponse(BaseModel):
        model: str = Field(description="tag of the model that answered")
        arm: str | None = Field(
            None,
            description="while a canary or A/B release runs: the arm that answered"
            " (champion or canary; a or b), also in the x-nbship-arm header",
        )
        predictions: list[item] = Field(description="one per record, in the request's order")

    return PredictResponse


def request_spec(record: type[BaseModel], max_batch: int) -> type[bentoml.IODescriptor]:
    """The POST /predict body: one record object, or a list of 1..max_batch records.

    A callable discriminator picks the branch from the JSON shape, so an error is
    reported once, against the field that broke the rule, not once per union branch.
    """
    # types built at run time from the suite's record model: values to mypy (`Any`), not aliases;
    # `list[record]` is still read as a type, of a class only known at run time
    batch: Any = Annotated[list[record], Field(min_length=1, max_length=max_batch)]  # type: ignore[valid-type]
    body: Any = Annotated[
        Annotated[record, Tag("record")] | Annotated[batch, Tag("records")],
        Discriminator(lambda v: "records" if isinstance(v, list) else "record"),
    ]

    # a base class made by a call (BentoML's root model of `body`): mypy needs a static one
    class PredictRequest(root_input_base(body)):  # type: ignore[misc]
        @classmethod
        def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Any:
            try:
                parsed = json.loads(json_data or b"null")
            except ValueError as exc:
                raise ValidationError.from_exception_data(
                    "request",
                    [
                        InitErrorDetails(
                            type="json_invalid",
                            loc=("body",),
                            input=str(json_data)[:80],
                            ctx={"error": str(exc)},
                        )
                    ],
                ) from None
            return cls.model_validate(parsed, **kwargs)

        @classmethod
        def model_validate(cls, obj: Any, **kwargs: Any) -> Any:
            try:
                return super().model_validate(obj, **kwargs)
            except ValidationError as exc:
                raise _without_wrapper_locs(exc) from None

    return PredictRequest


def _without_wrapper_locs(exc: ValidationError) -> ValidationError:
    """Drop the `root` / union-tag parts of each error location so it reads `[0, "age"]`."""
    details: list[InitErrorDetails] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        # BentoML's root model adds "root", the discriminated union adds its tag
        if loc[:1] == (ROOT_FIELD,):
            loc = loc[1:]
        if loc[:1] in (("record",), ("records",)):
            loc = loc[1:]
        detail = InitErrorDetails(type=err["type"], loc=loc or ("body",), input=err.get("input"))
        if "ctx" in err:
            detail["ctx"] = err["ctx"]
        details.append(detail)
    return ValidationError.from_exception_data("predict request", details)


def feedback_model(record: type[BaseModel], classes: list[str] | None) -> type[BaseModel]:
    """One POST /feedback item: the true outcome (`label`) of a logged prediction or of a
    new record: one of `classes` for a classifier, a finite number (strictly: no string,
    no boolean, no NaN) for a regressor (`classes` None)."""
    # names unlike the fields': a class body would look a field's own name up in itself.
    # Both types are only known at run time, so mypy cannot check the fields (pydantic does).
    label_type: Any
    if classes is None:
        label_type = Annotated[float, Field(strict=True, allow_inf_nan=False)]
        label_doc = "the true value of the target (a finite number)"
    else:
        label_type = Literal[tuple(classes)]
        label_doc = "the true class"
    record_type = record

    class FeedbackItem(BaseModel):
        """The true label of a logged prediction (`request_id`, and `row` in a batch), or a
        new labelled `record`."""

        # the validator's rule in the schema too: exactly one of request_id and record (a
        # body with neither was schema-valid and refused)
        model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": [
            {"required": ["request_id"], "properties": {"request_id": {"type": "string"}}},
            {"required": ["record"], "properties": {"record": {"type": "object"}}},
        ]})  # fmt: skip
        label: label_type = Field(description=label_doc)
        request_id: str | None = Field(None, max_length=64, description="x-request-id of /predict")
        # strict as the record's own fields: pydantic's lax int takes `false` as row 0
        row: int = Field(
            0, ge=0, strict=True, description="the record's index in that request's batch"
        )
        # a `type[BaseModel]` variable is no type to mypy: the suite's record model
        record: record_type | None = Field(None, description="a new labelled record")  # type: ignore[valid-type]

        @model_validator(mode="after")
        def one_subject(self) -> Self:
            if (self.request_id is None) == (self.record is None):
                raise ValueError("give exactly one of request_id (a logged prediction) or record")
            return self

    return FeedbackItem


class _QuietValidationErrors(logging.Filter):
    """BentoML logs every rejected request as an ERROR with a traceback; a 400 is the
    client's mistake, so keep it to one WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ValidationError):
            exc = record.exc_info[1]
            record.msg = "rejected request on %s: %d validation error(s)"
            route = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.args = (route, exc.error_count())
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_rejected_requests() -> None:
    """Installs the filter once per process, however many services are built."""
    target = request_error_logger()
    if not any(isinstance(f, _QuietValidationErrors) for f in target.filters):
        target.addFilter(_QuietValidationErrors())


class InstanceSlot:
    """The instance of one service class serving in this process (BentoML makes one per
    worker), None until it has loaded its model. What BentoML builds from the class
    before any instance exists (the info app's routes, the request-log middleware)
    reaches the instance's state through this."""

    def __init__(self) -> None:
        self.instance: ModelServer | None = None

    def log(self) -> PredictionLog | None:
        return self.instance.log if self.instance is not None else None

    def model_tag(self) -> str | None:
        return self.instance.current.tag if self.instance is not None else None


def _unauthorized(request: Request) -> JSONResponse | None:
    """A 401 unless the request carries the admin token (and one is configured)."""
    token = os.environ.get(ADMIN_TOKEN_ENV, "")
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    # compare_digest: the time taken does not tell how much of a guess was right
    if token and hmac.compare_digest(given.encode(), token.encode()):
        return None
    return JSONResponse(
        {"detail": f"a valid bearer token is required (set {ADMIN_TOKEN_ENV} on the server)"},
        status_code=401,
    )


def _release_error(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return (
            f'{exc.args[0]}: required (kind, tag and share, e.g. {{"kind": "canary",'
            f' "tag": "name:version", "share": 0.1}})'
        )
    return str(exc)


def _not_loaded() -> JSONResponse:
    return JSONResponse({"detail": "the model is not loaded yet"}, status_code=503)


class InfoRoutes:
    """GET /info and the /admin routes of one service, on the instance in `slot`."""

    def __init__(self, slot: InstanceSlot, config: dict[str, Any]) -> None:
        self.slot = slot
        self.config = config
        self.task = config_task(config)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/info", self.info, methods=["GET"]),
                Route("/admin/reload", self.admin_reload, methods=["POST"]),
                Route("/admin/retrain", self.admin_retrain, methods=["POST"]),
                Route("/admin/release", self.admin_release, methods=["GET", "POST", "DELETE"]),
            ]
        )

    async def info(self, _: Request) -> JSONResponse:
        server = self.slot.instance
        if server is None:
            return _not_loaded()
        served = server.current
        return JSONResponse(
            {
                "model_tag": served.tag,
                "bento_name": self.config["bento_name"],
                "bento_model_tag": self.config["model_tag"],
                "task": self.task.kind,
                "source": served.source,
                "reason": served.reason,
                "inference": served.inference,
                "batching": server.batcher.stats(),
                # on or off (and why); its counters: spooled_pending grows while the
                # database is unavailable, db_errors counts failed deliveries
                "prediction_log": {
                    "state": server.log_state,
                    **(server.log.stats if server.log is not None else {}),
                },
                "champion_check": server.reloader.last,
                "release": server.release_info(),
                "metadata": served.metadata,
            }
        )

    async def admin_reload(self, request: Request) -> JSONResponse:
        """Ask the registry for the champion now and switch to it if it changed."""
        if refused := _unauthorized(request):
            return refused
        server = self.slot.instance
        if server is None:
            return _not_loaded()
        return JSONResponse(await asyncio.to_thread(server.reloader.check))

    async def admin_release(self, request: Request) -> JSONResponse:
        """GET: the release this server runs. POST {"kind", "tag", "share", "reason"}:
        starts one in the registry (replacing a running one). DELETE {"reason"}: aborts
        the running one. Every server sharing the registry follows; this one at once.
        Promotion goes through `nbship release promote`, which runs the gates."""
        if refused := _unauthorized(request):
            return refused
        server = self.slot.instance
        if server is None:
            return _not_loaded()
        if request.method != "GET":
            try:
                body = await request.json() if await request.body() else {}
                if not isinstance(body, dict):
                    raise ValueError("the body must be a JSON object")
                await asyncio.to_thread(self._change_release, request.method, body)
            except (RegistryError, ValueError, TypeError, KeyError) as exc:
                return JSONResponse({"detail": _release_error(exc)}, 400)
            except UnknownModelError as exc:
                return JSONResponse({"detail": str(exc)}, 404)
            await asyncio.to_thread(server.reloader.check)
        return JSONResponse({"release": server.release_info()})

    def _change_release(self, method: str, body: dict[str, Any]) -> None:
        url = registry_url(self.config)
        if not url:
            raise RegistryError("this server has no registry (NBSHIP_REGISTRY_URL)")
        reason = str(body.get("reason") or "through /admin/release")
        with Registry(url, create=False) as registry:
            if method == "DELETE":
                registry.end_release(
                    self.config["bento_name"], "aborted", actor="admin route", reason=reason
                )
                return
            share = body.get("share", 1.0 if body.get("kind") == "shadow" else None)
            if share is None:
                raise KeyError("share")
            registry.start_release(
                str(body["tag"]), str(body["kind"]), float(share), actor="admin route",
                reason=reason,
            )  # fmt: skip

    async def admin_retrain(self, request: Request) -> JSONResponse:
        """Record a retrain request in the log; `nbship retrain watch` (a separate process
        with the project) acts on it: training never runs in a serving process."""
        if refused := _unauthorized(request):
            return refused
        entry = LogEntry(
            request_id=new_request_id(), ts=datetime.now(UTC), kind=RETRAIN_REQUEST_KIND,
            model_tag=self.slot.model_tag(), inputs=None, outputs=None, latency_ms=0.0,
            status="ok", http_status=202, n_records=0,
        )  # fmt: skip
        log = self.slot.log()
        if log is None or not log.record(entry):
            return JSONResponse({"detail": "the log is unavailable: nothing was recorded"}, 503)
        return JSONResponse({"requested": entry.request_id, "ts": entry.ts.isoformat()}, 202)


@dataclass(frozen=True, eq=False)
class ServiceParts:
    """What one service class is built from, derived from its serving.json and suite:
    the request and feedback models, its live metrics, and the info app with the slot
    through which that app and the middleware reach the serving instance. Nothing here
    is shared with another service's parts."""

    config: dict[str, Any]
    task: Task
    contract: Contract
    record: type[BaseModel]
    request: type[bentoml.IODescriptor]
    response: type[BaseModel]  # the documented /predict answer
    label: Any  # Literal[<the configured classes>], or float for a regressor
    feedback_item: type[BaseModel]
    predictor: Predictor  # how the model's answers are made from records
    metrics: LiveMetrics
    slot: InstanceSlot
    info_app: Starlette  # GET /info, POST /admin/reload and /admin/retrain

    @classmethod
    def build(cls, config: dict[str, Any], suite: dict[str, Any]) -> Self:
        task = config_task(config)
        contract = Contract.from_suite(suite, config["columns"])
        record = record_model(contract, name="Record")
        metadata = config.get("metadata") or {}
        # a regressor has no classes: nothing reads them then
        classes = [str(c) for c in metadata["classes"]] if task.is_classification else None
        feedback_item = feedback_model(record, classes)
        slot = InstanceSlot()
        return cls(
            config=config,
            task=task,
            contract=contract,
            record=record,
            request=request_spec(record, config["max_batch"]),
            response=response_model(task, classes),
            label=feedback_item.model_fields["label"].annotation,
            feedback_item=feedback_item,
            predictor=Predictor.of(contract, task.is_classification),
            metrics=LiveMetrics(
                config.get("drift_profile"),
                config["columns"],
                task=task.kind,
                target_range=metadata.get("target_range"),
            ),
            slot=slot,
            info_app=InfoRoutes(slot, config).app(),
        )


def freeze_startup_heap() -> None:
    """What start-up made (BentoML, scikit-learn, pandas, the model) lives as long as the
    process: out of the collector's way. A 1,000-record request allocates some 10,000
    objects, so with the default thresholds (700, 10, 10) a full collection of
    everything (~270,000 objects, ~120 ms) ran every ~0.6 s under batch load: a fifth of
    the throughput, and the p99. Reference counting frees most garbage here; the
    collector only has cycles to find, so it can run less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


class ModelServer:
    """One serving instance: the model it serves now (swapped in by the reloader), the
    batcher, the prediction log and the reloader, all on the instance. The BentoML
    service class that `create_service` builds subclasses it and sets `parts`."""

    parts: ClassVar[ServiceParts]

    def __init__(self) -> None:
        config = self.parts.config
        served = resolve_model(config)
        self.log: PredictionLog | None
        self.log, self.log_state = open_log(config)
        logger.info("serving %s from the %s (%s)", served.tag, served.source, served.reason)
        self.predictor = self.parts.predictor
        self.swap(served)
        self.batcher = MicroBatcher(self.champion_outputs, max_rows=config["max_batch"])
        # a canary's or arm b's requests batch together, apart from the champion's, and
        # without waiting: most of the callers it has seen go to the champion next, so it
        # would wait its whole bound for them, and its latency is a guard rail against the
        # champion's
        self.trial_batcher = MicroBatcher(
            self.trial_outputs, max_rows=config["max_batch"], wait_share=0.0
        )
        self.release_config = ReleaseConfig.from_config(config.get("release"))
        self.guard = self.release_config.guard
        self.release: ServedRelease | None = None
        # the shadow's answers are rows of the log: no log, no shadow
        self.shadow = (
            None if self.log is None else ShadowRunner(
                ShadowProcess(ShadowSpec(self.predictor, self.log.url, str(self.log.spool_dir))),
                self.release_config.settings.shadow_queue, config["max_batch"],
            )
        )  # fmt: skip
        self.set_release(None)
        self.reloader = Reloader(
            self, config, float(os.environ.get(RELOAD_ENV) or config.get("reload_seconds", 0))
        )
        self.reloader.start()

    def swap(self, served: ServedModel) -> None:
        """Makes `served` the model new requests use; a batch already being predicted
        finishes on (and is answered with the tag of) the model it started with."""
        self.current = served
        logger.info("inference: %s", served.inference)
        self.parts.metrics.serving(served.tag, served.source, served.inference)

    def set_release(self, release: ServedRelease | None) -> None:
        """Makes `release` the one new requests follow (None: only the champion answers);
        the guard rails' windows start again."""
        self.windows = (ArmWindow(self.guard.window_seconds), ArmWindow(self.guard.window_seconds))
        if self.shadow is not None:
            if release is not None and not release.splits_traffic:
                self.shadow.load(release.model)  # its process holds it before any request
            elif self.release is not None and not self.release.splits_traffic:
                self.shadow.unload()  # the shadow release ended: so does its process
        self.release = release

    def guard_breach(self) -> str | None:
        return breach(self.guard, self.windows[1].summary(), self.windows[0].summary())

    def release_info(self) -> dict[str, Any] | None:
        """The running release as /info shows it: what, since when, each arm's window."""
        running = self.release
        if running is None:
            return None
        release = running.release
        info: dict[str, Any] = {
            "id": release.id, "kind": release.kind, "tag": release.tag,
            "champion_tag": release.champion_tag, "share": release.share,
            "started_at": release.started_at.isoformat(), "inference": running.model.inference,
        }  # fmt: skip
        if running.splits_traffic:
            info["arms"] = dict(zip(release.arms, (w.summary() for w in self.windows), strict=True))
            info["guard"] = self.guard.model_dump()
        else:
            off = "off: the prediction log is off"
            info["shadow"] = self.shadow.stats() if self.shadow else off
        return info

    async def respond(self, records: list[Any]) -> Response:
        """The answer to a /predict request: from the champion, or while a canary or A/B
        release runs from the arm the request is routed to. A trial arm that fails is
        counted against its guard rails and the champion answers instead; a shadow gets
        the request after the champion has answered it."""
        running = self.release
        current = CURRENT_REQUEST.get()
        caller = current.client if current else None
        if running is None:
            served, output = await self.batcher(records, caller)
            return self.answer(served, output)
        champion_arm, trial_arm = running.release.arms
        if running.splits_traffic and takes_trial(
            running.release, self.routing_key(current, records)
        ):
            t0 = time.perf_counter()
            try:
                served, output = await self.trial_batcher(records, caller)
            # the trial's failure is the guard rails' business; the caller gets an answer
            except Exception as exc:
                self.windows[1].add((time.perf_counter() - t0) * 1000, False)
                logger.warning("the %s of %s failed (%s: %s); the champion answers",
                               running.release.kind, running.release.tag,
                               type(exc).__name__, exc)  # fmt: skip
            else:
                self.windows[1].add((time.perf_counter() - t0) * 1000, True)
                RELEASE_ANSWERS.labels(arm=trial_arm, model_tag=served.tag).inc()
                return self.answer(served, output, trial_arm)
        if not running.splits_traffic:  # a shadow: the champion answers, as without one
            served, output = await self.batcher(records, caller)
            self.offer_shadow(current, running, records)
            return self.answer(served, output)
        t0 = time.perf_counter()
        served, output = await self.batcher(records, caller)
        self.windows[0].add((time.perf_counter() - t0) * 1000, True)
        RELEASE_ANSWERS.labels(arm=champion_arm, model_tag=served.tag).inc()
        return self.answer(served, output, champion_arm)

    def routing_key(self, current: CurrentRequest | None, records: list[Any]) -> str | None:
        """What keeps a caller on one arm: the configured header, else the configured
        field of the request's first record, else nothing (a random draw)."""
        name = self.release_config.settings.key_header.lower().encode()
        for header, sent in current.headers if current else ():
            if header == name:
                return sent.decode("latin-1")
        field = self.release_config.settings.key_field
        value = getattr(records[0], field, None) if field else None
        return None if value is None else str(value)

    def offer_shadow(
        self, current: CurrentRequest | None, running: ServedRelease, records: list[Any]
    ) -> None:
        if self.shadow is None or current is None:
            return
        if running.release.share >= 1 or random.random() < running.release.share:
            self.shadow.offer(running.model, current.id, records)

    def close(self) -> None:
        self.reloader.close()
        if self.shadow is not None:
            self.shadow.stop()
        if self.log is not None:
            self.log.close(timeout=5)  # what is not delivered stays in the spool for the next start

    def answer(self, served: ServedModel, output: np.ndarray, arm: str | None = None) -> Response:
        """The /predict answer from the model's output (class probabilities, or one number
        per record), saying which release arm answered when one does; documented as the
        parts' response model, but serialising plain data in one call is ~3x cheaper
        than building and dumping a model per row (1,000 rows: 0.9 vs 2.6 ms)."""
        body: dict[str, Any] = {"model": served.tag}
        if arm is not None:  # between the two: the request log reads the answer's head
            body["arm"] = arm
        body["predictions"] = self.predictor.predictions(served, output)
        # a regressor's non-finite prediction is JSON null: the answer (and the log) stay JSON
        content = to_json(body, inf_nan_mode="null")
        headers = None if arm is None else {ARM_HEADER: arm}
        return Response(content, media_type="application/json", headers=headers)

    def record_feedback(self, items: list[BaseModel]) -> dict[str, Any] | Response:
        """Spools the feedback; answered only once it is in the prediction log's spool,
        else 503 saying so (BentoML would answer a raised 503 with a generic message,
        and log a traceback for what is no bug of the server)."""
        entry = LogEntry(
            request_id=new_request_id(), ts=datetime.now(UTC), kind=FEEDBACK_KIND,
            model_tag=self.current.tag, inputs=[i.model_dump(mode="json") for i in items],
            outputs=None, latency_ms=0.0, status="ok", http_status=200, n_records=len(items),
        )  # fmt: skip
        if self.log is None or not self.log.record(entry):
            return JSONResponse(
                {"error": "the feedback store is unavailable: nothing was kept"}, 503
            )
        return {"accepted": len(items), "feedback_id": entry.request_id}

    def champion_outputs(self, records: list[Any]) -> tuple[ServedModel, np.ndarray]:
        served = self.current  # one read: a swap mid-call cannot mix two models
        return served, self.outputs(served, records)

    def trial_outputs(self, records: list[Any]) -> tuple[ServedModel, np.ndarray]:
        running = self.release
        if running is None or not running.splits_traffic:  # ended while these waited
            raise RuntimeError("the release ended")
        return running.model, self.outputs(running.model, records)

    def outputs(self, served: ServedModel, records: list[Any]) -> np.ndarray:
        return self.predictor.outputs(served, self.predictor.columns_of(records))


def create_service(root: Path) -> bentoml.Service[Any]:
    """The BentoML service for the bento source folder `root` (its serving.json and the
    suite it names). Each call builds its own models, metrics, info app and slot: two
    services share no state."""
    config = load_config(root)
    built = ServiceParts.build(config, load_suite(root / config["suite"]))
    FeedbackItem = built.feedback_item
    PredictResponse = built.response
    quiet_rejected_requests()
    cancel_request_timers()

    class ModelService(ModelServer):
        """Predicts the target for records keyed by the dataset's column names."""

        parts = built
        # packs the model into the bento at build time; loading goes through resolve_model
        model_ref = bentoml.models.BentoModel(config["model_tag"])

        def __init__(self) -> None:
            super().__init__()
            built.slot.instance = self  # from now on /info, /admin and the log see it
            freeze_startup_heap()
            # The event loop that answers requests shares the GIL with the shadow model's,
            # the log's and the reloader's threads: when one of them computes, the loop
            # waited up to Python's default switch interval for the GIL at each turn.
            sys.setswitchinterval(SWITCH_INTERVAL_S)

        # async on purpose: the model call is short and CPU-bound, and BentoML runs a sync
        # API in a thread pool limited to one thread, so the hop bought no concurrency and
        # cost a queue per request (measured: c=8 ratio 0.57 -> 0.76, p99 180 -> 50 ms).
        @bentoml.api(input_spec=built.request, route="/predict")
        # the response model built for this service's task, a run-time class
        async def predict(self, body: Any, /) -> PredictResponse:  # type: ignore[valid-type]
            """The prediction for one record or for each of a list of records: the label
            and class probabilities (classification) or the predicted value (regression)."""
            # PredictResponse is the documented (OpenAPI) shape; the body is serialised at
            # once as a Response, which BentoML passes through (see `answer`)
            return await self.respond(body if isinstance(body, list) else [body])

        @bentoml.api(route="/feedback")
        async def feedback(
            self,
            items: Annotated[
                # the feedback model built for this service's suite, a run-time class
                list[FeedbackItem],  # type: ignore[valid-type]
                Field(min_length=1, max_length=MAX_FEEDBACK_ITEMS),
            ],
        ) -> dict[str, Any]:
            """True outcomes (`label`: the class, or the target's value for a regressor) of
            logged predictions, or new labelled records; answered 200 only once they are
            in the prediction log's spool (a killed server keeps them)."""
            # documented as the dict; a 503 is a Response, which BentoML passes through
            return self.record_feedback(items)  # type: ignore[return-value]

        @bentoml.on_shutdown
        def close_log(self) -> None:
            self.close()

    # BentoML's decorators applied by call, as `@` would (the innermost first): mypy takes a
    # decorated class for the class itself, but the result is a bentoml.Service
    service: bentoml.Service[Any] = bentoml.service(
        name=config["bento_name"], traffic={"timeout": 30}, workers=1
    )(bentoml.asgi_app(built.info_app, path="/", name="info")(ModelService))
    service.add_asgi_middleware(
        RequestLogMiddleware,
        log=built.slot.log,
        routes={"/predict": "predict"},
        model_tag=built.slot.model_tag,
        observe=built.metrics.observe,
        record_key=RECORD_KEYS[built.task.kind],
    )
    # inside the request log (BentoML applies middlewares in the order added): a refused
    # body is logged like any answer; bodies the limits refuse never reach a parser
    limit = max_request_bytes(config)
    service.add_asgi_middleware(RequestLimits, max_bytes=limit, max_depth=MAX_JSON_DEPTH)
    service.add_asgi_middleware(
        OpenAPIDocument,
        amend=lambda spec: amend(spec, max_bytes=limit, max_depth=MAX_JSON_DEPTH),
    )
    return service
