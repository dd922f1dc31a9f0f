"""Batch scoring in process against the service built in process (`create_service` over
BentoML's own ASGI app: its real request validation and its real answers), on files
with bad rows: the same answers, the same per-field errors, chunk by chunk. No server,
no build: the model is fitted here and stands in for the bento's own."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from nbship.batch import files, run, scorer, screen
from nbship.batch.scorer import BatchError, Scorer
from nbship.pipeline.contract import Contract, load_suite, record_model
from nbship.project import LOG_URL_ENV, REGISTRY_URL_ENV
from nbship.serving import following, service
from nbship.serving.compiled import compile_and_verify
from tests.unit.test_service import CONFIG, SUITE, bento_src
from tests.unit.test_serving_regression import bentoml_request_metrics, serve

pytestmark = [
    pytest.mark.unit,
    pytest.mark.filterwarnings("ignore:The `__get_pydantic_core_schema__` method"),
]
__all__ = ["bentoml_request_metrics"]  # the fixture, imported to be used here too

COLUMNS = CONFIG["columns"]  # bill_length_mm (25..70, may be null), island (a category)
CLASSES = CONFIG["metadata"]["classes"]
GOOD = [
    {"bill_length_mm": 45.2, "island": "Biscoe"},
    {"bill_length_mm": None, "island": "Dream"},
    {"bill_length_mm": 38.0, "island": "Torgersen"},
    {"bill_length_mm": 25.0, "island": "Biscoe"},  # the bounds are inclusive
    {"bill_length_mm": 70.0, "island": "Dream"},
]
# each breaks a rule (its CSV cells: the values as text, an empty cell for None)
BAD = [
    {"bill_length_mm": 500.0, "island": "Biscoe"},
    {"bill_length_mm": 40.0, "island": "Atlantis"},
    {"bill_length_mm": "long", "island": "Dream"},
    {"bill_length_mm": 40.0, "island": None},
    {"bill_length_mm": 24.999, "island": None},  # two rules broken
]


@pytest.fixture(scope="module")
def classifier() -> Pipeline:
    rng = np.random.default_rng(0)
    n = 300
    X = pd.DataFrame({"bill_length_mm": rng.uniform(35, 55, n),
                      "island": pd.Series(rng.choice(["Biscoe", "Dream", "Torgersen"], n),
                                          dtype=object)})  # fmt: skip
    X.loc[::13, "bill_length_mm"] = np.nan
    y = np.where((X["bill_length_mm"].fillna(45) > 45) | (X["island"] == "Biscoe"), *CLASSES)
    preprocess = ColumnTransformer([
        ("numeric", Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())]),
         ["bill_length_mm"]),
        ("categorical", Pipeline([("impute", SimpleImputer(strategy="most_frequent")),
                                  ("onehot", OneHotEncoder(handle_unknown="ignore"))]),
         ["island"]),
    ])  # fmt: skip
    model = Pipeline([("preprocess", preprocess), ("model", LogisticRegression())])
    model.fit(X, y)
    model.train_frame_ = X  # for the plan's verification below
    return model


@pytest.fixture(params=["numpy", "scikit-learn"])
def bento(
    request: pytest.FixtureRequest, tmp_path: Path, classifier: Pipeline,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:  # fmt: skip
    """A staged bento whose own model is the classifier, with its verified plan or not;
    both the service and the batch scorer load it through `resolve_model`."""
    compiled = None
    if request.param == "numpy":
        plan, compiled = compile_and_verify(classifier, COLUMNS, [classifier.train_frame_])
        assert plan is not None, compiled
    folder = tmp_path / "bento"
    bento_src(folder / "src", compiled=compiled)
    for name in (REGISTRY_URL_ENV, service.RELOAD_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(LOG_URL_ENV, "off")

    def own(config: dict[str, Any]) -> service.ServedModel:
        served = service.ServedModel(config["model_tag"], classifier, "bento", "test", {})
        return following.with_plan(served, config.get("compiled"), config["columns"])

    monkeypatch.setattr(service, "resolve_model", own)
    monkeypatch.setattr(scorer, "resolve_model", own)
    monkeypatch.setattr(service, "freeze_startup_heap", lambda: None)
    return folder


def write_csv(path: Path, lines: list[str], header: str = "id,bill_length_mm,island") -> str:
    path.write_text("\n".join([header, *lines]) + "\n")
    return str(path)


def csv_cell(value: Any) -> str:
    return "" if value is None else str(value)


def mixed_rows() -> tuple[list[dict[str, Any]], list[str]]:
    """Good and bad rows interleaved: their JSON records and their CSV lines (`id` is
    the row's own number, carried through)."""
    records, lines = [], []
    for i in range(23):
        record = GOOD[i % len(GOOD)] if i % 4 else BAD[(i // 4) % len(BAD)]
        records.append(record)
        cells = [csv_cell(record[c]) for c in COLUMNS]
        lines.append(",".join([str(i), *cells]))
    return records, lines


def predict_over_http(bento: Path, records: list[dict[str, Any]]) -> list[Any]:
    """/predict's answer (predictions, or the 400's detail) for each record alone."""
    svc = service.create_service(bento / "src")
    answers = serve(svc, [("POST", "/predict", r) for r in records])
    return [a.json()["predictions"][0] if a.status_code == 200 else a.json()["detail"]
            for a in answers]  # fmt: skip


def test_scores_and_rejects_equal_what_predict_answers(bento: Path, tmp_path: Path):
    records, lines = mixed_rows()
    data = write_csv(tmp_path / "in.csv", lines)
    out = str(tmp_path / "scores.parquet")
    done = run.predict_file(Scorer.from_bento(bento), data, out, chunk_rows=4)

    answers = predict_over_http(bento, records)
    scores = pq.read_table(out).to_pylist()
    rejects = pq.read_table(tmp_path / "scores.rejects.parquet").to_pylist()
    accepted = [i for i, a in enumerate(answers) if isinstance(a, dict)]
    assert [s["row"] for s in scores] == accepted == [int(s["id"]) for s in scores]
    assert (done.rows, done.scored, done.rejected_rows) == (23, len(accepted), 23 - len(accepted))
    for score in scores:
        expected = answers[score["row"]]
        assert score["label"] == expected["label"]
        for name in CLASSES:
            assert score[f"proba_{name}"] == pytest.approx(expected["probabilities"][name],
                                                           abs=1e-12)  # fmt: skip
    # every refused row's errors, as /predict words them: the field and the rule
    expected_rejects = [
        {"row": i, "field": e["loc"][-1], "rule": e["msg"], "type": e["type"]}
        for i, a in enumerate(answers) if isinstance(a, list) for e in a
    ]  # fmt: skip
    assert [
        {k: r[k] for k in ("row", "field", "rule", "type")} for r in rejects
    ] == expected_rejects
    assert done.errors == len(expected_rejects) > done.rejected_rows  # a row broke two rules
    assert {r["value"] for r in rejects} >= {"500.0", "Atlantis", "long", "null"}
    assert {r["rule"] for r in rejects} >= {"Input should be less than or equal to 70",
                                            "Input should be a valid number"}  # fmt: skip


def test_a_chunked_run_equals_an_unchunked_one_and_streams(
    bento: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    _, lines = mixed_rows()
    data = write_csv(tmp_path / "in.csv", lines * 40)  # 920 rows
    model = Scorer.from_bento(bento)
    seen: list[int] = []
    score = Scorer.score

    def counting(self: Scorer, chunk: pa.Table, first_row: int = 0) -> scorer.Scored:
        seen.append(chunk.num_rows)
        return score(self, chunk, first_row)

    monkeypatch.setattr(Scorer, "score", counting)
    run.predict_file(model, data, str(tmp_path / "whole.parquet"), chunk_rows=10_000)
    assert seen == [920]
    seen.clear()
    run.predict_file(model, data, str(tmp_path / "chunked.parquet"), chunk_rows=37)
    # never more than a chunk in hand: 24 full chunks and the rest
    assert seen == [37] * 24 + [920 - 37 * 24]
    for name in ("", ".rejects"):
        whole = pq.read_table(tmp_path / f"whole{name}.parquet")
        chunked = pq.read_table(tmp_path / f"chunked{name}.parquet")
        assert whole.num_rows > 0 and whole.equals(chunked), name


def test_parquet_in_csv_out_and_the_same_scores(bento: Path, tmp_path: Path):
    records, _ = mixed_rows()
    good = [r for r in records if r in GOOD]
    frame = pd.DataFrame(good)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "in.parquet")
    write_csv(tmp_path / "in.csv", [",".join([str(i), *(csv_cell(r[c]) for c in COLUMNS)])
                                    for i, r in enumerate(good)])  # fmt: skip
    model = Scorer.from_bento(bento)
    run.predict_file(model, str(tmp_path / "in.parquet"), str(tmp_path / "a.csv"))
    run.predict_file(model, str(tmp_path / "in.csv"), str(tmp_path / "b.parquet"))
    a = pd.read_csv(tmp_path / "a.csv")
    b = pd.read_parquet(tmp_path / "b.parquet")
    assert list(a.columns) == ["row", "label", "proba_Adelie", "proba_Gentoo"]
    assert list(a["label"]) == list(b["label"]) and len(a) == len(good)
    np.testing.assert_allclose(a["proba_Adelie"], b["proba_Adelie"], rtol=0, atol=1e-12)
    assert pd.read_csv(tmp_path / "a.rejects.csv").empty


def test_a_missing_contract_column_fails_before_writing_anything(bento: Path, tmp_path: Path):
    data = write_csv(tmp_path / "in.csv", ["1,Biscoe"], header="id,island")
    with pytest.raises(BatchError, match=r"lacks column\(s\) \['bill_length_mm'\]"):
        run.predict_file(Scorer.from_bento(bento), data, str(tmp_path / "out.parquet"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bento", "in.csv"]


def test_a_failed_run_leaves_no_output(
    bento: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    _, lines = mixed_rows()
    data = write_csv(tmp_path / "in.csv", lines)
    model = Scorer.from_bento(bento)
    calls = []

    def fail_second(chunk: pa.Table, first_row: int = 0) -> Any:
        calls.append(first_row)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return Scorer.score(model, chunk, first_row)

    monkeypatch.setattr(model, "score", fail_second)
    with pytest.raises(RuntimeError, match="disk full"):
        run.predict_file(model, data, str(tmp_path / "out.parquet"), chunk_rows=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bento", "in.csv"]


def test_the_scorer_pickles_for_dask_workers(bento: Path, tmp_path: Path):
    model = Scorer.from_bento(bento)
    _, lines = mixed_rows()
    chunk = next(files.read_chunks(files.open_source(write_csv(tmp_path / "in.csv", lines)), 100))
    here = model.score(chunk)
    copy = pickle.loads(cloudpickle.dumps(model))
    there = copy.score(chunk)
    assert here.output.equals(there.output) and here.rejects.equals(there.rejects)


# --- the screen against the record model, cell by cell --------------------------------

CELLS = {
    "number": [
        "45.2",
        "25",
        "70",
        "24.999",
        "70.0001",
        "+40",
        ".5e2",
        "1e3",
        "inf",
        "-inf",
        "NAN",
        "nan",
        "abc",
        "1_000",
        " 40",
        "40 ",
        "",
        "0x10",
        None,
    ],
    "category": ["Biscoe", "Dream", "biscoe", "Atlantis", " Dream", "", None],
}


def test_what_the_screen_passes_the_record_model_accepts_and_it_decides_the_rest():
    contract = Contract.from_suite(load_suite(SUITE), ["bill_length_mm", "island", "year"])
    record = record_model(contract)
    numbers = CELLS["number"]
    rows = [(a, b, c) for a in numbers for b in CELLS["category"] for c in ("2008", "2008.5")]
    table = pa.table({"bill_length_mm": [r[0] for r in rows], "island": [r[1] for r in rows],
                      "year": [r[2] for r in rows]})  # fmt: skip
    # as a CSV reader hands them: the null texts are nulls
    table = pa.table({name: pc_nulls(table.column(name)) for name in table.column_names})
    checked = screen.screen(table, contract, record)
    columns = {spec.name: screen.screen_column(spec, table.column(spec.name).combine_chunks())
               for spec in contract.fields}  # fmt: skip
    for i in range(table.num_rows):
        cells = {s.name: screen.record_input(s, columns[s.name], i) for s in contract.fields}
        try:
            record.model_validate(cells)
            accepted = True
        except Exception:
            accepted = False
        passed = all(columns[s.name].passed[i] for s in contract.fields)
        assert not passed or accepted, (rows[i], cells)  # conservative
        assert checked.valid[i] == accepted, (rows[i], cells)
    rejected = {r["row"] for r in checked.rejects}
    assert rejected == set(np.flatnonzero(~checked.valid).tolist())
    assert checked.valid.sum() > 0 and len(rejected) > 0


def pc_nulls(column: pa.ChunkedArray) -> pa.Array:
    values = [None if v in screen.NULL_TOKENS else v for v in column.to_pylist()]
    return pa.array(values, type=pa.string())


def test_the_rejects_file_defaults_beside_the_output():
    assert run.rejects_path("out/scores.parquet") == "out/scores.rejects.parquet"
    assert run.rejects_path("s3://b/x/scores.csv") == "s3://b/x/scores.rejects.csv"
    with pytest.raises(ValueError, match=r"expected a \.csv or \.parquet"):
        files.file_format("scores.json")
