"""The release report: per-arm traffic, the shadow's answers against the champion's, and
the canary / A/B test on joined feedback, always valid however often it is read."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nbship.operate.release_report import (
    MIN_LABELLED,
    NO_DIFFERENCE,
    NOT_ENOUGH,
    msprt,
    release_rows,
    render,
    report,
)
from nbship.prediction_log import (
    COLUMNS,
    FEEDBACK_KIND,
    SHADOW_KIND,
    SHADOW_SUFFIX,
    LogEntry,
    PredictionLog,
    url_for_sqlite,
)
from nbship.registry.versions import Release

pytestmark = pytest.mark.unit

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)
CHAMPION, TRIAL = "penguins:v1", "penguins:v2"
CLASSES = ("Adelie", "Chinstrap", "Gentoo")
SEEDS = range(20)


def _release(kind: str = "ab", ended: datetime | None = None) -> Release:
    return Release(
        id=7, name="penguins", kind=kind, tag=TRIAL, champion_tag=CHAMPION, share=0.5,
        actor="ana", reason="try v2", started_at=T0, ended_at=ended,
        outcome=None if ended is None else "aborted", end_reason=None if ended is None else "done",
    )  # fmt: skip


def _row(rid: str, kind: str, tag: str | None, inputs: Any, outputs: Any, seconds: float,
         *, status: str = "ok", latency: float = 1.0, error_class: str | None = None,
         n: int = 1) -> dict[str, Any]:  # fmt: skip
    return {
        "request_id": rid, "ts": T0 + timedelta(seconds=seconds), "kind": kind,
        "model_tag": tag, "inputs": inputs, "outputs": outputs, "latency_ms": latency,
        "status": status, "http_status": 200 if status == "ok" else 500,
        "error_class": error_class, "error_message": None if status == "ok" else "boom",
        "n_records": n,
    }  # fmt: skip


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as `read_log` returns them (its columns, in time order)."""
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame.sort_values("ts", kind="stable").reset_index(drop=True)


def _label(label: str, p: float = 0.8) -> dict[str, Any]:
    rest = (1 - p) / (len(CLASSES) - 1)
    return {"label": label, "probabilities": {c: p if c == label else rest for c in CLASSES}}


def _fb(label: Any, request_id: str | None, row: int = 0, record: dict | None = None) -> dict:
    return {"label": label, "request_id": request_id, "row": row, "record": record}


def _experiment(
    seed: int, a: float, b: float, n: int = 1600, *, regression: bool = False
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """`n` one-record requests split at random between the arms, each labelled a second
    later: a classifier right with probability `a` / `b`, or a regressor whose errors have
    standard deviation `a` / `b`. Also (arm, right or squared error) in label order."""
    rng = np.random.default_rng(seed)
    arms = rng.integers(0, 2, n)
    if regression:
        truths = rng.normal(150, 30, n)
        errors = rng.normal(0, 1, n) * np.where(arms == 1, b, a)
        outputs = [[{"prediction": float(p)}] for p in truths + errors]
        labels, values = [float(t) for t in truths], errors**2
    else:
        truth = rng.integers(0, 3, n)
        right = rng.random(n) < np.where(arms == 1, b, a)
        answered = np.where(right, truth, (truth + 1) % 3)
        answers = [_label(c) for c in CLASSES]
        outputs = [[answers[k]] for k in answered]
        labels, values = [CLASSES[k] for k in truth], right.astype(float)
    ids = [f"r{i}" for i in range(n)]
    seconds = np.repeat(np.arange(n, dtype=float), 2) + np.tile([0.0, 0.5], n)
    frame = pd.DataFrame({
        "request_id": [x for i in range(n) for x in (ids[i], f"fb{i}")],
        "ts": T0 + pd.to_timedelta(seconds, unit="s"),
        "kind": ["predict", FEEDBACK_KIND] * n,
        "model_tag": [x for arm in arms for x in (TRIAL if arm else CHAMPION, None)],
        "inputs": [x for i in range(n) for x in ({"x": i}, [_fb(labels[i], ids[i])])],
        "outputs": [x for out in outputs for x in (out, None)],
        "latency_ms": 1.0, "status": "ok", "http_status": 200, "error_class": None,
        "error_message": None, "n_records": 1,
    })  # fmt: skip
    return frame, arms, values


def _naive_winner(arms: np.ndarray, values: np.ndarray, every: int = 50) -> bool:
    """A fixed-horizon z-test (alpha 0.05, Welch's variance) read after every `every`
    labels: whether any look "finds" a difference."""
    looks = np.arange(every, len(values) + 1, every) - 1
    b = arms == 1
    n_a, n_b = np.cumsum(~b)[looks], np.cumsum(b)[looks]
    m_a, m_b = np.cumsum(values * ~b)[looks] / n_a, np.cumsum(values * b)[looks] / n_b
    q_a, q_b = np.cumsum(values**2 * ~b)[looks], np.cumsum(values**2 * b)[looks]
    variance = (q_a - n_a * m_a**2) / (n_a - 1) / n_a + (q_b - n_b * m_b**2) / (n_b - 1) / n_b
    z = np.abs(m_b - m_a)[variance > 0] / np.sqrt(variance[variance > 0])
    return bool(np.any(2 * stats.norm.sf(z) < 0.05))


# canary and A/B --------------------------------------------------------------------------


def test_a_truly_better_b_is_found_better():
    rows, arms, _ = _experiment(0, 0.75, 0.9)
    out = report(_release("ab"), rows, "classification")
    assert out["verdict"] == "b is better"
    a, b = out["feedback"]["arms"]["a"], out["feedback"]["arms"]["b"]
    assert a["labelled"] == (arms == 0).sum() and b["labelled"] == (arms == 1).sum()
    assert 750 < a["labelled"] < 850
    assert a["accuracy_ci"][0] < a["accuracy"] < a["accuracy_ci"][1]
    assert a["accuracy"] == pytest.approx(0.75, abs=0.04)
    assert b["accuracy"] == pytest.approx(0.9, abs=0.03)
    test = out["test"]
    assert test["difference"] == pytest.approx(b["accuracy"] - a["accuracy"])
    assert test["always_valid_p"] < 1e-4
    low, high = test["always_valid_ci"]
    assert 0 < low < test["difference"] < high
    assert test["mixture_sd"] == 0.02 and test["min_effect"] == 0.02
    # fixed horizon, 0.02 from a's accuracy: (z_0.975 + z_0.8)^2 (p(1-p) + q(1-q)) / 0.02^2
    p, q = a["accuracy"], a["accuracy"] + 0.02
    needed = (1.959964 + 0.841621) ** 2 * (p * (1 - p) + q * (1 - q)) / 0.02**2
    assert test["sample_size"]["per_arm"] == math.ceil(needed)  # ~6,800
    assert (
        test["sample_size"]["still_needed"]["a"] == test["sample_size"]["per_arm"] - a["labelled"]
    )
    json.dumps(out, allow_nan=False)  # JSON-able, no NaN


def test_canary_verdicts_name_the_canary_arms():
    rows, _, _ = _experiment(1, 0.75, 0.9)
    assert report(_release("canary"), rows, "classification")["verdict"] == "canary is better"
    rows, _, _ = _experiment(1, 0.9, 0.75)
    out = report(_release("canary"), rows, "classification")
    assert out["verdict"] == "champion is better"
    assert set(out["arms"]) == set(out["feedback"]["arms"]) == {"champion", "canary"}


def test_identical_arms_never_win_though_naive_peeking_does():
    naive = 0
    for seed in SEEDS:
        rows, arms, values = _experiment(seed, 0.8, 0.8)
        out = report(_release("ab"), rows, "classification")
        assert out["verdict"] == NO_DIFFERENCE, seed
        assert out["test"]["always_valid_p"] > 0.05
        low, high = out["test"]["always_valid_ci"]
        assert low < 0 < high
        naive += _naive_winner(arms, values)
    assert naive >= 2  # 32 looks at a 5% test: each run "wins" with chance ~0.3


def test_regression_better_arm_and_identical_arms():
    rows, _, _ = _experiment(3, 10.0, 8.0, regression=True)
    out = report(_release("ab"), rows, "regression")
    assert out["verdict"] == "b is better"
    a, b = out["feedback"]["arms"]["a"], out["feedback"]["arms"]["b"]
    assert a["rmse"] == pytest.approx(10, rel=0.1) and b["rmse"] == pytest.approx(8, rel=0.1)
    assert a["rmse_ci"][0] < a["rmse"] < a["rmse_ci"][1] and a["mae"] < a["rmse"]
    test = out["test"]
    assert test["metric"] == "mse" and "squared errors" in test["statistic"]
    assert test["difference"] == pytest.approx(b["rmse"] ** 2 - a["rmse"] ** 2)
    assert test["min_effect"] == pytest.approx(0.05 * a["rmse"])
    assert test["always_valid_ci"][1] < 0  # b's squared errors are smaller

    winners, final, naive = [], [], 0
    for seed in SEEDS:
        rows, arms, values = _experiment(seed, 10.0, 10.0, regression=True)
        if report(_release("ab"), rows, "regression")["verdict"] != NO_DIFFERENCE:
            winners.append(seed)
        final += [seed] * _naive_winner(arms, values, every=len(values))  # one look, at the end
        naive += _naive_winner(arms, values)
    # No winner but where one test of all the data, at the end, finds one too: seed 3's
    # identical arms came out at RMSE 10.6 against 9.6 (a 1-in-200 draw, fixed-horizon
    # p = 0.005), which a 5% test of any kind calls. Peeking names several more.
    assert set(winners) <= set(final) and len(winners) <= 1
    assert naive >= len(winners) + 3


def test_msprt_keeps_its_level_over_many_runs():
    """Identical arms, 300 runs of 1,600 labels: the always-valid test names a winner in
    at most alpha of them; the fixed test read every 50 labels in far more."""
    runs, alpha = 300, 0.05
    for regression in (False, True):
        sequential = naive = 0
        for seed in range(runs):
            rng = np.random.default_rng(1000 + seed)
            arms = rng.integers(0, 2, 1600)
            values = rng.normal(0, 10, 1600) ** 2 if regression else rng.random(1600) < 0.8
            values = np.asarray(values, dtype=float)
            tau = 0.05 * 10 * (2 * 10 - 0.05 * 10) if regression else 0.02
            result = msprt(arms, values, tau=tau, alpha=alpha, ddof=int(regression), start=30)
            sequential += result["always_valid_p"] <= alpha
            naive += _naive_winner(arms, values)
        assert sequential / runs <= alpha / 2, regression  # (0 and 0.7% when written)
        assert naive / runs > 0.15, regression  # (~0.3)


def test_not_enough_labelled_rows():
    rows, arms, _ = _experiment(4, 0.5, 1.0, n=50)
    assert min((arms == 0).sum(), (arms == 1).sum()) < MIN_LABELLED
    out = report(_release("ab"), rows, "classification")
    assert out["verdict"] == NOT_ENOUGH
    assert out["test"]["looks"] == 0 and out["test"]["always_valid_ci"] is None
    assert "starts once each arm has 30 labelled rows" in render(out)


def test_errors_and_latency_per_arm():
    rows = [
        *(_row(f"a{i}", "predict", CHAMPION, {}, [_label("Adelie")], i, latency=float(i + 1))
          for i in range(8)),
        _row("a8", "predict", CHAMPION, {}, None, 8, status="error", latency=500.0),
        _row("a9", "predict", CHAMPION, {}, None, 9, status="error"),
        _row("b0", "predict", TRIAL, [{}, {}, {}], [_label("Adelie")] * 3, 10, n=3,
             latency=4.0),
        _row("b1", "predict", TRIAL, {}, None, 11, status="error"),
        _row("other", "predict", "penguins:v0", {}, [_label("Adelie")], 12),  # not this release
    ]  # fmt: skip
    arms = report(_release("ab"), _frame(rows), "classification")["arms"]
    assert arms["a"] == {
        "tag": CHAMPION, "requests": 10, "records": 10, "errors": 2, "error_rate": 0.2,
        "latency_p50_ms": 4.5, "latency_p99_ms": pytest.approx(7.93),  # of answered requests
    }  # fmt: skip
    assert (arms["b"]["requests"], arms["b"]["records"], arms["b"]["errors"]) == (2, 4, 1)
    assert arms["b"]["error_rate"] == 0.5 and arms["b"]["latency_p50_ms"] == 4.0


def test_feedback_without_request_id_is_ignored_and_later_labels_win():
    rows = [
        _row("q", "predict", CHAMPION, [{}, {}], [_label("Adelie"), _label("Gentoo")], 0, n=2),
        _row("p", "predict", TRIAL, {}, [_label("Adelie")], 1),
        _row("bad", "predict", TRIAL, {}, None, 2, status="error"),
        _row("f1", FEEDBACK_KIND, None, [
            _fb("Adelie", "q"), _fb("Adelie", "q", row=1), _fb("Adelie", "p"),
            *(_fb("Chinstrap", None, record={"x": i}) for i in range(5)),  # no arm
            _fb("Adelie", "q", row=5),  # no such record
            _fb("Adelie", "bad"),  # an error has no answer to score
            _fb("Adelie", "elsewhere"),  # not a request of this release
        ], None, 3),
        _row("f2", FEEDBACK_KIND, None, [_fb("Gentoo", "q", row=1)], None, 4),  # relabelled
        _row("f3", FEEDBACK_KIND, None, [_fb("Gentoo", "p")], None, 5, status="error"),
    ]  # fmt: skip
    feedback = report(_release("ab"), _frame(rows), "classification")["feedback"]
    assert {k: feedback[k] for k in ("items", "without_request_id", "unmatched", "relabelled")} == {
        "items": 12, "without_request_id": 5, "unmatched": 3, "relabelled": 1,
    }  # fmt: skip
    assert feedback["arms"]["a"]["labelled"] == 2 and feedback["arms"]["a"]["accuracy"] == 1.0
    assert feedback["arms"]["b"]["labelled"] == 1 and feedback["arms"]["b"]["accuracy"] == 1.0


# shadow ----------------------------------------------------------------------------------


def _shadow_rows(champion: list[Any], shadow: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for i, (c, s) in enumerate(zip(champion, shadow, strict=True)):
        rows.append(_row(f"r{i}", "predict", CHAMPION, [{}] * len(c), c, i, n=len(c)))
        rows.append(_row(f"r{i}{SHADOW_SUFFIX}", SHADOW_KIND, TRIAL, None, s, i + 0.1, n=len(s),
                         latency=10.0))  # fmt: skip
    return rows


def test_shadow_agreement_and_top_differences():
    def answer(label: str, **p: float) -> dict:
        return {"label": label, "probabilities": p}

    rows = _shadow_rows(
        [[answer("Adelie", Adelie=0.9, Chinstrap=0.1), answer("Gentoo", Gentoo=0.6, Adelie=0.4)],
         [answer("Chinstrap", Chinstrap=1.0)]],
        [[answer("Adelie", Adelie=0.8, Chinstrap=0.2), answer("Adelie", Adelie=0.7, Gentoo=0.3)],
         [answer("Chinstrap", Chinstrap=0.95, Adelie=0.05)]],
    )  # fmt: skip
    rows += [
        _row("r2", "predict", CHAMPION, {}, [answer("Adelie", Adelie=1.0)], 2),
        _row("r2" + SHADOW_SUFFIX, SHADOW_KIND, TRIAL, None, None, 2.1, status="error",
             error_class="ValueError"),
        _row("r3", "predict", CHAMPION, {}, [answer("Adelie", Adelie=1.0)], 3),
        _row("r3" + SHADOW_SUFFIX, SHADOW_KIND, TRIAL, None, None, 3.1, status="error",
             error_class="MemoryError"),
        # not drawn, or dropped (a full shadow queue logs no row)
        _row("r4", "predict", CHAMPION, {}, [answer("Adelie", Adelie=1.0)], 4),
    ]  # fmt: skip
    out = report(_release("shadow"), _frame(rows), "classification", top=2)
    shadow = out["shadow"]
    assert (shadow["requests_compared"], shadow["pairs"], shadow["unshadowed"]) == (2, 3, 1)
    assert shadow["errors"] == 2
    assert shadow["errors_by_class"] == {"ValueError": 1, "MemoryError": 1}
    assert shadow["agreement"] == pytest.approx(2 / 3)
    assert shadow["max_probability_difference"] == pytest.approx(0.3)
    top = [
        (p["request_id"], p["row"], p["agree"], round(p["difference"], 6)) for p in shadow["top"]
    ]
    assert top == [("r0", 1, False, 0.3), ("r0", 0, True, 0.1)]  # the disagreement first
    assert shadow["top"][0]["champion"]["label"] == "Gentoo"
    assert shadow["top"][0]["shadow"]["label"] == "Adelie"
    assert out["arms"]["shadow"]["requests"] == 4 and out["arms"]["shadow"]["errors"] == 2
    assert out["arms"]["shadow"]["latency_p50_ms"] == 10.0
    assert out["arms"]["champion"]["requests"] == 5
    assert out["feedback"] is out["test"] is out["verdict"] is None
    text = render(out)
    assert "label agreement 66.7%" in text and "ValueError 1" in text and "Gentoo (0.60)" in text


def test_shadow_regression_differences():
    rows = _shadow_rows(
        [[{"prediction": 100.0}, {"prediction": 50.0}], [{"prediction": 10.0}]],
        [[{"prediction": 103.0}, {"prediction": 49.0}], [{"prediction": 10.0}]],
    )
    shadow = report(_release("shadow"), _frame(rows), "regression")["shadow"]
    assert shadow["mean_abs_difference"] == pytest.approx(4 / 3)
    assert shadow["max_abs_difference"] == 3.0
    assert [(p["request_id"], p["row"], p["difference"]) for p in shadow["top"]] == [
        ("r0", 0, 3.0), ("r0", 1, 1.0),  # no row that does not differ
    ]  # fmt: skip


# the log ---------------------------------------------------------------------------------


def test_release_rows_reads_the_window_and_late_feedback(tmp_path: Path):
    url = url_for_sqlite(tmp_path / "log.db")
    end = T0 + timedelta(hours=1)

    def entry(rid: str, kind: str, tag: str | None, outputs: Any, at: datetime,
              inputs: Any = None) -> LogEntry:  # fmt: skip
        return LogEntry(request_id=rid, ts=at, kind=kind, model_tag=tag, inputs=inputs or {},
                        outputs=outputs, latency_ms=2.0, status="ok", http_status=200,
                        n_records=1)  # fmt: skip

    minute = timedelta(minutes=1)
    entries = [
        entry("before", "predict", CHAMPION, [_label("Adelie")], T0 - minute),
        entry("a", "predict", CHAMPION, [_label("Adelie")], T0 + minute),
        entry("b", "predict", TRIAL, [_label("Gentoo")], T0 + 2 * minute),
        entry("a" + SHADOW_SUFFIX, SHADOW_KIND, TRIAL, [_label("Gentoo")], T0 + 2 * minute),
        entry("other", "predict", "other:v1", [_label("Adelie")], T0 + 3 * minute),
        entry("after", "predict", TRIAL, [_label("Gentoo")], end + minute),
        entry("fb", FEEDBACK_KIND, None, None, end + 10 * minute,  # after the end: still read
              inputs=[_fb("Adelie", "a"), _fb("Adelie", "b"), _fb("Adelie", "before")]),
    ]  # fmt: skip
    with PredictionLog(url, tmp_path / "spool") as log:
        for e in entries:
            assert log.record(e)
        assert log.flush()

    rows = release_rows(url, _release("ab", ended=end))
    assert list(rows["request_id"]) == ["a", "b", "fb"]
    assert rows["ts"].is_monotonic_increasing
    out = report(_release("ab", ended=end), rows, "classification")
    assert out["feedback"]["arms"]["a"]["accuracy"] == 1.0
    assert out["feedback"]["arms"]["b"]["accuracy"] == 0.0
    assert out["feedback"]["unmatched"] == 1  # "before" was not answered in the release
    assert out["release"]["ended_at"] == end.isoformat() and out["release"]["outcome"] == "aborted"

    rows = release_rows(url, _release("shadow"))  # running: no end bound
    assert list(rows["request_id"]) == ["a", "b", "a" + SHADOW_SUFFIX, "after", "fb"]
    shadow = report(_release("shadow"), rows, "classification")["shadow"]
    assert (shadow["pairs"], shadow["agreement"]) == (1, 0.0)
    empty = release_rows(url_for_sqlite(tmp_path / "none.db"), _release())
    assert empty.empty
    out = report(_release(), empty, "regression")
    assert out["verdict"] == NOT_ENOUGH and out["arms"]["a"]["requests"] == 0
    assert out["arms"]["a"]["error_rate"] is None and out["feedback"]["arms"]["b"]["rmse"] is None
    render(out)


def test_render_shows_each_section():
    rows, _, _ = _experiment(5, 0.75, 0.9)
    text = render(report(_release("ab"), rows, "classification"))
    lines = text.splitlines()
    assert lines[0] == (f"release 7 of penguins: ab {TRIAL} beside champion {CHAMPION}, share 50%")
    assert "running" in lines[1]
    for expected in ("traffic", "labelled feedback (95% intervals)", "always-valid 95% interval",
                     "fixed horizon", "verdict: b is better"):  # fmt: skip
        assert expected in text, expected
    header = next(line for line in lines if line.lstrip().startswith("arm  "))
    assert header.index("requests") > header.index("tag")
