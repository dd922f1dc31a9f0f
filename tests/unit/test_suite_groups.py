"""The suite's own plumbing: under pytest-xdist, the tests sharing a session build run on
one worker (tests/conftest.py). When that silently stopped (our hook ran after xdist's;
pytest 9.2's node ids, pytest-dev/pytest-xdist#1386), every shared build ran once per
worker and the suite went from ~19 to ~25 minutes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import PROJECT

pytestmark = pytest.mark.unit

CONFTEST = """
import pytest
from tests.conftest import pytest_collection_modifyitems  # the suite's own hook

@pytest.fixture(scope="session")
def worse_build():  # stands for the shared build of that name
    return None
"""
TESTS = "\n".join(f"def test_shared_{i}(worse_build): pass" for i in range(4))
TESTS += "\n" + "\n".join(f"def test_alone_{i}(): pass" for i in range(4))


def test_tests_sharing_a_build_run_on_one_worker(tmp_path: Path):
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_groups.py").write_text(TESTS)
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v",
         "-p", "no:cacheprovider", "-p", "no:randomly", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(PROJECT)},
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    workers = {
        m["test"]: m["worker"]
        for m in re.finditer(r"\[(?P<worker>gw\d)\].*PASSED \S*::(?P<test>test_\w+)", ran.stdout)
    }
    shared = {w for t, w in workers.items() if t.startswith("test_shared")}
    assert len(workers) == 8 and len(shared) == 1, ran.stdout
