"""The model registry on a real PostgreSQL server: the tests of tests/unit/test_registry.py
that take a `registry` (there on SQLite) run here with this module's `registry`."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest

from nbship.registry.versions import Registry
from tests.support import postgres_schema
from tests.unit import test_registry as on_sqlite

# pytest collects the test functions a module holds, imported ones too: these run here
# with the `registry` below, their bodies kept in one place
from tests.unit.test_registry import (  # noqa: F401
    test_aliases_are_per_name_and_need_actor_and_reason,
    test_bad_tag_is_refused,
    test_diff_only_differences,
    test_git_commit_is_optional,
    test_list_newest_first_and_by_name,
    test_promote_rollback_and_history,
    test_record_gates_appends,
    test_register_stores_metadata_and_is_idempotent,
    test_unknown_tag_names_it_and_lists_known,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(postgres_url: str) -> Iterator[Registry]:
    """A registry in an empty schema of the session's server."""
    with postgres_schema(postgres_url) as url:
        reg = Registry(url)
        try:
            yield reg
        finally:
            reg.close()


def test_every_registry_test_of_the_unit_module_runs_here_too() -> None:
    takes_registry = {
        name
        for name, value in vars(on_sqlite).items()
        if name.startswith("test_") and "registry" in inspect.signature(value).parameters
    }
    assert takes_registry and takes_registry <= set(globals()), takes_registry - set(globals())
