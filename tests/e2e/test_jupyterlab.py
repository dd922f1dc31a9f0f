"""A real JupyterLab on 127.0.0.1, started both ways docs/jupyterlab.md gives (`nbship lab`
and `jupyter lab --config=jupyter_server_config.py`), in a copy of the project: the .py
tasks open as notebooks and save back as clean percent-format .py. Ploomber's server
extension, which breaks /api/contents, is off via the project's jupyter_server_config.py;
plain `jupyter lab` would not read that file (no config from the current folder)."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from traitlets.config.loader import PyFileConfigLoader

from tests.support import PROJECT, free_port, start, stop, wait_http

pytestmark = pytest.mark.e2e

CONFIG = "jupyter_server_config.py"
TOKEN = "nbship-e2e-token"
TASK = "notebooks/train.py"


@dataclass(frozen=True)
class Lab:
    url: str
    folder: Path
    log: Path
    launcher: str

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"token {TOKEN}"}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=60, **kwargs)


NBSHIP = str(Path(sys.executable).with_name("nbship"))
LAUNCHERS = {
    # what the docs tell users to run from the project root
    "nbship-lab": [NBSHIP, "lab", "-p", "."],
    # what `nbship lab` runs; also documented
    "jupyter-lab-config": [sys.executable, "-m", "jupyter", "lab", f"--config={CONFIG}"],
}


def test_project_config_values():
    config = PyFileConfigLoader(CONFIG, path=str(PROJECT)).load_config()
    server = config.ServerApp
    assert server.ip == "127.0.0.1"
    assert server.get("jpserver_extensions", {}).get("ploomber") is False
    # jupytext's own contents manager must stay in charge; browser opening is left to
    # the user (tests pass --no-browser)
    assert "contents_manager_class" not in server
    assert "open_browser" not in server


@pytest.fixture(scope="module", params=sorted(LAUNCHERS))
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    # A copy of the project's layout: with pipeline.yaml present, Ploomber's contents
    # manager (if it were active) would find the DAG and inject parameters.
    folder = tmp_path_factory.mktemp("lab") / "project"
    shutil.copytree(PROJECT / "notebooks", folder / "notebooks")
    for name in (CONFIG, "pipeline.yaml", "env.yaml"):
        shutil.copy2(PROJECT / name, folder / name)
    shutil.copytree(PROJECT / ".jupyter", folder / ".jupyter")
    home = tmp_path_factory.mktemp("jupyter-home")
    port = free_port()
    # No --ip: the project's config must bind 127.0.0.1 on its own.
    cmd = [
        *LAUNCHERS[request.param],
        "--no-browser", f"--port={port}", f"--IdentityProvider.token={TOKEN}",
    ]  # fmt: skip
    if os.geteuid() == 0 and request.param != "nbship-lab":  # `nbship lab` passes it itself
        cmd.append("--allow-root")
    log = home / "jupyterlab.log"
    env = {
        # Keep the user's ~/.jupyter out; the venv's etc/jupyter (which enables the
        # ploomber extension) still applies, as it does for `uv run jupyter lab`.
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
    }
    proc = start(cmd, log, env=env, cwd=folder)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/status?token={TOKEN}", proc, timeout=90)
        yield Lab(url=f"http://127.0.0.1:{port}", folder=folder, log=log, launcher=request.param)
    finally:
        stop(proc)
    output = log.read_text()
    assert "Traceback" not in output, output[-4000:]


def test_config_applies(lab: Lab):
    output = lab.log.read_text()
    assert re.search(r"running at:\s*\n.*http://127\.0\.0\.1:\d+/lab", output), output[-3000:]
    assert "PloomberContentsManager" not in output
    assert "ploomber | extension was successfully loaded" not in output


def test_running_as_root_is_allowed_and_said(lab: Lab):
    # the fixture passes --allow-root to plain `jupyter lab` only; `nbship lab` must
    # start as root on its own and say why
    if os.geteuid() != 0 or lab.launcher != "nbship-lab":
        pytest.skip("not root, or not `nbship lab`")
    assert "passing --allow-root" in lab.log.read_text()


@pytest.mark.parametrize(
    ("plugin", "key", "value"),
    [
        # a double-click opens a task as a notebook, not in the text editor
        ("@jupyterlab/docmanager-extension:plugin", "defaultViewers",
         {"python": "Jupytext Notebook"}),
        # ... with a kernel, without asking which (a task's file names none)
        ("@jupyterlab/notebook-extension:tracker", "autoStartDefaultKernel", True),
        # no "get notified about official Jupyter news?" prompt, no fetch
        ("@jupyterlab/apputils-extension:notification", "fetchNews", "false"),
    ],
)  # fmt: skip
def test_project_lab_settings_apply(lab: Lab, plugin: str, key: str, value: object):
    response = lab.api("GET", f"/lab/api/settings/{plugin}")
    assert response.status_code == 200, response.text[:500]
    # the project's overrides are the defaults the user's own settings start from
    assert response.json()["schema"]["properties"][key]["default"] == value


def test_lab_page(lab: Lab):
    response = lab.api("GET", "/lab")
    assert response.status_code == 200
    assert "JupyterLab" in response.text


def test_every_task_opens_as_notebook(lab: Lab):
    listing = lab.api("GET", "/api/contents/notebooks")
    assert listing.status_code == 200, listing.text
    names = sorted(item["name"] for item in listing.json()["content"])
    assert names == sorted(p.name for p in (PROJECT / "notebooks").glob("*.py"))
    for name in names:
        response = lab.api("GET", f"/api/contents/notebooks/{name}?content=1&type=notebook")
        assert response.status_code == 200, (name, response.text[:500])
        model = response.json()
        assert model["type"] == "notebook"
        cells = model["content"]["cells"]
        tags = [c["metadata"].get("tags", []) for c in cells if c["cell_type"] == "code"]
        assert sum("parameters" in t for t in tags) == 1, name
        assert not any("injected-parameters" in t for t in tags), name


def test_edit_and_save_writes_clean_percent_py(lab: Lab):
    path = lab.folder / TASK
    original = path.read_text()
    response = lab.api("GET", f"/api/contents/{TASK}?content=1&type=notebook")
    assert response.status_code == 200, response.text[:500]
    model = response.json()
    assert model["type"] == "notebook"
    notebook = model["content"]
    (params,) = [c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert params["cell_type"] == "code"
    assert 'candidate = "logreg"' in params["source"]
    params["source"] = params["source"].replace('candidate = "logreg"', 'candidate = "forest"')

    saved = lab.api(
        "PUT",
        f"/api/contents/{TASK}",
        json={"type": "notebook", "format": "json", "content": notebook},
    )
    assert saved.status_code == 200, saved.text[:500]

    text = path.read_text()
    # Exactly the edit, nothing else: still percent format, same tags and cells.
    assert text == original.replace('candidate = "logreg"', 'candidate = "forest"')
    assert text.startswith("# %%")
    assert '# %% tags=["parameters"]\n' in text
    assert 'candidate = "forest"' in text
    assert "injected-parameters" not in text
    for absolute in (lab.folder, PROJECT, Path.home()):
        assert len(absolute.parts) < 2 or str(absolute) not in text
    assert not list(lab.folder.rglob("*.ipynb"))  # no paired notebook written

    reopened = lab.api("GET", f"/api/contents/{TASK}?content=1&type=notebook")
    assert reopened.status_code == 200
    sources = [c["source"] for c in reopened.json()["content"]["cells"]]
    assert any('candidate = "forest"' in s for s in sources)
