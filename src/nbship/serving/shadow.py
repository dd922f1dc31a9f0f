"""The shadow release's model, predicting in a process of its own.

A thread could not keep the promise that a shadow never slows the champion: it shares
the serving process's GIL, so a shadow model that computes in Python (a user's own
transformer, a row-wise `apply`) holds the lock the request loop needs at every turn,
and one that crashes the interpreter takes the server with it. Here the server only
gathers the shadowed requests (`ShadowRunner.offer` never blocks: a full queue drops the
request and counts it) and hands each batch, as plain columns, to a child process at
idle CPU priority (`ShadowProcess`), which predicts with the same code as the request
path (nbship.serving.predicting) and writes each answer as a `shadow` row of the
prediction log, through a spool folder of its own beside the server's. The child starts
with the shadow release and ends with it; one that dies is started again, with the
model it had.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import queue
import sys
import threading
import time
from collections.abc import Iterator, MutableSequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from nbship.prediction_log import SHADOW_KIND, SHADOW_SUFFIX, LogEntry, PredictionLog
from nbship.serving.predicting import Columns, Predictor

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from nbship.serving.following import ServedModel

SHADOW_LINGER_SECONDS = 0.05  # how long the shadow lets requests gather into one call
LOWEST_NICE = 19  # the shadow's CPU priority (nice values: -20 to 19)
START_SECONDS = 120.0  # for the child to start and take its model
RESTART_SECONDS = 10.0  # at least this long between two starts of a child that died
OK, ERROR, STALE = range(3)  # the child's counters: answers, failures, other-model requests
logger = logging.getLogger("bentoml.nbship.release")

SHADOW_PREDICTIONS = Counter(
    name="nbship_shadow_predictions",
    documentation="Requests given to the shadow model, by outcome (ok, error, dropped)",
    labelnames=["outcome"],
)


def lowest_cpu_priority() -> None:
    """Gives the calling thread the lowest CPU priority, so that on a busy machine the
    kernel runs the threads that answer requests first (Linux schedules each thread on
    its own and takes its id for a process id; elsewhere that id could name another
    process, so nothing is done). Lowering a priority needs no privilege."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_NICE)


def idle_cpu_priority() -> None:
    """Gives the calling process the CPU only when nothing else wants it: Linux's
    SCHED_IDLE (nice 19 still took a core's time slices from the answers: the paced p50
    rose 2.2 ms under a shadow computing in Python), else the lowest nice value. Called
    while the process has one thread, so the threads it starts later inherit it."""
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, LOWEST_NICE)


@dataclass(frozen=True)
class ShadowSpec:
    """What the child needs to start: how to predict, and the log it writes to."""

    predictor: Predictor
    log_url: str
    log_spool: str


@dataclass(frozen=True)
class ShadowBatch:
    """Shadowed requests for one model: each request's id and record count, and all
    their records as columns."""

    tag: str
    requests: list[tuple[str, int]]
    columns: Columns


@dataclass
class ShadowWorker:
    """What the child does with a batch: one prediction call for all of it, then a
    `shadow` row of the log per request, written in one spool append."""

    predictor: Predictor
    log: PredictionLog
    counts: MutableSequence[int]

    def handle(self, model: ServedModel, batch: ShadowBatch) -> None:
        started = datetime.now(UTC)
        t0 = time.perf_counter()
        try:
            output = self.predictor.outputs(model, batch.columns)
            answers: list[dict[str, Any]] | None = self.predictor.predictions(model, output)
            error = None
        # a shadow model that fails is what a shadow release is there to find out
        except Exception as exc:
            answers, error = None, exc
        ms = (time.perf_counter() - t0) * 1000 / len(batch.requests)
        start = 0
        entries = []
        for request_id, n in batch.requests:
            outputs = None if answers is None else answers[start : start + n]
            start += n
            entry = LogEntry(
                request_id=f"{request_id}{SHADOW_SUFFIX}", ts=started, kind=SHADOW_KIND,
                model_tag=model.tag, inputs=None, outputs=outputs, latency_ms=ms,
                status="ok" if error is None else "error",
                http_status=200 if error is None else 500,
                error_class=None if error is None else type(error).__name__,
                error_message=None if error is None else str(error)[:2000],
                n_records=n,
            )  # fmt: skip
            entries.append(entry)
        self.log.record_many(entries)
        self.counts[OK if error is None else ERROR] += len(batch.requests)


def serve_shadow(conn: Connection, counts: MutableSequence[int], spec: ShadowSpec) -> None:
    """The child's whole life: take models and batches from `conn` until it closes.
    A model message is answered once the model is held; a batch for another model (one
    the server sent before the model changed) is counted and skipped."""
    idle_cpu_priority()
    log = PredictionLog(spec.log_url, spec.log_spool).start()
    worker = ShadowWorker(spec.predictor, log, counts)
    model: ServedModel | None = None
    try:
        while True:
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):  # the server closed it, or is gone
                return
            # a model this process cannot unpickle (its class not importable here): said,
            # and the one it had stays
            except Exception as exc:
                conn.send(("refused", f"{type(exc).__name__}: {exc}"))
                continue
            if kind == "model":
                model = payload
                conn.send(("ready", payload.tag))
            elif model is not None and payload.tag == model.tag:
                worker.handle(model, payload)
            else:
                counts[STALE] += len(payload.requests)
    finally:
        log.close(timeout=5)


class ShadowProcess:
    """The server's side of the child: starts it on the first model, hands it models and
    batches, and starts it again (with the model it had) when it died. Models are sent
    from the reloader's thread, batches from the runner's: one lock for the pipe."""

    def __init__(self, spec: ShadowSpec) -> None:
        self.spec = spec
        # spawned, not forked: the server's threads (event loop, log, reloader) may hold
        # locks at the moment of a fork, which the child would inherit held
        self.context = multiprocessing.get_context("spawn")
        self.counts: MutableSequence[int] = self.context.RawArray("q", 3)  # written by the child
        self.process: BaseProcess | None = None
        self.conn: Connection | None = None
        self.model: tuple[str, bytes] | None = None  # the child's model: tag, pickled
        self.state = "not started"  # for /info
        self.started_at = float("-inf")
        self.lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The running child's process id, None when none runs."""
        process = self.process
        return process.pid if process is not None and process.is_alive() else None

    def load(self, model: ServedModel) -> bool:
        """Makes `model` the one the child predicts with, starting the child if needed;
        returns once the child holds it (False, and `state` says why, when it cannot)."""
        try:  # once, here: sent to this child, and again to the next one if it dies
            sent = pickle.dumps(("model", model), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # a model object that cannot be pickled
            self.state = f"the shadow model cannot be sent ({type(exc).__name__}: {exc})"
            logger.error("shadow of %s: %s", model.tag, self.state)
            return False
        self.model = (model.tag, sent)
        with self._locked():
            if self.process is not None and self.process.is_alive():
                if self._hand():
                    return True
                if self.model is None:  # refused: a new child could not load it either
                    return False
            return self._start()

    def send(self, batch: ShadowBatch) -> bool:
        """Hands a batch to the child; False when there is no child to take it now."""
        with self.lock:
            if self.process is None or not self.process.is_alive():
                if self.model is None or time.monotonic() - self.started_at < RESTART_SECONDS:
                    return False
                code = None if self.process is None else self.process.exitcode
                logger.warning("the shadow process ended (exit code %s): starting it again", code)
                if not self._start():
                    return False
            assert self.conn is not None
            try:
                self.conn.send(("batch", batch))
            except OSError:  # it died since: counted as dropped, started at the next batch
                return False
            return True

    def close(self, wait: bool = True) -> None:
        """Ends the child (it delivers its log first) and forgets its model: a shadow
        release that ended leaves no process behind. `wait=False` leaves the wait for
        its end to a thread (the reloader must not wait for it)."""
        with self._locked():
            self.model = None
            self.state = "ended with its release"
            if self.conn is not None:
                self.conn.close()
                self.conn = None
            process, self.process = self.process, None
        if process is not None:
            if wait:
                _end(process)
            else:
                threading.Thread(target=_end, args=(process,), daemon=True).start()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The pipe's lock, from the reloader's thread or at shutdown. The runner's thread
        holds it while it waits to send, so when it is not free soon, the child takes
        nothing (a model stuck in its call): that child is done, and its end lets go."""
        if not self.lock.acquire(timeout=5):
            if self.process is not None:
                self.process.kill()
            self.lock.acquire()
        try:
            yield
        finally:
            self.lock.release()

    def _start(self) -> bool:  # under the lock, with a model
        self.started_at = time.monotonic()
        if self.process is not None:
            self.process.kill()  # dead already, or stuck on its last model
            self.process.join(5)
        if self.conn is not None:
            self.conn.close()
        ours, theirs = self.context.Pipe()
        self.process = self.context.Process(
            target=serve_shadow, args=(theirs, self.counts, self.spec),
            name="nbship-shadow", daemon=True,
        )  # fmt: skip
        self.process.start()
        theirs.close()
        self.conn = ours
        return self._hand()

    def _hand(self) -> bool:  # under the lock, with a model
        assert self.conn is not None and self.model is not None
        tag, sent = self.model
        try:
            self.conn.send_bytes(sent)  # what conn.send would write: the child's recv reads it
            deadline = time.monotonic() + START_SECONDS
            self.state = f"the shadow process took no model in {START_SECONDS:g} s"
            while self.conn.poll(max(0.0, deadline - time.monotonic())):
                kind, said = self.conn.recv()
                if kind == "ready" and said == tag:
                    self.state = "running"
                    return True
                if kind == "refused":
                    self.state = f"the shadow process cannot load the model ({said})"
                    self.model = None  # a new child could not either
                    break
        except (OSError, EOFError) as exc:
            code = self.process.exitcode if self.process else None
            self.state = f"the shadow process ended (exit code {code}; {type(exc).__name__})"
        logger.error("shadow of %s: %s", tag, self.state)
        return False


def _end(process: BaseProcess) -> None:
    process.join(10)
    if process.is_alive():
        process.kill()
        process.join(5)


@dataclass
class ShadowRunner:
    """Gathers the requests the champion has answered for the shadow model, off the
    request path, in a thread of its own: `offer` never blocks (a full queue drops the
    request and counts it), and what is queued together goes to the child as one batch."""

    child: ShadowProcess
    capacity: int
    max_rows: int
    dropped: int = 0
    counted: list[int] = field(default_factory=lambda: [0, 0])  # the child's ok, error seen

    def __post_init__(self) -> None:
        self.queue: queue.Queue[tuple[ServedModel, str, list[Any]] | None] = queue.Queue(
            self.capacity
        )
        self.thread = threading.Thread(target=self.run, name="shadow", daemon=True)
        self.thread.start()

    def load(self, model: ServedModel) -> bool:
        """From the reloader's thread, as a shadow release starts: see ShadowProcess.load."""
        return self.child.load(model)

    def unload(self) -> None:
        """From the reloader's thread, as the shadow release ends: the child ends; what is
        still queued for it is dropped."""
        self.child.close(wait=False)

    def offer(self, model: ServedModel, request_id: str, records: list[Any]) -> None:
        try:
            self.queue.put_nowait((model, request_id, records))
        except queue.Full:
            self._drop(1)

    def stats(self) -> dict[str, Any]:
        self._sync()
        counts = self.child.counts
        return {
            "ok": counts[OK], "error": counts[ERROR], "dropped": self.dropped + counts[STALE],
            "queued": self.queue.qsize(), "process": self.child.state, "pid": self.child.pid,
        }  # fmt: skip

    def stop(self) -> None:
        # when full, the thread is a daemon: it ends with the process
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait(None)
        self.child.close()

    def _drop(self, n: int) -> None:
        self.dropped += n
        SHADOW_PREDICTIONS.labels(outcome="dropped").inc(n)

    def _sync(self) -> None:
        """The child's counts, into this process's metrics."""
        for i, outcome in ((OK, "ok"), (ERROR, "error")):
            now = self.child.counts[i]
            if now > self.counted[i]:
                SHADOW_PREDICTIONS.labels(outcome=outcome).inc(now - self.counted[i])
                self.counted[i] = now

    def run(self) -> None:
        # gathering and pickling still take this process's CPU and GIL: the least of it
        lowest_cpu_priority()
        held: list[tuple[ServedModel, str, list[Any]] | None] = []  # for the next batch
        while True:
            item = held.pop() if held else self.queue.get()
            if item is None:  # stop()
                return
            # nobody waits for a shadow's answer: let requests gather, then send them as
            # one batch, predicted in one call (one per request cost as much as serving it)
            time.sleep(SHADOW_LINGER_SECONDS)
            batch, rows = [item], len(item[2])
            # what else waits for the same model joins this call
            while rows < self.max_rows:
                try:
                    more = self.queue.get_nowait()
                except queue.Empty:
                    break
                if more is None or more[0] is not item[0]:
                    held.append(more)
                    break
                batch.append(more)
                rows += len(more[2])
            records = [r for _, _, recs in batch for r in recs]
            sent = ShadowBatch(
                item[0].tag,
                [(request_id, len(recs)) for _, request_id, recs in batch],
                self.child.spec.predictor.columns_of(records),
            )
            if not self.child.send(sent):
                self._drop(len(batch))
            self._sync()
