"""The BentoML service built from a folder by `create_service`, in process: no server, no
bento. What it serves over HTTP is tested by tests/e2e/test_serve.py."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from nbship.compat.bentoml_private import ROOT_FIELD
from nbship.project import LOG_SPOOL_ENV, LOG_URL_ENV, REGISTRY_URL_ENV
from nbship.serving import service
from tests.support import PROJECT

pytestmark = [
    pytest.mark.unit,
    # BentoML 1.4.39's io models, once per model built; left visible in test_compat_bentoml
    pytest.mark.filterwarnings("ignore:The `__get_pydantic_core_schema__` method"),
]

SUITE = PROJECT / "expectations" / "penguins.json"
RECORD = {"bill_length_mm": 45.2, "island": "Biscoe"}
# what the package step writes (tests/unit/test_package.py's `staged` config)
CONFIG = {
    "bento_name": "penguins_classifier",
    "model_tag": "penguins_classifier:abc123",
    "columns": ["bill_length_mm", "island"],
    "target": "species",
    "suite": "expectations/penguins.json",
    "max_batch": 10,
    "metadata": {"candidate": "logreg", "classes": ["Adelie", "Gentoo"]},
}


def bento_src(folder: Path, **changes: Any) -> Path:
    """A bento's `src/` as the package step stages it: serving.json and the suite."""
    (folder / "expectations").mkdir(parents=True)
    shutil.copy2(SUITE, folder / "expectations" / SUITE.name)
    (folder / "serving.json").write_text(json.dumps({**CONFIG, **changes}))
    return folder


@pytest.fixture
def svc(tmp_path: Path) -> Any:
    return service.create_service(bento_src(tmp_path / "src"))


# --- import ---------------------------------------------------------------------------

PROBE = """
import json, sys
opened = []
sys.addaudithook(lambda event, args: opened.append(args[:3]) if event == "open" else None)
import nbship.serving.service as service
names = sorted(vars(service))
print(json.dumps({"opened": [[str(p), m, f] for p, m, f in opened], "names": names}))
"""


def test_importing_the_service_module_reads_nothing(tmp_path: Path):
    cwd, home = tmp_path / "empty", tmp_path / "bentoml-home"
    cwd.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=cwd, capture_output=True, text=True,
        # no bytecode written: any write this import makes is a failure
        env={**os.environ, "BENTOML_HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout)
    package = Path(service.__file__).parents[1]
    opened = [(Path(p), mode, flags) for p, mode, flags in probe["opened"]]
    # library imports read their own modules and /proc; the service reads no file of its own
    assert not [p for p, _, _ in opened if p.is_relative_to(cwd) or p.name == "serving.json"]
    assert not [
        p for p, _, _ in opened if p.is_relative_to(package) and p.suffix not in (".py", ".pyc")
    ]
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND
    written = [p for p, mode, flags in opened if set(mode or "") & set("wax+") or flags & writes]
    assert set(written) <= {Path(os.devnull)}, written  # a library silences a child process
    assert list(cwd.iterdir()) == [] and not home.exists()
    assert {"ModelService", "CONFIG", "ROOT", "SERVED"}.isdisjoint(probe["names"])


# --- the request and feedback models --------------------------------------------------


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({**RECORD, "bill_length_mm": "long"}, ("bill_length_mm",)),
        ({"bill_length_mm": 45.2}, ("island",)),
        ({**RECORD, "island": "Atlantis"}, ("island",)),
        ({**RECORD, "bill_length_mm": 1000}, ("bill_length_mm",)),
        ({**RECORD, "beak_colour": "red"}, ("beak_colour",)),
        ([RECORD, RECORD, {**RECORD, "island": "Atlantis"}], (2, "island")),
        ([], ()),
        ([RECORD] * 11, ()),
        ("not a record", ()),
    ],
    ids=[
        "wrong-type",
        "missing-field",
        "unknown-category",
        "out-of-range",
        "unknown-field",
        "bad-row-in-batch",
        "empty-batch",
        "over-max-batch",
        "not-an-object",
    ],
)
def test_the_request_model_rejects_a_bad_body_naming_the_field(svc: Any, body: Any, loc: tuple):
    with pytest.raises(ValidationError) as rejected:
        svc.inner.parts.request.model_validate(body)
    (error,) = rejected.value.errors()
    # the location as a client reads it: no wrapper field, no union branch
    assert error["loc"] == (loc or ("body",)), error


def test_the_request_model_names_the_body_for_malformed_json(svc: Any):
    with pytest.raises(ValidationError) as rejected:
        svc.inner.parts.request.model_validate_json(b'{"island": "Biscoe"')
    (error,) = rejected.value.errors()
    assert error["loc"] == ("body",) and error["type"] == "json_invalid"


def test_the_request_model_accepts_a_record_or_a_batch(svc: Any):
    request = svc.inner.parts.request
    one = getattr(request.model_validate_json(json.dumps(RECORD)), ROOT_FIELD)
    assert isinstance(one, svc.inner.parts.record) and one.island == "Biscoe"
    batch = getattr(
        request.model_validate([RECORD, {**RECORD, "bill_length_mm": None}]), ROOT_FIELD
    )
    assert [r.bill_length_mm for r in batch] == [45.2, None]


def test_the_label_type_is_the_configured_classes(svc: Any):
    parts = svc.inner.parts
    assert get_args(parts.label) == ("Adelie", "Gentoo")
    item = parts.feedback_item
    assert item.model_validate({"label": "Gentoo", "request_id": "r1"}).label == "Gentoo"
    with pytest.raises(ValidationError, match="Adelie"):
        item.model_validate({"label": "Chinstrap", "request_id": "r1"})
    assert item.model_validate({"label": "Adelie", "record": RECORD}).record.island == "Biscoe"
    with pytest.raises(ValidationError, match="exactly one"):
        item.model_validate({"label": "Adelie", "request_id": "r1", "record": RECORD})


def test_the_service_declares_its_name_routes_and_model(svc: Any):
    assert svc.name == "penguins_classifier"
    assert {name: api.route for name, api in svc.apis.items()} == {
        "predict": "/predict",
        "feedback": "/feedback",
    }
    assert svc.apis["predict"].input_spec is svc.inner.parts.request
    assert [str(m.tag) for m in svc.models] == ["penguins_classifier:abc123"]


# --- state ----------------------------------------------------------------------------


class FixedModel:
    """Answers the same probabilities for every row."""

    def __init__(self, classes: list[str], proba: list[float]) -> None:
        self.classes_ = np.array(classes)
        self.proba = proba

    def predict_proba(self, frame: Any) -> np.ndarray:
        return np.tile(self.proba, (len(frame), 1))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting an instance loads no store, log or registry, and leaves the test
    process's garbage collector alone."""
    for name in (LOG_URL_ENV, LOG_SPOOL_ENV, service.RELOAD_ENV, REGISTRY_URL_ENV):
        monkeypatch.delenv(name, raising=False)

    def fixed(config: dict[str, Any]) -> service.ServedModel:
        classes = config["metadata"]["classes"]
        model = FixedModel(classes, [1 / len(classes)] * len(classes))
        return service.ServedModel(config["model_tag"], model, "bento", "test", config["metadata"])

    monkeypatch.setattr(service, "resolve_model", fixed)
    monkeypatch.setattr(service, "freeze_startup_heap", lambda: None)


def info(app: Any) -> httpx.Response:
    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            return await client.get("/info")

    return asyncio.run(get())


def test_two_services_from_two_configs_share_no_state(tmp_path: Path, offline: None):
    first = service.create_service(bento_src(tmp_path / "a"))
    second = service.create_service(
        bento_src(
            tmp_path / "b",
            bento_name="other_classifier",
            model_tag="other_classifier:def456",
            max_batch=3,
            metadata={"candidate": "tree", "classes": ["Adelie", "Chinstrap", "Gentoo"]},
        )
    )
    a, b = first.inner.parts, second.inner.parts
    for part in ("request", "record", "feedback_item", "metrics", "slot", "info_app"):
        assert getattr(a, part) is not getattr(b, part), part
    assert get_args(b.label) == ("Adelie", "Chinstrap", "Gentoo")
    b.request.model_validate([RECORD] * 3)
    with pytest.raises(ValidationError, match="at most 3"):
        b.request.model_validate([RECORD] * 4)
    a.request.model_validate([RECORD] * 10)

    assert info(a.info_app).status_code == 503  # not loaded yet
    one, other = first.inner(), second.inner()
    assert (a.slot.instance, b.slot.instance) == (one, other)
    assert one.batcher is not other.batcher and one.reloader is not other.reloader
    assert info(a.info_app).json()["model_tag"] == "penguins_classifier:abc123"
    assert info(b.info_app).json()["model_tag"] == "other_classifier:def456"

    records = getattr(a.request.model_validate([RECORD, RECORD]), ROOT_FIELD)
    served, proba = asyncio.run(one.batcher(records))
    assert served.tag == "penguins_classifier:abc123" and proba.shape == (2, 2)
    idle = {"waits": 0, "callers": 0}  # no caller known in process: nobody waited for
    assert info(a.info_app).json()["batching"] == {"requests": 1, "model_calls": 1, **idle}
    assert info(b.info_app).json()["batching"] == {"requests": 0, "model_calls": 0, **idle}

    other.swap(service.ServedModel("other_classifier:v2", FixedModel(["x"], [1.0]), "registry",
                                   "swapped", {}))  # fmt: skip
    assert one.current.tag == "penguins_classifier:abc123"
    assert a.slot.model_tag() == "penguins_classifier:abc123"
    assert b.slot.model_tag() == "other_classifier:v2"
    assert a.slot.log() is None and b.slot.log() is None  # the log is off in both
    one.close()
    other.close()
