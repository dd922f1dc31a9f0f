"""The image build's prune step (container.PRUNE) on a made-up venv: what a server never
reads goes, what it imports stays, and only unpatched shared objects are stripped."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nbship.deploy import container

pytestmark = pytest.mark.unit

SITE = "lib/python3.11/site-packages"


def prune(venv: Path, tmp_path: Path) -> None:
    script = tmp_path / "prune.py"
    script.write_text(container.PRUNE)
    subprocess.run([sys.executable, str(script), str(venv)], check=True)


def test_prune_drops_tests_bytecode_stubs_and_sources_and_keeps_the_rest(tmp_path: Path):
    venv = tmp_path / "venv"
    pkg = venv / SITE / "pkg"
    keep = ["__init__.py", "core.py", "py.typed", "data/table.csv", "templates/page.html",
            "static/app.js", "include.txt"]  # fmt: skip
    drop = ["core.pyi", "_speed.pyx", "_speed.pxd", "_speed.c", "api.h", "ext.cpp",
            "tests/test_core.py", "__pycache__/core.cpython-311.pyc"]  # fmt: skip
    for name in keep + drop:
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text("x\n")
    (venv / "bin").mkdir()
    (venv / "bin" / "python").symlink_to("/usr/bin/python3")
    prune(venv, tmp_path)
    left = {p.relative_to(pkg).as_posix() for p in pkg.rglob("*") if p.is_file()}
    assert left == set(keep)
    assert (venv / "bin" / "python").is_symlink()


@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("cc", "strip", "readelf")),
    reason="needs a C compiler and binutils",
)
def test_prune_strips_debug_info_but_not_what_auditwheel_patched(tmp_path: Path):
    source = tmp_path / "ext.c"
    source.write_text("int answer(void) { return 42; }\n")
    venv = tmp_path / "venv"
    plain = venv / SITE / "pkg" / "_ext.cpython-311-x86_64-linux-gnu.so"
    patched = venv / SITE / "pkg" / "_linked.cpython-311-x86_64-linux-gnu.so"
    bundled = venv / SITE / "pkg.libs" / "libdep-1a2b3c.so.1"
    for out, extra in ((plain, []), (patched, ["-Wl,-rpath,$ORIGIN/../pkg.libs"]),
                       (bundled, [])):  # fmt: skip
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cc", "-g", "-shared", "-fPIC", "-o", str(out), str(source), *extra],
                       check=True)  # fmt: skip
    before = {p: p.stat().st_size for p in (plain, patched, bundled)}

    def has_debug(path: Path) -> bool:
        sections = subprocess.run(["readelf", "-S", "-W", str(path)], capture_output=True,
                                  text=True, check=True).stdout  # fmt: skip
        return ".debug_info" in sections

    assert all(has_debug(p) for p in before)
    prune(venv, tmp_path)
    assert not has_debug(plain) and plain.stat().st_size < before[plain]
    assert has_debug(patched) and patched.stat().st_size == before[patched]
    assert has_debug(bundled) and bundled.stat().st_size == before[bundled]
