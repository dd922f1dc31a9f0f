"""A predict server asks the registry for the champion at start: an older bento serves
the current champion, fetched from the shared store, and refuses a tampered one."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import httpx
import pytest

from nbship.registry.model_store import archive_uri
from tests.conftest import Project, WorseBuild
from tests.support import free_port, start, stop, wait_http

pytestmark = pytest.mark.e2e

BENTOML = str(Path(sys.executable).with_name("bentoml"))
RECORD = {
    "island": "Dream",
    "bill_length_mm": 39.0,
    "bill_depth_mm": 18.5,
    "flipper_length_mm": 190,
    "body_mass_g": 3700,
    "sex": "female",
}


@pytest.fixture(scope="module")
def two_champions(worse_build: WorseBuild, tmp_path_factory: pytest.TempPathFactory):
    """A copy of the project whose champion was then replaced (forced) by a baseline
    model; returns the project, the first bento's folder and both model tags."""
    build = worse_build.copy_to(tmp_path_factory.mktemp("champions") / "project")
    project, first, second = build.project, build.champion, build.challenger
    forced = project.run("models", "promote", second["model_tag"], "-r", "test", "--force")
    assert forced.returncode == 0, forced.stderr
    return project, build.published, first["model_tag"], second["model_tag"]


def _serve(bento: Path, project: Project, tmp: Path) -> tuple[str, object, Path]:
    port = free_port()
    log = tmp / "serve.log"
    env = {
        "BENTOML_HOME": str(tmp / "home"),
        "NBSHIP_REGISTRY_URL": f"sqlite:///{project.path / 'registry.db'}",
        "NBSHIP_MODEL_STORE": str(project.path / "model-store"),
        "NBSHIP_MODEL_CACHE": str(tmp / "cache"),
    }
    proc = start([BENTOML, "serve", str(bento), "--host", "127.0.0.1", "--port", str(port)],
                 log, env=env)  # fmt: skip
    wait_http(f"http://127.0.0.1:{port}/readyz", proc, timeout=90)
    return f"http://127.0.0.1:{port}", proc, log


def test_an_older_bento_serves_the_registry_champion(two_champions, tmp_path: Path):
    project, old_bento, first_tag, second_tag = two_champions
    url, proc, log = _serve(old_bento, project, tmp_path)
    try:
        info = httpx.get(f"{url}/info", timeout=10).json()
        answer = httpx.post(f"{url}/predict", json=RECORD, timeout=10).json()
    finally:
        stop(proc)
    assert info["bento_model_tag"] == first_tag
    assert info["model_tag"] == second_tag and info["source"] == "registry"
    assert info["metadata"]["candidate"] == "baseline"
    assert answer["model"] == second_tag
    assert f"serving {second_tag} from the registry" in log.read_text()


def test_a_tampered_champion_is_refused_and_the_bento_model_serves(two_champions, tmp_path: Path):
    project, old_bento, first_tag, second_tag = two_champions
    archive = Path(archive_uri(str(project.path / "model-store"), second_tag))
    original = archive.read_bytes()
    archive.write_bytes(original[:-10] + bytes(10))
    try:
        url, proc, log = _serve(old_bento, project, tmp_path)
        try:
            info = httpx.get(f"{url}/info", timeout=10).json()
            answer = httpx.post(f"{url}/predict", json=RECORD, timeout=10)
        finally:
            stop(proc)
    finally:
        archive.write_bytes(original)
    assert info["model_tag"] == first_tag and info["source"] == "bento"
    assert f"champion {second_tag} refused" in info["reason"]
    assert answer.status_code == 200 and answer.json()["model"] == first_tag
    text = log.read_text()
    assert f"refusing champion {second_tag}" in text and "refusing to load it" in text
    assert "Traceback" not in text


def test_a_bento_whose_own_model_was_tampered_never_becomes_ready(two_champions, tmp_path: Path):
    _, old_bento, first_tag, _ = two_champions
    bento = tmp_path / "bento"
    shutil.copytree(old_bento, bento)
    name, version = first_tag.split(":")
    pkl = bento / "models" / name / version / "saved_model.pkl"
    pkl.write_bytes(pkl.read_bytes()[:-1])
    log = tmp_path / "serve.log"
    port = free_port()
    env = {"BENTOML_HOME": str(tmp_path / "home"), "NBSHIP_REGISTRY_URL": ""}
    proc = start([BENTOML, "serve", str(bento), "--host", "127.0.0.1", "--port", str(port)],
                 log, env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while "saved_model.pkl: sha256" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "saved_model.pkl: sha256" in log.read_text()
        # BentoML keeps restarting the worker; it never reports ready, so a rollout that
        # waits for readiness keeps the previous version serving
        time.sleep(2)
        with pytest.raises(httpx.HTTPError):
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
            ready.raise_for_status()
    finally:
        stop(proc)
