"""A running server follows the registry's champion without a restart: under load, with
no failed request; a broken champion is refused and the current model keeps serving; the
admin route needs the token."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import WorseBuild
from tests.support import free_port, info, load_until, start, stop, wait_for_tag, wait_http

pytestmark = pytest.mark.e2e

BENTOML = str(Path(sys.executable).with_name("bentoml"))
TOKEN = "test-admin-token"
RECORD = {"island": "Biscoe", "bill_length_mm": 45.2, "bill_depth_mm": 15.1,
          "flipper_length_mm": 215, "body_mass_g": 5200, "sex": "male"}  # fmt: skip


def test_the_server_follows_the_champion(worse_build: WorseBuild, tmp_path: Path):
    build = worse_build.copy_to(tmp_path / "project")
    project, bento = build.project, build.published
    first, second = build.champion["model_tag"], build.challenger["model_tag"]
    assert second != first  # registered as challenger; the gates kept it from champion

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cache = tmp_path / "cache"
    env = {
        "BENTOML_HOME": str(tmp_path / "home"),
        "NBSHIP_REGISTRY_URL": f"sqlite:///{project.path / 'registry.db'}",
        "NBSHIP_MODEL_STORE": str(project.path / "model-store"),
        "NBSHIP_MODEL_CACHE": str(cache),
        "NBSHIP_RELOAD_SECONDS": "0.5",
        "NBSHIP_ADMIN_TOKEN": TOKEN,
        "NBSHIP_LOG_URL": "off",
    }
    log = tmp_path / "serve.log"
    proc = start([BENTOML, "serve", str(bento), "--host", "127.0.0.1", "--port", str(port)],
                 log, env=env)  # fmt: skip
    try:
        wait_http(f"{url}/readyz", proc, timeout=90)
        assert info(url)["model_tag"] == first

        # under load, the champion changes in the registry: the server switches by itself
        async def swap_under_load() -> list[tuple[int, str]]:
            done = asyncio.Event()
            load = asyncio.create_task(load_until(url, done, RECORD))
            await asyncio.sleep(1)
            promoted = await asyncio.to_thread(
                project.run, "models", "promote", second, "-r", "test", "--force"
            )
            assert promoted.returncode == 0, promoted.stderr
            switched = await asyncio.to_thread(wait_for_tag, url, second)
            await asyncio.sleep(1)
            done.set()
            answers = await load
            assert switched
            return answers

        answers = asyncio.run(swap_under_load())
        assert {status for status, _ in answers} == {200}, "no request fails during the swap"
        tags = [tag for _, tag in answers]
        assert tags[0] == first and tags[-1] == second
        served = info(url)
        assert served["source"] == "registry" and served["metadata"]["candidate"] == "baseline"

        # admin route: no token, a wrong one -> 401, nothing changes; the right one works
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            refused = httpx.post(f"{url}/admin/reload", headers=headers, timeout=10)
            assert refused.status_code == 401 and "token" in refused.json()["detail"]
        ok = httpx.post(f"{url}/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"},
                        timeout=30)  # fmt: skip
        assert ok.status_code == 200 and ok.json()["model_tag"] == second

        # back to the first model (rollback), then a tampered champion is refused
        assert project.run("models", "rollback", "penguins_classifier", "-r", "t").returncode == 0
        assert wait_for_tag(url, first)
        name, version = second.split(":")
        pkl = cache / name / version / "saved_model.pkl"
        pkl.write_bytes(pkl.read_bytes() + b"\0")
        again = project.run("models", "promote", second, "-r", "test", "--force")
        assert again.returncode == 0, again.stderr
        time.sleep(3)
        assert info(url)["model_tag"] == first
        answer = httpx.post(f"{url}/predict", json=RECORD, timeout=10)
        assert answer.status_code == 200 and answer.json()["model"] == first
    finally:
        stop(proc)
    text = log.read_text()
    assert f"refusing champion {second}, still serving {first}" in text
    assert f"now serving {second} (was {first}" in text
