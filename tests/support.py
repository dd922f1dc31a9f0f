"""Helpers the tests share: free ports, waiting for HTTP, stopping servers by pid."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import pytest

PROJECT = Path(__file__).resolve().parents[1]
T = TypeVar("T")
# What a project folder needs to build: definitions, notebooks, suites, and the lock
# that the bento's pins are exported from.
PROJECT_FILES = ("pipeline.yaml", "env.yaml", "pyproject.toml", "uv.lock", "README.md")
PROJECT_DIRS = ("notebooks", "expectations")


def copy_sources(dest: Path) -> None:
    """A fresh, unbuilt copy of the example project's sources in `dest` (created)."""
    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
        shutil.copy2(PROJECT / name, dest / name)
    for name in PROJECT_DIRS:
        shutil.copytree(PROJECT / name, dest / name)


async def load_until(
    url: str, done: asyncio.Event, body: object, workers: int = 4
) -> list[tuple[int, str]]:
    """`workers` connections POST `body` to /predict back to back until `done`; returns
    each answer's status and the model tag it names, in order."""
    answers: list[tuple[int, str]] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def worker() -> None:
            while not done.is_set():
                response = await client.post("/predict", json=body)
                tag = response.json().get("model", "") if response.status_code == 200 else ""
                answers.append((response.status_code, tag))

        await asyncio.gather(*(worker() for _ in range(workers)))
    return answers


def info(url: str) -> dict:
    return httpx.get(f"{url}/info", timeout=10).json()


def wait_until(condition: Callable[[], T], timeout: float, interval: float = 0.2) -> T | None:
    """Calls `condition` every `interval` seconds until it returns neither None nor
    False, and returns that; None once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def wait_for_tag(url: str, tag: str, timeout: float = 20) -> bool:
    """Polls /info until the server says it serves `tag`."""
    return bool(wait_until(lambda: info(url)["model_tag"] == tag, timeout))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60.0) -> None:
    """Polls `url` until it answers 200; fails early if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s")


def _tree(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """The process and its descendants. BentoML starts its workers in sessions of their
    own, so signalling the server's process group does not reach them."""
    try:
        parent = psutil.Process(proc.pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM the server's process group (by pid), SIGKILL if it lingers; then any of
    its processes still alive (workers outside the group) are killed too."""
    if proc.poll() is not None:
        return
    tree = _tree(proc)
    pgid = os.getpgid(proc.pid)
    os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for leftover in alive:
        leftover.kill()
    psutil.wait_procs(alive, timeout=timeout)


def kill9(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the server and every process it started, at once: a crash, no shutdown
    hook runs anywhere."""
    tree = _tree(proc)
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.wait(timeout=30)
    psutil.wait_procs(tree, timeout=30)


def start(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Starts a server in its own process group, output to `log`."""
    handle = log.open("wb")
    return subprocess.Popen(
        cmd,
        stdout=handle,
        stderr=subprocess.STDOUT,
        cwd=cwd or PROJECT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (Debian's server binaries); yields a
    SQLAlchemy URL. PostgreSQL refuses to run as root, so as root it runs as `postgres`,
    in a folder of its own (pytest's temp folders are private to root)."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not bins:
        raise RuntimeError("PostgreSQL is not installed: bash scripts/install-postgresql.sh")
    bin_dir = bins[-1]
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="nbship-pg-"))
    data = folder / "data"
    if as_user:
        shutil.chown(folder, "postgres")
    port = free_port()

    def pg(*args: str) -> None:
        result = subprocess.run([*as_user, *args], capture_output=True, text=True, cwd="/")
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stdout}{result.stderr}")

    try:
        pg(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "nbship", "--no-sync")
        pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w",
           "-o", f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off", "start")  # fmt: skip
        try:
            pg(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "nbship",
               "nbship")  # fmt: skip
            yield f"postgresql+psycopg://nbship@127.0.0.1:{port}/nbship"
        finally:
            pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def postgres_schema(base_url: str) -> Iterator[str]:
    """A new empty schema on a PostgreSQL server, dropped afterwards; yields a URL whose
    connections use it (tests sharing one server do not see each other's tables)."""
    import uuid

    from sqlalchemy import create_engine, text

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base_url)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{base_url}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


# A tiny two-notebook Ploomber project, for the tests of the seam (`nbship.pipeline.dag`).
# b is declared before a: the order of tasks in the spec is not the dependency order
DAG_PIPELINE_YAML = """\
tasks:
  - source: notebooks/b.py
    name: b
    executor: ploomber-engine
    executor_params: {progress_bar: false}
    product:
      nb: "{{root}}/b.ipynb"
      data: "{{root}}/b.txt"
  - source: notebooks/a.py
    name: a
    executor: ploomber-engine
    executor_params: {progress_bar: false}
    product:
      nb: "{{root}}/a.ipynb"
      data: "{{root}}/a.txt"
"""

DAG_ENV_YAML = """\
root: build
bentos: bentos
bento: {name: x}
"""

DAG_NOTEBOOK_A = """\
# %% tags=["parameters"]
upstream = None
product = None

# %%
from pathlib import Path

Path(product["data"]).write_text("hello from a")
"""

DAG_NOTEBOOK_B = """\
# %% tags=["parameters"]
upstream = ["a"]
product = None

# %%
from pathlib import Path

text = Path(upstream["a"]["data"]).read_text()
Path(product["data"]).write_text(text.upper())
"""


def write_dag_project(root: Path) -> Path:
    """The tiny project's sources in `root` (created), nothing built; returns `root`."""
    (root / "notebooks").mkdir(parents=True)
    (root / "pipeline.yaml").write_text(DAG_PIPELINE_YAML)
    (root / "env.yaml").write_text(DAG_ENV_YAML)
    (root / "notebooks" / "a.py").write_text(DAG_NOTEBOOK_A)
    (root / "notebooks" / "b.py").write_text(DAG_NOTEBOOK_B)
    return root


CHROMEDRIVER = "/usr/bin/chromedriver"


@contextlib.contextmanager
def headless_chromium(tmp: Path, width: int = 1280, height: int = 1800) -> Iterator[Any]:
    """Debian's headless chromium driven by selenium (scripts/install-browser.sh puts it
    there), with its profile in `tmp`; quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium")
    if chromium is None or not Path(CHROMEDRIVER).is_file():
        pytest.fail(
            "Debian's chromium and chromedriver are needed for the browser tests: "
            "install them as root with `bash scripts/install-browser.sh` (apt-get install "
            "chromium chromium-driver)",
            pytrace=False,
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
        f"--window-size={width},{height}", f"--user-data-dir={tmp / 'profile'}",
        "--no-first-run", "--disable-extensions", "--disable-background-networking",
        "--disable-sync", "--disable-component-update", "--disable-default-apps",
    ):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # an explicit driver path: selenium-manager is never run (it would download one)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp / "chromedriver.log"))
    browser = webdriver.Chrome(service=service, options=options)
    browser.set_page_load_timeout(60)
    try:
        yield browser
    finally:
        browser.quit()


def register_like(registry_url: str, store: str, like: str, model: Any, candidate: str) -> str:
    """Registers `model` (a scikit-learn estimator) as a new version of `like`'s model name,
    shaped like it (features, task, classes, target) and pushed to the shared `store`: as
    a build would, minus the gates. Returns its tag."""
    import bentoml

    from nbship.registry import model_store
    from nbship.registry.versions import Registry

    tag = str(bentoml.sklearn.save_model(like.split(":")[0], model).tag)
    artifact = model_store.push(tag, store)
    with Registry(registry_url) as registry:
        extra = registry.get(like).extra
        keep = {k: extra[k] for k in ("features", "task", "classes", "target")}
        registry.register(tag, {"candidate": candidate, "artifact": artifact, **keep})
    return tag
