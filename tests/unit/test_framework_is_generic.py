"""The framework knows nothing of its worked example: no name of the example's columns,
data package, suite or bento appears in src/nbship (the example lives in the top-level
project files only)."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.support import PROJECT

pytestmark = pytest.mark.unit


def example_names() -> set[str]:
    env = yaml.safe_load((PROJECT / "env.yaml").read_text())
    names = {env["target"], *env["features"]["numeric"], *env["features"]["categorical"]}
    names |= {env["bento"]["name"], env["data"]["source"].split(":")[0]}
    names.add((PROJECT / env["suite"]).stem)
    # the example's class labels, as its suite states them
    suite = yaml.safe_load((PROJECT / env["suite"]).read_text())
    for expectation in suite["expectations"]:
        if expectation["kwargs"].get("column") == env["target"]:
            names |= set(expectation["kwargs"].get("value_set") or ())
    return names


def test_no_name_of_the_example_is_in_the_framework():
    names = example_names()
    assert {"species", "island", "Gentoo", "palmerpenguins"} <= names  # the check sees them
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(names))) + r")\b", re.I)
    found = [
        f"{path.relative_to(PROJECT)}:{n}: {line.strip()}"
        for path in sorted((PROJECT / "src" / "nbship").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, "\n".join(found)
