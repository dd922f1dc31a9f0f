"""JupyterLab as a data scientist uses it, in a real headless chromium: `nbship lab` in a
built copy of the example (a git repository), the train task opened by a double-click in
the file browser, Run All by hand, a cell edited by typing, saved; the file then differs
from git by that edit only."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import NBSHIP, Project
from tests.support import PROJECT, free_port, headless_chromium, start, stop, wait_http

pytestmark = pytest.mark.e2e

TOKEN = "nbship-browser-token"
TASK = "notebooks/train.py"
CONFIG = "jupyter_server_config.py"
EDIT = "# edited in the browser"


@dataclass(frozen=True)
class Lab:
    url: str
    folder: Path
    log: Path


def _git(folder: Path, *args: str) -> str:
    # the repository's own folder is outside the project, so that nothing of it shows in
    # the file browser
    git_dir = folder.parent / "project.git"
    return subprocess.run(
        [
            "git",
            f"--git-dir={git_dir}",
            f"--work-tree={folder}",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            *args,
        ],
        cwd=folder,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, built_project: Project) -> Iterator[Lab]:
    project = built_project.copy_to(tmp_path_factory.mktemp("browser") / "project")
    # the project's Jupyter settings (the session build copies only what a build reads)
    shutil.copy2(PROJECT / CONFIG, project.path / CONFIG)
    shutil.copytree(PROJECT / ".jupyter", project.path / ".jupyter")
    shutil.copy2(PROJECT / ".gitignore", project.path / ".gitignore")  # checkpoints, products
    _git(project.path, "init", "-q")
    _git(project.path, "add", "notebooks", "env.yaml", "pipeline.yaml", ".gitignore")
    _git(project.path, "commit", "-q", "-m", "built")
    home = tmp_path_factory.mktemp("jupyter-home")
    port = free_port()
    cmd = [
        NBSHIP, "lab", "-p", ".", "--no-browser", f"--port={port}",
        f"--IdentityProvider.token={TOKEN}",
        # the test drives Run All and Save through the app's own commands
        "--LabApp.expose_app_in_browser=True",
    ]  # fmt: skip
    env = {
        **project.env,
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),  # no user settings
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
    }
    log = home / "lab.log"
    proc = start(cmd, log, env=env, cwd=project.path)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/status?token={TOKEN}", proc, timeout=120)
        yield Lab(url=f"http://127.0.0.1:{port}", folder=project.path, log=log)
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("chromium")
    with headless_chromium(tmp, height=1200) as driver:
        try:
            yield driver
        finally:  # what the page showed last, for a failure
            driver.save_screenshot(str(tmp / "last.png"))


def _until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := condition():
                return value
        except Exception:  # the page is still loading: the element is not there yet
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


CURRENT = "const w = window.jupyterapp.shell.currentWidget;"


def test_double_click_run_all_edit_save(lab: Lab, browser: Any):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(f"{lab.url}/lab/tree/notebooks?token={TOKEN}")
    item = _until(
        lambda: next(
            e for e in browser.find_elements(By.CSS_SELECTOR, ".jp-DirListing-itemText")
            if e.text == "train.py"
        ),
        90, "train.py in the file browser",
    )  # fmt: skip
    ActionChains(browser).double_click(item).perform()

    # opened as a notebook (jupytext's viewer is the project's default), not as text
    opened = _until(
        lambda: browser.execute_script(
            CURRENT + "return w && w.context && w.context.path === 'notebooks/train.py' "
            "&& w.content && w.content.widgets && w.content.widgets.length > 3;"
        ),
        60, "the train task open as a notebook",
    )  # fmt: skip
    assert opened
    assert browser.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell")
    tags = browser.execute_script(
        CURRENT + "return w.content.widgets.map(c => c.model.getMetadata('tags') || []);"
    )
    assert sum("parameters" in t for t in tags) == 1

    def kernel_ready() -> bool:
        # JupyterLab 4.6 sometimes still asks which kernel although the project's
        # settings say to start the preferred one: answer as a user would (see the note)
        for dialog in browser.find_elements(By.CSS_SELECTOR, ".jp-Dialog"):
            if "Select Kernel" in dialog.text:
                dialog.find_element(By.CSS_SELECTOR, ".jp-mod-accept").click()
        return browser.execute_script(
            CURRENT + "return w.sessionContext.session && w.sessionContext.session.kernel "
            "&& w.sessionContext.session.kernel.connectionStatus === 'connected';"
        )

    _until(kernel_ready, 90, "the kernel")
    browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")
    states = _until(
        lambda: (s := browser.execute_script(
            CURRENT + "const code = w.content.widgets.filter(c => c.model.type === 'code');"
            "if (w.sessionContext.session.kernel.status !== 'idle') return null;"
            "if (!code.every(c => c.model.executionCount !== null)) return null;"
            "return code.map(c => c.model.toJSON().outputs);"
        )) and s,
        240, "Run All to finish",
    )  # fmt: skip
    outputs = [o for cell in states for o in cell]
    errors = [o for o in outputs if o["output_type"] == "error"]
    assert not errors, errors
    text = "".join("".join(o.get("text", "")) for o in outputs if o["output_type"] == "stream")
    assert "run by hand as task 'train-logreg'" in text
    assert list((lab.folder / ".nbship" / "hand-run").rglob("logreg*.joblib"))

    # an edit typed into the last cell, then saved with the keyboard
    last = browser.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-CodeCell .cm-content")[-1]
    last.click()
    ActionChains(browser).send_keys(Keys.CONTROL, Keys.END).send_keys(Keys.ENTER, EDIT).perform()
    _until(lambda: EDIT in last.text, 10, "the typed edit")
    browser.execute_script("window.jupyterapp.commands.execute('docmanager:save');")
    _until(lambda: EDIT in (lab.folder / TASK).read_text(), 30, "the saved file")

    diff = _git(lab.folder, "diff", "--unified=0", "--", TASK)
    added = [
        line for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")
    ]
    removed = [
        line for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")
    ]
    assert added == [f"+{EDIT}"] and removed == [], diff
    assert not _git(lab.folder, "status", "--porcelain", "--", "notebooks").replace(
        f" M {TASK}\n", ""
    )  # no paired .ipynb, no checkpoint in the notebooks folder
    assert "Traceback" not in lab.log.read_text()
