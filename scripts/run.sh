#!/usr/bin/env bash
# Set up from the lock, run the pipeline, serve the winning model on 127.0.0.1.
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
uv run nbship build
exec uv run nbship serve --port "${PORT:-3000}"
