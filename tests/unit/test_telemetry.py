"""Telemetry is off in every process of the environment, without the user's shell:
`nbship_telemetry_off.pth` (installed into site-packages) sets the variables at start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.support import PROJECT

pytestmark = pytest.mark.unit

DISABLING = {
    "BENTOML_DO_NOT_TRACK": "true",
    "PLOOMBER_STATS_ENABLED": "false",
    "PLOOMBER_VERSION_CHECK_DISABLED": "1",
    "GX_ANALYTICS_ENABLED": "false",
}
# anything that would switch telemetry off (or on) by itself, hiding what the .pth does
SCRUBBED = (*DISABLING, "DO_NOT_TRACK", "CI", "READTHEDOCS")


def clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env["HOME"] = str(home)  # ploomber/bentoml may touch config under ~
    return env


def run_python(code: str, home: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(home),
        cwd=home,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_pth_file_is_installed_in_site_packages():
    installed = Path(sysconfig.get_paths()["purelib"]) / "nbship_telemetry_off.pth"
    assert installed.is_file()
    assert installed.read_text() == (PROJECT / "src" / "nbship_telemetry_off.pth").read_text()


def test_a_fresh_interpreter_starts_with_telemetry_variables_disabled(tmp_path: Path):
    assert not any(k in clean_env(tmp_path) for k in DISABLING)
    code = (
        f"import json, os; print(json.dumps({{k: os.environ.get(k) for k in {list(DISABLING)}}}))"
    )
    assert run_python(code, tmp_path) == DISABLING


def test_the_pth_does_not_override_an_explicit_user_choice(tmp_path: Path):
    env = {**clean_env(tmp_path), "PLOOMBER_STATS_ENABLED": "true"}
    out = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ['PLOOMBER_STATS_ENABLED'])"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == "true"


def test_the_libraries_themselves_see_telemetry_off(tmp_path: Path):
    code = (
        "import json\n"
        "from bentoml._internal.utils.analytics import usage_stats\n"
        "from ploomber_core.telemetry import telemetry\n"
        "print(json.dumps({'bentoml_do_not_track': usage_stats.do_not_track(),\n"
        "                  'ploomber_enabled': telemetry.check_telemetry_enabled()}))\n"
    )
    assert run_python(code, tmp_path) == {"bentoml_do_not_track": True, "ploomber_enabled": False}
