"""nbship.deploy.container without podman: settings, podman's config files, the Containerfile,
image names and the checks that run before any build."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from nbship.config import ConfigError
from nbship.deploy import container
from nbship.deploy.container import ContainerError, ContainerSettings

pytestmark = pytest.mark.unit


# --- ContainerSettings.from_env ------------------------------------------------------


@pytest.mark.parametrize("section", [None, {}])
def test_from_env_defaults(tmp_path: Path, section: dict | None) -> None:
    settings = ContainerSettings.from_env(tmp_path, section)
    assert settings.state_dir == tmp_path / ".containers"
    assert settings.base_image == container.DEFAULT_BASE
    assert settings.suite == "bookworm"
    assert settings.mirror is None
    assert settings.extra_ca_certs == "host"
    assert settings.labels == {}


def test_from_env_overrides(tmp_path: Path) -> None:
    section = {
        "state_dir": "var/podman",
        "base_image": "localhost/other:1",
        "suite": "trixie",
        "mirror": "http://mirror.example/debian",
        "extra_ca_certs": ["/etc/ssl/proxy.pem"],
        "labels": {"team": "ml"},
    }
    original = dict(section)
    settings = ContainerSettings.from_env(tmp_path, section)
    assert settings.state_dir == tmp_path / "var/podman"
    assert settings.base_image == "localhost/other:1"
    assert settings.suite == "trixie"
    assert settings.mirror == "http://mirror.example/debian"
    assert list(settings.extra_ca_certs) == ["/etc/ssl/proxy.pem"]
    assert settings.labels == {"team": "ml"}
    assert section == original  # the caller's dict is not consumed


def test_from_env_absolute_state_dir(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    settings = ContainerSettings.from_env(tmp_path / "project", {"state_dir": str(elsewhere)})
    assert settings.state_dir == elsewhere


def test_from_env_unknown_key_raises(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"container\.registry: unknown setting"):
        ContainerSettings.from_env(tmp_path, {"registry": "quay.io"})


# --- ca_files ------------------------------------------------------------------------


def test_ca_files_host_lists_crt_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cas = tmp_path / "cas"
    (cas / "corp").mkdir(parents=True)
    (cas / "proxy.crt").write_text("PEM")
    (cas / "corp" / "root.crt").write_text("PEM")
    (cas / "notes.txt").write_text("not a CA")
    monkeypatch.setattr(container, "HOST_EXTRA_CAS", cas)
    settings = ContainerSettings(state_dir=tmp_path / "state")
    assert settings.ca_files() == sorted([cas / "proxy.crt", cas / "corp" / "root.crt"])


def test_ca_files_host_missing_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(container, "HOST_EXTRA_CAS", tmp_path / "absent")
    assert ContainerSettings(state_dir=tmp_path).ca_files() == []


def test_ca_files_explicit_list(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pem", tmp_path / "b.crt"
    a.write_text("PEM")
    b.write_text("PEM")
    settings = ContainerSettings(state_dir=tmp_path, extra_ca_certs=[str(a), str(b)])
    files = settings.ca_files()
    assert files == [a, b]
    assert all(isinstance(f, Path) for f in files)


def test_ca_files_missing_file_named(tmp_path: Path) -> None:
    present, absent = tmp_path / "a.pem", tmp_path / "gone.pem"
    present.write_text("PEM")
    settings = ContainerSettings(state_dir=tmp_path, extra_ca_certs=[str(present), str(absent)])
    with pytest.raises(ContainerError, match=re.escape(str(absent))) as info:
        settings.ca_files()
    assert str(present) not in str(info.value)


def test_ca_files_empty_list(tmp_path: Path) -> None:
    assert ContainerSettings(state_dir=tmp_path, extra_ca_certs=[]).ca_files() == []


def test_ca_files_single_path_string(tmp_path: Path) -> None:
    ca = tmp_path / "proxy.pem"
    ca.write_text("PEM")
    assert ContainerSettings(state_dir=tmp_path, extra_ca_certs=str(ca)).ca_files() == [ca]


# --- podman_env ----------------------------------------------------------------------


def test_podman_env_writes_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBSHIP_TEST_MARKER", "kept")
    state = tmp_path / "project" / ".containers"
    env = container.podman_env(ContainerSettings(state_dir=state))
    conf, storage = state / "containers.conf", state / "storage.conf"
    assert env["CONTAINERS_CONF"] == str(conf)
    assert env["CONTAINERS_STORAGE_CONF"] == str(storage)
    assert env["NBSHIP_TEST_MARKER"] == "kept"  # the rest of the environment is kept

    text = conf.read_text()
    assert 'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]' in text
    parsed = tomllib.loads(text)
    assert parsed["engine"]["runtime"] == "runc"
    assert parsed["engine"]["cgroup_manager"] == "cgroupfs"
    assert parsed["engine"]["events_logger"] == "file"
    assert parsed["containers"]["default_ulimits"] == ["nofile=20000:20000", "nproc=32768:32768"]

    store = tomllib.loads(storage.read_text())["storage"]
    assert store["driver"] == "overlay"
    assert Path(store["graphroot"]) == state / "storage"
    assert Path(store["runroot"]) == state / "run"
    assert Path(store["graphroot"]).is_relative_to(state)
    assert Path(store["runroot"]).is_relative_to(state)


def test_podman_env_resolves_relative_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = container.podman_env(ContainerSettings(state_dir=Path("rel/.containers")))
    conf = Path(env["CONTAINERS_CONF"])
    assert conf.is_absolute() and conf == tmp_path / "rel/.containers/containers.conf"
    store = tomllib.loads(Path(env["CONTAINERS_STORAGE_CONF"]).read_text())["storage"]
    assert Path(store["graphroot"]).is_absolute()


def test_podman_env_quotes_paths(tmp_path: Path) -> None:
    state = tmp_path / 'odd"name' / ".containers"
    env = container.podman_env(ContainerSettings(state_dir=state))
    store = tomllib.loads(Path(env["CONTAINERS_STORAGE_CONF"]).read_text())["storage"]
    assert Path(store["graphroot"]) == state / "storage"


# --- host_mirror ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("debian.sources", "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n"),
        ("extra.list", "deb [arch=amd64] http://mirror.example/debian bookworm main\n"),
    ],
)
def test_host_mirror_reads_deb822_and_one_line_sources(tmp_path: Path, name: str, text: str):
    folder = tmp_path / "sources.list.d"
    folder.mkdir()
    (folder / name).write_text(text)
    (folder / "notes.txt").write_text("URIs: http://wrong.example/debian\n")
    assert container.host_mirror([folder, tmp_path / "missing"]) == "http://mirror.example/debian"


def test_host_mirror_falls_back_to_debian_org(tmp_path: Path):
    assert container.host_mirror([tmp_path]) == "http://deb.debian.org/debian"


def test_host_mirror_on_this_machine() -> None:
    mirror = container.host_mirror()
    assert mirror.startswith("http")
    assert mirror.endswith("/debian")
    assert not re.search(r"\s", mirror)


# --- check_tools ---------------------------------------------------------------------


def test_check_tools_names_missing_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ContainerError) as info:
        container.check_tools()
    message = str(info.value)
    for tool in ("podman", "runc", "debootstrap"):
        assert tool in message
    # the script ships with the package: a project has no scripts/ of nbship's
    assert "nbship/deploy/install-container-tools.sh" in message


def test_check_tools_passes_with_fake_tools(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in container.REQUIRED_TOOLS:
        exe = fake / tool
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake))
    container.check_tools()


# --- CONTAINERFILE and WARMUP --------------------------------------------------------


@pytest.fixture
def containerfile() -> str:
    return container.CONTAINERFILE.format(base="localhost/base:test", uid=10001, port=3000)


def test_containerfile_renders(containerfile: str) -> None:
    lines = containerfile.splitlines()
    assert lines[0] == "FROM localhost/base:test"
    assert "--only-binary=:all:" in containerfile
    assert "USER 10001" in lines
    assert "EXPOSE 3000" in lines
    assert "COPY --chown=10001:10001 bento /home/bento/bento" in lines
    assert "useradd --uid 10001 " in containerfile
    entrypoint = next(line for line in lines if line.startswith("ENTRYPOINT "))
    argv = json.loads(entrypoint.removeprefix("ENTRYPOINT "))
    assert argv == ["bentoml", "serve", "/home/bento/bento", "--host", "0.0.0.0", "--port", "3000"]
    # USER comes after every RUN: the server does not run as root
    assert lines.index("USER 10001") > max(
        i for i, line in enumerate(lines) if line.startswith("RUN ")
    )


def test_containerfile_no_unformatted_braces(containerfile: str) -> None:
    for line in containerfile.splitlines():
        if "{" in line or "}" in line:
            assert "find /opt/venv" in line, line
            assert line.count("{") == line.count("}") == 1
            assert "-exec rm -rf {} +" in line
    assert not re.search(r"\{\w+\}", containerfile)


def test_containerfile_matches_module_constants() -> None:
    rendered = container.CONTAINERFILE.format(
        base=container.DEFAULT_BASE, uid=container.APP_UID, port=container.CONTAINER_PORT
    )
    assert f"USER {container.APP_UID}" in rendered
    assert f"EXPOSE {container.CONTAINER_PORT}" in rendered


def test_warmup_compiles() -> None:
    compile(container.WARMUP, "warmup.py", "exec")
    # it warms up on a port other than the served one, and removes its own BentoML home
    assert str(container.CONTAINER_PORT) not in container.WARMUP
    assert "/tmp/warmup-home" in container.WARMUP
    assert "/tmp/warmup-home" in container.CONTAINERFILE


# --- image_name ----------------------------------------------------------------------


@pytest.fixture
def fake_bento(tmp_path: Path) -> tuple[Path, Path, dict]:
    bentos = tmp_path / "bentos"
    real = bentos / "penguins_classifier-abc123"
    (real / "src").mkdir(parents=True)
    config = {
        "bento_name": "penguins_classifier",
        "model_tag": "penguins_classifier:m1",
        "metadata": {"data_fingerprint": "f00d", "git_commit": "deadbeef"},
    }
    (real / "src" / "serving.json").write_text(json.dumps(config))
    link = bentos / "penguins_classifier"
    link.symlink_to("penguins_classifier-abc123")
    return real, link, config


def test_image_name_via_symlink_and_real_folder(fake_bento: tuple[Path, Path, dict]) -> None:
    real, link, config = fake_bento
    for folder in (link, real):
        assert container.image_name(folder) == ("localhost/penguins_classifier:abc123", config)


# --- build_image ---------------------------------------------------------------------


def test_build_image_without_bento(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(container, "check_tools", lambda: None)
    state = tmp_path / ".containers"
    empty = tmp_path / "not-a-bento"
    empty.mkdir()
    with pytest.raises(ContainerError, match="no bento") as info:
        container.build_image(empty, ContainerSettings(state_dir=state))
    assert str(empty.resolve()) in str(info.value)
    assert "nbship build" in str(info.value)
    assert not state.exists()  # nothing was written before the check


def test_base_image_ref_changes_with_the_extra_cas(tmp_path: Path) -> None:
    ca = tmp_path / "corp.crt"
    ca.write_text("one")
    settings = ContainerSettings(
        state_dir=tmp_path, extra_ca_certs=[str(ca)], mirror="http://m/debian"
    )
    first = container.base_image_ref(settings)
    assert first.startswith(f"{settings.base_image}-")
    assert container.base_image_ref(settings) == first
    ca.write_text("two")
    assert container.base_image_ref(settings) != first
    no_cas = ContainerSettings(state_dir=tmp_path, extra_ca_certs=[], mirror="http://m/debian")
    assert container.base_image_ref(no_cas) != first
