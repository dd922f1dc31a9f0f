"""Model cards of real penguin classifiers, gated against each other with the real gates."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression
from sklearn.metrics import confusion_matrix
from sklearn.pipeline import make_pipeline

from nbship import tasks
from nbship.packaging.bento import library_versions
from nbship.pipeline import data, training
from nbship.registry import gates, model_card
from nbship.registry.versions import ModelVersion, RegistryError

pytestmark = pytest.mark.unit

FEATURES = training.Features(
    numeric=("bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"),
    categorical=("island", "sex"),
)
COLUMNS = FEATURES.columns
TARGET = "species"
CHAMPION_TAG = "penguins:logreg1"
CHALLENGER_TAG = "penguins:baseline2"
HOSTILE = "<script>alert(1)</script>"
GATES = gates.GateConfig(
    latency_repeats=3,
    invariance=({"column": "sex", "values": ["male", "female"], "max_changed_share": 0.5},),
)
REPORTS = "/tmp/nbship reports/run 7"  # a space: the file:// link must encode it


# a small DOM from the standard library's parser ---------------------------------------

VOID = {"meta", "br", "hr", "img", "input", "link", "col", "wbr", "source", "area", "base"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str | None]
    children: list[Node | str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self, tag: str | None = None) -> Iterator[Node]:
        for child in self.children:
            if isinstance(child, Node):
                if tag is None or child.tag == tag:
                    yield child
                yield from child.iter(tag)

    def all(self, tag: str) -> list[Node]:
        return list(self.iter(tag))

    def by_id(self, id_: str) -> Node:
        found = [n for n in self.iter() if n.attrs.get("id") == id_]
        assert len(found) == 1, f"{len(found)} elements with id {id_!r}"
        return found[0]


class _Tree(HTMLParser):
    """Builds the tree and fails on any end tag that does not close the open element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]
        self.doctype: str | None = None

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, dict(attrs))
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, text: str) -> None:
        self.stack[-1].children.append(text)


def parse(page: str) -> Node:
    tree = _Tree()
    tree.feed(page)
    tree.close()
    assert [n.tag for n in tree.stack] == ["#document"], "unclosed elements"
    assert (tree.doctype or "").lower() == "doctype html"
    return tree.root


def rows(table: Node) -> list[list[str]]:
    return [
        [c.text().strip() for c in tr.iter() if c.tag in ("td", "th")] for tr in table.all("tr")
    ]


def svg_texts(node: Node) -> list[str]:
    return [t.text().strip() for t in node.all("text")]


def contains_run(items: list[str], run: list[str]) -> bool:
    return any(items[i : i + len(run)] == run for i in range(len(items) - len(run) + 1))


# real models, real verdicts ------------------------------------------------------------


@dataclass(frozen=True)
class World:
    parts: data.Split
    logreg: Any
    baseline: Any
    champion: ModelVersion
    challenger: ModelVersion
    verdicts: list[dict[str, Any]]


def _version(
    tag: str,
    model: Any,
    seconds: float,
    parts: data.Split,
    *,
    candidate: str,
    params: dict[str, Any],
    verdicts: list[dict[str, Any]],
) -> ModelVersion:
    """Shaped like what package.py records and the registry gives back."""
    name, version = tag.split(":")
    fingerprints = {s: data.fingerprint(getattr(parts, s)) for s in ("train", "test", "golden")}
    test_metrics = training.score(model, parts.test, FEATURES, TARGET)
    return ModelVersion(
        tag=tag,
        name=name,
        version=version,
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        candidate=candidate,
        params=params,
        metrics={
            "test": test_metrics,
            "train": training.score(model, parts.train, FEATURES, TARGET),
        },
        data_fingerprint=fingerprints["train"],
        definition_hash="sha256:" + "d" * 64,
        versions=library_versions(),
        git_commit="0123abcdef-dirty",
        train_seconds=seconds,
        predict_ms=training.predict_latency_ms(model, parts.test[COLUMNS].head(3), repeats=2),
        reports=REPORTS,
        bento_tag=f"penguins_service:{version}",
        gates=verdicts,
        extra={
            "selection": {"metric": "f1_macro", "value": test_metrics["f1_macro"]},
            "trained_at": "2026-01-02T03:04:00+00:00",
            "features": COLUMNS,
            "target": TARGET,
            "classes": [str(c) for c in model.classes_],
            "data_fingerprints": fingerprints,
        },
    )


def _jsonable(results: list[gates.GateResult]) -> list[dict[str, Any]]:
    """Verdicts as the registry stores them (JSON)."""
    return json.loads(json.dumps([asdict(r) for r in results]))


@pytest.fixture(scope="module")
def world() -> World:
    parts = data.split(data.load_source("palmerpenguins:load_penguins"), TARGET, 0.25, 24, 42)
    logreg = training.build_candidate("logreg", FEATURES, {"C": 1.0, "max_iter": 1000})
    logreg_seconds = training.fit(logreg, parts.train, FEATURES, TARGET)
    baseline = training.build_candidate("baseline", FEATURES)
    baseline_seconds = training.fit(baseline, parts.train, FEATURES, TARGET)
    # the majority-class baseline challenges a logistic regression: the metric gate fails
    results = gates.run_gates(
        champion=logreg,
        challenger=baseline,
        champion_metrics=training.score(logreg, parts.test, FEATURES, TARGET),
        challenger_metrics=training.score(baseline, parts.test, FEATURES, TARGET),
        golden=parts.golden,
        columns=COLUMNS,
        config=GATES,
        champion_train_seconds=logreg_seconds,
        challenger_train_seconds=baseline_seconds,
    )
    first = gates.run_gates(
        champion=None,
        challenger=logreg,
        champion_metrics=None,
        challenger_metrics=training.score(logreg, parts.test, FEATURES, TARGET),
        golden=parts.golden,
        columns=COLUMNS,
        config=GATES,
    )
    champion = _version(
        CHAMPION_TAG,
        logreg,
        logreg_seconds,
        parts,
        candidate="logreg",
        params={"C": 1.0, "max_iter": 1000},
        verdicts=_jsonable(first),
    )
    challenger = _version(
        CHALLENGER_TAG,
        baseline,
        baseline_seconds,
        parts,
        candidate="baseline",
        params={"strategy": "prior", "note": HOSTILE},
        verdicts=_jsonable(results),
    )
    return World(parts, logreg, baseline, champion, challenger, _jsonable(results))


def _render(world: World, **overrides: Any) -> str:
    kwargs: dict[str, Any] = {
        "version": world.challenger,
        "model": world.baseline,
        "train": world.parts.train,
        "test": world.parts.test,
        "target": TARGET,
        "champion": world.champion,
        "champion_model": world.logreg,
        "aliases": {"champion": CHAMPION_TAG, "challenger": CHALLENGER_TAG},
    }
    return model_card.render_card(**{**kwargs, **overrides})


@pytest.fixture(scope="module")
def page(world: World) -> str:
    return _render(world)


@pytest.fixture(scope="module")
def doc(page: str) -> Node:
    return parse(page)


# the page ------------------------------------------------------------------------------


def test_card_is_one_well_formed_html5_page(page: str, doc: Node) -> None:
    assert page.startswith("<!DOCTYPE html>")
    (html_node,) = doc.all("html")
    assert html_node.attrs.get("lang") == "en"
    assert [n.tag for n in html_node.children if isinstance(n, Node)] == ["head", "body"]
    assert any(m.attrs.get("charset") == "utf-8" for m in doc.all("meta"))
    assert doc.all("title")[0].text() == f"Model card {CHALLENGER_TAG}"
    assert CHALLENGER_TAG in doc.all("h1")[0].text()
    ids = [n.attrs["id"] for n in doc.iter() if "id" in n.attrs]
    assert len(ids) == len(set(ids)), "ids repeat (e.g. across inline SVGs)"


def test_every_section_has_its_heading_in_order(doc: Node) -> None:
    sections = doc.all("section")
    assert [s.attrs["id"] for s in sections] == [a for a, _ in model_card.SECTIONS]
    assert [s.all("h2")[0].text() for s in sections] == [t for _, t in model_card.SECTIONS]
    links = [a.attrs["href"] for a in doc.all("nav")[0].all("a")]
    assert links == [f"#{a}" for a, _ in model_card.SECTIONS]


def test_header_shows_tag_aliases_times_and_failed_gates(world: World, doc: Node) -> None:
    overview = dict((r[0], r[1]) for r in rows(doc.by_id("overview").all("table")[0]))
    assert overview["tag"] == CHALLENGER_TAG
    assert overview["candidate"] == "baseline"
    assert overview["registered"] == "2026-01-02T03:04:05+00:00"
    assert overview["trained"] == "2026-01-02T03:04:00+00:00"
    assert overview["aliases pointing here"] == "challenger"  # not the champion's alias
    assert overview["compared with"] == CHAMPION_TAG
    failed = [v["gate"] for v in world.verdicts if not v["passed"]]
    assert "metric" in failed
    status = f"FAILED: {', '.join(failed)} ({len(failed)} of {len(world.verdicts)} gates failed)"
    assert overview["promotion gates"] == status
    assert doc.all("header")[0].all("p")[0].text() == status


def test_data_summary_counts_and_fingerprints(world: World, doc: Node) -> None:
    section = doc.by_id("data")
    tables = section.all("table")
    splits = {r[0]: r for r in rows(tables[0])[1:]}
    train, test = world.parts.train, world.parts.test
    fingerprint = data.fingerprint(train)
    assert splits["train"][1:] == [str(len(train)), fingerprint, fingerprint, "same"]
    assert splits["test"][1] == str(len(test)) and splits["test"][4] == "same"
    assert splits["golden"][2] == data.fingerprint(world.parts.golden)
    classes = {r[0]: r for r in rows(tables[1])[1:]}
    for species, n in train[TARGET].value_counts().items():
        assert classes[species][1] == str(n)
        assert classes[species][3] == str(int((test[TARGET] == species).sum()))
    numeric = rows(tables[2])
    assert numeric[0] == ["feature", "split", "mean", "std", "min", "max", "missing"]
    mass = next(r for r in numeric[1:] if r[:2] == ["body_mass_g", "train"])
    assert mass[4:6] == [f"{train['body_mass_g'].min():.4g}", f"{train['body_mass_g'].max():.4g}"]
    sex = {r[0]: r[1:] for r in rows(next(t for t in tables if rows(t)[0][0] == "sex"))}
    assert sex["(missing)"] == [str(train["sex"].isna().sum()), str(test["sex"].isna().sum())]
    assert sex["male"][0] == str((train["sex"] == "male").sum())
    for fig_id in ("fig-classes", "fig-histograms"):
        figure = section.by_id(fig_id)
        assert len(figure.all("svg")) == 1
    texts = svg_texts(section.by_id("fig-histograms"))
    assert all(column in texts for column in FEATURES.numeric)


def test_metrics_side_by_side_with_champion_and_deltas(world: World, doc: Node) -> None:
    section = doc.by_id("metrics")
    table = rows(section.all("table")[0])
    header = ["metric", "split", "this version", f"champion {CHAMPION_TAG}", "Δ this - champion"]
    assert table[0] == header
    by_key = {(r[0].split()[0], r[1]): r[2:] for r in table[1:]}
    # a classifier's card: every classification metric, each split
    assert len(by_key) == 2 * len(tasks.CLASSIFICATION_METRICS)
    for split in ("test", "train"):
        for name, higher_is_better in tasks.CLASSIFICATION_METRICS.items():
            mine = world.challenger.metrics[split][name]
            theirs = world.champion.metrics[split][name]
            delta = mine - theirs
            verdict = "better" if (delta > 0) == higher_is_better else "worse"
            expected = [f"{mine:.4f}", f"{theirs:.4f}", f"{delta:+.4f} ({verdict})"]
            assert by_key[(name, split)] == expected
    # the majority-class baseline is worse than logistic regression where it counts
    assert by_key[("f1_macro", "test")][2].endswith("(worse)")
    chart = section.by_id("fig-metrics")
    texts = svg_texts(chart)
    assert f"{world.champion.metrics['test']['f1_macro']:.3f}" in texts
    assert f"{world.challenger.metrics['test']['f1_macro']:.3f}" in texts


def test_confusion_matrices_are_pictures_of_the_real_counts(world: World, doc: Node) -> None:
    section = doc.by_id("predictions")
    assert section.all("h2")[0].text() == "Confusion matrix"
    assert len(section.all("svg")) >= 2
    X, y = world.parts.test[COLUMNS], world.parts.test[TARGET]
    labels = sorted(y.unique())
    for fig_id, model in (
        ("fig-predictions-this", world.baseline),
        ("fig-predictions-champion", world.logreg),
    ):
        cm = confusion_matrix(y, model.predict(X), labels=labels)
        figure = section.by_id(fig_id)
        (svg,) = figure.all("svg")
        texts = svg_texts(svg)
        # the cells, row by row, as drawn in the heatmap; and the class names on the axes
        assert contains_run(texts, [str(int(v)) for v in cm.ravel()]), texts
        assert all(label in texts for label in labels)
        caption = figure.all("figcaption")[0].text()
        assert f"{int(np.trace(cm))} of {int(cm.sum())} test rows right" in caption
    # the champion really differs from the majority-class baseline
    assert "fig-predictions-champion" in [n.attrs.get("id") for n in section.iter("figure")]


def test_gate_verdicts_and_their_evidence(world: World, doc: Node) -> None:
    section = doc.by_id("gates")
    summary = rows(section.all("table")[0])
    assert summary[0] == ["#", "gate", "result", "message"]
    assert [r[1:] for r in summary[1:]] == [
        [v["gate"], "PASSED" if v["passed"] else "FAILED", v["message"]] for v in world.verdicts
    ]
    assert dict((r[1], r[2]) for r in summary[1:])["metric"] == "FAILED"
    by_gate = {v["gate"]: v["evidence"] for v in world.verdicts}
    tables = [rows(t) for t in section.all("table")]
    # differential: the changed golden rows as row / old / new
    diff = by_gate["differential"]
    caption = f"Changed rows: {len(diff['rows'])} of {diff['n_differing']} differing rows"
    (changed,) = [rows(t) for t in section.all("table") if caption in t.text()]
    assert changed[0][:3] == ["golden row", "champion label (old)", "this version (new)"]
    assert [r[:3] for r in changed[1:]] == [
        [str(r["row"]), r["old"], r["new"]] for r in diff["rows"]
    ]
    # benchmark: the latencies as numbers and as a bar chart of both models
    bench = by_gate["benchmark"]
    latency = next(t for t in tables if t[0][0] == "predict_proba latency")
    p50 = bench["champion_ms"]["p50"], bench["challenger_ms"]["p50"]
    assert latency[1][:3] == ["p50", f"{p50[0]:.4g}", f"{p50[1]:.4g}"]
    chart = next(f for f in section.all("figure") if "benchmark" in f.attrs["id"])
    texts = svg_texts(chart)
    assert {"p50", "p99", "champion", "challenger (this)"} <= set(texts)
    assert f"{bench['challenger_ms']['p99']:.2f}" in texts
    # invariance: the share of changed labels per value set
    shares = next(t for t in tables if t[0][0] == "column")
    check = by_gate["invariance"]["checks"][0]
    assert [r[:3] for r in shares[1:]] == [
        ["sex", value, f"{share:.4g}"] for value, share in check["changed_share"].items()
    ]
    assert len(section.all("h3")) == len(world.verdicts)


def test_provenance_versions_params_and_reports_link(world: World, doc: Node) -> None:
    section = doc.by_id("provenance")
    facts = dict((r[0], r[1]) for r in rows(section.all("table")[0]))
    version = world.challenger
    assert facts["bento"] == version.bento_tag
    assert facts["definition hash"] == version.definition_hash
    assert facts["git commit"] == f"{version.git_commit} (built from uncommitted changes)"
    assert facts["training time"] == f"{version.train_seconds:.3f} s"
    assert facts["one-row predict latency"].startswith(f"p50 {version.predict_ms['p50']:.4g} ms")
    (link,) = section.all("a")
    assert link.attrs["href"] == Path(REPORTS).as_uri() and " " not in link.attrs["href"]
    assert link.text() == REPORTS
    libraries = dict((r[0], r[1]) for r in rows(section.all("table")[1])[1:])
    assert libraries == version.versions
    params = dict((r[0], r[1]) for r in rows(section.all("table")[2])[1:])
    assert params == {"note": HOSTILE, "strategy": "prior"}  # shown as text, not markup


def test_no_scripts_and_nothing_fetched(page: str, doc: Node) -> None:
    lowered = page.lower()
    assert "http://" not in lowered and "https://" not in lowered
    assert not doc.all("script") and not doc.all("link") and not doc.all("img")
    assert "@import" not in lowered and "src=" not in lowered
    hrefs = [n.attrs.get("href") or n.attrs.get("xlink:href") for n in doc.iter()]
    for href in filter(None, hrefs):
        assert href.startswith(("#", "file://")), href
    # every picture is inline SVG, no embedded bitmaps either
    assert not doc.all("image") and "data:image" not in page
    assert len(doc.all("svg")) >= 6


def test_every_text_value_is_escaped(world: World) -> None:
    verdict = {"gate": HOSTILE, "passed": False, "message": HOSTILE, "evidence": {"x": HOSTILE}}
    hostile = replace(
        world.champion,
        candidate=HOSTILE,
        params={HOSTILE: HOSTILE},
        git_commit=HOSTILE,
        reports=f"relative/{HOSTILE}",
        gates=[verdict],
        extra={**world.champion.extra, "comment": HOSTILE},
    )
    page = _render(
        world,
        version=hostile,
        model=world.logreg,
        champion=None,
        champion_model=None,
        aliases={HOSTILE: hostile.tag},
    )
    doc = parse(page)
    assert "<script" not in page.lower() and not doc.all("script")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # in the SVG too: the candidate names the confusion matrix's title
    assert any(HOSTILE in t for t in svg_texts(doc.by_id("fig-predictions-this")))
    # a relative reports path cannot turn into a scheme
    (link,) = doc.by_id("provenance").all("a")
    assert ":" not in link.attrs["href"] and "<" not in link.attrs["href"]


def test_card_without_champion(world: World) -> None:
    page = model_card.render_card(
        version=world.champion,
        model=world.logreg,
        train=world.parts.train,
        test=world.parts.test,
        target=TARGET,
    )
    doc = parse(page)
    overview = dict((r[0], r[1]) for r in rows(doc.by_id("overview").all("table")[0]))
    assert overview["compared with"] == "no champion given"
    assert overview["aliases pointing here"] == "not known (no aliases given)"
    assert overview["promotion gates"] == "all 2 gates passed"
    metrics = rows(doc.by_id("metrics").all("table")[0])
    assert metrics[0][1:] == ["test", "train"]
    f1 = next(r for r in metrics if r[0].startswith("f1_macro"))
    assert f1[1:] == [f"{world.champion.metrics[s]['f1_macro']:.4f}" for s in ("test", "train")]
    predictions = doc.by_id("predictions")
    assert [f.attrs["id"] for f in predictions.all("figure")] == ["fig-predictions-this"]
    gate_rows = rows(doc.by_id("gates").all("table")[0])[1:]
    assert [r[1:3] for r in gate_rows] == [["metric", "PASSED"], ["invariance", "PASSED"]]
    assert "no champion: first model" in gate_rows[0][3]


def test_a_champion_is_not_compared_with_itself(world: World) -> None:
    page = _render(world, version=world.champion, model=world.logreg)
    doc = parse(page)
    overview = dict((r[0], r[1]) for r in rows(doc.by_id("overview").all("table")[0]))
    assert overview["aliases pointing here"] == "champion"
    assert overview["compared with"] == "no champion given"
    assert len(doc.by_id("predictions").all("figure")) == 1


def test_without_gate_results_the_card_says_so(world: World) -> None:
    bare = replace(world.champion, gates=[])
    doc = parse(
        _render(world, version=bare, model=world.logreg, champion=None, champion_model=None)
    )
    assert "No gate results recorded" in doc.by_id("gates").text()
    overview = dict((r[0], r[1]) for r in rows(doc.by_id("overview").all("table")[0]))
    assert overview["promotion gates"] == "no gate results recorded"


def test_same_input_same_page_except_the_time(world: World, page: str) -> None:
    before = world.parts.test.copy()
    again = _render(world)
    pd.testing.assert_frame_equal(world.parts.test, before)  # the frames are left alone
    strip = re.compile(r"<time [^>]*>[^<]*</time>")
    assert strip.sub("", again) == strip.sub("", page)
    assert len(page.encode()) < 200_000  # small pictures: vector, text as text


def test_a_regressor_gets_residuals(world: World) -> None:
    columns = ["bill_length_mm", "flipper_length_mm"]
    train = world.parts.train.dropna(subset=["body_mass_g"])
    test = world.parts.test.dropna(subset=["body_mass_g"])
    model = make_pipeline(SimpleImputer(), LinearRegression())
    model.fit(train[columns], train["body_mass_g"])
    version = replace(
        world.champion, gates=[], metrics={}, extra={"features": columns, "target": "body_mass_g"}
    )
    page = model_card.render_card(
        version=version, model=model, train=train, test=test, target="body_mass_g"
    )
    doc = parse(page)
    section = doc.by_id("predictions")
    assert section.all("h2")[0].text() == model_card.RESIDUALS_HEADING
    residual = test["body_mass_g"] - model.predict(test[columns])
    rmse = float(np.sqrt(np.mean(residual**2)))
    caption = section.all("figcaption")[0].text()
    assert f"RMSE {rmse:.4g}" in caption and len(section.all("svg")) == 1
    assert "fig-target" in [f.attrs["id"] for f in doc.by_id("data").all("figure")]


def test_frames_must_hold_the_model_columns(world: World) -> None:
    with pytest.raises(ValueError, match="lacks column"):
        _render(world, test=world.parts.test.drop(columns=["island"]))


def test_write_card_is_atomic_and_returns_the_path(world: World, page: str, tmp_path: Path):
    folder = tmp_path / "cards"  # not there yet
    path = model_card.write_card(folder / model_card.card_filename(CHALLENGER_TAG), page)
    assert path == folder / "penguins-baseline2.html"
    assert path.read_text(encoding="utf-8") == page
    assert model_card.write_card(path, "<!DOCTYPE html><p>v2</p>") == path
    assert path.read_text(encoding="utf-8") == "<!DOCTYPE html><p>v2</p>"
    with pytest.raises(TypeError):
        model_card.write_card(path, None)  # type: ignore[arg-type]  # fails mid-write
    assert path.read_text(encoding="utf-8") == "<!DOCTYPE html><p>v2</p>"
    assert [p.name for p in folder.iterdir()] == [path.name]  # no temporary file left


def test_card_filename() -> None:
    assert model_card.card_filename("penguins_classifier:abc123") == (
        "penguins_classifier-abc123.html"
    )
    with pytest.raises(RegistryError):
        model_card.card_filename("no-version")
    with pytest.raises(ValueError, match="cannot name a file"):
        model_card.card_filename("penguins:../../etc")


def test_rows_of_a_frame_are_fingerprinted_not_trusted(world: World) -> None:
    """A card over other rows than the version was trained on says so."""
    other = world.parts.train.iloc[:-1]
    doc = parse(_render(world, train=other, champion=None, champion_model=None))
    splits = {r[0]: r for r in rows(doc.by_id("data").all("table")[0])[1:]}
    assert splits["train"][1] == str(len(other)) and splits["train"][4] == "differs"
