"""The shadow's own process, for real: spawned with a model, it writes a `shadow` row of
the prediction log per request it is handed, at idle CPU priority; killed, it is
started again with the model it had; closed, it delivers its log and ends; a model it
cannot be sent or cannot load is refused in words."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression

from nbship.prediction_log import SHADOW_KIND, SHADOW_SUFFIX, read_log, url_for_sqlite
from nbship.serving import shadow
from nbship.serving.following import ServedModel
from nbship.serving.predicting import Predictor
from nbship.serving.shadow import ShadowBatch, ShadowProcess, ShadowSpec
from tests.support import wait_until

pytestmark = pytest.mark.integration

TIMEOUT = 90  # a fresh interpreter importing pandas and scikit-learn on a busy machine


def rows(url: str, ids: list[str]) -> dict[str, list[dict[str, float]]] | None:
    frame = read_log(url, kind=SHADOW_KIND, request_ids=ids)
    return dict(zip(frame["request_id"], frame["outputs"], strict=True)) if len(frame) else None


def test_the_shadow_process_logs_answers_and_outlives_its_own_death(tmp_path: Path, monkeypatch):
    url = url_for_sqlite(tmp_path / "log.db")
    predictor = Predictor(("x",), frozenset({"x"}), classification=False)
    fitted = LinearRegression().fit(pd.DataFrame({"x": [0.0, 1.0, 2.0]}), [0.0, 2.0, 4.0])
    model = ServedModel("reg:v2", fitted, "registry", "test", {})
    child = ShadowProcess(ShadowSpec(predictor, url, str(tmp_path / "spool")))
    try:
        assert child.load(model), child.state
        assert child.process is not None and child.process.pid is not None
        if sys.platform == "linux":  # the CPU only when nothing else wants it
            assert os.sched_getscheduler(child.process.pid) == os.SCHED_IDLE
        assert child.send(ShadowBatch("reg:v2", [("a", 1), ("b", 2)], {"x": [1.0, 2.0, 3.0]}))
        got = wait_until(lambda: rows(url, ["a" + SHADOW_SUFFIX, "b" + SHADOW_SUFFIX]), TIMEOUT)
        assert got is not None and len(got) == 2
        assert [o["prediction"] for o in got["b" + SHADOW_SUFFIX]] == pytest.approx([4.0, 6.0])
        # a batch for a model the child no longer holds is skipped and counted
        assert child.send(ShadowBatch("reg:v1", [("c", 1)], {"x": [1.0]}))
        assert wait_until(lambda: child.counts[shadow.STALE] == 1, TIMEOUT)

        first = child.process.pid
        os.kill(first, signal.SIGKILL)
        child.process.join(10)
        monkeypatch.setattr(shadow, "RESTART_SECONDS", 0.0)
        assert child.send(ShadowBatch("reg:v2", [("d", 1)], {"x": [5.0]})), child.state
        assert child.process.pid != first and child.state == "running"
        got = wait_until(lambda: rows(url, ["d" + SHADOW_SUFFIX]), TIMEOUT)
        assert got is not None and got["d" + SHADOW_SUFFIX][0]["prediction"] == pytest.approx(10.0)
        # ended with its release: no process is left, and none starts for a late batch
        process = child.process
        child.close()
        assert not process.is_alive() and child.pid is None
        assert not child.send(ShadowBatch("reg:v2", [("e", 1)], {"x": [1.0]}))
        assert child.pid is None and child.state == "ended with its release"
    finally:
        child.close()


def refuse() -> None:
    raise RuntimeError("no such model class here")


class ElsewhereOnly:
    """Pickles in the server; unpickling it (in the child) raises, as a model whose class
    the child cannot import would."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return refuse, ()


def test_a_model_that_cannot_be_sent_or_loaded_is_refused_in_words(tmp_path: Path):
    predictor = Predictor(("x",), frozenset({"x"}), classification=False)
    child = ShadowProcess(ShadowSpec(predictor, url_for_sqlite(tmp_path / "log.db"),
                                     str(tmp_path / "spool")))  # fmt: skip
    try:
        # a lambda pickles by name, which cannot be found
        assert not child.load(ServedModel("reg:v8", lambda f: f, "registry", "test", {}))
        assert child.state.startswith("the shadow model cannot be sent") and child.pid is None
        assert not child.load(ServedModel("reg:v9", ElsewhereOnly(), "registry", "test", {}))
        assert child.state == (
            "the shadow process cannot load the model (RuntimeError: no such model class here)"
        )
        assert child.pid is not None and child.model is None  # alive, not restarted for it
        # its requests reach the child, which skips and counts them
        assert child.send(ShadowBatch("reg:v9", [("a", 1)], {"x": [1.0]}))
        assert wait_until(lambda: child.counts[shadow.STALE] == 1, TIMEOUT)
    finally:
        child.close()
