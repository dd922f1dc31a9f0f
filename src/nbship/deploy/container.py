"""OCI images of a published bento, without a Docker daemon: rootful podman with runc.

The base image is made here: `debootstrap` a minimal Debian bookworm (its python3 is
3.11, the same as the bento's) and `podman import` it; it is cached in podman's store,
so only the first build pays for it. The image itself is a short Containerfile of our
own rather than BentoML's default one, whose apt line (build-essential, git) is most of
its 1.26 GB: every dependency here is a wheel, installed into a venv from the bento's
exact pins, and the server runs as a non-root user.

Podman's storage and config live in the project (`.containers/`), not in the host's
global ones, with the settings these machines need (runc, cgroupfs, ulimits).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from nbship.config import ContainerSection, validate_section

BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# the defaults are env.yaml's schema's (nbship.config), defined there once
_DEFAULTS = ContainerSection()
DEFAULT_BASE = _DEFAULTS.base_image
HOST_EXTRA_CAS = Path("/usr/local/share/ca-certificates")
CONTAINER_PORT = 3000
APP_UID = 10001
REQUIRED_TOOLS = ("podman", "runc", "debootstrap")
INSTALL_TOOLS_SCRIPT = "install-container-tools.sh"  # package data next to this module


class ContainerError(RuntimeError):
    pass


@dataclass(frozen=True)
class ContainerSettings:
    """The `container:` section of env.yaml."""

    state_dir: Path
    base_image: str = DEFAULT_BASE
    suite: str = _DEFAULTS.suite
    mirror: str | None = _DEFAULTS.mirror  # default: the host's Debian mirror
    # "host" trusts the host's locally added CAs (/usr/local/share/ca-certificates),
    # which is where an intercepting proxy's or a corporate CA usually sits; or a list
    # of PEM files; or [] for none.
    extra_ca_certs: str | Sequence[str] = _DEFAULTS.extra_ca_certs
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, project_dir: Path, section: ContainerSection) -> ContainerSettings:
        values = section.model_dump()
        return cls(state_dir=project_dir / values.pop("state_dir"), **values)

    @classmethod
    def from_env(cls, project_dir: Path, section: Mapping[str, Any] | None) -> ContainerSettings:
        """From env.yaml's raw `container:` section; ConfigError names a wrong key."""
        checked = validate_section(ContainerSection, dict(section or {}), "container")
        return cls.from_config(project_dir, checked)

    def ca_files(self) -> list[Path]:
        if self.extra_ca_certs == "host":
            return sorted(HOST_EXTRA_CAS.rglob("*.crt")) if HOST_EXTRA_CAS.is_dir() else []
        paths = (
            [self.extra_ca_certs] if isinstance(self.extra_ca_certs, str) else self.extra_ca_certs
        )
        files = [Path(p) for p in paths]
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise ContainerError(f"extra_ca_certs: no such file(s): {', '.join(missing)}")
        return files


def podman_env(settings: ContainerSettings) -> dict[str, str]:
    """Environment that points podman at the project's own config and storage."""
    state = settings.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    conf = state / "containers.conf"
    conf.write_text(
        "[containers]\n"
        # the sandbox caps rlimits below podman's defaults; ask for what it allows
        'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
        "[engine]\n"
        # Debian's crun 1.8 refuses this machine's hybrid cgroup layout
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
    )
    storage = state / "storage.conf"
    storage.write_text(
        "[storage]\n"
        'driver = "overlay"\n'
        # json.dumps quotes and escapes as a TOML basic string needs
        f"graphroot = {json.dumps(str(state / 'storage'))}\n"
        f"runroot = {json.dumps(str(state / 'run'))}\n"
    )
    return {**os.environ, "CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage)}


def install_tools_script() -> Traversable:
    """The installer of the tools, shipped in this package: a project has no copy of it."""
    return resources.files(__package__) / INSTALL_TOOLS_SCRIPT


def check_tools() -> None:
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        raise ContainerError(
            f"missing {', '.join(missing)}: `nbship container build` installs them as root, "
            f"or run `bash {install_tools_script()}` as root (Debian packages podman, runc, "
            "debootstrap)"
        )


def install_tools() -> None:
    """Installs the missing tools with apt-get (Debian; needs root), else ContainerError
    with the installer's own reason."""
    with resources.as_file(install_tools_script()) as script:
        result = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1:] or [f"exit status {result.returncode}"]
        raise ContainerError(f"cannot install {', '.join(REQUIRED_TOOLS)}: {reason[0]}")


def _run(
    cmd: Sequence[str], env: dict[str, str], **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(cmd), env=env, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise ContainerError(
            f"{' '.join(cmd[:3])} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        )
    return result


APT_SOURCES = (Path("/etc/apt/sources.list.d"), Path("/etc/apt/sources.list"))


def host_mirror(sources: Sequence[Path] = APT_SOURCES) -> str:
    """The Debian mirror apt uses on this host, from deb822 `.sources` or one-line
    `.list` files (folders are read in name order)."""
    files: list[Path] = []
    for source in sources:
        if source.is_dir():
            files += sorted(p for p in source.iterdir() if p.suffix in (".sources", ".list"))
        elif source.is_file():
            files.append(source)
    for path in files:
        text = path.read_text()
        if m := re.search(r"^URIs:\s*(\S+/debian)/?\s*$", text, re.MULTILINE):
            return m.group(1)
        if m := re.search(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+/debian)/?\s", text, re.MULTILINE):
            return m.group(1)
    return "http://deb.debian.org/debian"


# What the base image is made of, beyond the settings: change it to force a rebuild.
BASE_RECIPE = ("minbase", *BASE_PACKAGES, "no-docs-man-locale-apt-lists", "cas-numbered")


def base_image_ref(settings: ContainerSettings) -> str:
    """The base image's name with a tag suffix that hashes its recipe (suite, mirror,
    packages, the extra CAs' contents): changing any of them, e.g. adding a corporate
    CA, makes a new base image instead of reusing one that does not trust it."""
    digest = hashlib.sha256("\0".join([settings.suite, settings.mirror or host_mirror(),
                                        *BASE_RECIPE]).encode())  # fmt: skip
    for ca in settings.ca_files():
        digest.update(ca.read_bytes())
    return f"{settings.base_image}-{digest.hexdigest()[:12]}"


def image_exists(image: str, env: dict[str, str]) -> bool:
    return subprocess.run(["podman", "image", "exists", image], env=env).returncode == 0


def ensure_base_image(settings: ContainerSettings, env: dict[str, str]) -> str:
    """Makes the base image unless podman's store has it; returns its reference."""
    ref = base_image_ref(settings)
    if image_exists(ref, env):
        return ref
    with tempfile.TemporaryDirectory(prefix="nbship-rootfs-", dir=settings.state_dir) as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
             settings.suite, str(rootfs), settings.mirror or host_mirror()],
            env,
        )  # fmt: skip
        _trust_cas(rootfs, settings.ca_files(), env)
        # what a runtime image does not need: docs, man pages, translations, apt lists
        for folder in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
                       "var/lib/apt/lists", "var/cache/apt"):  # fmt: skip
            shutil.rmtree(rootfs / folder, ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            _run(["podman", "import", "-", ref], env, stdin=tar.stdout)
        finally:
            tar.wait()
    return ref


def _trust_cas(rootfs: Path, cas: Sequence[Path], env: dict[str, str]) -> None:
    if not cas:
        return
    target = rootfs / "usr/local/share/ca-certificates/nbship"
    target.mkdir(parents=True, exist_ok=True)
    for i, ca in enumerate(cas):
        # numbered: two folders may each hold a root.crt
        shutil.copy2(ca, target / f"{i:02d}-{ca.stem}.crt")
    _run(["chroot", str(rootfs), "update-ca-certificates"], {**env, "TMPDIR": "/tmp"})


CONTAINERFILE = """\
FROM {base}
# Stage 0 makes the venv; the image keeps only its /opt/venv, so pip, setuptools and
# binutils (to strip debug info) never reach it.
RUN apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends binutils \\
    >/dev/null 2>&1 \\
 || echo "binutils not installable: shared objects keep their debug info"
COPY bento/env/python/requirements.txt /tmp/requirements.txt
COPY prune.py /tmp/prune.py
# Every dependency is a wheel (--only-binary): no compiler anywhere. pip runs from a venv
# of its own and installs into the server's (--python), uncompiled: the warm-up below
# compiles what the server imports.
RUN python3 -m venv --without-pip /opt/venv \\
 && python3 -m venv /tmp/pip \\
 && PIP_CERT=/etc/ssl/certs/ca-certificates.crt /tmp/pip/bin/pip --python /opt/venv/bin/python \\
    install --no-cache-dir --no-compile --disable-pip-version-check --only-binary=:all: \\
    -r /tmp/requirements.txt \\
 && python3 /tmp/prune.py /opt/venv

FROM {base}
RUN useradd --uid {uid} --create-home --shell /usr/sbin/nologin bento \\
 && install -d -o {uid} -g {uid} /var/lib/nbship
COPY --from=0 /opt/venv /opt/venv
COPY --chown={uid}:{uid} bento /home/bento/bento
# the prediction log lives in the container's own folder (mount a volume there to keep
# it, or point NBSHIP_LOG_URL at PostgreSQL); the host's registry path means nothing
# here: NBSHIP_REGISTRY_URL names a shared one
ENV PATH=/opt/venv/bin:$PATH \\
    BENTOML_HOME=/home/bento/bentoml \\
    BENTOML_DO_NOT_TRACK=true \\
    NBSHIP_LOG_URL=sqlite:////var/lib/nbship/prediction_log.db \\
    NBSHIP_LOG_SPOOL=/var/lib/nbship/spool \\
    PYTHONUNBUFFERED=1
VOLUME /var/lib/nbship
# A server that compiles its imports at every start is slow to become ready; compiling
# the whole venv costs ~80 MB. So start the server once here: exactly what it imports
# gets compiled, without the column tables of each instruction (-X no_debug_ranges:
# ~8% smaller; a traceback keeps its lines, loses its ^^^ markers).
COPY warmup.py /tmp/warmup.py
RUN PYTHONNODEBUGRANGES=1 python3 /tmp/warmup.py && rm -rf /tmp/warmup.py /tmp/warmup-home
ENV PYTHONDONTWRITEBYTECODE=1
USER {uid}
WORKDIR /home/bento
EXPOSE {port}
STOPSIGNAL SIGTERM
ENTRYPOINT ["bentoml", "serve", "/home/bento/bento", "--host", "0.0.0.0", "--port", "{port}"]
"""

PRUNE = """\
# Build-time: drops from the venv what a server never reads. Packages' test suites;
# stubs and the sources and headers compiled extensions were built from; debug info of
# shared objects (strip --strip-debug), except those auditwheel patched (an RPATH, or
# under a *.libs folder): strip can corrupt what patchelf rewrote.
import os, shutil, subprocess, sys
from pathlib import Path

BUILD_ONLY = {".pyi", ".pyx", ".pxd", ".pxi", ".c", ".h", ".cpp", ".hpp"}
venv = Path(sys.argv[1])
tools = shutil.which("strip") and shutil.which("readelf")
for root, dirs, files in os.walk(venv):
    for name in [d for d in dirs if d in ("tests", "__pycache__")]:
        shutil.rmtree(os.path.join(root, name))
        dirs.remove(name)
    for name in files:
        path = os.path.join(root, name)
        if os.path.islink(path):
            continue
        if os.path.splitext(name)[1] in BUILD_ONLY:
            os.remove(path)
        elif tools and (name.endswith(".so") or ".so." in name) and not root.endswith(".libs"):
            elf = subprocess.run(["readelf", "-S", "-d", "-W", path], capture_output=True,
                                 text=True).stdout
            if ".debug_" in elf and "(RPATH)" not in elf and "(RUNPATH)" not in elf:
                subprocess.run(["strip", "--strip-debug", path], check=True)
"""

WARMUP = """\
# Build-time warm-up: start the server once so that the bytecode of everything it
# imports (the model's modules included: they load at start) is written, then stop it.
import os, signal, subprocess, sys, time, urllib.request

env = {**os.environ, "BENTOML_HOME": "/tmp/warmup-home", "NBSHIP_LOG_URL": "off"}
cmd = ["bentoml", "serve", "/home/bento/bento", "--host", "127.0.0.1", "--port", "3999"]
proc = subprocess.Popen(cmd, env=env, start_new_session=True)
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        if urllib.request.urlopen("http://127.0.0.1:3999/readyz", timeout=1).status == 200:
            break
    except OSError:
        time.sleep(0.2)
else:
    os.killpg(proc.pid, signal.SIGKILL)
    sys.exit("warm-up: the server did not become ready in 120 s")
os.killpg(proc.pid, signal.SIGTERM)
proc.wait(timeout=60)
"""


@dataclass(frozen=True)
class ImageBuild:
    image: str
    base: str
    labels: dict[str, str]


def image_name(bento_dir: Path) -> tuple[str, dict]:
    config = json.loads((bento_dir / "src" / "serving.json").read_text())
    version = bento_dir.resolve().name.rsplit("-", 1)[-1]
    return f"localhost/{config['bento_name']}:{version}", config


def build_image(bento_dir: str | Path, settings: ContainerSettings) -> ImageBuild:
    """Builds the image of a published bento folder; reuses the cached base image."""
    check_tools()
    bento_dir = Path(bento_dir).resolve()
    if not (bento_dir / "bento.yaml").is_file():
        raise ContainerError(f"no bento at {bento_dir}: run `nbship build` first")
    env = podman_env(settings)
    base = ensure_base_image(settings, env)
    image, config = image_name(bento_dir)
    meta = config["metadata"]
    labels = {
        "org.opencontainers.image.title": config["bento_name"],
        "org.opencontainers.image.version": image.rsplit(":", 1)[-1],
        "org.opencontainers.image.revision": meta.get("git_commit", "unknown"),
        "ai.nbship.model-tag": config["model_tag"],
        "ai.nbship.pipeline.data-fingerprint": meta["data_fingerprint"],
        **settings.labels,
    }
    with tempfile.TemporaryDirectory(prefix="nbship-image-") as tmp:
        context = Path(tmp)
        shutil.copytree(bento_dir, context / "bento")
        (context / "warmup.py").write_text(WARMUP)
        (context / "prune.py").write_text(PRUNE)
        (context / "Containerfile").write_text(
            CONTAINERFILE.format(base=base, uid=APP_UID, port=CONTAINER_PORT)
        )
        cmd = ["podman", "build", "--network=host", "-f", str(context / "Containerfile")]
        for key, value in labels.items():
            cmd += ["--label", f"{key}={value}"]
        _run([*cmd, "-t", image, str(context)], env)
    return ImageBuild(image=image, base=base, labels=labels)


def run_container(image: str, port: int, settings: ContainerSettings) -> str:
    """Starts the image detached, published on 127.0.0.1 only; returns the container id."""
    env = podman_env(settings)
    result = _run(["podman", "run", "-d", "-p", f"127.0.0.1:{port}:{CONTAINER_PORT}", image], env)
    return result.stdout.strip()


def stop_container(container_id: str, settings: ContainerSettings, timeout: int = 30) -> None:
    """SIGTERM, up to `timeout` s for in-flight requests, then remove it by id."""
    env = podman_env(settings)
    _run(["podman", "stop", "-t", str(timeout), container_id], env)
    _run(["podman", "rm", "-f", container_id], env)


def inspect(image_or_id: str, settings: ContainerSettings) -> dict:
    env = podman_env(settings)
    return json.loads(_run(["podman", "inspect", image_or_id], env).stdout)[0]


def logs(container_id: str, settings: ContainerSettings) -> str:
    result = _run(["podman", "logs", container_id], podman_env(settings))
    return result.stdout + result.stderr
