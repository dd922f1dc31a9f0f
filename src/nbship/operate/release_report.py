"""The release report: what a shadow, canary or A/B release did, from the prediction log.

`release_rows` reads the log rows of a release (its window's /predict and shadow answers,
and the feedback that arrived since it started); `report` turns them into a JSON-able
dict; `render` into the text `nbship release report` prints.

Every release gets per-arm traffic (requests, records, errors, latency). A shadow
release compares the shadow's answers with the champion's on the same requests (label
agreement and probability differences, or prediction differences), since it never
answers. A canary or A/B release scores each arm on the labelled feedback joined to the
requests that arm answered (accuracy, or RMSE and MAE) and tests the difference.

The test is meant to be read while the release runs, again and again: a fixed-horizon
p-value read at every look finds a "winner" between identical arms far more often than
alpha. So the p-value is the always-valid one of the mixture sequential probability
ratio test (mSPRT; Johari, Pekelis & Walsh, "Always valid inference", 2017/2022),
computed over the whole sequence of labelled rows in time order at every report: the
running minimum of 1/Lambda_n over every prefix n, which by Ville's inequality is below
alpha with probability at most alpha whatever the stopping time. Nothing is stored
between reports: each one replays the sequence from the log.

    Lambda_n = sqrt(V / (V + tau^2)) * exp(tau^2 theta^2 / (2 V (V + tau^2)))

theta is the difference of the arms' means (b - a), V its estimated variance
(unpooled: two proportions, or Welch's for means), tau^2 the variance of the normal
mixture over the effect. tau is the smallest effect worth detecting (`min_effect`),
so the test is most sensitive to effects of that size: for classification the accuracy
difference itself (default 0.02); for regression the test is on squared errors (their
mean is the MSE, so "lower MSE" is "lower RMSE"), and a `min_effect` of d in RMSE
units is the MSE difference R^2 - (R - d)^2, R arm a's RMSE when the test starts
(both arms with `MIN_LABELLED` rows): fixed then, so tau is the same at every later
look. The looks start at that point too (the plug-in variance is poor before).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from nbship import tasks
from nbship.drift import DEFAULT_MIN_ROWS, psi
from nbship.prediction_log import FEEDBACK_KIND, SHADOW_KIND, SHADOW_SUFFIX, read_log
from nbship.registry.versions import SHADOW, Release

PREDICT_KIND = "predict"
MIN_LABELLED = 30  # labelled rows per arm before the test starts (and a verdict is given)
POWER = 0.8  # of the sample-size estimate
DEFAULT_ACCURACY_EFFECT = 0.02  # classification: absolute accuracy difference
DEFAULT_RMSE_EFFECT = 0.05  # regression: this share of arm a's RMSE
NOT_ENOUGH = "not enough labelled data"
NO_DIFFERENCE = "no difference detected yet"


def better(arm: str) -> str:
    """The verdict naming the arm that won: "b is better", "canary is better", ..."""
    return f"{arm} is better"


# reading ---------------------------------------------------------------------------------


def release_rows(log_url: str, release: Release) -> pd.DataFrame:
    """The log rows a report of `release` needs, in time order: /predict rows of the
    champion and of the trial version, and the shadow's answers, from its start to its
    end (now while it runs); feedback from its start on, however late it came."""
    since, until = release.started_at, release.ended_at
    frames = [
        read_log(log_url, since=since, until=until, kind=PREDICT_KIND, model_tag=tag)
        for tag in dict.fromkeys((release.champion_tag, release.tag))
    ]
    if release.kind == SHADOW:
        frames.append(
            read_log(log_url, since=since, until=until, kind=SHADOW_KIND, model_tag=release.tag)
        )
    frames.append(read_log(log_url, since=since, kind=FEEDBACK_KIND))
    filled = [f for f in frames if len(f)]
    if not filled:
        return frames[0]
    rows = pd.concat(filled, ignore_index=True)
    return rows.sort_values("ts", kind="stable").reset_index(drop=True)


# small helpers ---------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    """A finite float, or None (JSON has no NaN)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _quantile(values: pd.Series, q: float) -> float | None:
    finite = values.to_numpy(dtype=float, na_value=np.nan)
    finite = finite[np.isfinite(finite)]
    return float(np.quantile(finite, q)) if len(finite) else None


def _answers(outputs: Any) -> list[Any]:
    """A logged answer as the list of per-record predictions."""
    if isinstance(outputs, list):
        return outputs
    return [outputs] if isinstance(outputs, dict) else []


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def _arm_frames(release: Release, rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Each arm's answers: the champion's /predict rows, and the trial version's /predict
    rows (canary, A/B) or shadow answers."""
    first, second = release.arms
    trial_kind = SHADOW_KIND if release.kind == SHADOW else PREDICT_KIND
    return {
        first: rows[(rows["kind"] == PREDICT_KIND) & (rows["model_tag"] == release.champion_tag)],
        second: rows[(rows["kind"] == trial_kind) & (rows["model_tag"] == release.tag)],
    }


def _traffic(frame: pd.DataFrame, tag: str) -> dict[str, Any]:
    """Requests, records, errors and latency of one arm (latency of the answered ones)."""
    errors = int((frame["status"] == "error").sum())
    ok = frame[frame["status"] == "ok"]
    return {
        "tag": tag,
        "requests": len(frame),
        "records": int(frame["n_records"].sum()),
        "errors": errors,
        "error_rate": errors / len(frame) if len(frame) else None,
        "latency_p50_ms": _quantile(ok["latency_ms"], 0.5),
        "latency_p99_ms": _quantile(ok["latency_ms"], 0.99),
    }


def _answer_values(frame: pd.DataFrame, classification: bool) -> list[Any]:
    key = "label" if classification else "prediction"
    return [
        a.get(key)
        for outputs in frame.loc[frame["status"] == "ok", "outputs"]
        for a in _answers(outputs)
        if isinstance(a, Mapping) and a.get(key) is not None
    ]


def answer_drift(
    frames: Mapping[str, pd.DataFrame], classification: bool, bins: int = 10
) -> dict[str, Any]:
    """How differently the two arms answer the same traffic: PSI of the trial's answers
    against the champion's (predicted classes, or the champion's deciles of predicted
    values) and the p-value of chi-squared (classes) or Kolmogorov-Smirnov (values);
    None below `DEFAULT_MIN_ROWS` answers on either side."""
    champion, trial = (_answer_values(f, classification) for f in frames.values())
    result: dict[str, Any] = {"answers": [len(champion), len(trial)], "psi": None, "pvalue": None}
    if min(len(champion), len(trial)) < DEFAULT_MIN_ROWS:
        return result
    if classification:
        labels = sorted({str(v) for v in champion} | {str(v) for v in trial})
        counts = np.array(
            [[sum(str(v) == c for v in side) for c in labels] for side in (champion, trial)]
        )
        table = counts.astype(float)
        pvalue = 1.0 if len(labels) < 2 else float(stats.chi2_contingency(table).pvalue)
    else:
        a, b = np.asarray(champion, dtype=float), np.asarray(trial, dtype=float)
        edges = np.unique(np.quantile(a, np.linspace(0, 1, bins + 1))[1:-1])
        counts = np.array(
            [np.bincount(np.searchsorted(edges, x), minlength=len(edges) + 1) for x in (a, b)]
        )
        pvalue = float(stats.ks_2samp(a, b).pvalue)
    result.update(psi=psi(counts[0], counts[1]), pvalue=pvalue)
    return result


# shadow ----------------------------------------------------------------------------------


def _probability_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> float | None:
    """max |p_a(c) - p_b(c)| over the classes of either (a missing class: 0)."""
    pa, pb = a.get("probabilities"), b.get("probabilities")
    if not isinstance(pa, Mapping) or not isinstance(pb, Mapping):
        return None
    classes = set(pa) | set(pb)
    return max((abs(float(pa.get(c, 0.0)) - float(pb.get(c, 0.0))) for c in classes), default=0.0)


def _shadow(
    champion: pd.DataFrame, shadow: pd.DataFrame, classification: bool, top: int
) -> dict[str, Any]:
    """The shadow's answers against the champion's, record by record of the requests
    both answered."""
    answered = shadow[shadow["status"] == "ok"]
    by_request = {
        rid.removesuffix(SHADOW_SUFFIX): out
        for rid, out in zip(answered["request_id"], answered["outputs"], strict=True)
    }
    errors = shadow[shadow["status"] == "error"]
    shadowed = {rid.removesuffix(SHADOW_SUFFIX) for rid in shadow["request_id"]}
    pairs: list[dict[str, Any]] = []
    compared = unshadowed = 0
    ok = champion[champion["status"] == "ok"]
    for rid, out in zip(ok["request_id"], ok["outputs"], strict=True):
        if rid not in by_request:
            unshadowed += rid not in shadowed
            continue
        compared += 1
        for row, (a, b) in enumerate(zip(_answers(out), _answers(by_request[rid]), strict=False)):
            if not isinstance(a, Mapping) or not isinstance(b, Mapping):
                continue
            pair: dict[str, Any] = {"request_id": rid, "row": row, "champion": a, "shadow": b}
            if classification:
                pair["agree"] = a.get("label") == b.get("label")
                pair["difference"] = _probability_difference(a, b)
            else:
                pc, ps = _num(a.get("prediction")), _num(b.get("prediction"))
                pair["difference"] = None if pc is None or ps is None else abs(pc - ps)
            pairs.append(pair)
    differences = [p["difference"] for p in pairs if p["difference"] is not None]
    section: dict[str, Any] = {
        "requests_compared": compared,
        # answered by the champion, no shadow row: not drawn (share), or dropped because
        # the shadow's queue was full (serving counts drops, logs no row for them)
        "unshadowed": unshadowed,
        "pairs": len(pairs),
        "errors": len(errors),  # the shadow model raised
        "errors_by_class": {
            str(k): int(v) for k, v in errors["error_class"].fillna("?").value_counts().items()
        },
    }
    if classification:
        section["agreement"] = sum(p["agree"] for p in pairs) / len(pairs) if pairs else None
        section["max_probability_difference"] = max(differences, default=None)
    else:
        section["mean_abs_difference"] = float(np.mean(differences)) if differences else None
        section["max_abs_difference"] = max(differences, default=None)

    def distance(pair: dict[str, Any]) -> tuple[bool, float]:
        return (not pair.get("agree", True), pair["difference"] or 0.0)

    differing = [p for p in pairs if distance(p) > (False, 0.0)]
    section["top"] = sorted(differing, key=distance, reverse=True)[:top]
    return section


# labelled feedback -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Labelled:
    """The labelled rows joined to an arm, in the time order of their labels: `arm` 0 (a)
    or 1 (b); `value` 1/0 for a correct/wrong label, or the signed error of a number."""

    arm: np.ndarray
    value: np.ndarray
    items: int
    without_request_id: int
    unmatched: int
    relabelled: int


def _labelled(
    arms: Mapping[str, pd.DataFrame], rows: pd.DataFrame, classification: bool
) -> _Labelled:
    """Joins each feedback item naming a request to the answer of that request's arm
    (`arms`: each arm's rows, a then b); items with a new record instead have no arm and
    are counted, not used. The later of two labels of one prediction wins (and takes the
    later place in time)."""
    answers: dict[str, tuple[int, list[Any]]] = {}
    for index, frame in enumerate(arms.values()):
        ok = frame[frame["status"] == "ok"]
        for rid, out in zip(ok["request_id"], ok["outputs"], strict=True):
            answers[rid] = (index, _answers(out))
    feedback = rows[(rows["kind"] == FEEDBACK_KIND) & (rows["status"] == "ok")]
    feedback = feedback.sort_values("ts", kind="stable")  # the test's order: the labels'
    joined: dict[tuple[str, int], tuple[int, float]] = {}
    items = without = unmatched = relabelled = 0
    for inputs in feedback["inputs"]:
        for item in inputs if isinstance(inputs, list) else []:
            if not isinstance(item, Mapping) or item.get("label") is None:
                continue
            items += 1
            rid = item.get("request_id")
            if not rid:
                without += 1
                continue
            row = int(item.get("row") or 0)
            arm, outs = answers.get(rid, (0, []))
            answer = outs[row] if 0 <= row < len(outs) else None
            value = _score(answer, item["label"], classification)
            if value is None:
                unmatched += 1
                continue
            if joined.pop((rid, row), None) is not None:
                relabelled += 1
            joined[(rid, row)] = (arm, value)
    pairs = list(joined.values())
    return _Labelled(
        arm=np.array([p[0] for p in pairs], dtype=int),
        value=np.array([p[1] for p in pairs], dtype=float),
        items=items,
        without_request_id=without,
        unmatched=unmatched,
        relabelled=relabelled,
    )


def _score(answer: Any, label: Any, classification: bool) -> float | None:
    """1.0/0.0 for a right/wrong class, the error (prediction - label) of a number; None
    when there is nothing to score (no such answer, a label that is no number)."""
    if not isinstance(answer, Mapping):
        return None
    if classification:
        return None if "label" not in answer else float(str(answer["label"]) == str(label))
    if isinstance(label, bool) or not isinstance(label, int | float):
        return None
    predicted, truth = _num(answer.get("prediction")), _num(label)
    return None if predicted is None or truth is None else predicted - truth


def _mean_interval(values: np.ndarray, confidence: float) -> list[float] | None:
    """Student's t interval of the mean (None below two values)."""
    if len(values) < 2:
        return None
    mean, sem = float(np.mean(values)), float(stats.sem(values))
    half = float(stats.t.ppf((1 + confidence) / 2, len(values) - 1)) * sem if sem > 0 else 0.0
    return [mean - half, mean + half]


def _arm_metrics(values: np.ndarray, classification: bool, confidence: float) -> dict[str, Any]:
    """One arm's score on its labelled rows, with fixed-sample intervals at `confidence`:
    Wilson's for accuracy; t intervals of the MSE (square-rooted: the RMSE's) and MAE."""
    n = len(values)
    metrics: dict[str, Any] = {"labelled": n}
    if classification:
        metrics.update(accuracy=None, accuracy_ci=None)
        if n:
            p = float(np.mean(values))
            z = float(stats.norm.ppf((1 + confidence) / 2))
            shrink = 1 + z * z / n
            centre = (p + z * z / (2 * n)) / shrink
            half = z / shrink * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
            metrics.update(
                accuracy=p, accuracy_ci=[max(0.0, centre - half), min(1.0, centre + half)]
            )
        return metrics
    mse = _mean_interval(values**2, confidence)
    metrics.update(
        rmse=math.sqrt(float(np.mean(values**2))) if n else None,
        rmse_ci=None if mse is None else [math.sqrt(max(0.0, mse[0])), math.sqrt(mse[1])],
        mae=float(np.mean(np.abs(values))) if n else None,
        mae_ci=_mean_interval(np.abs(values), confidence),
    )
    return metrics


# the sequential test ---------------------------------------------------------------------


def msprt(
    arm: np.ndarray, x: np.ndarray, *, tau: float, alpha: float, ddof: int, start: int
) -> dict[str, Any]:
    """The normal-mixture SPRT of "mean of arm 1 = mean of arm 0" over observations `x`
    in time order (`arm` 0 or 1 each), looked at after every observation once both arms
    have `start`: the always-valid p-value (running minimum of 1/Lambda) and confidence
    sequence (running intersection) of the difference mean_1 - mean_0. `ddof` 0: the
    variance of proportions, p(1-p)/n; 1: Welch's, s^2/n."""
    b = arm == 1
    a = ~b
    n_a, n_b = np.cumsum(a), np.cumsum(b)
    s_a, s_b = np.cumsum(x * a), np.cumsum(x * b)
    q_a, q_b = np.cumsum(x * x * a), np.cumsum(x * x * b)
    look = (n_a >= start) & (n_b >= start) & (n_a > ddof) & (n_b > ddof)
    n_a, n_b, s_a, s_b, q_a, q_b = (v[look] for v in (n_a, n_b, s_a, s_b, q_a, q_b))
    mean_a, mean_b = s_a / n_a, s_b / n_b
    var_a = np.maximum(q_a - n_a * mean_a**2, 0) / (n_a - ddof)
    var_b = np.maximum(q_b - n_b * mean_b**2, 0) / (n_b - ddof)
    v = var_a / n_a + var_b / n_b
    theta = mean_b - mean_a
    usable = v > 0  # both arms constant (all right, say): no evidence either way
    v, theta = v[usable], theta[usable]
    result: dict[str, Any] = {"looks": len(v), "always_valid_p": 1.0, "always_valid_ci": None}
    if not len(v) or tau <= 0:
        return result
    t2 = tau * tau
    log_lr = 0.5 * np.log(v / (v + t2)) + t2 * theta**2 / (2 * v * (v + t2))
    radius = np.sqrt(v * (v + t2) / t2 * (2 * math.log(1 / alpha) + np.log((v + t2) / v)))
    low, high = float(np.max(theta - radius)), float(np.min(theta + radius))
    if low > high:  # the intervals no longer meet (the model's assumptions fail): the last
        low, high = float(theta[-1] - radius[-1]), float(theta[-1] + radius[-1])
    result["always_valid_p"] = min(1.0, math.exp(-float(np.max(log_lr))))
    result["always_valid_ci"] = [low, high]
    return result


def _first_look(arm: np.ndarray, start: int) -> int | None:
    """The index of the first observation after which both arms have `start`."""
    both = (np.cumsum(arm == 0) >= start) & (np.cumsum(arm == 1) >= start)
    return int(np.argmax(both)) if both.any() else None


def _accuracy_sample_size(accuracy: float | None, effect: float, z: float) -> float | None:
    """Rows per arm for a fixed-horizon two-proportion test to detect `effect` from arm
    a's `accuracy` (z: z_(1-alpha/2) + z_power)."""
    if accuracy is None:
        return None
    other = accuracy + effect if accuracy + effect <= 1 else max(0.0, accuracy - effect)
    return z * z * (accuracy * (1 - accuracy) + other * (1 - other)) / effect**2


def _mse_plan(
    arm: np.ndarray, x: np.ndarray, spread: list[float | None], min_effect: float | None, z: float
) -> tuple[float, float, float | None]:
    """Regression on squared errors `x`: the smallest RMSE difference worth detecting
    (default 5% of arm a's RMSE), the mixture's sd (that difference as one of MSE, from
    arm a's RMSE when the test starts: fixed from then on) and the fixed-horizon rows per
    arm to detect it (None until arm a has two labelled rows)."""
    a = x[arm == 0]
    rmse_a = math.sqrt(float(np.mean(a))) if len(a) else 0.0
    effect = DEFAULT_RMSE_EFFECT * rmse_a if min_effect is None else min_effect
    tau = 0.0
    first = _first_look(arm, MIN_LABELLED)
    if first is not None:
        r = math.sqrt(float(np.mean(x[: first + 1][arm[: first + 1] == 0])))
        d = min(DEFAULT_RMSE_EFFECT * r if min_effect is None else min_effect, r)
        tau = d * (2 * r - d)  # R^2 - (R - d)^2
    needed = None
    d = min(effect, rmse_a)
    if spread[0] is not None and d > 0:
        variance = spread[0] + (spread[1] if spread[1] is not None else spread[0])
        needed = z * z * variance / (d * (2 * rmse_a - d)) ** 2
    return effect, tau, needed


def _test(
    labelled: _Labelled,
    arms: tuple[str, str],
    classification: bool,
    alpha: float,
    min_effect: float | None,
) -> tuple[dict[str, Any], str]:
    """The test of the arms' difference, the sample size still needed, and the verdict."""
    arm, value = labelled.arm, labelled.value
    counts = [int((arm == 0).sum()), int((arm == 1).sum())]
    z = float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(POWER))
    x = value if classification else value**2
    means = [float(np.mean(x[arm == i])) if counts[i] else None for i in (0, 1)]
    spread = [float(np.var(x[arm == i], ddof=1)) if counts[i] > 1 else None for i in (0, 1)]
    test: dict[str, Any] = {
        "method": "mSPRT (normal mixture), always valid under repeated looks",
        "statistic": "two proportions (accuracy)"
        if classification
        else "Welch (unequal variances) on squared errors",
        "metric": "accuracy" if classification else "mse",
        "higher_is_better": classification,
        "alpha": alpha,
        "difference": None if means[0] is None or means[1] is None else means[1] - means[0],
        "labelled": dict(zip(arms, counts, strict=True)),
    }
    if classification:
        effect = DEFAULT_ACCURACY_EFFECT if min_effect is None else min_effect
        tau, needed = effect, _accuracy_sample_size(means[0], effect, z)
    else:
        effect, tau, needed = _mse_plan(arm, x, spread, min_effect, z)
    test.update(
        min_effect=effect,
        min_effect_units="accuracy" if classification else "rmse",
        mixture_sd=tau,
    )
    test.update(
        msprt(arm, x, tau=tau, alpha=alpha, ddof=0 if classification else 1, start=MIN_LABELLED)
    )
    per_arm = None if needed is None else math.ceil(needed)
    test["sample_size"] = {
        "per_arm": per_arm,
        "still_needed": None
        if per_arm is None
        else {name: max(0, per_arm - c) for name, c in zip(arms, counts, strict=True)},
        "power": POWER,
        "formula": "fixed horizon (the sequential test typically needs more)",
    }
    if min(counts) < MIN_LABELLED:
        return test, NOT_ENOUGH
    if test["always_valid_p"] > alpha:
        return test, NO_DIFFERENCE
    low, high = test["always_valid_ci"]
    higher = low > 0 if low > 0 or high < 0 else (test["difference"] or 0.0) > 0
    # b's mean is higher: better for accuracy, worse for squared errors
    return test, better(arms[1] if higher == classification else arms[0])


# the report ------------------------------------------------------------------------------


def report(
    release: Release,
    rows: pd.DataFrame,
    task: str,
    *,
    alpha: float = 0.05,
    min_effect: float | None = None,
    top: int = 5,
) -> dict[str, Any]:
    """The release report as a JSON-able dict, from `release_rows`' rows. `task`:
    "classification" or "regression" (the served model's). `alpha`: the test's level
    (and 1 - alpha the intervals' confidence); `min_effect`: the smallest difference
    worth detecting, absolute accuracy or RMSE (default 0.02, or 5% of arm a's RMSE);
    `top`: how many of the most different shadow answers to list.

    Keys: release, task, arms (traffic per arm), shadow (shadow releases, else None),
    feedback and test (canary and A/B, else None), verdict (canary and A/B: "<arm> is
    better", NO_DIFFERENCE or NOT_ENOUGH; None for a shadow)."""
    if not 0 < alpha < 1:
        raise ValueError("alpha must be between 0 and 1")
    if min_effect is not None and not min_effect > 0:
        raise ValueError("min_effect must be positive")
    classification = tasks.get(task).is_classification
    first, second = release.arms
    frames = _arm_frames(release, rows)
    tags = {first: release.champion_tag, second: release.tag}
    result: dict[str, Any] = {
        "release": {
            "id": release.id,
            "name": release.name,
            "kind": release.kind,
            "tag": release.tag,
            "champion_tag": release.champion_tag,
            "share": release.share,
            "arms": list(release.arms),
            "started_at": _iso(release.started_at),
            "ended_at": _iso(release.ended_at),
            "outcome": release.outcome,
            "end_reason": release.end_reason,
        },
        "task": task,
        "arms": {name: _traffic(frame, tags[name]) for name, frame in frames.items()},
        "shadow": None,
        "feedback": None,
        "test": None,
        "verdict": None,
        "answer_drift": answer_drift(frames, classification),
    }
    if release.kind == SHADOW:
        result["shadow"] = _shadow(frames[first], frames[second], classification, top)
        return result
    labelled = _labelled(frames, rows, classification)
    confidence = 1 - alpha
    result["feedback"] = {
        "items": labelled.items,
        "without_request_id": labelled.without_request_id,  # new records: no arm, ignored
        "unmatched": labelled.unmatched,  # naming no answer of this release
        "relabelled": labelled.relabelled,
        "confidence": confidence,
        "arms": {
            name: _arm_metrics(labelled.value[labelled.arm == i], classification, confidence)
            for i, name in enumerate(release.arms)
        },
    }
    result["test"], result["verdict"] = _test(
        labelled, release.arms, classification, alpha, min_effect
    )
    return result


# text ------------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Columns aligned on the widest cell, indented (the last one not padded)."""
    cells = [list(headers), *[["-" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return [
        "  " + "  ".join([*(c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)), r[-1]])
        for r in cells
    ]


def _f(value: Any, digits: int = 3, sign: bool = False) -> str | None:
    if value is None:
        return None
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _ci(interval: Sequence[float] | None, digits: int = 3, sign: bool = False) -> str | None:
    if interval is None:
        return None
    return f"[{_f(interval[0], digits, sign)}, {_f(interval[1], digits, sign)}]"


def _p(value: float) -> str:
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


def render(report: dict[str, Any]) -> str:
    """The report as the text `nbship release report` prints."""
    r = report["release"]
    lines = [
        f"release {r['id']} of {r['name']}: {r['kind']} {r['tag']} beside champion "
        f"{r['champion_tag']}, share {r['share']:.0%}",
        f"  started {r['started_at']}, "
        + (
            "running"
            if r["ended_at"] is None
            else f"ended {r['ended_at']}: {r['outcome']}"
            + (f" ({r['end_reason']})" if r["end_reason"] else "")
        ),
        "",
        "traffic",
    ]
    lines += _table(
        ["arm", "tag", "requests", "records", "errors", "error rate", "p50 ms", "p99 ms"],
        [
            [name, a["tag"], a["requests"], a["records"], a["errors"],
             None if a["error_rate"] is None else f"{a['error_rate']:.1%}",
             _f(a["latency_p50_ms"], 1), _f(a["latency_p99_ms"], 1)]
            for name, a in report["arms"].items()
        ],
    )  # fmt: skip
    drift = report.get("answer_drift") or {}
    if drift.get("psi") is not None:
        lines.append(
            f"  answers unlike the champion's: PSI {drift['psi']:.3f},"
            f" p = {_p(drift['pvalue'])} ({drift['answers'][0]} vs {drift['answers'][1]})"
        )
    shadow = report.get("shadow")
    if shadow is not None:
        lines += ["", "shadow against champion"]
        lines.append(
            f"  {shadow['requests_compared']} requests compared ({shadow['pairs']} records), "
            f"{shadow['unshadowed']} not shadowed (not drawn, or dropped), "
            f"{shadow['errors']} shadow errors"
            + (
                " (" + ", ".join(f"{k} {v}" for k, v in shadow["errors_by_class"].items()) + ")"
                if shadow["errors_by_class"]
                else ""
            )
        )
        if "agreement" in shadow:
            agreement = shadow["agreement"]
            lines.append(
                f"  label agreement {'-' if agreement is None else f'{agreement:.1%}'}, "
                f"max |probability difference| {_f(shadow['max_probability_difference']) or '-'}"
            )
        else:
            lines.append(
                f"  |prediction difference| mean {_f(shadow['mean_abs_difference']) or '-'}, "
                f"max {_f(shadow['max_abs_difference']) or '-'}"
            )
        if shadow["top"]:
            lines.append("  most different:")
            lines += _table(
                ["request", "row", "champion", "shadow", "difference"],
                [
                    [p["request_id"], p["row"], _answer(p["champion"]), _answer(p["shadow"]),
                     _f(p["difference"])]
                    for p in shadow["top"]
                ],
            )  # fmt: skip
    feedback = report.get("feedback")
    if feedback is not None:
        level = f"{feedback['confidence']:.0%}"
        lines += ["", f"labelled feedback ({level} intervals)"]
        arms = feedback["arms"]
        if "accuracy" in next(iter(arms.values())):
            lines += _table(
                ["arm", "labelled", "accuracy", "interval"],
                [[n, a["labelled"], _f(a["accuracy"]), _ci(a["accuracy_ci"])]
                 for n, a in arms.items()],
            )  # fmt: skip
        else:
            lines += _table(
                ["arm", "labelled", "rmse", "interval", "mae", "interval"],
                [[n, a["labelled"], _f(a["rmse"]), _ci(a["rmse_ci"]), _f(a["mae"]),
                  _ci(a["mae_ci"])] for n, a in arms.items()],
            )  # fmt: skip
        lines.append(
            f"  {feedback['items']} labels: {feedback['without_request_id']} new records "
            f"(no arm), {feedback['unmatched']} naming no answer of this release, "
            f"{feedback['relabelled']} relabelled"
        )
    test = report.get("test")
    if test is not None:
        a, b = report["release"]["arms"]
        lines += ["", f"test: {test['statistic']}, {test['method']}"]
        if test["always_valid_ci"] is not None:
            lines.append(
                f"  {test['metric']} {b} - {a} = {_f(test['difference'], 4, True)}, "
                f"always-valid {1 - test['alpha']:.0%} interval "
                f"{_ci(test['always_valid_ci'], 4, True)}, p = {_p(test['always_valid_p'])} "
                f"({test['looks']} looks, mixture sd {test['mixture_sd']:.3g} {test['metric']})"
            )
        else:
            lines.append(f"  starts once each arm has {MIN_LABELLED} labelled rows")
        size = test["sample_size"]
        if size["per_arm"] is not None:
            still = ", ".join(f"{k} {v}" for k, v in size["still_needed"].items())
            lines.append(
                f"  to detect {test['min_effect']:.3g} {test['min_effect_units']}: "
                f"{size['per_arm']} per arm at power {size['power']:.0%} "
                f"(fixed horizon); still needed: {still}"
            )
    if report.get("verdict") is not None:
        lines += ["", f"verdict: {report['verdict']}"]
    return "\n".join(lines)


def _answer(answer: Any) -> str:
    """A logged answer in a table cell: the label and its probability, or the number."""
    if not isinstance(answer, Mapping):
        return "-"
    if "label" in answer:
        probabilities = answer.get("probabilities")
        p = probabilities.get(answer["label"]) if isinstance(probabilities, Mapping) else None
        return (
            f"{answer['label']} ({p:.2f})" if isinstance(p, int | float) else str(answer["label"])
        )
    return _f(_num(answer.get("prediction"))) or "-"
