#!/usr/bin/env bash
# Lint, then every test. pytest's exit code 5 (nothing collected) fails this script.
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
# the container tests build and run the image with rootful podman
bash scripts/install-container-tools.sh
# the registry tests run against a real PostgreSQL server as well as SQLite
bash scripts/install-postgresql.sh
# the dashboard is tested in Debian's headless chromium (selenium + chromedriver)
bash scripts/install-browser.sh
uv run ruff check .
uv run ruff format --check .
# the import layers (pyproject's [tool.importlinter]) and the types of src/
uv run lint-imports --no-cache
uv run mypy
# two workers (pytest-xdist); tests sharing a session build stay together (tests/conftest.py)
uv run pytest -n 2 --dist loadgroup --durations=25 "$@"
